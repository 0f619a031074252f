#!/usr/bin/env python3
"""Benchmark (not a test) of issue 14's figures, with the real armed daemon (`mlfx-agent run`) on
this machine's kernel (root: eBPF programs loaded, victims traced):

    tests/bench/daemon_bench.py [--build BUILD_DIR] [--rounds N] [--idle SECONDS] [--torch-rounds N]
                                [--victim-mib MIB] [--out RESULTS.json]

  idle     the daemon armed with a realistic configuration (rules on fatal-signal, ptrace-attach,
           memory-write, oom-kill, on-demand and app-anomaly; two armed targets: a torch victim
           and a plain Python sleeper), left alone for --idle seconds: VmRSS and VmHWM sampled
           every second (median, max), CPU from utime+stime (/proc/PID/stat) and from the threads'
           schedstat run time, as % of one core, its threads and their wake-ups (context
           switches)  vs  the same daemon and rules with targets that match no process (nothing
           armed). Every exec on the machine wakes the daemon (the eBPF exec event): the
           machine's fork rate in the window (/proc/stat "processes") is reported with it.
                                                                      (goal <= 16 MiB, no CPU)
  latency  a fatal signal: a victim (plain Python, 4 threads, --victim-mib of memory; then the
           torch victim, --torch-rounds) stamps CLOCK_MONOTONIC into a shared mapping and
           faults at once (ctypes.string_at(8)). Held (a target): the freeze, read from the
           bundle's manifest timeline (trigger_monotonic_ns + trigger_to_frozen_ms), minus the
           stamp  vs  unheld (a process the same daemon does not arm): the kill window, from the
           stamp to its parent's waitpid return (the process and its memory gone). Rounds
           interleaved, held first in even rounds; victims run with RLIMIT_CORE 0 (no core dump
           in the kill window). Medians and max (p99 from 100 rounds).

Results are printed as a table and written as JSON to --out. The machine is shared: the load
average is recorded at the start and the end; quote medians and ratios.
"""
import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "agent"))
from test_daemon import Daemon, proc_field, wait_for  # noqa: E402  (one daemon, as the tests run it)

PYTHON = "/usr/bin/python3"
VICTIMS = os.path.join(ROOT, "tests", "victims")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------------------------- victims

# argv: marker, stamp file, MiB. Stamps CLOCK_MONOTONIC into a shared mapping of the stamp file
# (no system call nor page fault between the stamp and the fault) and faults, on "go" from its
# parent.
PLAIN_VICTIM = textwrap.dedent("""\
    import ctypes, mmap, os, sys, threading, time
    blob = bytearray(os.urandom(1 << 20)) * int(sys.argv[3])   # every page written
    def worker():
        while True:
            time.sleep(0.01)
    for _ in range(3):
        threading.Thread(target=worker, daemon=True).start()
    f = open(sys.argv[2], "w+b"); f.truncate(8)
    stamp = mmap.mmap(f.fileno(), 8)
    stamp[0:8] = bytes(8)   # the page faulted in and dirtied now, not between the stamp and the fault
    sys.stdout.write("%d\\n" % os.getpid()); sys.stdout.flush()
    sys.stdin.readline()
    stamp[0:8] = time.clock_gettime_ns(time.CLOCK_MONOTONIC).to_bytes(8, "little")
    ctypes.string_at(8)
    """)

# argv: stamp file, torch_victim.py, scenario, ground-truth dir. The torch victim as it is, its
# fault (ctypes.string_at(8) when GT/crash appears) preceded by the same stamp.
TORCH_WRAPPER = textwrap.dedent("""\
    import ctypes, mmap, runpy, sys, time
    f = open(sys.argv.pop(1), "w+b"); f.truncate(8)
    stamp = mmap.mmap(f.fileno(), 8)
    stamp[0:8] = bytes(8)
    string_at = ctypes.string_at
    def stamped(address, size=-1):
        if address == 8:
            stamp[0:8] = time.clock_gettime_ns(time.CLOCK_MONOTONIC).to_bytes(8, "little")
        return string_at(address, size)
    ctypes.string_at = stamped
    sys.argv = sys.argv[1:]
    sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])
    runpy.run_path(sys.argv[0], run_name="__main__")
    """)

