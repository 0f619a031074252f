// Unit tests of the process-capture library: the maps and stat parsers, the core layout (read
// back with an independent ELF reader), the notes, build-ids, and freezing a forked child.
#include <elf.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/procfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "capture/process/arch.h"
#include "capture/process/core_notes.h"
#include "capture/process/elf_build_id.h"
#include "capture/process/elf_core_writer.h"
#include "capture/process/proc_maps.h"
#include "capture/process/process_capture.h"
#include "capture/process/procfs.h"
#include "elf_core_reader.h"
#include "test_util.h"

namespace mlfx::agent::process {
namespace {

using mlfx::testing::parse_elf_core;

// ---- /proc/PID/maps ----

constexpr char kMaps[] =
    "00400000-0041f000 r--p 00000000 fe:00 247970                             /usr/bin/python3.11\n"
    "7f50c2c55000-7f50c2c57000 rw-p 00000000 00:00 0 \n"
    "7f60c0000000-7f60c0001000 rw-s 00000000 00:01 1234                       /dev/zero (deleted)\n"
    "7f60c0001000-7f60c0003000 r-xp 0001a000 103:02 99                        /opt/with space/lib x.so\n"
    "7f60c0003000-7f60c0004000 ---p 00000000 00:00 0\n"
    "7f60c0004000-7f60c0005000 rw-p 00000000 00:00 0                          [anon:python arena]\n"
    "7fff8ce42000-7fff8ce63000 rw-p 00000000 00:00 0                          [stack]\n"
    "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";

TEST(ProcMaps, ParsesTheKernelFormat) {
  auto maps = parse_proc_maps(kMaps);
  ASSERT_TRUE(maps) << maps.error().to_string();
  ASSERT_EQ(maps->size(), 8u);
  const MapEntry& exe = (*maps)[0];
  EXPECT_EQ(exe.start, 0x400000u);
  EXPECT_EQ(exe.end, 0x41f000u);
  EXPECT_EQ(exe.perms, "r--p");
  EXPECT_EQ(exe.dev_major, 0xfeu);
  EXPECT_EQ(exe.inode, 247970u);
  EXPECT_EQ(exe.path, "/usr/bin/python3.11");
  EXPECT_TRUE(exe.readable() && !exe.writable() && !exe.executable() && !exe.shared());
  EXPECT_TRUE(exe.file_backed());
  EXPECT_EQ(exe.range_name(), "400000-41f000");

  EXPECT_EQ((*maps)[1].path, "");
  EXPECT_FALSE((*maps)[1].file_backed());
  EXPECT_TRUE((*maps)[2].shared());
  EXPECT_EQ((*maps)[2].path, "/dev/zero (deleted)");
  EXPECT_EQ((*maps)[3].path, "/opt/with space/lib x.so");
  EXPECT_EQ((*maps)[3].offset, 0x1a000u);
  EXPECT_EQ((*maps)[3].dev_major, 0x103u);
  EXPECT_EQ((*maps)[3].dev_minor, 2u);
  EXPECT_TRUE((*maps)[3].executable());
  EXPECT_EQ((*maps)[4].perms, "---p");
  EXPECT_EQ((*maps)[4].path, "");  // no trailing space after the inode
  EXPECT_FALSE((*maps)[5].file_backed());  // named anonymous memory
  EXPECT_EQ((*maps)[6].path, "[stack]");
  EXPECT_EQ((*maps)[7].start, 0xffffffffff600000u);
  EXPECT_FALSE((*maps)[7].readable());
}

TEST(ProcMaps, RejectsMalformedLines) {
  for (const char* bad : {
           "garbage\n",
           "00400000 r--p 00000000 fe:00 1 /x\n",                      // no range
           "00400000-0041f000 r-p 00000000 fe:00 1 /x\n",              // short perms
           "00400000-0041f000 r--q 00000000 fe:00 1 /x\n",             // bad sharing flag
           "00400000-0041f000 r--p 00000000 fe00 1 /x\n",              // bad device
           "0041f000-00400000 r--p 00000000 fe:00 1 /x\n",             // end before start
           "00400000-0041f000 r--p 00000000 fe:00 1 /x\n"
           "00401000-00402000 r--p 00000000 fe:00 1 /y\n",             // overlap
       }) {
    auto maps = parse_proc_maps(bad);
    EXPECT_FALSE(maps) << bad;
    if (!maps) {
      EXPECT_NE(maps.error().message().find("maps line"), std::string::npos);
    }
  }
}

TEST(ProcMaps, ParsesSmapsWithVmFlags) {
  const char* text =
      "00400000-0041f000 r--p 00000000 fe:00 247970                             /usr/bin/python3.11\n"
      "Size:                124 kB\n"
      "KernelPageSize:        4 kB\n"
      "THPeligible:    0\n"
      "VmFlags: rd mr mw me dw sd \n"
      "7f21b9f8b000-7f21b9f8f000 r--p 00000000 00:00 0                          [vvar]\n"
      "Size:                 16 kB\n"
      "VmFlags: rd mr pf io de dd\n";
  auto maps = parse_proc_smaps(text);
  ASSERT_TRUE(maps) << maps.error().to_string();
  ASSERT_EQ(maps->size(), 2u);
  EXPECT_EQ((*maps)[0].path, "/usr/bin/python3.11");
  EXPECT_EQ((*maps)[0].vm_flags, "rd mr mw me dw sd");
  EXPECT_TRUE((*maps)[0].has_vm_flag("sd"));
  EXPECT_FALSE((*maps)[0].has_vm_flag("dd"));
  EXPECT_FALSE((*maps)[0].has_vm_flag("d"));
  EXPECT_TRUE((*maps)[1].has_vm_flag("io"));
  EXPECT_TRUE((*maps)[1].has_vm_flag("dd"));
  EXPECT_FALSE(parse_proc_smaps("Size: 4 kB\n"));

  auto own = read_proc_smaps(getpid());
  ASSERT_TRUE(own) << own.error().to_string();
  EXPECT_GT(own->size(), 5u);
  for (const auto& m : *own) EXPECT_FALSE(m.vm_flags.empty()) << m.range_name();
}

TEST(ProcMaps, ReadsThisProcess) {
  auto maps = read_proc_maps(getpid());
  ASSERT_TRUE(maps) << maps.error().to_string();
  int local = 0;
  auto holds = [&](uint64_t a) {
    for (const auto& m : *maps)
      if (a >= m.start && a < m.end) return m.readable();
    return false;
  };
  EXPECT_TRUE(holds(reinterpret_cast<uintptr_t>(&local)));
  EXPECT_TRUE(holds(reinterpret_cast<uintptr_t>(&parse_proc_maps)));
}

// ---- /proc/PID/stat ----

TEST(ProcStat, FindsFieldsAfterAnAwkwardComm) {
  const char* text =
      "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 1 2 3 4 15 16 17 18 20 -5 7 0 327470 1 2 "
      "18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
  auto st = parse_proc_stat(text);
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_EQ(st->comm, "a) (b c");
  EXPECT_EQ(st->state, 'S');
  EXPECT_EQ(st->ppid, 1);
  EXPECT_EQ(st->pgrp, 4242);
  EXPECT_EQ(st->session, 4242);
  EXPECT_EQ(st->flags, 4194560u);
  EXPECT_EQ(st->utime, 15u);
  EXPECT_EQ(st->stime, 16u);
  EXPECT_EQ(st->cutime, 17);
  EXPECT_EQ(st->nice, -5);
  EXPECT_EQ(st->num_threads, 7);
  EXPECT_EQ(st->starttime, 327470u);
  EXPECT_FALSE(parse_proc_stat("4242 (x) S 1\n"));
  EXPECT_FALSE(parse_proc_stat("no parentheses"));
}

// ---- core layout ----

// Memory that is a pattern of its address, with pages that fail (a different reason each
// half) and reads that come back short, as /proc/PID/mem does at a failing page.
class FakeMemory : public MemoryReader {
 public:
  explicit FakeMemory(std::set<uint64_t> bad_pages) : bad_(std::move(bad_pages)) {}
  static uint8_t byte_at(uint64_t a) { return static_cast<uint8_t>((a >> 12) * 31 + a * 7); }
  Result<size_t> read(uint64_t addr, uint8_t* buf, size_t len) override {
    ++calls;
    size_t n = 0;
    while (n < len) {
      uint64_t page = (addr + n) & ~uint64_t{4095};
      if (bad_.count(page)) break;
      buf[n] = byte_at(addr + n);
      ++n;
      if (n == 3000 && len > 3000 && n < len) break;  // a short read now and then
    }
    if (n == 0) return fail(Errc::kIo, "EIO (Input/output error)");
    return n;
  }
  size_t calls = 0;

