// SPDX-License-Identifier: GPL-2.0
/* The agent's eBPF triggers: programs in the kernel that notice, as it happens, that an armed
 * process is about to die of a fatal signal, is chosen by the OOM killer, or is being tampered
 * with (ptrace attach, a write into its memory), and tell the daemon through a ring buffer
 * (struct mlfx_trigger_event, trigger_event.h). The loader (bpf_triggers.cc) decides which
 * programs this kernel can run; a hook it lacks leaves that trigger unavailable, the rest armed.
 *
 * Kernel memory is read only through BTF-typed pointers (fentry, tp_btf, bpf_get_current_task_btf)
 * and never with bpf_probe_read_kernel: a kernel locked down for confidentiality refuses that
 * helper (and BPF_CORE_READ, which uses it), but still allows the verifier-checked direct reads.
 *
 * Where a hook has a typed (BTF) form and a plain tracepoint form, both are loaded and the loader
 * attaches the plain one only when the typed one cannot be attached. The plain forms name the
 * target by a thread id; armed_threads maps the thread ids of armed processes to their tgid. */
#include "vmlinux.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "trigger_event.h"

char LICENSE[] SEC("license") = "GPL";

/* Set by the loader before the programs are loaded. */
const volatile __u32 agent_tgid = 0;     /* the agent: what it does itself is never reported */
const volatile __u32 module_load_on = 0; /* report module loads (not per target) */
const volatile __u32 exec_on = 0;        /* report every exec (the daemon finds new targets) */

/* Events the ring buffer had no room for (a storm the daemon does not drain fast enough). */
__u64 lost_events = 0;

#define MAX_ARMED 1024
#define MAX_ARMED_THREADS 16384

/* tgid -> mask of enum mlfx_event_kind; written by the daemon (arm/disarm), forgotten here when
 * the process exits (so a reused pid is never armed by accident). */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, MAX_ARMED);
  __type(key, __u32);
  __type(value, __u32);
} armed SEC(".maps");

/* tid -> tgid for the threads of armed processes other than their leader: filled by the loader
 * when it arms (the threads already running) and by sched_process_fork (new ones). */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, MAX_ARMED_THREADS);
  __type(key, __u32);
  __type(value, __u32);
} armed_threads SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* tid -> file descriptor of an executable mmap in flight (from its entry to its exit, where the
 * address is known: the daemon finds the file by address, the descriptor may be closed by then). */
struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, 4096);
  __type(key, __u32);
  __type(value, __u32);
} exec_mmaps SEC(".maps");

/* bpf_rdonly_cast (6.2+): a number known to be a kernel address, made a readable (untrusted)
 * pointer of a BTF type: how a void * (file->private_data) or a pointer the verifier marked as
 * maybe-not-a-pointer is read without bpf_probe_read_kernel. Weak: on an older kernel only the
 * programs that call it are refused (and reported unavailable), not the whole object. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/* Signal numbers (asm-generic, x86 and arm64 alike); vmlinux.h carries no macros. */
#define SIG_ILL 4
#define SIG_ABRT 6
#define SIG_BUS 7
#define SIG_FPE 8
#define SIG_SEGV 11
#define SI_USER_CODE 0       /* SEND_SIG_NOINFO */
#define SI_KERNEL_CODE 0x80  /* SEND_SIG_PRIV */
#define PTRACE_ATTACH_REQ 16
#define PTRACE_SEIZE_REQ 0x4206

static __always_inline int is_fatal_signal(int sig) {
  return sig == SIG_SEGV || sig == SIG_BUS || sig == SIG_ILL || sig == SIG_FPE || sig == SIG_ABRT;
}

static __always_inline __u32 armed_mask(__u32 tgid) {
  __u32 *mask = bpf_map_lookup_elem(&armed, &tgid);
  return mask ? *mask : 0;
}

/* The armed process a thread id belongs to (0: none). A syscall's pid may name any thread. */
static __always_inline __u32 armed_tgid_of_tid(__u32 tid) {
  if (armed_mask(tid)) return tid;
  __u32 *tgid = bpf_map_lookup_elem(&armed_threads, &tid);
  return tgid ? *tgid : 0;
}

