// mlfx recover on whole-memory bundles, on this host: a real torch victim's memory (its core,
// by mlfx-agent) laid out as a machine's physical memory would hold it — every page in a
// scattered frame of a LiME image with gaps between ranges, and a raw pagemap that says where
// each virtual page went (protocol/doc/physical-capture.md) — sealed and recovered bit-exactly.
// Then the same image with a hole where a tensor lived: reported missing, never zeros; and a
// context that belongs to another image. (Real captures by LiME and mlfx_mem.ko of a victim
// in a VM on Debian's kernel: tests/agent/test_physical_capture_vm.py.)
#include <gtest/gtest.h>

#include <elf.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>

#include "layers/elf_core_layer.h"
#include "layers/file_layer.h"
#include "mlfx/base/json.h"
#include "mlfx/crypto/hash.h"
#include "recovery/victim_process.h"
#include "test_util.h"

namespace mlfx {
namespace {

using namespace testing;

constexpr uint64_t kPage = 4096;
const std::string kBanner = "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (synthetic layout) #1 SMP\n";

void put(std::ostream& o, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) o.put(static_cast<char>((v >> (8 * i)) & 0xff));
}

// A process's pages placed in scattered physical frames: runs of up to 8 pages stay together
// (as the buddy allocator and THP keep them), the runs are shuffled, and every 3000 frames
// the image has a gap (a reserved range, not in the image).
class PhysicalLayout {
 public:
  explicit PhysicalLayout(const layers::ElfCoreLayer& core) : core_(core) {
    for (const layers::LoadSegment& s : core.info().loads)
      for (uint64_t off = 0; off + kPage <= s.filesz; off += kPage) pages_.push_back(s.vaddr + off);
    std::vector<size_t> runs;
    for (size_t i = 0; i < pages_.size(); i += 8) runs.push_back(i);
    std::shuffle(runs.begin(), runs.end(), std::mt19937_64(13));
    uint64_t frame = 0x100;
    for (size_t r : runs)
      for (size_t i = r; i < std::min(r + 8, pages_.size()); ++i) {
        if (frame % 3000 == 0) frame += 17;  // a gap between ranges
        pfn_[pages_[i]] = frame++;
      }
    banner_pfn_ = frame + 5;
  }
  uint64_t pfn(uint64_t vaddr) const { return pfn_.at(vaddr); }
  const std::vector<uint64_t>& pages() const { return pages_; }

  // The LiME image, frames ascending; pages in [hole_start, hole_end) are left out.
  void write_image(const std::string& path, uint64_t hole_start = 0, uint64_t hole_end = 0) const {
    std::map<uint64_t, uint64_t> by_frame;  // pfn -> vaddr
    for (const auto& [vaddr, pfn] : pfn_)
      if (vaddr + kPage <= hole_start || vaddr >= hole_end) by_frame[pfn] = vaddr;
    std::string banner_page = kBanner.substr(0, kBanner.size() - 1);
    banner_page.resize(kPage, '\0');
    std::ofstream o(path, std::ios::binary);
    auto range = [&](auto first, auto last) {
      const uint64_t start = first->first * kPage, end = std::prev(last)->first * kPage + kPage - 1;
      put(o, 0x4C694D45, 4), put(o, 1, 4), put(o, start, 8), put(o, end, 8), put(o, 0, 8);
      for (auto it = first; it != last; ++it) o.write(reinterpret_cast<const char*>(core_.view(it->second, kPage)), kPage);
    };
    auto first = by_frame.begin();
    for (auto it = by_frame.begin(); it != by_frame.end(); ++it) {
      auto next = std::next(it);
      if (next == by_frame.end() || next->first != it->first + 1) {
        range(first, next);
        first = next;
      }
    }
    put(o, 0x4C694D45, 4), put(o, 1, 4), put(o, banner_pfn_ * kPage, 8), put(o, banner_pfn_ * kPage + kPage - 1, 8);
    put(o, 0, 8);
    o << banner_page;
  }