SLEEPER = "import sys, time\nwhile True: time.sleep(1)\n"


def no_core_dump():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def read_stamp(path):
    with open(path, "rb") as f:
        return int.from_bytes(f.read(8), "little")


def now_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def start_torch(tmp, gt_name, stamp=None):
    gt = os.path.join(tmp, gt_name)
    cmd = [PYTHON, os.path.join(VICTIMS, "torch_victim.py"), "cnn", gt]
    if stamp:
        cmd = [PYTHON, "-c", TORCH_WRAPPER, stamp] + cmd[1:]
    p = subprocess.Popen(cmd, preexec_fn=no_core_dump, stdout=subprocess.DEVNULL)
    wait_for("the torch victim", lambda: os.path.exists(os.path.join(gt, "ready")) or p.poll() is not None, 300, 0.1)
    if p.poll() is not None:
        raise SystemExit(f"the torch victim exited ({p.returncode}) before it was ready")
    return p, gt


class BenchDaemon(Daemon):
    """The tests' daemon; a status query the daemon resets is asked again, and counted."""
    resets = []

    def status(self):
        for attempt in range(5):
            try:
                return super().status()
            except RuntimeError as e:
                if "ECONNRESET" not in str(e) or attempt == 4:
                    raise
                self.resets.append(time.strftime("%H:%M:%S ") + str(e).splitlines()[-1][-80:])
                time.sleep(0.05)


# ---------------------------------------------------------------------------------- configuration

def targets():
    return textwrap.dedent("""
        [[target]]
        name = "model"
        cmdline = 'torch_victim\\.py cnn \\S*/armed-'

        [[target]]
        name = "sleeper"
        cmdline = "mlfx-bench-sleeper"

        [[target]]
        name = "victim"
        cmdline = "mlfx-bench-held"
        """)


def unmatched_targets():
    """The reference: the same three targets, each matching no process."""
    return targets().replace("armed-", "no-such-dir-").replace("mlfx-bench-", "mlfx-bench-nobody-")


RULES = textwrap.dedent("""
    [[rule]]
    name = "crash"
    on = ["fatal-signal"]
    sources = ["process"]
    max_captures = 100000
    window = "1h"
    cooldown = "0s"

    [[rule]]
    name = "tamper"
    on = ["ptrace-attach", "memory-write"]
    sources = ["process"]
    max_captures = 5
    cooldown = "30s"

    [[rule]]
    name = "oom"
    on = ["oom-kill"]

    [[rule]]
    name = "app-anomaly"
    on = ["app-anomaly"]
    cooldown = "15m"

    [[rule]]
    name = "requested"
    on = ["on-demand"]
    max_captures = 10
    cooldown = "0s"
    """)


# ---------------------------------------------------------------------------------- /proc readings

def status_kib(pid, name):
    v = proc_field(pid, name)
    return int(v.split()[0]) if v else None