static __always_inline int caused_by_agent(void) {
  return agent_tgid != 0 && (bpf_get_current_pid_tgid() >> 32) == agent_tgid;
}

/* Byte by byte: the verifier allows only element-sized reads of a char array behind a BTF pointer. */
static __always_inline void copy_comm(char *dst, const struct task_struct *task) {
#pragma unroll
  for (int i = 0; i < MLFX_COMM_LEN; i++) dst[i] = task->comm[i];
}

/* A zeroed event of this kind with the time and the current task as actor; NULL when full. */
static __always_inline struct mlfx_trigger_event *new_event(__u32 kind) {
  struct mlfx_trigger_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
  if (!e) {
    __sync_fetch_and_add(&lost_events, 1);
    return 0;
  }
  __builtin_memset(e, 0, sizeof(*e));
  e->ktime_ns = bpf_ktime_get_ns();
  e->kind = kind;
  __u64 pid_tgid = bpf_get_current_pid_tgid();
  e->actor_tgid = pid_tgid >> 32;
  e->actor_tid = (__u32)pid_tgid;
  bpf_get_current_comm(e->actor_comm, sizeof(e->actor_comm));
  return e;
}

static __always_inline void set_kstack(void *ctx, struct mlfx_trigger_event *e) {
  long n = bpf_get_stack(ctx, e->kstack, sizeof(e->kstack), 0);
  e->kstack_bytes = n > 0 ? n : 0;
}

/* The current task as the target (the event concerns the task that runs the hook). */
static __always_inline void set_target_current(struct mlfx_trigger_event *e) {
  e->target_tgid = e->actor_tgid;
  e->target_tid = e->actor_tid;
  __builtin_memcpy(e->target_comm, e->actor_comm, MLFX_COMM_LEN);
}

static __always_inline void set_target_task(struct mlfx_trigger_event *e, struct task_struct *task) {
  e->target_tgid = task->tgid;
  e->target_tid = task->pid;
  copy_comm(e->target_comm, task);
}

/* ---- fatal signal ---------------------------------------------------------------------------- */

/* The handler a signal would run; one constant index per signal (the verifier refuses a
 * variable offset into a BTF object). SIG_DFL (0): the default action, which kills. */
static __always_inline unsigned long signal_handler(struct task_struct *task, int sig) {
  struct sighand_struct *sighand = task->sighand;
  switch (sig) {
    case SIG_ILL: return (unsigned long)sighand->action[SIG_ILL - 1].sa.sa_handler;
    case SIG_ABRT: return (unsigned long)sighand->action[SIG_ABRT - 1].sa.sa_handler;
    case SIG_BUS: return (unsigned long)sighand->action[SIG_BUS - 1].sa.sa_handler;
    case SIG_FPE: return (unsigned long)sighand->action[SIG_FPE - 1].sa.sa_handler;
    case SIG_SEGV: return (unsigned long)sighand->action[SIG_SEGV - 1].sa.sa_handler;
  }
  return 1;
}

/* Typed form: the receiving task itself, its tgid and its handler. Reported only when the
 * signal was queued (result TRACE_SIGNAL_DELIVERED) and its action is the default one: a handled
 * SIGSEGV (a JVM, Python's faulthandler before it re-raises) kills nothing. */
