/* What the agent's eBPF programs (triggers.bpf.c) report to the daemon through their ring
 * buffer, and how the daemon tells them which processes are armed. Shared by the BPF side
 * (compiled with clang -target bpf against vmlinux.h) and user space (C++), so it uses only
 * fixed-width types that both sides define: __u32 etc. come from vmlinux.h or <linux/types.h>. */
#ifndef MLFX_AGENT_BPF_TRIGGER_EVENT_H
#define MLFX_AGENT_BPF_TRIGGER_EVENT_H

/* One bit per kind: the 'armed' map holds, per armed tgid, the kinds it is armed for. */
enum mlfx_event_kind {
  MLFX_EV_FATAL_SIGNAL = 1,   /* SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGABRT generated for an armed task */
  MLFX_EV_OOM_KILL = 2,       /* the OOM killer chose an armed process (oom:mark_victim) */
  MLFX_EV_PTRACE_ATTACH = 4,  /* another process ptrace-attaches (ATTACH/SEIZE) to an armed one */
  MLFX_EV_MEMORY_WRITE = 8,   /* process_vm_writev into, or a write to /proc/PID/mem of, an armed one */
  MLFX_EV_MODULE_LOAD = 16,   /* a kernel module is loaded (not per target: always reported when on) */
  MLFX_EV_EXEC = 32,          /* a process exec'd: the daemon checks whether it is a new target */
  MLFX_EV_EXIT = 64,          /* an armed process exited (its last thread) */
  MLFX_EV_EXEC_MAPPING = 128, /* an armed process maps a file executable (mmap PROT_EXEC): the daemon
                                 judges whether it is an injected library */
};

/* detail of MLFX_EV_MEMORY_WRITE */
enum mlfx_write_vector { MLFX_WRITE_PROCESS_VM_WRITEV = 1, MLFX_WRITE_PROC_PID_MEM = 2 };

#define MLFX_COMM_LEN 16
#define MLFX_KSTACK_DEPTH 24

struct mlfx_trigger_event {
  __u64 ktime_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
  __u32 kind;              /* one enum mlfx_event_kind */
  __u32 target_tgid;       /* the armed process concerned (exec: the new process; module: 0) */
  __u32 target_tid;        /* the thread concerned (fatal signal: the receiving thread) */
  __u32 actor_tgid;        /* who caused it: the signal's sender, the tracer, the writer, the loader */
  __u32 actor_tid;
  __s32 signal;            /* fatal signal: its number; exit: the signal that killed it, 0 for exit() */
  __s32 si_code;           /* fatal signal: siginfo si_code (> 0: raised by the kernel, e.g. a fault) */
  __u32 detail;            /* ptrace: the request; memory write: enum mlfx_write_vector;
                              executable mapping: the file descriptor it mapped */
  __u64 address;           /* memory write: remote address where known; fatal signal: the faulting
                              address (si_addr) when the kernel raised SIGSEGV/BUS/ILL/FPE, else 0;
                              executable mapping: the address it was mapped at */
  char actor_comm[MLFX_COMM_LEN];
  char target_comm[MLFX_COMM_LEN];
  char name[56];           /* module load: the module's name */
  __s32 kstack_bytes;      /* bytes of kstack filled (bpf_get_stack), 0 when unavailable */
  __u32 pad;
  __u64 kstack[MLFX_KSTACK_DEPTH]; /* kernel return addresses of the actor's stack */
};

#endif
