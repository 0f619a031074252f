#include "capture/physical/target_processes.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <cstdio>

#include "capture/process/elf_build_id.h"
#include "capture/process/procfs.h"
#include "mlfx/base/file.h"
#include "mlfx/crypto/hash.h"

namespace mlfx::agent::physical {

namespace {

constexpr uint64_t kPfKthread = 0x00200000;  // PF_KTHREAD in the task flags of /proc/PID/stat
constexpr size_t kSamplePages = 8;

std::string cmdline_text(std::string raw) {
  while (!raw.empty() && raw.back() == '\0') raw.pop_back();
  for (char& c : raw)
    if (c == '\0') c = ' ';
  return raw;
}

std::string dev_text(const process::MapEntry& m) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02x:%02x", m.dev_major, m.dev_minor);
  return buf;
}

template <class T>
void append_le(Bytes& b, T v) {
  const size_t n = b.size();
  b.resize(n + sizeof(T));
  store_le<T>(b.data() + n, v);
}

// Private writable memory: the heap and anonymous mappings where tensors are.
bool preferred_sample(const process::MapEntry& m) { return m.writable() && !m.shared(); }

}  // namespace

Status check_target_pid(pid_t pid) {
  const std::string who = "pid " + std::to_string(pid);
  if (pid <= 0) return fail(Errc::kInvalidArgument, "--pid must be a positive process id");
  if (pid == getpid()) return fail(Errc::kInvalidArgument, "--pid " + std::to_string(pid) + " is mlfx-agent itself");
  auto text = process::read_proc_file(process::proc_path(pid, "stat"), 4096);
  if (!text) {
    if (text.error().code() == Errc::kNotFound)
      return fail(Errc::kNotFound, "no such process: " + who + " (nothing at /proc/" + std::to_string(pid) +
                                       "); check the id with 'ps'. Nothing was loaded or captured");
    return fail(std::move(text).error());
  }
  MLFX_ASSIGN(process::ProcStat st, process::parse_proc_stat(*text));
  if (st.state == 'Z' || st.state == 'X')
    return fail(Errc::kInvalidArgument, who + " (" + st.comm + ") is a zombie: it has exited and has no memory left");
  if (st.flags & kPfKthread)
    return fail(Errc::kInvalidArgument, who + " (" + st.comm + ") is a kernel thread: it has no user memory");
  MLFX_ASSIGN(std::string status, process::read_proc_file(process::proc_path(pid, "status"), 1 << 20));
  auto tgid = process::status_field(status, "Tgid");
  if (tgid && *tgid != std::to_string(pid))
    return fail(Errc::kInvalidArgument, who + " is a thread of process " + *tgid + "; name the process: --pid " + *tgid);
  return {};
}

std::vector<uint64_t> spread_sample(const std::vector<uint64_t>& candidates, size_t count) {
  if (candidates.size() <= count) return candidates;
  std::vector<uint64_t> out;
  for (size_t i = 0; i < count; ++i) out.push_back(candidates[(2 * i + 1) * candidates.size() / (2 * count)]);
  return out;
}

Status TargetProcesses::check() const {
  for (size_t i = 0; i < pids_.size(); ++i) {
    MLFX_TRY(check_target_pid(pids_[i]));
    for (size_t j = 0; j < i; ++j)
      if (pids_[j] == pids_[i]) return fail(Errc::kInvalidArgument, "--pid " + std::to_string(pids_[i]) + " given twice");
  }
  return {};
}

Status TargetProcesses::freeze(std::chrono::milliseconds stop_timeout,
                               const std::function<Result<process::ThreadFreezer>(pid_t)>& freeze_threads) {
  for (pid_t pid : pids_) {
    auto f = freeze_threads ? freeze_threads(pid) : process::ThreadFreezer::freeze(pid, {stop_timeout});
    if (!f) {
      (void)thaw();
      return fail(std::move(f).error().context("freezing pid " + std::to_string(pid)));
    }
    frozen_.push_back(std::move(*f));
  }
  return {};
}

Status TargetProcesses::thaw() {
  Status first;
  for (auto it = frozen_.rbegin(); it != frozen_.rend(); ++it)
    if (auto st = it->thaw(); !st && first) first = fail(std::move(st).error().context("thawing pid " + std::to_string(it->pid())));
  frozen_.clear();
  return first;
}

void TargetProcesses::read_build_ids() {
  for (TargetRecord& r : records_) r.build_ids = process::mapped_build_ids(r.pid, r.maps);
}

Status TargetProcesses::record(uint64_t page_size) {
  PagemapWriter pagemap;
  records_.clear();
  for (size_t i = 0; i < pids_.size(); ++i) {
    auto r = record_one(pids_[i], page_size, pagemap);
    if (!r) return fail(std::move(r).error().context("recording pid " + std::to_string(pids_[i]) + " while frozen"));
    if (i < frozen_.size()) r->threads = frozen_[i].threads().size();
    records_.push_back(std::move(*r));
  }
  if (!pids_.empty()) pagemap_ = pagemap.finish();
  return {};
}