SEC("tp_btf/signal_generate")
int BPF_PROG(fatal_signal_btf, int sig, struct kernel_siginfo *info, struct task_struct *task, int type,
             int result) {
  if (!is_fatal_signal(sig) || result != TRACE_SIGNAL_DELIVERED) return 0;
  if (!(armed_mask(task->tgid) & MLFX_EV_FATAL_SIGNAL) || caused_by_agent()) return 0;
  if (signal_handler(task, sig) != 0) return 0;
  struct mlfx_trigger_event *e = new_event(MLFX_EV_FATAL_SIGNAL);
  if (!e) return 0;
  set_target_task(e, task);
  e->signal = sig;
  /* info is 0 (SEND_SIG_NOINFO) or 1 (SEND_SIG_PRIV) without a siginfo; the verifier treats it
   * as a number for that reason, bpf_rdonly_cast makes it readable again. */
  unsigned long info_value = (unsigned long)info;
  if (info_value <= 1) {
    e->si_code = info_value ? SI_KERNEL_CODE : SI_USER_CODE;
  } else {
    struct kernel_siginfo *si = bpf_rdonly_cast(info, bpf_core_type_id_kernel(struct kernel_siginfo));
    e->si_code = si->si_code;
    if (e->si_code > 0 && sig != SIG_ABRT) e->address = (__u64)si->_sifields._sigfault._addr;
  }
  set_kstack(ctx, e);
  bpf_ringbuf_submit(e, 0);
  return 0;
}

struct signal_generate_args {
  __u64 common;
  int sig;
  int errno_value;
  int code;
  char comm[16];
  int pid; /* the receiving thread */
  int group;
  int result;
};

/* Plain form: a thread id only (resolved through armed_threads) and no handler check. */
SEC("tp/signal/signal_generate")
int fatal_signal_tp(struct signal_generate_args *args) {
  int sig = args->sig;
  if (!is_fatal_signal(sig) || args->result != TRACE_SIGNAL_DELIVERED) return 0;
  __u32 tgid = armed_tgid_of_tid(args->pid);
  if (!(armed_mask(tgid) & MLFX_EV_FATAL_SIGNAL) || caused_by_agent()) return 0;
  struct mlfx_trigger_event *e = new_event(MLFX_EV_FATAL_SIGNAL);
  if (!e) return 0;
  e->target_tgid = tgid;
  e->target_tid = args->pid;
#pragma unroll
  for (int i = 0; i < MLFX_COMM_LEN; i++) e->target_comm[i] = args->comm[i];
  e->signal = sig;
  e->si_code = args->code;
  set_kstack(args, e);
  bpf_ringbuf_submit(e, 0);
  return 0;
}

/* ---- OOM kill -------------------------------------------------------------------------------- */

static __always_inline void report_oom(void *ctx, __u32 tgid, struct task_struct *victim, __u32 tid) {
  if (!(armed_mask(tgid) & MLFX_EV_OOM_KILL)) return;
  struct mlfx_trigger_event *e = new_event(MLFX_EV_OOM_KILL);
  if (!e) return;
  if (victim) {
    set_target_task(e, victim);
  } else {
    e->target_tgid = tgid;
    e->target_tid = tid;
  }
  set_kstack(ctx, e);
  bpf_ringbuf_submit(e, 0);
}

/* Typed form: mark_oom_victim(struct task_struct *tsk), the task the OOM killer chose. */
SEC("fentry/mark_oom_victim")
int BPF_PROG(oom_kill_fentry, struct task_struct *victim) {
  report_oom(ctx, victim->tgid, victim, 0);
  return 0;
}

struct mark_victim_args {
  __u64 common;
  int pid;
};

SEC("tp/oom/mark_victim")
int oom_kill_tp(struct mark_victim_args *args) {
  report_oom(args, armed_tgid_of_tid(args->pid), 0, args->pid);
  return 0;
}

/* ---- ptrace attach --------------------------------------------------------------------------- */

static __always_inline void report_ptrace(void *ctx, __u32 tgid, struct task_struct *task, __u32 tid,
                                          long request) {
  if (!(armed_mask(tgid) & MLFX_EV_PTRACE_ATTACH) || caused_by_agent()) return;
  struct mlfx_trigger_event *e = new_event(MLFX_EV_PTRACE_ATTACH);
  if (!e) return;
  if (task) {
    set_target_task(e, task);
  } else {
    e->target_tgid = tgid;
    e->target_tid = tid;
  }
  e->detail = request;
  set_kstack(ctx, e);
  bpf_ringbuf_submit(e, 0);
}