  // The raw pagemap stream: one record per loaded segment; pages `evicted` says so of are not
  // present (a file page the kernel dropped from its page cache).
  void write_pagemap(const std::string& path, int32_t pid,
                     const std::function<bool(uint64_t)>& evicted = [](uint64_t) { return false; }) const {
    std::ofstream o(path, std::ios::binary);
    std::vector<const layers::LoadSegment*> loads;
    for (const auto& s : core_.info().loads)
      if (s.filesz >= kPage) loads.push_back(&s);
    o << "MLFXPMAP";
    put(o, 1, 4), put(o, loads.size(), 4);
    for (const layers::LoadSegment* s : loads) {
      const uint64_t pages = s->filesz / kPage;
      put(o, pid, 4), put(o, 0, 4), put(o, s->vaddr, 8), put(o, pages, 8);
      for (uint64_t i = 0; i < pages; ++i)
        put(o, evicted(s->vaddr + i * kPage) ? 0 : (1ull << 63) | pfn(s->vaddr + i * kPage), 8);
    }
  }

  // The permissions of the mapping at `vaddr`, as /proc/PID/maps prints them.
  std::string perms(uint64_t vaddr) const {
    for (const layers::LoadSegment& s : core_.info().loads)
      if (vaddr >= s.vaddr && vaddr - s.vaddr < s.memsz)
        return std::string(s.flags & PF_R ? "r" : "-") + (s.flags & PF_W ? "w" : "-") + (s.flags & PF_X ? "x" : "-") + "p";
    return "---p";
  }

  json::Json context(int32_t pid, const std::map<std::string, std::string>& build_ids = {}) const {
    json::Json maps = json::Json::array();
    for (const layers::MappedFile& f : core_.info().files) {
      json::Json m = {{"start", f.start}, {"end", f.end}, {"perms", perms(f.start)}, {"offset", f.file_offset},
                      {"inode", 1}, {"path", f.path}};
      if (auto id = build_ids.find(f.path); id != build_ids.end()) m["build_id"] = id->second;
      maps.push_back(std::move(m));
    }
    json::Json sample = json::Json::array();
    for (size_t k = 0; k < 6; ++k) {
      const size_t i = k * (pages_.size() - 1) / 5;
      sample.push_back({{"vaddr", pages_[i]}, {"sha256", crypto::sha256_hex(ByteView(core_.view(pages_[i], kPage), kPage))}});
    }
    return {{"source", "lime"},
            {"kernel", {{"banner", kBanner}, {"release", "6.1.0-57-amd64"}, {"machine", "x86_64"}, {"page_size", kPage}}},
            {"processes", {{{"pid", pid}, {"comm", core_.info().command}, {"cmdline", core_.info().args},
                            {"threads", core_.info().threads.size()}, {"maps", maps}, {"page_sample", sample}}}}};
  }