Result<TargetRecord> TargetProcesses::record_one(pid_t pid, uint64_t page_size, PagemapWriter& pagemap) {
  TargetRecord r;
  r.pid = pid;
  MLFX_ASSIGN(std::string stat, process::read_proc_file(process::proc_path(pid, "stat"), 4096));
  MLFX_ASSIGN(process::ProcStat st, process::parse_proc_stat(stat));
  r.comm = st.comm;
  MLFX_ASSIGN(std::string cmd, process::read_proc_file(process::proc_path(pid, "cmdline"), 1 << 20));
  r.cmdline = cmdline_text(std::move(cmd));
  MLFX_ASSIGN(r.maps, process::read_proc_maps(pid));

  MLFX_ASSIGN(File pm, File::open_read(process::proc_path(pid, "pagemap")));
  std::vector<uint64_t> preferred, others;  // present pages, candidates for the sample
  for (const process::MapEntry& m : r.maps) {
    if (!pagemap_recorded(m)) continue;
    MLFX_TRY(pagemap.add_mapping(pm.fd(), pid, m, page_size));
    ++r.pagemap_records;
    std::span<const uint8_t> e = pagemap.last_entries();
    auto& into = preferred_sample(m) ? preferred : others;
    for (size_t i = 0; i * 8 < e.size(); ++i) {
      const uint64_t v = load_le<uint64_t>(e.data() + i * 8);
      if ((v & kPagemapPresent) && (v & kPagemapPfnMask)) into.push_back(m.start + i * page_size);
    }
  }

  // The sample: read through /proc/PID/mem while frozen, so the same bytes are in the image.
  MLFX_ASSIGN(File mem, File::open_read(process::proc_path(pid, "mem")));
  Bytes page(page_size);
  for (uint64_t vaddr : spread_sample(preferred.empty() ? others : preferred, kSamplePages)) {
    if (!mem.pread_exact(vaddr, page.data(), page.size())) continue;  // not readable after all: no sample
    r.page_sample.push_back({vaddr, crypto::sha256_hex(page)});
  }
  return r;
}

Status TargetProcesses::settle(uint64_t page_size) {
  if (pagemap_.size() < 16) return {};
  constexpr uint64_t kBatch = 1u << 16;  // entries read at a time
  std::vector<uint8_t> now(kBatch * 8);
  Bytes moved, page(page_size);
  uint32_t moved_pages = 0;
  size_t at = 16;
  std::optional<File> pm, mem;
  pid_t open_pid = 0;
  while (at + 24 <= pagemap_.size()) {
    const pid_t pid = static_cast<pid_t>(load_le<uint32_t>(pagemap_.data() + at));
    const uint64_t start = load_le<uint64_t>(pagemap_.data() + at + 8), pages = load_le<uint64_t>(pagemap_.data() + at + 16);
    at += 24;
    if (!pm || open_pid != pid) {
      MLFX_ASSIGN(File f, File::open_read(process::proc_path(pid, "pagemap")));
      MLFX_ASSIGN(File m, File::open_read(process::proc_path(pid, "mem")));
      pm.emplace(std::move(f));
      mem.emplace(std::move(m));
      open_pid = pid;
    }
    auto record = std::find_if(records_.begin(), records_.end(), [&](const TargetRecord& r) { return r.pid == pid; });
    for (uint64_t done = 0; done < pages;) {
      const uint64_t n = std::min(kBatch, pages - done);
      MLFX_TRY(pm->pread_exact((start / page_size + done) * 8, now.data(), n * 8));
      uint8_t* stored = pagemap_.data() + at + done * 8;
      for (uint64_t i = 0; i < n; ++i) {
        if (std::memcmp(stored + i * 8, now.data() + i * 8, 8) == 0) continue;
        const bool was_present = load_le<uint64_t>(stored + i * 8) & kPagemapPresent;
        std::memset(stored + i * 8, 0, 8);
        if (record != records_.end()) ++record->pages_moved;
        const uint64_t vaddr = start + (done + i) * page_size;
        if (!was_present || !mem->pread_exact(vaddr, page.data(), page.size())) continue;
        append_le<uint32_t>(moved, static_cast<uint32_t>(pid));
        append_le<uint32_t>(moved, 0);
        append_le<uint64_t>(moved, vaddr);
        moved.insert(moved.end(), page.begin(), page.end());
        ++moved_pages;
      }
      done += n;
    }
    at += pages * 8;
  }
  moved_.clear();
  if (moved_pages) {
    moved_.insert(moved_.end(), kMovedMagic, kMovedMagic + sizeof kMovedMagic);
    append_le<uint32_t>(moved_, kMovedVersion);
    append_le<uint32_t>(moved_, moved_pages);
    moved_.insert(moved_.end(), moved.begin(), moved.end());
  }
  return {};
}

json::Json TargetProcesses::processes_json() const {
  json::Json all = json::Json::array();
  for (const TargetRecord& r : records_) {
    json::Json maps = json::Json::array();
    for (size_t i = 0; i < r.maps.size(); ++i) {
      const process::MapEntry& m = r.maps[i];
      json::Json j = {{"start", m.start}, {"end", m.end}, {"perms", m.perms}, {"offset", m.offset},
                      {"dev", dev_text(m)}, {"inode", m.inode}, {"path", m.path}};
      if (i < r.build_ids.size() && r.build_ids[i]) j["build_id"] = *r.build_ids[i];
      maps.push_back(std::move(j));
    }
    json::Json sample = json::Json::array();
    for (const PageSample& s : r.page_sample) sample.push_back({{"vaddr", s.vaddr}, {"sha256", s.sha256}});
    all.push_back({{"pid", r.pid}, {"comm", r.comm}, {"cmdline", r.cmdline}, {"threads", r.threads},
                   {"maps", std::move(maps)},
                   {"pagemap_records", r.pagemap_records}, {"page_sample", std::move(sample)},
                   {"pages_moved", r.pages_moved}});
  }
  return all;
}

}  // namespace mlfx::agent::physical