/* Typed form: ptrace_attach(task, request, addr, flags) runs for PTRACE_ATTACH and PTRACE_SEIZE
 * with the thread already looked up, before the permission check (an attempt is reported). */
SEC("fentry/ptrace_attach")
int BPF_PROG(ptrace_attach_fentry, struct task_struct *task, long request) {
  report_ptrace(ctx, task->tgid, task, 0, request);
  return 0;
}

struct sys_enter_ptrace_args {
  __u64 common;
  __s32 syscall_nr;
  __u32 pad;
  long request;
  long pid;
  unsigned long addr;
  unsigned long data;
};

SEC("tp/syscalls/sys_enter_ptrace")
int ptrace_attach_tp(struct sys_enter_ptrace_args *args) {
  long request = args->request;
  if (request != PTRACE_ATTACH_REQ && request != PTRACE_SEIZE_REQ) return 0;
  __u32 tid = args->pid;
  report_ptrace(args, armed_tgid_of_tid(tid), 0, tid, request);
  return 0;
}

/* ---- memory write ---------------------------------------------------------------------------- */

struct sys_enter_process_vm_writev_args {
  __u64 common;
  __s32 syscall_nr;
  __u32 pad;
  long pid;
  const struct iovec *lvec;
  unsigned long liovcnt;
  const struct iovec *rvec;
  unsigned long riovcnt;
  unsigned long flags;
};

SEC("tp/syscalls/sys_enter_process_vm_writev")
int memory_write_vm_writev(struct sys_enter_process_vm_writev_args *args) {
  __u32 tid = args->pid;
  __u32 tgid = armed_tgid_of_tid(tid);
  if (!(armed_mask(tgid) & MLFX_EV_MEMORY_WRITE) || caused_by_agent()) return 0;
  struct mlfx_trigger_event *e = new_event(MLFX_EV_MEMORY_WRITE);
  if (!e) return 0;
  e->target_tgid = tgid;
  e->target_tid = tid;
  e->detail = MLFX_WRITE_PROCESS_VM_WRITEV;
  struct iovec first = {};
  if (args->riovcnt > 0 && bpf_probe_read_user(&first, sizeof(first), args->rvec) == 0)
    e->address = (__u64)first.iov_base; /* where the first remote piece goes */
  set_kstack(args, e);
  bpf_ringbuf_submit(e, 0);
  return 0;
}

/* The process whose memory a /proc/PID/mem file opens: file->private_data is its mm, and the mm's
 * owner (CONFIG_MEMCG) its thread group. NULL when unknown. */
static __always_inline struct task_struct *proc_mem_owner(struct file *file) {
  if (!bpf_core_field_exists(struct mm_struct, owner)) return 0;
  struct mm_struct *mm = bpf_rdonly_cast(file->private_data, bpf_core_type_id_kernel(struct mm_struct));
  if (!mm) return 0;
  return mm->owner;
}

static __always_inline void report_proc_mem_write(void *ctx, struct file *file, __u64 address) {
  struct task_struct *owner = proc_mem_owner(file);
  if (!owner) return;
  if (!(armed_mask(owner->tgid) & MLFX_EV_MEMORY_WRITE) || caused_by_agent()) return;
  struct mlfx_trigger_event *e = new_event(MLFX_EV_MEMORY_WRITE);
  if (!e) return;
  set_target_task(e, owner);
  e->detail = MLFX_WRITE_PROC_PID_MEM;
  e->address = address;
  set_kstack(ctx, e);
  bpf_ringbuf_submit(e, 0);
}

/* Typed form: mem_write(file, buf, count, ppos), /proc/PID/mem's write; *ppos is the address. */
SEC("fentry/mem_write")
int BPF_PROG(memory_write_proc_mem, struct file *file, const char *buf, size_t count, loff_t *ppos) {
  report_proc_mem_write(ctx, file, *ppos);
  return 0;
}

/* Plain form, for kernels without BPF trampolines: the write syscalls, whose descriptor is looked
 * up in the writer's file table and kept when it is a /proc/PID/mem file open for writing (its
 * llseek is mem_lseek, a global and so unique symbol). Every write in the system runs these, so
 * they return at once unless an armed process watches memory writes (set by the loader).
 * Writes submitted through io_uring do not pass here. */