 private:
  const layers::ElfCoreLayer& core_;
  std::vector<uint64_t> pages_;
  std::map<uint64_t, uint64_t> pfn_;
  uint64_t banner_pfn_ = 0;
};

class PhysicalRecovery : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch_available()) GTEST_SKIP() << kPython << " cannot import torch (install python3-torch)";
    ASSERT_EQ(run(mlfx_bin() + " keys gen --kind device --out " + (dir / "dev")).exit_code, 0);
    ASSERT_EQ(run(mlfx_bin() + " keys gen --kind lab --out " + (dir / "lab")).exit_code, 0);
  }
  std::string seal(const std::string& name, const std::string& image, const std::string& pagemap, const json::Json& context) {
    const std::string ctx = dir / (name + ".context.json"), bundle = dir / (name + ".mlfx");
    write_file(ctx, context.dump());
    auto r = run(mlfx_bin() + " bundle seal -q " + image + " " + pagemap + " " + ctx +
                 " --name memory --name pagemap --name context --out " + bundle + " --device-key " + (dir / "dev.key") +
                 " --recipient " + (dir / "lab.pub"));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return bundle;
  }
  // A real torch victim and its core by mlfx-agent, its ground truth in `gt`; the victim is
  // told to stop once the core is taken.
  void capture_victim() {
    victim.emplace(kPython + " " + kVictims + "/torch_victim.py cnn " + gt, gt);
    ASSERT_TRUE(wait_for(gt + "/ready", 180)) << "victim did not start: " << victim->stderr_text();
    const std::string core_path = dir / "core.elf";
    auto c = run(agent_bin() + " core --pid " + std::to_string(victim->pid()) + " --out " + core_path);
    ASSERT_EQ(c.exit_code, 0) << c.output;
    testing::write_file(gt + "/stop", "1");
    auto file = layers::FileLayer::open(core_path);
    ASSERT_TRUE(file);
    auto opened = layers::ElfCoreLayer::open(std::shared_ptr<const layers::Layer>(std::move(*file)));
    ASSERT_TRUE(opened) << opened.error().to_string();
    core = std::move(*opened);
  }
  CommandResult recover(const std::string& bundle, const std::string& out, const std::string& extra = "") {
    return run(mlfx_bin() + " recover " + bundle + " --key " + (dir / "lab.key") + " --out " + out + " -q" + extra);
  }
  TempDir dir;
  const std::string gt = dir / "gt";
  std::optional<Victim> victim;
  std::shared_ptr<const layers::ElfCoreLayer> core;
};