 private:
  std::set<uint64_t> bad_;
};

std::vector<CoreNote> sample_notes() {
  return {{"CORE", NT_PRSTATUS, Bytes(sizeof(elf_prstatus), 0x11)},
          {"CORE", NT_PRPSINFO, Bytes(sizeof(elf_prpsinfo), 0x22)},
          {"LINUX", 0x202, Bytes(1001, 0x33)},  // an odd size: padding must follow
          {"CORE", NT_AUXV, Bytes{}}};
}

TEST(CoreLayout, PlansEverythingBeforeEmittingAndReadsBackIndependently) {
  const uint64_t page = 4096;
  std::vector<CoreSegment> segs = {
      {0x10000, 3 * page, 3 * page, PF_R | PF_X},
      {0x20000, 2 * page, 0, 0},                      // no 'r': p_filesz 0
      {0x30000, 6 * page, 6 * page, PF_R | PF_W},     // pages 1-2 fail, 4 fails
      {0x7fff0000, 1 * page, 1 * page, PF_R},
  };
  auto layout = ElfCoreLayout::plan(EM_X86_64, sample_notes(), segs, page);
  ASSERT_TRUE(layout) << layout.error().to_string();
  EXPECT_EQ(layout->data_offset() % page, 0u);
  EXPECT_EQ(layout->file_size(), layout->data_offset() + (3 + 6 + 1) * page);
  EXPECT_EQ(layout->encode_prefix().size(), layout->data_offset());

  FakeMemory mem({0x31000, 0x32000, 0x34000});
  std::string out;
  EmitStats stats;
  size_t pieces = 0;
  Status st = layout->emit(mem, [&](ByteView b) -> Status {
    out.append(as_chars(b));
    ++pieces;
    return {};
  }, stats, nullptr);
  ASSERT_TRUE(st) << st.error().to_string();
  EXPECT_EQ(out.size(), layout->file_size());

  auto core = parse_elf_core(out);
  ASSERT_EQ(core.error, "");
  EXPECT_EQ(core.type, ET_CORE);
  EXPECT_EQ(core.machine, EM_X86_64);
  EXPECT_FALSE(core.extended_numbering);
  EXPECT_EQ(core.note_offset, layout->note_offset());
  ASSERT_EQ(core.notes.size(), 4u);
  auto notes = sample_notes();
  for (size_t i = 0; i < notes.size(); ++i) {
    EXPECT_EQ(core.notes[i].name, notes[i].name);
    EXPECT_EQ(core.notes[i].type, notes[i].type);
    EXPECT_EQ(core.notes[i].desc, std::string(notes[i].desc.begin(), notes[i].desc.end()));
  }
  ASSERT_EQ(core.loads.size(), segs.size());
  for (size_t i = 0; i < segs.size(); ++i) {
    const auto& l = core.loads[i];
    EXPECT_EQ(l.vaddr, segs[i].vaddr);
    EXPECT_EQ(l.memsz, segs[i].memsz);
    EXPECT_EQ(l.filesz, segs[i].filesz);
    EXPECT_EQ(l.flags, segs[i].flags);
    EXPECT_EQ(l.offset % page, 0u) << "segment " << i;
    EXPECT_EQ(l.align, page);
  }
  // Every readable byte is where the program header says; failed pages are zeros.
  for (const auto& l : core.loads)
    for (uint64_t a = l.vaddr; a < l.vaddr + l.filesz; a += 509) {
      uint64_t pg = a & ~(page - 1);
      uint8_t want = (pg == 0x31000 || pg == 0x32000 || pg == 0x34000) ? 0 : FakeMemory::byte_at(a);
      ASSERT_EQ(static_cast<uint8_t>(out[l.offset + (a - l.vaddr)]), want) << std::hex << a;
    }
  ASSERT_EQ(stats.unreadable.size(), 2u);  // adjacent failed pages merge
  EXPECT_EQ(stats.unreadable[0].start, 0x31000u);
  EXPECT_EQ(stats.unreadable[0].end, 0x33000u);
  EXPECT_EQ(stats.unreadable[0].reason, "EIO (Input/output error)");
  EXPECT_EQ(stats.unreadable[1].start, 0x34000u);
  EXPECT_EQ(stats.unreadable[1].end, 0x35000u);
  EXPECT_EQ(stats.bytes_zero_filled, 3 * page);
  EXPECT_EQ(stats.bytes_read, (3 + 6 + 1 - 3) * page);
}

TEST(CoreLayout, UsesExtendedNumberingBeyondPnXnum) {
  const uint64_t page = 4096;
  std::vector<CoreSegment> segs;
  for (uint64_t i = 0; i < 70000; ++i) segs.push_back({0x100000000 + i * 2 * page, page, 0, 0});
  segs.push_back({0x900000000, page, page, PF_R});
  auto layout = ElfCoreLayout::plan(EM_X86_64, sample_notes(), segs, page);
  ASSERT_TRUE(layout);
  FakeMemory mem({});
  std::string out;
  EmitStats stats;
  ASSERT_TRUE(layout->emit(mem, [&](ByteView b) -> Status {
    out.append(as_chars(b));
    return {};
  }, stats, nullptr));
  auto core = parse_elf_core(out);
  ASSERT_EQ(core.error, "");
  EXPECT_TRUE(core.extended_numbering);
  EXPECT_EQ(core.phnum, 70002u);
  ASSERT_EQ(core.loads.size(), 70001u);
  EXPECT_EQ(core.notes.size(), 4u);
  const auto* last = core.load_for(0x900000000, page);
  ASSERT_NE(last, nullptr);
  EXPECT_EQ(static_cast<uint8_t>(out[last->offset + 5]), FakeMemory::byte_at(0x900000005));
}

TEST(CoreLayout, RefusesSegmentsThatAreNotWholePages) {
  EXPECT_FALSE(ElfCoreLayout::plan(EM_X86_64, {}, {{0x1000, 100, 100, PF_R}}, 4096));
  EXPECT_FALSE(ElfCoreLayout::plan(EM_X86_64, {}, {{0x1001, 4096, 4096, PF_R}}, 4096));
  EXPECT_FALSE(ElfCoreLayout::plan(EM_X86_64, {}, {{0x1000, 8192, 4096, PF_R}}, 4096));
  EXPECT_FALSE(ElfCoreLayout::plan(EM_X86_64, {}, {}, 3000));
}

TEST(CoreLayout, StopsOnASinkFailure) {
  auto layout = ElfCoreLayout::plan(EM_X86_64, sample_notes(), {{0x1000, 4096, 4096, PF_R}}, 4096);
  ASSERT_TRUE(layout);
  FakeMemory mem({});
  EmitStats stats;
  auto st = layout->emit(mem, [](ByteView) -> Status { return fail(Errc::kIo, "disk full"); },
                         stats, nullptr);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().message(), "disk full");
}

// ---- notes ----

TEST(CoreNotes, FollowTheKernelOrder) {
  FrozenThread main_thread, other;
  main_thread.tid = 100;
  other.tid = 101;
  other.pending_signal = SIGUSR1;
  for (FrozenThread* t : {&main_thread, &other}) {
    t->gregs = Bytes(sizeof(elf_gregset_t), static_cast<uint8_t>(t->tid));
    for (const auto& spec : host_arch().extra_regsets)
      t->regsets.push_back({spec.note_type, spec.note_name, Bytes(16, 0x5a)});
  }
  ProcessNoteInfo proc;
  proc.pid = 100;
  proc.ppid = 1;
  proc.state = 'S';
  proc.comm = "python3-with-a-long-name";
  proc.args = "/usr/bin/python3 victim.py";
  auto maps = parse_proc_maps(kMaps);
  ASSERT_TRUE(maps);
  auto notes = build_core_notes(proc, {{&main_thread}, {&other}}, "AUXV", *maps, 4096);

  std::vector<std::pair<std::string, uint32_t>> want = {
      {"CORE", NT_PRSTATUS}, {"CORE", NT_PRPSINFO}, {"CORE", NT_AUXV}, {"CORE", NT_FILE}};
  for (const auto& spec : host_arch().extra_regsets) want.push_back({spec.note_name, spec.note_type});
  want.push_back({"CORE", NT_PRSTATUS});
  for (const auto& spec : host_arch().extra_regsets) want.push_back({spec.note_name, spec.note_type});
  ASSERT_EQ(notes.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(notes[i].name, want[i].first) << i;
    EXPECT_EQ(notes[i].type, want[i].second) << i;
  }

  elf_prstatus st;
  ASSERT_EQ(notes[0].desc.size(), sizeof st);
  std::memcpy(&st, notes[0].desc.data(), sizeof st);
  EXPECT_EQ(st.pr_pid, 100);
  EXPECT_EQ(st.pr_ppid, 1);
  EXPECT_EQ(st.pr_fpvalid, 1);
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(&st.pr_reg)[0], 100);
  std::memcpy(&st, notes[4 + host_arch().extra_regsets.size()].desc.data(), sizeof st);
  EXPECT_EQ(st.pr_pid, 101);
  EXPECT_EQ(st.pr_cursig, SIGUSR1);