__u32 watch_proc_mem_writes = 0;
extern const void mem_lseek __ksym __weak;
#define FMODE_WRITE_BIT 0x2

struct syscall_enter_args {
  __u64 common;
  __s32 syscall_nr;
  __u32 pad;
  __u64 args[6];
};

/* files->fdt->fd[fd] of the current process: the slot holds a pointer the verifier cannot type,
 * so it is read as the first member of a list_head and cast to a file. */
static __always_inline struct file *current_file(__u64 fd) {
  struct task_struct *task = bpf_get_current_task_btf();
  struct files_struct *files = task->files;
  if (!files) return 0;
  struct fdtable *fdt = files->fdt;
  if (!fdt || fd >= fdt->max_fds) return 0;
  unsigned long slot = (unsigned long)fdt->fd + fd * sizeof(void *);
  struct list_head *cell = bpf_rdonly_cast((void *)slot, bpf_core_type_id_kernel(struct list_head));
  return bpf_rdonly_cast(cell->next, bpf_core_type_id_kernel(struct file));
}

static __always_inline struct file *proc_mem_file_for_writing(__u64 fd) {
  if (!watch_proc_mem_writes || !&mem_lseek) return 0;
  struct file *file = current_file(fd);
  if (!file || !(file->f_mode & FMODE_WRITE_BIT)) return 0;
  const struct file_operations *fops = file->f_op;
  if (!fops || (unsigned long)fops->llseek != (unsigned long)&mem_lseek) return 0;
  return file;
}

/* write/writev: at the file position. */
static __always_inline int proc_mem_write_at_fpos(struct syscall_enter_args *args) {
  struct file *file = proc_mem_file_for_writing(args->args[0]);
  if (file) report_proc_mem_write(args, file, file->f_pos);
  return 0;
}

/* pwrite64/pwritev/pwritev2: at the position argument (pwritev2: -1 is the file position). */
static __always_inline int proc_mem_write_at_pos(struct syscall_enter_args *args) {
  struct file *file = proc_mem_file_for_writing(args->args[0]);
  if (!file) return 0;
  __s64 pos = args->args[3];
  report_proc_mem_write(args, file, pos == -1 ? file->f_pos : pos);
  return 0;
}

SEC("tp/syscalls/sys_enter_write")
int proc_mem_write(struct syscall_enter_args *args) { return proc_mem_write_at_fpos(args); }
SEC("tp/syscalls/sys_enter_writev")
int proc_mem_writev(struct syscall_enter_args *args) { return proc_mem_write_at_fpos(args); }
SEC("tp/syscalls/sys_enter_pwrite64")
int proc_mem_pwrite64(struct syscall_enter_args *args) { return proc_mem_write_at_pos(args); }
SEC("tp/syscalls/sys_enter_pwritev")
int proc_mem_pwritev(struct syscall_enter_args *args) { return proc_mem_write_at_pos(args); }
SEC("tp/syscalls/sys_enter_pwritev2")
int proc_mem_pwritev2(struct syscall_enter_args *args) { return proc_mem_write_at_pos(args); }

/* ---- executable file mappings (library injection) -------------------------------------------- */

#define PROT_EXEC_FLAG 0x4

/* mmap(addr, len, prot, flags, fd, off) with PROT_EXEC of a file by an armed process: how a
 * library comes in, dlopen or injected. Noted at entry, reported at exit with the address it got;
 * the daemon finds the mapping's file in /proc/PID/maps and judges (a memfd, a deleted file, a
 * world-writable directory). */