TEST_F(PhysicalRecovery, ScatteredFramesRecoverBitExactlyAndHolesAreMissingNotZeros) {
  ASSERT_NO_FATAL_FAILURE(capture_victim());
  const Victim& v = *victim;
  PhysicalLayout layout(*core);
  ASSERT_GT(layout.pages().size(), 1000u);

  const std::string image = dir / "memory.lime", pagemap = dir / "pagemap.bin";
  layout.write_image(image);
  layout.write_pagemap(pagemap, v.pid());
  const json::Json context = layout.context(v.pid());
  const std::string bundle = seal("whole", image, pagemap, context);

  // Every process with a pagemap: DIR/processes/<pid>/, the same outputs as a process capture.
  const std::string all = dir / "all";
  auto r = recover(bundle, all);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string one = all + "/processes/" + std::to_string(v.pid());
  auto check = run(kPython + " " + kVictims + "/check_recovery.py " + gt + " " + one);
  EXPECT_EQ(check.exit_code, 0) << check.output;
  auto summary = json::parse(read_file(all + "/report.json"), "report");
  ASSERT_TRUE(summary);
  ASSERT_EQ((*summary)["processes"].size(), 1u);
  EXPECT_EQ((*summary)["processes"][0]["result"], "recovered");
  EXPECT_EQ((*summary)["input"]["kind"], "mlfx bundle (whole memory)");
  auto report = json::parse(read_file(one + "/report.json"), "report");
  ASSERT_TRUE(report);
  EXPECT_EQ((*report)["input"]["process_pages"]["page_sample"]["matched"], 6);
  EXPECT_EQ((*report)["input"]["process_pages"]["pages_in_image"], layout.pages().size());
  for (const auto& m : (*report)["models"]) EXPECT_TRUE(m["complete"].get<bool>()) << m.dump();
  auto spec = run(kPython + " " + std::string(MLFX_SOURCE_DIR) + "/tests/docs/outputs_spec_test.py " + all);
  EXPECT_EQ(spec.exit_code, 0) << spec.output;

  // --pid picks one process into DIR itself.
  const std::string picked = dir / "picked";
  auto p = recover(bundle, picked, " --pid " + std::to_string(v.pid()));
  ASSERT_EQ(p.exit_code, 0) << p.output;
  EXPECT_EQ(run(kPython + " " + kVictims + "/check_recovery.py " + gt + " " + picked).exit_code, 0);
  auto absent = recover(bundle, dir / "absent", " --pid 1");
  EXPECT_EQ(absent.exit_code, 1) << absent.output;
  EXPECT_NE(absent.output.find("no user process with pid 1 in the image"), std::string::npos) << absent.output;

  // A hole where the largest tensor lived: that tensor is missing, not zeros.
  std::string arch_path;
  for (const auto& e : fs::directory_iterator(picked + "/models"))
    if (fs::exists(e.path() / "architecture.json")) arch_path = e.path() / "architecture.json";
  ASSERT_FALSE(arch_path.empty());
  auto arch = json::parse(read_file(arch_path), "architecture");
  ASSERT_TRUE(arch);
  std::string key;
  uint64_t data = 0, bytes = 0;
  for (const auto& [name, t] : (*arch)["tensors"].items())
    if (t.contains("data") && t["storage_bytes"].get<uint64_t>() > bytes) {
      key = name;
      data = std::stoull(t["data"].get<std::string>(), nullptr, 16);
      bytes = t["storage_bytes"].get<uint64_t>();
    }
  ASSERT_GT(bytes, 0u);
  const std::string holed = dir / "holed.lime";  // the pages the tensor's bytes lie in
  layout.write_image(holed, data / kPage * kPage, (data + bytes + kPage - 1) / kPage * kPage);
  const std::string holed_bundle = seal("holed", holed, pagemap, context);
  const std::string out = dir / "holed-out";
  auto h = recover(holed_bundle, out, " --pid " + std::to_string(v.pid()));
  ASSERT_EQ(h.exit_code, 0) << h.output;
  auto holed_report = json::parse(read_file(out + "/report.json"), "report");
  ASSERT_TRUE(holed_report);
  bool reported = false;
  for (const auto& m : (*holed_report)["models"])
    for (const auto& k : m["missing"])
      if (k == key) reported = !m["complete"].get<bool>();
  EXPECT_TRUE(reported) << key << " not reported missing: " << (*holed_report)["models"].dump();
  auto checked = run(kPython + " " + kVictims + "/check_recovery.py " + gt + " " + out);
  EXPECT_NE(checked.exit_code, 0) << "a model with a hole passed the bit-exact check";

  // A context that belongs to another image: another kernel's banner, or another capture's pages.
  json::Json other_kernel = context;
  other_kernel["kernel"]["banner"] = "Linux version 6.12.9-amd64 (debian-kernel@lists.debian.org) #1 SMP\n";
  auto k = recover(seal("other-kernel", image, pagemap, other_kernel), dir / "k");
  EXPECT_EQ(k.exit_code, 1) << k.output;
  EXPECT_NE(k.output.find("does not belong to this image"), std::string::npos) << k.output;
  json::Json other_capture = context;
  other_capture["processes"][0]["page_sample"][1]["sha256"] = std::string(64, '0');
  auto s = recover(seal("other-capture", image, pagemap, other_capture), dir / "s", " --pid " + std::to_string(v.pid()));
  EXPECT_EQ(s.exit_code, 1) << s.output;
  EXPECT_NE(s.output.find("hashed at acquisition differs"), std::string::npos) << s.output;
  EXPECT_FALSE(fs::exists(dir / "s/report.json"));
}