def cpu_ticks(pid):
    """utime + stime of the whole process (exited threads included), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def threads_now(pid):
    """Per thread: comm, run time (schedstat, ns), context switches (voluntary + not)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            base = f"/proc/{pid}/task/{tid}"
            comm = open(base + "/comm").read().strip()
            run_ns = int(open(base + "/schedstat").read().split()[0])
            switches = sum(int(proc_field(f"{pid}/task/{tid}", k) or 0)
                           for k in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
        except OSError:
            continue
        out[tid] = {"comm": comm, "run_ns": run_ns, "switches": switches}
    return out


def forks_so_far():
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("processes "):
                return int(line.split()[1])
    return 0


def bpf_memlock_kib(pid):
    """Kernel memory of the daemon's eBPF maps and programs (memlock of each bpf fd): not in RSS."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            for line in open(f"/proc/{pid}/fdinfo/{fd}"):
                if line.startswith("memlock:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total // 1024


def idle_window(pid, seconds):
    """Samples the daemon once a second for `seconds`, touching nothing but /proc."""
    t0, ticks0, threads0, forks0 = time.monotonic(), cpu_ticks(pid), threads_now(pid), forks_so_far()
    rss, hwm, nthreads = [], [], []
    for i in range(seconds):
        time.sleep(max(0.0, t0 + i + 1 - time.monotonic()))
        rss.append(status_kib(pid, "VmRSS"))
        hwm.append(status_kib(pid, "VmHWM"))
        nthreads.append(int(proc_field(pid, "Threads")))
    elapsed, ticks1, threads1, forks1 = time.monotonic() - t0, cpu_ticks(pid), threads_now(pid), forks_so_far()
    per_thread = {}
    for tid, t in threads1.items():
        before = threads0.get(tid, {"run_ns": 0, "switches": 0})
        per_thread[f"{tid} {t['comm']}"] = {"run_ms": (t["run_ns"] - before["run_ns"]) / 1e6,
                                           "wakeups": t["switches"] - before["switches"]}
    run_ms = sum(t["run_ms"] for t in per_thread.values())
    return {"seconds": elapsed, "samples": len(rss),
            "vmrss_kib_median": statistics.median(rss), "vmrss_kib_max": max(rss),
            "vmhwm_kib_median": statistics.median(hwm), "vmhwm_kib_max": max(hwm),
            "threads_median": statistics.median(nthreads), "threads_max": max(nthreads),
            "cpu_ticks": ticks1 - ticks0, "cpu_pct_ticks": 100.0 * (ticks1 - ticks0) / CLK_TCK / elapsed,
            "cpu_ms_schedstat": run_ms, "cpu_pct_schedstat": 100.0 * run_ms / 1e3 / elapsed,
            "wakeups": sum(t["wakeups"] for t in per_thread.values()), "per_thread": per_thread,
            "threads_started_or_ended": sorted(set(threads0) ^ set(threads1)),
            "machine_forks": forks1 - forks0, "machine_forks_per_s": (forks1 - forks0) / elapsed,
            "daemon_cpu_us_per_machine_fork": run_ms * 1e3 / (forks1 - forks0) if forks1 > forks0 else None,
            "bpf_memlock_kib": bpf_memlock_kib(pid)}


def quiet_window(d, seconds, tries=3):
    """An idle window without triggers in it. Another process on this shared machine may trigger
    the daemon (another daemon seizing a torch victim whose command line its targets match): a
    window with a capture in it is not idle; it is said, kept in the results and done again."""
    disturbed = []
    for _ in range(tries):
        before = {t["id"] for t in d.status()["recent_triggers"]}
        r = idle_window(d.proc.pid, seconds)
        r["triggers_in_window"] = [t for t in d.status()["recent_triggers"] if t["id"] not in before]
        for t in r["triggers_in_window"]:
            ev = t.get("evidence", {})
            print(f"  NOT IDLE: trigger {t['id']} {t['kind']} of pid {t['pid']} ({t.get('target')}) by "
                  f"{ev.get('actor_comm')} pid {ev.get('actor_pid')}: {t['outcome']}; the window is done again",
                  flush=True)
        if not r["triggers_in_window"]:
            break
        disturbed.append(r)
        wait_for("the capture to end", lambda: d.status()["captures"]["queued"] == 0 and
                 all(t["outcome"] not in ("pending", "queued") for t in d.status()["recent_triggers"]), 300)
    r["disturbed_windows"] = disturbed
    return r


# ---------------------------------------------------------------------------------- latency rounds

def died_of_segv(status):
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV


def held_figures(args, d, pid, stamp_ns):
    """The freeze of a held victim, from its trigger record and its bundle's manifest timeline."""
    t = d.finished("fatal-signal", pid, timeout=300)
    if t["outcome"] != "captured":
        return {"outcome": t["outcome"], "detail": t.get("detail")}
    bundle = t["detail"]
    info = json.loads(subprocess.run([args.mlfx, "bundle", "info", bundle, "--json"], stdout=subprocess.PIPE,
                                     check=True, text=True).stdout)
    size = os.path.getsize(bundle)
    os.remove(bundle)  # 30 rounds of a few hundred MiB each: the disk is shared
    tl = info["manifest"]["context"]["timeline"]
    ev = info["manifest"]["context"]["trigger"].get("evidence", {})
    trigger_ns = tl["trigger_monotonic_ns"]
    frozen_ns = trigger_ns + tl["trigger_to_frozen_ms"] * 1e6
    held_ns = ev.get("held_at_monotonic_ns")
    return {"outcome": "captured", "bundle_bytes": size,
            "bpf_record": "ktime_ns" in ev,  # else the trigger time is the holder's, not the kernel's
            "latency_ms": (frozen_ns - stamp_ns) / 1e6,
            "trigger_to_frozen_ms": tl["trigger_to_frozen_ms"],
            "stamp_to_signal_generate_ms": (trigger_ns - stamp_ns) / 1e6,
            "signal_generate_to_held_ms": (held_ns - trigger_ns) / 1e6 if held_ns else None,
            "held_to_frozen_ms": (frozen_ns - held_ns) / 1e6 if held_ns else None,
            "frozen_ms": tl.get("frozen_ms"),
            "trigger_to_sealed_ms": next((e["at_ms"] for e in tl["events"] if e["event"] == "sealed"), None),
            "timeline_ms": {e["event"] + ("/" + e["source"] if e.get("source") else ""): e["at_ms"] for e in tl["events"]}}


def plain_round(args, d, tmp, held):
    stamp = os.path.join(tmp, "stamp")
    marker = "mlfx-bench-held" if held else "mlfx-bench-free"
    p = subprocess.Popen([PYTHON, "-c", PLAIN_VICTIM, marker, stamp, str(args.victim_mib)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, preexec_fn=no_core_dump)
    pid = int(p.stdout.readline())
    return fault_and_wait(args, d, p, pid, held, stamp, lambda: (p.stdin.write("go\n"), p.stdin.flush()))


def torch_round(args, d, tmp, n, held):
    stamp = os.path.join(tmp, "stamp")
    p, gt = start_torch(tmp, f"{'armed' if held else 'free'}-{n}", stamp)
    try:
        return fault_and_wait(args, d, p, p.pid, held, stamp, lambda: open(os.path.join(gt, "crash"), "w").close())
    finally:
        shutil.rmtree(gt, ignore_errors=True)


def fault_and_wait(args, d, p, pid, held, stamp, go):
    """Both cases alike: one status query (is it armed, and held?), a pause, the fault, waitpid."""
    armed = wait_for("the victim armed", lambda: d.armed(pid), 60) if held else d.armed(pid)
    tracer = int(proc_field(pid, "TracerPid"))  # the tracing thread: the daemon's holder thread
    tracer = int(proc_field(tracer, "Tgid") or -1) if tracer else 0
    if tracer not in (0, d.proc.pid):  # another daemon on this machine took it: not our figure
        p.kill()
        p.wait()
        raise ForeignTracer(f"victim {pid} ({'held' if held else 'unheld'}) traced by pid {tracer} "
                            f"({proc_field(tracer, 'Name')}), not by us")
    if held and (not armed.get("held") or tracer != d.proc.pid):
        raise SystemExit(f"the victim {pid} is armed but not held (tracer {tracer}): {armed}")
    if not held and armed:
        raise SystemExit(f"the unheld victim {pid} was armed: {armed}")
    rss = status_kib(pid, "VmRSS")
    threads = int(proc_field(pid, "Threads"))
    time.sleep(0.3)
    go()
    _, status = os.waitpid(pid, 0)
    gone_ns = now_ns()
    p.returncode = os.waitstatus_to_exitcode(status)
    stamp_ns = read_stamp(stamp)
    os.remove(stamp)
    if not died_of_segv(status) or not stamp_ns:
        raise SystemExit(f"the victim {pid} did not die of SIGSEGV after its stamp (returncode {p.returncode})")
    r = {"pid": pid, "held": held, "rss_kib": rss, "threads": threads, "stamp_to_waitpid_ms": (gone_ns - stamp_ns) / 1e6}
    if held:
        r.update(held_figures(args, d, pid, stamp_ns))
    return r


class ForeignTracer(Exception):
    pass


def rounds_of(args, d, tmp, n, one_round, skipped):
    results = []
    for i in range(n):
        for held in ((True, False) if i % 2 == 0 else (False, True)):
            for attempt in range(3):
                try:
                    r = one_round(i, held)
                    break
                except ForeignTracer as e:
                    print(f"  round {i + 1}: {e}; done again", flush=True)
                    skipped.append(str(e))
            else:
                raise SystemExit("three victims in a row traced by another process: the machine is too busy")
            results.append(r)
            what = (f"freeze {r['latency_ms']:.3f} ms (trigger_to_frozen {r['trigger_to_frozen_ms']:.3f} ms), "
                    f"death after capture {r['stamp_to_waitpid_ms']:.0f} ms") if held and "latency_ms" in r else \
                (f"{r.get('outcome')}: {r.get('detail')}" if held else f"kill window {r['stamp_to_waitpid_ms']:.3f} ms")
            print(f"  round {i + 1} {'held  ' if held else 'unheld'} pid {r['pid']} ({r['rss_kib'] >> 10} MiB, "
                  f"{r['threads']} threads): {what}", flush=True)
    return results


# ---------------------------------------------------------------------------------- summaries

def summary(values):
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    s = {"n": len(v), "median": statistics.median(v), "min": v[0], "max": v[-1]}
    if len(v) >= 100:
        s["p99"] = v[min(len(v) - 1, int(round(0.99 * (len(v) - 1))))]
    return s


def summarize(results):
    held = [r for r in results if r["held"] and "latency_ms" in r]
    free = [r for r in results if not r["held"]]
    s = {k: summary(r[k] for r in held) for k in ("latency_ms", "trigger_to_frozen_ms", "stamp_to_signal_generate_ms",
                                                  "signal_generate_to_held_ms", "held_to_frozen_ms", "frozen_ms",
                                                  "trigger_to_sealed_ms")}
    s["held_stamp_to_death_ms"] = summary(r["stamp_to_waitpid_ms"] for r in held)
    s["kill_window_ms"] = summary(r["stamp_to_waitpid_ms"] for r in free)
    s["not_captured"] = len([r for r in results if r["held"]]) - len(held)
    s["without_bpf_record"] = len([r for r in held if not r["bpf_record"]])
    s["victim_rss_mib"] = statistics.median(r["rss_kib"] for r in results) / 1024
    s["victim_threads"] = statistics.median(r["threads"] for r in results)
    if s["latency_ms"] and s["kill_window_ms"]:
        s["ratio_freeze_to_kill_window"] = s["latency_ms"]["median"] / s["kill_window_ms"]["median"]
    return s


def print_idle(idle):
    print(f"\nidle, {idle['armed']['seconds']:.0f} s        VmRSS MiB med/max  VmHWM MiB  threads  CPU % (ticks / schedstat)"
          f"  wake-ups  BPF memlock  machine forks/s  daemon CPU per fork")
    for name, label in (("reference", "nothing armed"), ("armed", "armed, 2 targets")):
        r = idle[name]
        per_fork = r["daemon_cpu_us_per_machine_fork"]
        print(f"  {label:18s} {r['vmrss_kib_median'] / 1024:6.2f} / {r['vmrss_kib_max'] / 1024:5.2f}    "
              f"{r['vmhwm_kib_max'] / 1024:6.2f}   {r['threads_max']:5d}    {r['cpu_pct_ticks']:.3f} / "
              f"{r['cpu_pct_schedstat']:.4f}          {r['wakeups']:6d}    {r['bpf_memlock_kib'] / 1024:6.2f} MiB"
              f"   {r['machine_forks_per_s']:8.2f}     {f'{per_fork:.0f} us' if per_fork else '-'}")
    print("  (VmHWM: the peak since the daemon started, start-up included)")
    for name in ("reference", "armed"):
        if idle[name].get("disturbed_windows"):
            print(f"  {name}: {len(idle[name]['disturbed_windows'])} window(s) with a trigger in it done again")


def fmt(s, key="median"):
    return f"{s[key]:9.3f}" if s else "        -"


def print_latency(name, s):
    tail = "p99" if s["kill_window_ms"] and "p99" in s["kill_window_ms"] else "max"
    n = s["kill_window_ms"]["n"] if s["kill_window_ms"] else 0
    print(f"\nfatal signal, {name} ({s['victim_rss_mib']:.0f} MiB, {s['victim_threads']:.0f} threads), {n} rounds each"
          f"         median ms   {tail} ms    min ms")
    rows = (("held: pre-fault stamp -> every thread frozen", "latency_ms"),
            ("held: trigger_to_frozen_ms (signal_generate -> frozen)", "trigger_to_frozen_ms"),
            ("  stamp -> signal_generate (the fault)", "stamp_to_signal_generate_ms"),
            ("  signal_generate -> held (ptrace stop seen)", "signal_generate_to_held_ms"),
            ("  held -> frozen (the other threads stopped)", "held_to_frozen_ms"),
            ("unheld: stamp -> waitpid (the kill window)", "kill_window_ms"),
            ("held: frozen -> thawed (frozen_ms: the process read)", "frozen_ms"),
            ("held: signal_generate -> bundle sealed (still held)", "trigger_to_sealed_ms"),
            ("held: stamp -> waitpid (dies after the capture)", "held_stamp_to_death_ms"))
    for label, key in rows:
        print(f"  {label:56s} {fmt(s[key])}  {fmt(s[key], tail)}  {fmt(s[key], 'min')}")
    if "ratio_freeze_to_kill_window" in s:
        print(f"  ratio freeze / kill window (medians): {s['ratio_freeze_to_kill_window']:.3f}"
              f"  ({1 / s['ratio_freeze_to_kill_window']:.1f}x inside the window)")
    if s["not_captured"] or s["without_bpf_record"]:
        print(f"  {s['not_captured']} held round(s) not captured, {s['without_bpf_record']} without the eBPF record")


# ---------------------------------------------------------------------------------- main

def machine_facts():
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    return {"host": socket.gethostname(), "kernel": os.uname().release, "cores": os.cpu_count(),
            "core_pattern": open("/proc/sys/kernel/core_pattern").read().strip(),
            "bench_rlimit_core": [soft, hard], "victims_rlimit_core": 0,
            "mem_total_mib": int(open("/proc/meminfo").readline().split()[1]) >> 10}


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--rounds", type=int, default=30, help="fatal-signal rounds with the plain victim (each held and unheld)")
    p.add_argument("--torch-rounds", type=int, default=10, help="rounds with the torch victim (0: none)")
    p.add_argument("--idle", type=int, default=60, help="idle window in seconds")
    p.add_argument("--settle", type=int, default=5, help="seconds left to the daemon before the idle window")
    p.add_argument("--victim-mib", type=int, default=200)
    p.add_argument("--out", default="/tmp/mlfx-daemon-bench.json")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("the armed daemon loads eBPF programs and traces other processes: run as root")
    build = os.path.abspath(args.build)
    args.agent, args.mlfx = os.path.join(build, "agent", "mlfx-agent"), os.path.join(build, "analyzer", "mlfx")
    for b in (args.agent, args.mlfx):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b} is missing: build the mlfx-agent and mlfx targets in {build}, or pass --build")
    results = {"command": [sys.argv[0]] + argv, "machine": machine_facts(), "load_start": os.getloadavg()}
    m = results["machine"]
    print(f"{m['host']}: kernel {m['kernel']}, {m['cores']} cores, load {results['load_start']}; core_pattern "
          f"{m['core_pattern']!r}, this shell's RLIMIT_CORE {m['bench_rlimit_core']}, victims run with 0", flush=True)
    with tempfile.TemporaryDirectory(prefix="mlfx-daemon-bench-", dir="/var/tmp") as tmp:
        args.keys = os.path.join(tmp, "keys")
        os.makedirs(args.keys)
        for kind in ("device", "lab"):
            subprocess.run([args.mlfx, "keys", "gen", "--kind", kind, "--out", os.path.join(args.keys, kind[:3])],
                           check=True, stdout=subprocess.DEVNULL)
        results["idle"] = {}
        print(f"idle: the daemon with nothing armed, {args.idle} s", flush=True)
        d = BenchDaemon(args, os.path.join(tmp, "reference"), unmatched_targets(), RULES).start()
        try:
            time.sleep(args.settle)
            if d.status()["armed"]:
                raise SystemExit("the reference daemon armed something: " + json.dumps(d.status()["armed"]))
            time.sleep(1)
            results["idle"]["reference"] = quiet_window(d, args.idle)
        finally:
            d.stop()

        print(f"idle: the daemon armed (a torch victim and a Python sleeper), {args.idle} s", flush=True)
        model, gt = start_torch(tmp, "armed-idle")
        sleeper = subprocess.Popen([PYTHON, "-c", SLEEPER, "mlfx-bench-sleeper"])
        d = BenchDaemon(args, os.path.join(tmp, "armed"), targets(), RULES).start()
        try:
            for pid in (model.pid, sleeper.pid):
                wait_for(f"pid {pid} armed", lambda: d.armed(pid), 60)
            time.sleep(args.settle)
            results["idle"]["armed"] = quiet_window(d, args.idle)
            results["idle"]["armed"]["armed"] = [{k: a.get(k) for k in ("pid", "target", "held", "triggers")}
                                                 for a in d.status()["armed"]]
            print_idle(results["idle"])

            results["latency"] = {}
            print(f"\nlatency: plain Python victim, {args.rounds} rounds, held and unheld interleaved", flush=True)
            forks0, t0 = forks_so_far(), time.monotonic()
            skipped = results["latency"]["rounds_redone_foreign_tracer"] = []
            plain = rounds_of(args, d, tmp, args.rounds, lambda i, held: plain_round(args, d, tmp, held), skipped)
            results["latency"]["plain"] = {"rounds": plain, "summary": summarize(plain)}
            if args.torch_rounds:
                print(f"\nlatency: torch victim, {args.torch_rounds} rounds, held and unheld interleaved", flush=True)
                torch = rounds_of(args, d, tmp, args.torch_rounds, lambda i, held: torch_round(args, d, tmp, i, held),
                                  skipped)
                results["latency"]["torch"] = {"rounds": torch, "summary": summarize(torch)}
            results["latency"]["machine_forks_per_s"] = (forks_so_far() - forks0) / (time.monotonic() - t0)
            results["daemon_after"] = {"vmrss_kib": status_kib(d.proc.pid, "VmRSS"),
                                       "vmhwm_kib": status_kib(d.proc.pid, "VmHWM"),
                                       "threads": int(proc_field(d.proc.pid, "Threads"))}
        finally:
            if d.proc.poll() is not None:
                print(f"the daemon exited ({d.proc.returncode}); its log ends:\n" +
                      "".join(open(d.log_path).readlines()[-20:]), file=sys.stderr)
            d.stop()
            for v in (model, sleeper):
                v.kill()
                v.wait()
    results["load_end"] = os.getloadavg()
    results["status_queries_reset"] = BenchDaemon.resets

    print_idle(results["idle"])
    for name, label in (("plain", f"plain Python"), ("torch", "torch victim (cnn)")):
        if name in results["latency"]:
            print_latency(label, results["latency"][name]["summary"])
    a = results["daemon_after"]
    print(f"\ndaemon after the captures: VmRSS {a['vmrss_kib'] / 1024:.1f} MiB, VmHWM {a['vmhwm_kib'] / 1024:.1f} MiB, "
          f"{a['threads']} threads")
    if results["latency"]["rounds_redone_foreign_tracer"]:
        print(f"{len(results['latency']['rounds_redone_foreign_tracer'])} victim(s) traced by another process: "
              f"their rounds done again")
    if BenchDaemon.resets:
        print(f"{len(BenchDaemon.resets)} status queries reset by the daemon (asked again): {BenchDaemon.resets[:3]}")
    print(f"load average: start {results['load_start']}, end {results['load_end']}")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