  elf_prpsinfo ps;
  ASSERT_EQ(notes[1].desc.size(), sizeof ps);
  std::memcpy(&ps, notes[1].desc.data(), sizeof ps);
  EXPECT_EQ(std::string(ps.pr_fname), "python3-with-a-");  // 15 characters and a NUL
  EXPECT_EQ(std::string(ps.pr_psargs), "/usr/bin/python3 victim.py");
  EXPECT_EQ(ps.pr_sname, 'S');
  EXPECT_EQ(ps.pr_state, 1);

  EXPECT_EQ(std::string(notes[2].desc.begin(), notes[2].desc.end()), "AUXV");

  // NT_FILE: count, page size, triples, names; the named anonymous mappings are left out.
  const Bytes& f = notes[3].desc;
  auto word = [&](size_t i) { return load_le<uint64_t>(f.data() + 8 * i); };
  ASSERT_EQ(word(0), 3u);
  EXPECT_EQ(word(1), 4096u);
  EXPECT_EQ(word(2), 0x400000u);
  EXPECT_EQ(word(3), 0x41f000u);
  EXPECT_EQ(word(4), 0u);
  EXPECT_EQ(word(8), 0x7f60c0001000u);
  EXPECT_EQ(word(10), 0x1au);  // offset in pages
  std::string names(f.begin() + 8 * 11, f.end());
  EXPECT_EQ(names, std::string("/usr/bin/python3.11\0/dev/zero (deleted)\0/opt/with space/lib x.so\0", 65));
}