SEC("tp/syscalls/sys_enter_mmap")
int exec_mapping_enter(struct syscall_enter_args *args) {
  __u64 pid_tgid = bpf_get_current_pid_tgid();
  __u32 tgid = pid_tgid >> 32, tid = (__u32)pid_tgid;
  if (!(armed_mask(tgid) & MLFX_EV_EXEC_MAPPING) || caused_by_agent()) return 0;
  if (!(args->args[2] & PROT_EXEC_FLAG) || (__s64)args->args[4] < 0) return 0;
  __u32 fd = (__u32)args->args[4];
  bpf_map_update_elem(&exec_mmaps, &tid, &fd, BPF_ANY);
  return 0;
}

struct syscall_exit_args {
  __u64 common;
  __s32 syscall_nr;
  __u32 pad;
  __s64 ret;
};

SEC("tp/syscalls/sys_exit_mmap")
int exec_mapping_exit(struct syscall_exit_args *args) {
  __u32 tid = (__u32)bpf_get_current_pid_tgid();
  __u32 *fd = bpf_map_lookup_elem(&exec_mmaps, &tid);
  if (!fd) return 0;
  __u32 mapped_fd = *fd;
  bpf_map_delete_elem(&exec_mmaps, &tid);
  if (args->ret < 0 && args->ret > -4096) return 0; /* it failed */
  struct mlfx_trigger_event *e = new_event(MLFX_EV_EXEC_MAPPING);
  if (!e) return 0;
  set_target_current(e);
  e->detail = mapped_fd;
  e->address = (__u64)args->ret;
  set_kstack(args, e);
  bpf_ringbuf_submit(e, 0);
  return 0;
}

/* ---- module load ----------------------------------------------------------------------------- */

/* trace_module_load(mod) runs in the loader's context once the module is in. */
SEC("tp_btf/module_load")
int BPF_PROG(module_load_btf, struct module *mod) {
  if (!module_load_on || caused_by_agent()) return 0;
  struct mlfx_trigger_event *e = new_event(MLFX_EV_MODULE_LOAD);
  if (!e) return 0;
#pragma unroll
  for (int i = 0; i < sizeof(e->name) - 1; i++) e->name[i] = mod->name[i];
  set_kstack(ctx, e);
  bpf_ringbuf_submit(e, 0);
  return 0;
}

/* ---- process life: exec, new threads, exit --------------------------------------------------- */

/* A process exec'd (current is it, with its new comm): the daemon checks whether it is a target. */
SEC("tp/sched/sched_process_exec")
int exec_tp(void *ctx) {
  __u32 tgid = bpf_get_current_pid_tgid() >> 32;
  if (!exec_on && !(armed_mask(tgid) & MLFX_EV_EXEC)) return 0;
  struct mlfx_trigger_event *e = new_event(MLFX_EV_EXEC);
  if (!e) return 0;
  set_target_current(e);
  bpf_ringbuf_submit(e, 0);
  return 0;
}

/* A new thread of an armed process: remember its tid so that the plain hooks can resolve it. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(thread_start, struct task_struct *parent, struct task_struct *child) {
  __u32 tgid = child->tgid, tid = child->pid;
  if (tid != tgid && armed_mask(tgid)) bpf_map_update_elem(&armed_threads, &tid, &tgid, BPF_ANY);
  return 0;
}

/* Every exiting thread; the process is gone when the last one exits (signal->live reached 0). */
SEC("tp/sched/sched_process_exit")
int exit_tp(void *ctx) {
  __u64 pid_tgid = bpf_get_current_pid_tgid();
  __u32 tid = (__u32)pid_tgid, tgid = pid_tgid >> 32;
  if (tid != tgid) bpf_map_delete_elem(&armed_threads, &tid);
  __u32 mask = armed_mask(tgid);
  if (!mask) return 0;
  struct task_struct *task = bpf_get_current_task_btf();
  if (task->signal->live.counter != 0) return 0;
  bpf_map_delete_elem(&armed, &tgid);
  if (!(mask & MLFX_EV_EXIT)) return 0;
  struct mlfx_trigger_event *e = new_event(MLFX_EV_EXIT);
  if (!e) return 0;
  set_target_current(e);
  e->signal = task->exit_code & 0x7f;  /* the signal that killed it, 0 for an exit */
  bpf_ringbuf_submit(e, 0);
  return 0;
}
