#include "core_notes.h"

#include <elf.h>
#include <sys/procfs.h>
#include <unistd.h>

#include <cstring>

namespace mlfx::agent::process {
namespace {

timeval ticks_to_timeval(uint64_t ticks) {
  static const long hz = sysconf(_SC_CLK_TCK) > 0 ? sysconf(_SC_CLK_TCK) : 100;
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ticks / static_cast<uint64_t>(hz));
  tv.tv_usec = static_cast<suseconds_t>(ticks % static_cast<uint64_t>(hz) * 1000000 / static_cast<uint64_t>(hz));
  return tv;
}

template <class T>
Bytes struct_bytes(const T& v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  return Bytes(p, p + sizeof v);
}

void append_word(Bytes& out, uint64_t v) {
  // NT_FILE uses the target's `long`: 8 bytes on both supported architectures.
  uint8_t b[8];
  std::memcpy(b, &v, 8);
  out.insert(out.end(), b, b + 8);
}

}  // namespace

Bytes make_prstatus(const ProcessNoteInfo& proc, const ThreadNoteInfo& t) {
  elf_prstatus st;
  std::memset(&st, 0, sizeof st);
  st.pr_info.si_signo = t.thread->pending_signal;
  st.pr_cursig = static_cast<short>(t.thread->pending_signal);
  st.pr_sigpend = t.sigpend;
  st.pr_sighold = t.sighold;
  st.pr_pid = t.thread->tid;
  st.pr_ppid = proc.ppid;
  st.pr_pgrp = proc.pgrp;
  st.pr_sid = proc.sid;
  st.pr_utime = ticks_to_timeval(t.utime);
  st.pr_stime = ticks_to_timeval(t.stime);
  st.pr_cutime = ticks_to_timeval(proc.cutime);
  st.pr_cstime = ticks_to_timeval(proc.cstime);
  std::memcpy(&st.pr_reg, t.thread->gregs.data(), std::min(sizeof st.pr_reg, t.thread->gregs.size()));
  st.pr_fpvalid = 0;
  for (const auto& r : t.thread->regsets)
    if (r.note_type == NT_PRFPREG) st.pr_fpvalid = 1;
  return struct_bytes(st);
}

Bytes make_prpsinfo(const ProcessNoteInfo& proc) {
  elf_prpsinfo ps;
  std::memset(&ps, 0, sizeof ps);
  // The kernel's numbering: index of the state letter in "RSDTZW", '.' beyond.
  static const char kStates[] = "RSDTZW";
  const char* at = std::strchr(kStates, proc.state);
  ps.pr_state = static_cast<char>(at && proc.state ? at - kStates : 0);
  ps.pr_sname = proc.state;
  ps.pr_zomb = proc.state == 'Z';
  ps.pr_nice = static_cast<char>(proc.nice);
  ps.pr_flag = proc.flags;
  ps.pr_uid = proc.uid;
  ps.pr_gid = proc.gid;
  ps.pr_pid = proc.pid;
  ps.pr_ppid = proc.ppid;
  ps.pr_pgrp = proc.pgrp;
  ps.pr_sid = proc.sid;
  std::strncpy(ps.pr_fname, proc.comm.c_str(), sizeof ps.pr_fname - 1);
  std::strncpy(ps.pr_psargs, proc.args.c_str(), sizeof ps.pr_psargs - 1);
  return struct_bytes(ps);
}

Bytes make_nt_file(const std::vector<MapEntry>& maps, uint64_t page_size) {
  Bytes out;
  uint64_t count = 0;
  for (const auto& m : maps) count += m.file_backed();
  append_word(out, count);
  append_word(out, page_size);
  for (const auto& m : maps) {
    if (!m.file_backed()) continue;
    append_word(out, m.start);
    append_word(out, m.end);
    append_word(out, m.offset / page_size);
  }
  for (const auto& m : maps) {
    if (!m.file_backed()) continue;
    out.insert(out.end(), m.path.begin(), m.path.end());
    out.push_back(0);
  }
  return out;
}

std::vector<CoreNote> build_core_notes(const ProcessNoteInfo& proc,
                                       const std::vector<ThreadNoteInfo>& threads,
                                       const std::string& auxv, const std::vector<MapEntry>& maps,
                                       uint64_t page_size) {
  std::vector<CoreNote> notes;
  auto add_thread_regsets = [&](const ThreadNoteInfo& t) {
    for (const auto& r : t.thread->regsets) notes.push_back({r.note_name, r.note_type, r.data});
  };
  for (size_t i = 0; i < threads.size(); ++i) {
    notes.push_back({"CORE", NT_PRSTATUS, make_prstatus(proc, threads[i])});
    if (i == 0) {
      notes.push_back({"CORE", NT_PRPSINFO, make_prpsinfo(proc)});
      notes.push_back({"CORE", NT_AUXV, Bytes(auxv.begin(), auxv.end())});
      notes.push_back({"CORE", NT_FILE, make_nt_file(maps, page_size)});
    }
    add_thread_regsets(threads[i]);
  }
  return notes;
}

}  // namespace mlfx::agent::process