// ---- build-id ----

TEST(BuildId, MatchesReadelf) {
  auto r = mlfx::testing::run("readelf -n /usr/bin/python3 | sed -n 's/.*Build ID: //p'");
  if (r.exit_code != 0 || r.output.empty()) GTEST_SKIP() << "readelf not available";
  std::string want = r.output.substr(0, r.output.find('\n'));
  auto f = File::open_read("/usr/bin/python3");
  ASSERT_TRUE(f);
  auto id = read_gnu_build_id(*f);
  ASSERT_TRUE(id) << id.error().to_string();
  ASSERT_TRUE(id->has_value());
  EXPECT_EQ(**id, want);

  mlfx::testing::TempDir dir;
  mlfx::testing::write_file(dir / "not-elf", std::string(4096, 'x'));
  auto g = File::open_read(dir / "not-elf");
  ASSERT_TRUE(g);
  auto none = read_gnu_build_id(*g);
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
}

// ---- a real target: a forked child ----

// The child: a buffer of known bytes, threads that sleep, one that spins, and one that keeps
// creating and ending threads (so threads appear and vanish while the freezer works).
struct Shared {
  std::atomic<uint64_t> counter{0};
  std::atomic<uint64_t> buffer_addr{0};
  std::atomic<uint64_t> dontdump_addr{0};
  std::atomic<int> ready{0};
};