// File pages that were not in the page cache at the capture (the interpreter's symbol tables,
// read once at start-up) are not in a physical image: recovery says so and names --sysroot;
// with --sysroot / they are read from this host's files, only from a file whose build-id
// equals the evidence's: its own copy of the ELF header, else the build-id the agent recorded.
TEST_F(PhysicalRecovery, FilePagesTheImageLacksComeFromTheSysrootWithTheirBuildIdChecked) {
  ASSERT_NO_FATAL_FAILURE(capture_victim());
  const Victim& v = *victim;
  PhysicalLayout layout(*core);

  // The interpreter: the mapped file holding the ELF header the process was started from.
  std::string python;
  uint64_t header_page = 0;
  for (const layers::MappedFile& f : core->info().files)
    if (f.file_offset == 0 && fs::path(f.path).filename().string().rfind("python3", 0) == 0) {
      python = f.path;
      header_page = f.start;
    }
  ASSERT_FALSE(python.empty());
  auto readelf = run("readelf -n " + python);
  const size_t at = readelf.output.find("Build ID: ");
  ASSERT_NE(at, std::string::npos) << readelf.output;
  const std::string build_id = readelf.output.substr(at + 10, readelf.output.find('\n', at) - at - 10);
  // Every read-only page of the interpreter evicted: but for its first page, or with it.
  auto read_only_python_page = [&](uint64_t vaddr) {
    for (const layers::MappedFile& f : core->info().files)
      if (f.path == python && vaddr >= f.start && vaddr < f.end) return layout.perms(vaddr)[1] != 'w';
    return false;
  };
  const std::string image = dir / "memory.lime";
  layout.write_image(image);
  const std::string kept_header = dir / "kept-header.pagemap", no_header = dir / "no-header.pagemap";
  layout.write_pagemap(kept_header, v.pid(), [&](uint64_t p) { return p != header_page && read_only_python_page(p); });
  layout.write_pagemap(no_header, v.pid(), read_only_python_page);

  // Without --sysroot: what is lacking, and what to do.
  const std::string bundle = seal("evicted", image, kept_header, layout.context(v.pid()));
  const std::string pid = " --pid " + std::to_string(v.pid());
  auto without = recover(bundle, dir / "without", pid);
  EXPECT_EQ(without.exit_code, 1) << without.output;
  EXPECT_NE(without.output.find("the image lacks"), std::string::npos) << without.output;
  EXPECT_NE(without.output.find("--sysroot"), std::string::npos) << without.output;

  auto sysroot_entry = [&](const std::string& out) {
    auto report = json::parse(read_file(out + "/report.json"), "report");
    EXPECT_TRUE(report);
    for (const auto& f : (*report)["input"]["sysroot"]["files"])
      if (f["path"] == python) return f;
    return json::Json();
  };
  // With --sysroot /: checked against the ELF header the image holds; bit-exact.
  const std::string with = dir / "with";
  auto r = recover(bundle, with, pid + " --sysroot /");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(run(kPython + " " + kVictims + "/check_recovery.py " + gt + " " + with).exit_code, 0);
  json::Json f = sysroot_entry(with);
  EXPECT_TRUE(f.value("read", false)) << f.dump();
  EXPECT_EQ(f.value("verified_by", ""), "ELF header in the evidence") << f.dump();
  EXPECT_EQ(f.value("build_id", ""), build_id) << f.dump();
  auto spec = run(kPython + " " + std::string(MLFX_SOURCE_DIR) + "/tests/docs/outputs_spec_test.py " + with);
  EXPECT_EQ(spec.exit_code, 0) << spec.output;

  // The header page evicted too: nothing to check the file against unless the agent recorded
  // its build-id; a wrong one refuses the file.
  auto refused = recover(seal("no-header", image, no_header, layout.context(v.pid())), dir / "refused", pid + " --sysroot /");
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_NE(refused.output.find("no build-id recorded at acquisition"), std::string::npos) << refused.output;
  const std::string recorded = dir / "recorded";
  r = recover(seal("recorded", image, no_header, layout.context(v.pid(), {{python, build_id}})), recorded,
              pid + " --sysroot /");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(run(kPython + " " + kVictims + "/check_recovery.py " + gt + " " + recorded).exit_code, 0);
  EXPECT_EQ(sysroot_entry(recorded).value("verified_by", ""), "recorded at acquisition");
  auto wrong = recover(seal("wrong", image, no_header, layout.context(v.pid(), {{python, std::string(40, 'a')}})),
                       dir / "wrong", pid + " --sysroot /");
  EXPECT_EQ(wrong.exit_code, 1) << wrong.output;
  EXPECT_NE(wrong.output.find("differs from the evidence's " + std::string(40, 'a')), std::string::npos) << wrong.output;
}

}  // namespace
}  // namespace mlfx