[[noreturn]] void child_main(Shared* shared) {
  // Its own mapping, so one PT_LOAD holds it all (a static buffer may straddle .data and .bss).
  auto* buffer = static_cast<uint8_t*>(
      mmap(nullptr, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) + 100;
  for (size_t i = 0; i < 3 * 4096 + 123; ++i) buffer[i] = static_cast<uint8_t>(i * 13 + 7);
  shared->buffer_addr = reinterpret_cast<uintptr_t>(buffer);
  // Memory the process asked to keep out of core dumps.
  void* secret = mmap(nullptr, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  std::memset(secret, 0x5e, 8 * 4096);
  madvise(secret, 8 * 4096, MADV_DONTDUMP);
  shared->dontdump_addr = reinterpret_cast<uintptr_t>(secret);
  for (int i = 0; i < 3; ++i)
    std::thread([] {
      while (true) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }).detach();
  std::thread([shared] {
    while (true) shared->counter.fetch_add(1);
  }).detach();
  std::thread([] {
    while (true) std::thread([] {}).join();
  }).detach();
  shared->ready = 1;
  while (true) pause();
}

class ForkedTarget : public ::testing::Test {
 protected:
  void SetUp() override {
    void* p = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(p, MAP_FAILED);
    shared_ = new (p) Shared;
    pid_ = fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a crashed test
      child_main(shared_);
    }
    for (int i = 0; i < 500 && !shared_->ready; ++i) usleep(10'000);
    ASSERT_TRUE(shared_->ready);
  }
  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    munmap(shared_, sizeof(Shared));
  }
  char state() {
    auto s = read_proc_file(proc_path(pid_, "stat"));
    return s ? parse_proc_stat(*s)->state : '?';
  }
  Shared* shared_ = nullptr;
  pid_t pid_ = -1;
};

TEST_F(ForkedTarget, FreezesEveryThreadCapturesAndThaws) {
  for (int round = 0; round < 5; ++round) {
    auto cap = ProcessCapture::freeze({pid_});
    ASSERT_TRUE(cap) << cap.error().to_string();
    // Frozen: no thread runs, none is created, and the list is exactly what was frozen.
    uint64_t c1 = shared_->counter;
    usleep(30'000);
    EXPECT_EQ(shared_->counter.load(), c1) << "a thread kept running";
    auto tids = list_threads(pid_);
    ASSERT_TRUE(tids);
    std::string core;
    ASSERT_TRUE(cap->write_core([&](ByteView b) -> Status {
      core.append(as_chars(b));
      return {};
    }, nullptr));
    ASSERT_TRUE(cap->thaw());
    json::Json ctx = cap->context();
    std::set<pid_t> frozen;
    for (const auto& t : ctx["threads"]) frozen.insert(t["tid"].get<pid_t>());
    EXPECT_EQ(frozen, std::set<pid_t>(tids->begin(), tids->end()));
    EXPECT_EQ(ctx["threads"][0]["tid"], pid_) << "the main thread comes first";

    auto view = parse_elf_core(core);
    ASSERT_EQ(view.error, "");
    EXPECT_EQ(view.machine, host_arch().elf_machine);
    size_t prstatus = 0;
    for (const auto& n : view.notes) prstatus += n.type == NT_PRSTATUS;
    EXPECT_EQ(prstatus, frozen.size());
    const uint64_t addr = shared_->buffer_addr;
    const auto* load = view.load_for(addr, 3 * 4096 + 123);
    ASSERT_NE(load, nullptr);
    for (size_t i = 0; i < 3 * 4096 + 123; ++i)
      ASSERT_EQ(static_cast<uint8_t>(core[load->offset + (addr - load->vaddr) + i]),
                static_cast<uint8_t>(i * 13 + 7)) << i;

    // MADV_DONTDUMP memory is left out (p_filesz 0), as kernel cores do, and listed.
    const uint64_t secret = shared_->dontdump_addr;
    bool found = false;
    for (const auto& l : view.loads)
      if (l.vaddr == secret) {
        found = true;
        EXPECT_EQ(l.filesz, 0u);
        EXPECT_EQ(l.memsz, 8 * 4096u);
      }
    EXPECT_TRUE(found);
    bool listed = false;
    for (const auto& u : ctx["unreadable"])
      if (u["start"] == secret && u["reason"].get<std::string>().find("MADV_DONTDUMP") != std::string::npos)
        listed = true;
    EXPECT_TRUE(listed) << ctx["unreadable"].dump();

    // Thawed: running again, not left stopped.
    c1 = shared_->counter;
    usleep(30'000);
    EXPECT_GT(shared_->counter.load(), c1);
    EXPECT_NE(state(), 't');
    EXPECT_NE(state(), 'T');
  }
}

TEST_F(ForkedTarget, DestructorThawsWithoutAnExplicitThaw) {
  {
    auto cap = ProcessCapture::freeze({pid_});
    ASSERT_TRUE(cap) << cap.error().to_string();
  }
  uint64_t c1 = shared_->counter;
  usleep(30'000);
  EXPECT_GT(shared_->counter.load(), c1);
}

TEST(ProcessCaptureChecks, RefusesWhatCannotBeCaptured) {
  auto gone = ProcessCapture::freeze({0x3fffffff});
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().code(), Errc::kNotFound);
  EXPECT_NE(gone.error().message().find("no such process"), std::string::npos);

  auto self = ProcessCapture::freeze({getpid()});
  ASSERT_FALSE(self);
  EXPECT_NE(self.error().message().find("itself"), std::string::npos);

  auto kthread = ProcessCapture::freeze({2});  // kthreadd
  ASSERT_FALSE(kthread);
  EXPECT_NE(kthread.error().message().find("kernel thread"), std::string::npos) << kthread.error().to_string();

  std::atomic<bool> stop{false};
  std::atomic<pid_t> live{0};
  std::thread t2([&] {
    live = gettid();
    while (!stop) usleep(1000);
  });
  while (!live) usleep(100);
  auto thread = ProcessCapture::freeze({live});
  stop = true;
  t2.join();
  ASSERT_FALSE(thread);
  EXPECT_NE(thread.error().message().find("is a thread of process " + std::to_string(getpid())),
            std::string::npos) << thread.error().to_string();
}

}  // namespace
}  // namespace mlfx::agent::process
