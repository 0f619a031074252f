#!/usr/bin/env python3
"""The armed daemon (`mlfx-agent run`) on this machine's kernel, with real victims.

    test_daemon.py --agent MLFX_AGENT --mlfx MLFX

Root only (eBPF programs loaded into the running kernel, ptrace of other users' processes):
exits 77 (skipped) otherwise. One daemon per case, each with its own configuration, spool and
sockets under a temporary directory:

  config       a malformed configuration is refused with FILE:LINE:COLUMN and the reason
               (`run --check` and `run`), and nothing is armed
  crash        a torch victim that segfaults is held at its fatal signal, captured alive and
               then dies of SIGSEGV (its parent sees it); the bundle verifies, its manifest holds
               the trigger (signal, fault address, kernel stack) and a timeline, the custody
               records the trigger, and `mlfx recover` gives the victim's models bit-exactly
  tamper       a ptrace attach and a write to /proc/PID/mem by another process each trigger,
               naming that process; the app's own anomaly hook triggers for the app itself
  injection    an armed process maps code from /tmp and from a memfd: two library-injection
               triggers, each captured; libc mapped from its own directory is not one
  storm        2,000 on-demand triggers in about a second: at most max_captures captures, the
               rest counted as suppressed, the daemon answering throughout
  reload       SIGHUP takes a new rule; a malformed file on SIGHUP is refused in the log and the
               running configuration stays armed
  killed       the daemon SIGKILLed in the middle of a capture: the target is not left stopped
               or traced and keeps running
  oom          a victim in a 64 MiB memory cgroup allocating past it: the OOM kill triggers
  no-ebpf      eBPF off in the configuration: status and the log say what is lost, and a
               fatal signal is still held (ptrace) and captured
  upload       with [upload], each capture is shipped to a real `mlfx serve` over mutual TLS
  lab-request  a capture request signed with a lab request key (`mlfx request capture`), queued
               at the intake, fetched by the daemon over mutual TLS: captured once with the
               requester in the custody log; the same request again is refused as a replay
  pressure     a victim thrashing its page cache in a 64 MiB memory cgroup: the memory pressure
               (PSI of its cgroup) triggers a capture while it lives
"""
import argparse, json, os, shutil, signal, socket, subprocess, sys, tempfile, textwrap, time

HERE = os.path.dirname(os.path.abspath(__file__))
VICTIMS = os.path.join(HERE, "..", "victims")
PYTHON = "/usr/bin/python3"
failures = []


def step(what):
    print("--", what, flush=True)


def expect(ok, what, detail=""):
    if not ok:
        failures.append(what)
        print("FAIL:", what, detail if detail else "", flush=True)
    return ok


def wait_for(what, predicate, timeout=30.0, interval=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = predicate()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError("timed out waiting for " + what)


def proc_field(pid, name):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


class Daemon:
    """One `mlfx-agent run` with its own configuration under `root`."""

    def __init__(self, args, root, targets, rules, extra="", agent_extra=""):
        self.args, self.root, self.agent_extra = args, root, agent_extra
        os.makedirs(root, exist_ok=True)
        self.config = os.path.join(root, "agent.toml")
        self.socket = os.path.join(root, "run", "control.sock")
        self.anomaly_socket = os.path.join(root, "run", "anomaly.sock")
        self.spool = os.path.join(root, "spool")
        self.log_path = os.path.join(root, "daemon.log")
        self.write_config(targets, rules, extra)
        self.proc = None

    def write_config(self, targets, rules, extra=""):
        keys = self.args.keys
        with open(self.config, "w") as f:
            f.write(textwrap.dedent(f"""\
                [agent]
                device_key = "{keys}/dev.key"
                recipients = ["{keys}/lab.pub"]
                control_socket = "{self.socket}"
                anomaly_socket = "{self.anomaly_socket}"
                log_format = "json"
                {self.agent_extra}
                [spool]
                dir = "{self.spool}"
                """) + extra + targets + rules)

    def start(self):
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([self.args.agent, "run", "--config", self.config], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_for("the daemon to start", lambda: self.events("started") or self.proc.poll() is not None, 60)
        if self.proc.poll() is not None:
            raise RuntimeError("the daemon exited: " + open(self.log_path).read())
        return self

    def events(self, name=None):
        out = []
        with open(self.log_path) as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if name is None or e.get("event") == name:
                    out.append(e)
        return out

    def agent(self, *cmd, ok=(0,)):
        p = subprocess.run([self.args.agent, *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode not in ok:
            raise RuntimeError(f"mlfx-agent {' '.join(cmd)} exited {p.returncode}: {p.stdout}")
        return p

    def status(self):
        return json.loads(self.agent("status", "--socket", self.socket, "--json").stdout)["daemon"]

    def armed(self, pid):
        return next((a for a in self.status()["armed"] if a["pid"] == pid), None)

    def trigger(self, trigger_id=None, kind=None, pid=None):
        for t in self.status()["recent_triggers"]:
            if (trigger_id is None or t["id"] == trigger_id) and (kind is None or t["kind"] == kind) and \
               (pid is None or t["pid"] == pid):
                return t
        return None

    def finished(self, kind, pid, timeout=60):
        return wait_for(f"a finished {kind} trigger of pid {pid}",
                        lambda: (lambda t: t if t and t["outcome"] not in ("pending", "queued") else None)(
                            self.trigger(kind=kind, pid=pid)), timeout)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                expect(False, "the daemon did not stop within 30 s of SIGTERM")
        if self.proc:
            self.log.close()


def torch_target(name, marker):
    return f'\n[[target]]\nname = "{name}"\ncmdline = "{marker}"\n'


def rule(name, on, extra=""):
    kinds = ", ".join(f'"{k}"' for k in on)
    return f'\n[[rule]]\nname = "{name}"\non = [{kinds}]\n{extra}'


SLEEPER = textwrap.dedent("""\
    import os, sys, time
    data = bytearray(b"mlfx daemon test victim " * 4096)
    sys.stdout.write("%d %d\\n" % (os.getpid(), id(data))); sys.stdout.flush()
    beat = 0
    while True:
        beat += 1
        with open(sys.argv[2], "w") as f:
            f.write(str(beat))
        time.sleep(0.02)
    """)


def start_sleeper(root, marker, preexec=None):
    """A plain Python process (fast to start); argv[1] is the marker the target matches."""
    beat = os.path.join(root, marker + ".beat")
    p = subprocess.Popen([PYTHON, "-c", SLEEPER, marker, beat], stdout=subprocess.PIPE, text=True, preexec_fn=preexec)
    pid, addr = map(int, p.stdout.readline().split())
    return p, pid, addr, beat


def beats(path):
    try:
        return int(open(path).read() or 0)
    except (OSError, ValueError):
        return 0


# ---------------------------------------------------------------------------------------- cases

def case_config(args, tmp):
    step("config: a typo'd key is refused with its file, line and column; nothing starts")
    d = Daemon(args, os.path.join(tmp, "config"), torch_target("t", "x"), rule("r", ["on-demand"]) + "cooldwn = \"5s\"\n")
    line = open(d.config).read().splitlines().index('cooldwn = "5s"') + 1
    for cmd in (["run", "--config", d.config, "--check"], ["run", "--config", d.config]):
        p = subprocess.run([args.agent, *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        expect(p.returncode == 1, f"{' '.join(cmd)} exited {p.returncode}", p.stdout)
        expect(f"{d.config}:{line}:" in p.stdout and "cooldwn" in p.stdout,
               f"the refusal names {d.config}:{line} and the key", p.stdout)
    expect(not os.path.exists(d.socket), "no control socket was created")


def case_crash(args, tmp):
    step("crash: a torch victim's segfault is held, captured alive, then kills it")
    root = os.path.join(tmp, "crash")
    gt = os.path.join(root, "gt")
    os.makedirs(gt)
    # The victim's own ground-truth directory in the pattern: no other torch victim on the machine matches.
    d = Daemon(args, root, torch_target("model", "torch_victim.py cnn " + gt),
               rule("crash", ["fatal-signal"], 'sources = ["process"]\n')).start()
    try:
        victim = subprocess.Popen([PYTHON, os.path.join(VICTIMS, "torch_victim.py"), "cnn", gt])
        wait_for("the victim", lambda: os.path.exists(os.path.join(gt, "ready")), 120)
        armed = wait_for("the victim armed", lambda: d.armed(victim.pid), 30)
        expect(armed["held"], "the victim is held against fatal signals", armed)
        expect(proc_field(victim.pid, "TracerPid") == str(d.proc.pid) or proc_field(victim.pid, "TracerPid") != "0",
               "the victim is traced by the daemon")
        open(os.path.join(gt, "crash"), "w").close()
        rc = victim.wait(60)
        expect(rc == -signal.SIGSEGV, f"the victim died of SIGSEGV (its parent saw {rc})")
        t = d.finished("fatal-signal", victim.pid)
        expect(t["outcome"] == "captured", "the fatal signal was captured", t)
        ev = t["evidence"]
        expect(ev.get("signal") == "SIGSEGV" and ev.get("fault_address") == "0x8" and ev.get("held") is True,
               "the evidence names SIGSEGV at 0x8, held", ev)
        expect(any("page_fault" in f for f in ev.get("kernel_stack", [])), "the kernel stack shows the page fault",
               ev.get("kernel_stack"))
        bundle = t["detail"]
        info = json.loads(subprocess.run([args.mlfx, "bundle", "info", bundle, "--json"], stdout=subprocess.PIPE,
                                         check=True, text=True).stdout)
        ctx = info["manifest"]["context"]
        tl = ctx["timeline"]
        step(f"crash: trigger to every thread stopped {tl['trigger_to_frozen_ms']:.3f} ms, frozen {tl['frozen_ms']:.1f} ms")
        expect(ctx["trigger"]["kind"] == "fatal-signal" and ctx["trigger"]["pid"] == victim.pid, "manifest trigger")
        expect(0 <= tl["trigger_to_frozen_ms"] < 1000, "the freeze follows the trigger", tl)
        events = [e["event"] for e in tl["events"]]
        expect(events[:1] == ["frozen"] and "read_start" in events and "thawed" in events, "timeline order", events)
        custody = json.dumps(info.get("custody", info))
        expect('"fatal-signal"' in custody, "the custody log records the trigger")
        subprocess.run([args.mlfx, "bundle", "verify", "-q", "--trusted-devices", args.trusted, bundle], check=True)
        out = os.path.join(root, "recovered")
        subprocess.run([args.mlfx, "recover", bundle, "--key", os.path.join(args.keys, "lab.key"), "--out", out, "-q",
                        "--trusted-devices", args.trusted], check=True)
        check = subprocess.run([PYTHON, os.path.join(VICTIMS, "check_recovery.py"), gt, out], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        print(check.stdout.rstrip(), flush=True)
        expect(check.returncode == 0, "the crashed victim's models recover bit-exactly")
    finally:
        d.stop()


ATTACKER = textwrap.dedent("""\
    import ctypes, os, sys
    pid, what, addr = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    libc = ctypes.CDLL(None, use_errno=True)
    if what == "ptrace":
        r = libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
        print("attach", r, ctypes.get_errno())
        if r == 0:
            os.waitpid(pid, 0x40000000)
            libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
    else:
        with open("/proc/%d/mem" % pid, "r+b", buffering=0) as f:
            f.seek(addr); data = f.read(8); f.seek(addr); f.write(data)  # the same bytes back
        print("wrote", len(data))
    """)


def case_tamper(args, tmp):
    step("tamper: ptrace attach and /proc/PID/mem write by another process; the app's own anomaly hook")
    root = os.path.join(tmp, "tamper")
    d = Daemon(args, root, torch_target("plain", "mlfx-tamper-victim"),
               rule("tamper", ["ptrace-attach", "memory-write", "app-anomaly"], 'max_captures = 10\ncooldown = "0s"\n')).start()
    victim = None
    try:
        victim, pid, addr, beat = start_sleeper(root, "mlfx-tamper-victim")
        wait_for("the sleeper armed", lambda: d.armed(pid), 30)
        for what, kind in (("ptrace", "ptrace-attach"), ("mem", "memory-write")):
            a = subprocess.run([PYTHON, "-c", ATTACKER, str(pid), what, str(addr)], stdout=subprocess.PIPE, text=True)
            t = d.finished(kind, pid)
            expect(t["outcome"] == "captured", f"{kind} captured", t)
            expect(t["evidence"].get("actor_pid") not in (None, pid), f"{kind} names the other process", t["evidence"])
            if kind == "memory-write":
                expect(t["evidence"].get("vector") == "/proc/PID/mem", "the write vector is /proc/PID/mem", t["evidence"])
            step(f"tamper: {kind} by pid {t['evidence'].get('actor_pid')} ({a.stdout.strip()}): {t['outcome']}")
        b = beats(beat)
        wait_for("the victim to run on", lambda: beats(beat) > b, 10)
        step("tamper: the application raises an anomaly for itself (packaging/examples/mlfx_anomaly.py)")
        hook = textwrap.dedent(f"""\
            import sys; sys.path.insert(0, {os.path.join(HERE, '..', '..', 'packaging', 'examples')!r})
            import mlfx_anomaly, json; print(json.dumps(mlfx_anomaly.raise_anomaly("drift", socket_path={d.anomaly_socket!r})))
            """)
        # The hook from a process that is not a target is refused: it may only speak for itself.
        stranger = json.loads(subprocess.run([PYTHON, "-c", hook], stdout=subprocess.PIPE, text=True).stdout)
        expect(stranger.get("ok") is False and "not an armed target" in stranger.get("error", ""),
               "a process that is not a target cannot raise an anomaly", stranger)
        app = subprocess.Popen([PYTHON, "-c", "import time; exec(open(0).read())", "mlfx-tamper-victim"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        app_pid = app.pid
        wait_for("the app armed", lambda: d.armed(app_pid), 30)
        out, _ = app.communicate(hook, timeout=60)
        reply = json.loads(out.strip().splitlines()[-1])
        expect(reply.get("ok") is True, "the anomaly was accepted", reply)
        t = d.finished("app-anomaly", app_pid)
        expect(t["outcome"] == "captured" and t["evidence"].get("reason") == "drift", "app-anomaly captured", t)
    finally:
        if victim:
            victim.kill()
        d.stop()


def case_storm(args, tmp):
    step("storm: 2,000 on-demand triggers within about a second")
    root = os.path.join(tmp, "storm")
    d = Daemon(args, root, torch_target("plain", "mlfx-storm-victim"),
               rule("manual", ["on-demand"], 'max_captures = 3\ncooldown = "0s"\nwindow = "1h"\n')).start()
    victim = None
    try:
        victim, pid, _, beat = start_sleeper(root, "mlfx-storm-victim")
        wait_for("the sleeper armed", lambda: d.armed(pid), 30)
        started = time.monotonic()
        sent = 0
        req = json.dumps({"op": "trigger", "pid": pid, "reason": "storm", "wait": False}).encode()
        while sent < 2000:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.connect(d.socket)
                s.send(req)
                s.recv(65536)
            sent += 1
        took = time.monotonic() - started
        wait_for("the captures to finish", lambda: d.status()["captures"]["queued"] == 0, 120)
        st = d.status()
        c = st["captures"]
        step(f"storm: {sent} triggers in {took:.2f} s: {c['captured']} captured, {c['suppressed']} suppressed, "
             f"{c['failed']} failed")
        expect(c["captured"] + c["failed"] <= 3, "at most max_captures captures", c)
        expect(c["captured"] >= 1, "the storm's first trigger was captured", c)
        expect(c["suppressed"] >= sent - 3, "every other trigger is counted as suppressed", c)
        expect(len(st["recent_triggers"]) <= 64, "the recent list is bounded")
        expect(d.proc.poll() is None, "the daemon is alive")
        rss = int(proc_field(d.proc.pid, "VmRSS").split()[0])
        step(f"storm: the daemon's RSS after the storm and its captures {rss} KiB")
        expect(rss <= 16 * 1024, f"the idle daemon is back within 16 MiB after its captures ({rss} KiB)")
        b = beats(beat)
        wait_for("the victim to run on", lambda: beats(beat) > b, 10)
    finally:
        if victim:
            victim.kill()
        d.stop()


def case_reload(args, tmp):
    step("reload: SIGHUP takes a new rule; a malformed file is refused and the running one stays")
    root = os.path.join(tmp, "reload")
    target = torch_target("plain", "mlfx-reload-victim")
    d = Daemon(args, root, target, rule("first", ["on-demand"])).start()
    victim = None
    try:
        victim, pid, _, _ = start_sleeper(root, "mlfx-reload-victim")
        wait_for("armed", lambda: d.armed(pid), 30)
        d.write_config(target, rule("first", ["on-demand"]) + rule("second", ["ptrace-attach"]))
        d.proc.send_signal(signal.SIGHUP)
        wait_for("the reload", lambda: d.events("reloaded"), 30)
        st = d.status()
        expect([r["name"] for r in st["rules"]] == ["first", "second"], "the new rule is in force", st["rules"])
        a = wait_for("re-armed", lambda: d.armed(pid), 30)
        expect("ptrace-attach" in a["triggers"], "the target is armed for the new rule's trigger", a)
        with open(d.config, "a") as f:
            f.write("\n[[rule]]\nname = \"broken\"\non = [\"no-such-trigger\"]\n")
        d.proc.send_signal(signal.SIGHUP)
        refused = wait_for("the refusal", lambda: d.events("reload_refused"), 30)
        expect("no-such-trigger" in refused[-1].get("error", ""), "the refusal says why", refused[-1])
        expect([r["name"] for r in d.status()["rules"]] == ["first", "second"], "the running configuration stays")
    finally:
        if victim:
            victim.kill()
        d.stop()


BIG = textwrap.dedent("""\
    import os, sys, time
    blob = bytearray(os.urandom(1 << 20)) * 1024  # 1 GiB to read: the capture takes a while
    sys.stdout.write("%d\\n" % os.getpid()); sys.stdout.flush()
    beat = 0
    while True:
        beat += 1
        with open(sys.argv[2], "w") as f:
            f.write(str(beat))
        time.sleep(0.02)
    """)


def case_killed(args, tmp):
    step("killed: the daemon SIGKILLed mid-capture leaves its target running")
    root = os.path.join(tmp, "killed")
    d = Daemon(args, root, torch_target("big", "mlfx-big-victim"),
               rule("crash", ["fatal-signal"]) + rule("manual", ["on-demand"])).start()
    beat = os.path.join(root, "big.beat")
    victim = subprocess.Popen([PYTHON, "-c", BIG, "mlfx-big-victim", beat], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(victim.stdout.readline())
        wait_for("armed", lambda: d.armed(pid), 30)
        d.agent("trigger", "--socket", d.socket, "--pid", str(pid), "--reason", "kill test", "--no-wait")
        # Mid-capture: every thread of the victim stopped (t) by the capture.
        wait_for("the capture to stop the victim", lambda: all(
            open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()[0] == "t"
            for t in os.listdir(f"/proc/{pid}/task")), 30, 0.005)
        d.proc.kill()
        d.proc.wait()
        wait_for("the victim released", lambda: proc_field(pid, "TracerPid") == "0", 10)
        state = proc_field(pid, "State")
        expect(state and state[0] in "RS", f"the victim runs again (state {state})")
        b = beats(beat)
        wait_for("the victim's heartbeat", lambda: beats(beat) > b, 10)
        leftovers = os.listdir(os.path.join(d.spool, "incoming")) if os.path.isdir(os.path.join(d.spool, "incoming")) else []
        step(f"killed: victim released and running; {len(leftovers)} torn capture(s) left in incoming/ for the next start")
    finally:
        victim.kill()
        d.stop()


OOM = textwrap.dedent("""\
    import os, sys, time
    sys.stdout.write("%d\\n" % os.getpid()); sys.stdout.flush()
    sys.stdin.readline()
    hog = []
    while True:
        hog.append(bytearray(8 << 20))
        time.sleep(0.01)
    """)


class LimitedCgroup:
    """A 64 MiB memory limit for a process: cgroup v2 memory.max where v2 has the memory controller;
    else the v1 memory controller plus a v2 cgroup of the same name (hybrid hierarchies), where
    the kernel reports the process's memory pressure."""

    def __init__(self, name, limit=64 << 20):
        self.dirs = []
        for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
            ctl = os.path.join(base, "cgroup.controllers")
            if not os.path.exists(ctl):
                continue
            path = os.path.join(base, name)
            os.makedirs(path, exist_ok=True)
            self.dirs.append(path)
            if "memory" in open(ctl).read().split():
                open(os.path.join(path, "memory.max"), "w").write(str(limit))
                return
            break
        path = os.path.join("/sys/fs/cgroup/memory", name)
        os.makedirs(path, exist_ok=True)
        open(os.path.join(path, "memory.limit_in_bytes"), "w").write(str(limit))
        self.dirs.append(path)

    def add(self, pid):
        for d in self.dirs:
            open(os.path.join(d, "cgroup.procs"), "w").write(str(pid))

    def remove(self):
        for d in self.dirs:
            try:
                os.rmdir(d)
            except OSError:
                pass


def case_oom(args, tmp):
    step("oom: a victim in a 64 MiB memory cgroup is OOM-killed: the trigger fires")
    root = os.path.join(tmp, "oom")
    d = Daemon(args, root, torch_target("hog", "mlfx-oom-victim"), rule("oom", ["oom-kill"])).start()
    cg = LimitedCgroup(f"mlfx-daemon-oom-{os.getpid()}")
    victim = None
    try:
        victim = subprocess.Popen([PYTHON, "-c", OOM, "mlfx-oom-victim"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        pid = int(victim.stdout.readline())
        cg.add(pid)
        wait_for("armed", lambda: d.armed(pid), 30)
        victim.stdin.write("go\n")
        victim.stdin.flush()
        rc = victim.wait(60)
        expect(rc == -signal.SIGKILL, f"the victim was OOM-killed (returncode {rc})")
        t = d.finished("oom-kill", pid)
        step(f"oom: trigger {t['id']}: {t['outcome']}: {t['detail'][:160]}")
        expect(t["kind"] == "oom-kill" and t["pid"] == pid, "the OOM kill triggered", t)
    finally:
        if victim and victim.poll() is None:
            victim.kill()
        d.stop()
        cg.remove()


THRASH = textwrap.dedent("""\
    import os, sys, time
    sys.stdout.write("%d\\n" % os.getpid()); sys.stdout.flush()
    sys.stdin.readline()
    # Page cache charged to this cgroup, then anonymous memory up to near the limit: re-reading
    # the file refaults pages it just lost: the tasks stall on memory (PSI), nothing is killed.
    path = sys.argv[2]
    with open(path, "wb") as f:
        f.write(os.urandom(32 << 20))
    hog = bytearray(44 << 20)
    for i in range(0, len(hog), 4096):
        hog[i] = 1
    while True:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    """)


def case_pressure(args, tmp):
    step("pressure: a victim thrashing in a 64 MiB memory cgroup: the memory pressure triggers while it lives")
    root = os.path.join(tmp, "pressure")
    d = Daemon(args, root, torch_target("thrash", "mlfx-pressure-victim"),
               rule("pressure", ["memory-pressure"], 'memory_pressure = { stall = "50ms", window = "1s" }\n'))
    cg = LimitedCgroup(f"mlfx-daemon-psi-{os.getpid()}")
    victim = subprocess.Popen([PYTHON, "-c", THRASH, "mlfx-pressure-victim", os.path.join(root, "thrash.bin")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(victim.stdout.readline())
        cg.add(pid)  # before the daemon starts: it finds the process in its cgroup
        d.start()
        wait_for("armed", lambda: d.armed(pid), 30)
        watch = d.events("pressure_watch")
        expect(watch and watch[-1].get("scope", "").startswith("cgroup"), "the victim's own cgroup is watched", watch)
        victim.stdin.write("go\n")
        victim.stdin.flush()
        t = d.finished("memory-pressure", pid, 120)
        step(f"pressure: trigger {t['id']} ({t['evidence'].get('figures', '')[:60]}): {t['outcome']}")
        expect(t["outcome"] == "captured", "the thrashing victim was captured alive", t)
        expect(victim.poll() is None, "the victim lives on")
    finally:
        victim.kill()
        victim.wait()
        d.stop()
        cg.remove()


CRASHER = textwrap.dedent("""\
    import ctypes, os, sys, threading, time
    threading.Thread(target=lambda: time.sleep(3600), daemon=True).start()
    sys.stdout.write("%d\\n" % os.getpid()); sys.stdout.flush()
    sys.stdin.readline()
    ctypes.string_at(8)
    """)


def case_no_ebpf(args, tmp):
    step("no-ebpf: with eBPF off the daemon says what it lacks, and a fatal signal is still held and captured")
    root = os.path.join(tmp, "no-ebpf")
    d = Daemon(args, root, torch_target("crasher", "mlfx-noebpf-victim"),
               rule("crash", ["fatal-signal"]) + rule("tamper", ["ptrace-attach"]))
    with open(d.config) as f:
        text = f.read()
    with open(d.config, "w") as f:
        f.write(text.replace("[agent]\n", "[agent]\nebpf = false\n", 1))
    d.start()
    try:
        st = d.status()
        expect("ebpf = false" in st["ebpf"]["unavailable"], "status says eBPF is off and why", st["ebpf"])
        warn = d.events("ebpf_unavailable")
        expect(warn and "ptrace-attach" in warn[0].get("unavailable", ""), "the log names the triggers lost", warn)
        victim = subprocess.Popen([PYTHON, "-c", CRASHER, "mlfx-noebpf-victim"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        pid = int(victim.stdout.readline())
        armed = wait_for("armed by the /proc rescan", lambda: d.armed(pid), 30)
        expect(armed["held"], "held against fatal signals without eBPF", armed)
        victim.stdin.write("go\n")
        victim.stdin.flush()
        rc = victim.wait(60)
        expect(rc == -signal.SIGSEGV, f"it died of SIGSEGV ({rc})")
        t = d.finished("fatal-signal", pid)
        expect(t["outcome"] == "captured" and t["evidence"].get("held") is True, "captured while held", t)
    finally:
        d.stop()


class Intake:
    """A lab CA, a device certificate for the test's device key, and `mlfx serve` on loopback."""

    def __init__(self, args, root, device_id):
        self.root = root
        os.makedirs(root, exist_ok=True)
        mlfx = args.mlfx
        run = lambda *a: subprocess.run([mlfx, *a], check=True, stdout=subprocess.DEVNULL, cwd=root)
        run("ca", "init", "--out", "ca")
        run("ca", "issue", "--ca", "ca", "--device", os.path.join(args.keys, "dev.pub"), "--id", device_id,
            "--out", "device.pem")
        run("keys", "gen", "--kind", "device", "--out", "intake")
        run("ca", "issue", "--ca", "ca", "--server", "--key", "intake.pub", "--name", "127.0.0.1", "--out", "intake.pem")
        self.log = open(os.path.join(root, "intake.log"), "w")
        self.proc = subprocess.Popen([mlfx, "serve", "--listen", "127.0.0.1:0", "--port-file", "intake.port",
                                      "--store", "store", "--ca-dir", "ca", "--cert", "intake.pem", "--key", "intake.key"],
                                     cwd=root, stdout=self.log, stderr=subprocess.STDOUT)
        port_file = os.path.join(root, "intake.port")
        wait_for("the intake", lambda: os.path.exists(port_file) and open(port_file).read().strip(), 30)
        self.port = int(open(port_file).read())
        self.store = os.path.join(root, "store")

    def upload_config(self, args):
        r = self.root
        return textwrap.dedent(f"""\
            [upload]
            server = "127.0.0.1:{self.port}"
            ca = "{r}/ca/ca.pem"
            cert = "{r}/device.pem"
            key = "{args.keys}/dev.key"
            intake_key = "{r}/intake.pub"
            poll = "1s"
            """)

    def stored(self):
        d = os.path.join(self.store, "objects")
        return sorted(f for f in os.listdir(d) if f.endswith(".mlfx")) if os.path.isdir(d) else []

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def case_upload(args, tmp):
    step("upload: with [upload] the daemon ships each capture to a real intake over mutual TLS")
    root = os.path.join(tmp, "upload")
    intake = Intake(args, os.path.join(root, "lab"), socket.gethostname())
    d = Daemon(args, root, torch_target("plain", "mlfx-upload-victim"), rule("manual", ["on-demand"]),
               extra=intake.upload_config(args))
    victim = None
    try:
        d.start()
        victim, pid, _, _ = start_sleeper(root, "mlfx-upload-victim")
        wait_for("armed", lambda: d.armed(pid), 30)
        out = d.agent("trigger", "--socket", d.socket, "--pid", str(pid), "--reason", "ship it").stdout
        bundle_name = os.path.basename(out.split("captured: ", 1)[1].strip())
        stored = wait_for("the bundle at the intake", lambda: intake.stored(), 60)
        uploaded = wait_for("the upload in the log", lambda: d.events("uploaded"), 30)
        step(f"upload: {bundle_name} stored by the intake as {stored[0]} ({uploaded[0].get('result')})")
        expect(uploaded[0].get("result") == "stored", "the upload was stored", uploaded)
        wait_for("the spool to empty", lambda: not [f for f in os.listdir(os.path.join(d.spool, "queue"))
                                                   if f.endswith(".mlfx")], 30)
    finally:
        if victim:
            victim.kill()
        d.stop()
        intake.stop()


def case_lab_request(args, tmp):
    step("lab-request: a capture request signed in the lab reaches the device over the intake's mutual TLS, "
         "is captured once, and its replay is refused")
    root = os.path.join(tmp, "lab-request")
    intake = Intake(args, os.path.join(root, "lab"), socket.gethostname())
    lab = intake.root
    subprocess.run([args.mlfx, "keys", "gen", "--kind", "request", "--out", os.path.join(lab, "requests")], check=True,
                   stdout=subprocess.DEVNULL)
    extra = intake.upload_config(args) + f'\n[lab_requests]\nsigners = ["{lab}/requests.pub"]\nmax_age = "5m"\n'
    d = Daemon(args, root, torch_target("plain", "mlfx-labreq-victim"), rule("lab", ["lab-request"]), extra=extra)
    victim = None
    try:
        d.start()
        victim, pid, _, _ = start_sleeper(root, "mlfx-labreq-victim")
        wait_for("armed", lambda: d.armed(pid), 30)
        signed = os.path.join(lab, "request.json")
        subprocess.run([args.mlfx, "request", "capture", "--device", socket.gethostname(), "--target", "plain",
                        "--reason", "case 42: check the model", "--key", os.path.join(lab, "requests.key"),
                        "--requester", "analyst@lab", "--out", signed], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([args.mlfx, "request", "add", "--store", intake.store, signed], check=True,
                       stdout=subprocess.DEVNULL)
        t = d.finished("lab-request", pid, 90)
        ev = t["evidence"]
        step(f"lab-request: {ev.get('request_id')} by {ev.get('requester')}: {t['outcome']}")
        expect(t["outcome"] == "captured", "the lab request was captured", t)
        expect(ev.get("requester") == "analyst@lab" and ev.get("reason") == "case 42: check the model",
               "the requester and reason are in the evidence", ev)
        info = json.loads(subprocess.run([args.mlfx, "bundle", "info", t["detail"], "--json"], stdout=subprocess.PIPE,
                                         check=True, text=True).stdout)
        custody = json.dumps(info.get("custody", info))
        expect("analyst@lab" in custody and "signed_request" in custody,
               "the custody log records the requester and the signed request")
        step("lab-request: the same signed request queued again is refused as a replay")
        again = subprocess.run([args.mlfx, "request", "add", "--store", intake.store, signed],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        expect(again.returncode != 0, "the intake refuses to queue a delivered request again", again.stdout)
        step(f"lab-request: the intake refuses it again: {again.stdout.strip()[:120]}")
        # A hostile (or broken) intake that offers it again anyway: the device refuses the replay.
        def delivered_files():
            return [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(intake.store, "requests", "delivered"))
                    for f in fs if f == ev.get("request_id", "?") + ".json"]
        # The intake marks it delivered when the device acknowledges it, on its next poll.
        delivered = wait_for("the request delivered", delivered_files, 60)
        pending = os.path.join(intake.store, "requests", "pending", socket.gethostname())
        os.makedirs(pending, exist_ok=True)
        shutil.copy2(signed, os.path.join(pending, ev["request_id"] + ".json"))  # as the queue names it
        refused = wait_for("the replay refused by the device", lambda: d.events("lab_request_refused"), 60)
        expect(any("replay" in e.get("error", "").lower() or "already" in e.get("error", "").lower()
                   or "nonce" in e.get("error", "").lower() for e in refused), "the replay is refused as such", refused)
        step(f"lab-request: the device refuses the replay: {refused[-1].get('error', '')[:160]}")
        lab_triggers = [x for x in d.status()["recent_triggers"] if x["kind"] == "lab-request"]
        expect(len(lab_triggers) == 1, f"the request was honoured once ({len(lab_triggers)} triggers)")
    finally:
        if victim:
            victim.kill()
        d.stop()
        intake.stop()


MAPPER = textwrap.dedent("""\
    import mmap, os, sys
    sys.stdout.write("%d\\n" % os.getpid()); sys.stdout.flush()
    keep = []
    for line in sys.stdin:
        what = line.strip()
        if what == "memfd":
            fd = os.memfd_create("payload")
            os.write(fd, b"\\xc3" * 4096)  # ret
        else:
            fd = os.open(what, os.O_RDONLY)
        keep.append(mmap.mmap(fd, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC))
        os.close(fd)
        sys.stdout.write("mapped\\n"); sys.stdout.flush()
    """)


def case_injection(args, tmp):
    step("injection: code mapped from /tmp or a memfd triggers; a library from the system's directories does not")
    root = os.path.join(tmp, "injection")
    d = Daemon(args, root, torch_target("mapper", "mlfx-injection-victim"),
               rule("inject", ["library-injection"], 'max_captures = 5\ncooldown = "0s"\n')).start()
    victim = subprocess.Popen([PYTHON, "-c", MAPPER, "mlfx-injection-victim"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        pid = int(victim.stdout.readline())
        wait_for("armed", lambda: d.armed(pid), 30)
        libc = next(p for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6",
                                "/usr/lib/x86_64-linux-gnu/libc.so.6") if os.path.exists(p))
        planted = os.path.join("/tmp", f"mlfx-injected-{os.getpid()}.so")
        shutil.copy2(libc, planted)
        for what in (libc, planted, "memfd"):
            victim.stdin.write(what + "\n")
            victim.stdin.flush()
            expect(victim.stdout.readline().strip() == "mapped", f"the victim mapped {what}")
            if what == libc:
                time.sleep(1.0)
                expect(d.trigger(kind="library-injection", pid=pid) is None,
                       "a library from the system's directories is not an injection")
        wait_for("two injections", lambda: len([t for t in d.status()["recent_triggers"]
                                               if t["kind"] == "library-injection" and
                                               t["outcome"] not in ("queued", "pending")]) == 2, 60)
        found = [t for t in d.status()["recent_triggers"] if t["kind"] == "library-injection"]
        files = sorted(t["evidence"].get("file", "") for t in found)
        step("injection: " + "; ".join(f"{t['evidence'].get('file')}: {t['evidence'].get('why')} -> {t['outcome']}"
                                       for t in found))
        expect(any(f.startswith("/memfd:payload") for f in files) and planted in files,
               "the memfd and the planted /tmp file were reported", files)
        expect(all(t["outcome"] == "captured" for t in found), "both were captured", found)
        os.unlink(planted)
    finally:
        victim.kill()
        d.stop()


def case_gpu(args, tmp):
    step("gpu: a CUDA error reported by the target captures its GPU dump (before the freeze) and its memory")
    if not args.fake_cuda_target:
        expect(False, "gpu: give --fake-cuda-target")
        return
    root = os.path.join(tmp, "gpu")
    gpu_dir = os.path.join(root, "run", "gpu")
    d = Daemon(args, root, torch_target("cuda", "mlfx-gpu-victim"),
               rule("cuda", ["cuda-error"], 'sources = ["gpu", "process"]\ncooldown = "0s"\n'),
               agent_extra=f'gpu_dir = "{gpu_dir}"\n').start()
    fakes = []
    try:
        env = dict(os.environ)
        for line in d.agent("gpu-env", "--dir", gpu_dir).stdout.split():
            key, _, value = line.partition("=")
            env[key] = value

        def start_fake(name, environment):
            truth = os.path.join(root, name + ".nvcudmp")
            p = subprocess.Popen([args.fake_cuda_target, "--truth", truth, "--global-bytes", str(4 << 20),
                                  "--ready", os.path.join(root, name + ".mlfx-gpu-victim"),
                                  "--cuda-error-socket", d.anomaly_socket], env=environment,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            fakes.append(p)
            wait_for(f"the {name} target armed", lambda: d.armed(p.pid), 30)
            p.send_signal(signal.SIGUSR1)  # it reports cuLaunchKernel's CUDA_ERROR_ILLEGAL_ADDRESS
            return p, truth, d.finished("cuda-error", p.pid)

        p, truth, t = start_fake("armed", env)
        expect(t["outcome"] == "captured", "the cuda-error trigger captured", t)
        ev = t["evidence"]
        expect(ev.get("cuda_api") == "cuLaunchKernel" and ev.get("cuda_error") == "CUDA_ERROR_ILLEGAL_ADDRESS" and
               ev.get("cuda_error_code") == 700, "the evidence records the CUDA error as data", ev)
        expect("sources_skipped" not in ev, "no source was skipped", ev)
        out = os.path.join(root, "open")
        subprocess.run([args.mlfx, "bundle", "open", t["detail"], "--key", os.path.join(args.keys, "lab.key"),
                        "--out", out, "-q"], check=True)
        expect(open(os.path.join(out, "gpu-core"), "rb").read() == open(truth, "rb").read(),
               "the sealed GPU dump is byte-identical to the target's")
        expect(os.path.exists(os.path.join(out, "core")), "the process core is in the same bundle")
        manifest = json.load(open(os.path.join(out, "manifest.json")))
        names = [s["name"] for s in manifest["streams"]]
        expect(names[:2] == ["gpu-core", "core"], "GPU first, then the process", names)
        events = [(e["event"], e.get("source"), e.get("note")) for e in manifest["context"]["timeline"]["events"]]
        expect(events.index(("read_end", "gpu", "before_freeze")) < events.index(("frozen", None, None)),
               "the GPU dump is read before the target is frozen", events)
        expect(p.poll() is None, "the target survived")

        _, _, t = start_fake("unarmed", {k: v for k, v in env.items() if not k.startswith("CUDA_")})
        skipped = t["evidence"].get("sources_skipped", [])
        expect(t["outcome"] == "captured" and any(s["source"] == "gpu" and "not armed" in s["why"] for s in skipped),
               "a target not armed: its memory captured, the GPU source skipped with a note", t)
    finally:
        for p in fakes:
            p.kill()
        d.stop()


CASES = {"config": case_config, "crash": case_crash, "tamper": case_tamper, "storm": case_storm,
         "reload": case_reload, "killed": case_killed, "oom": case_oom, "pressure": case_pressure,
         "no-ebpf": case_no_ebpf, "upload": case_upload,
         "lab-request": case_lab_request, "injection": case_injection, "gpu": case_gpu}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    ap.add_argument("--mlfx", required=True)
    ap.add_argument("--fake-cuda-target", help="tests/agent/fake_cuda_target (the gpu case)")
    ap.add_argument("cases", nargs="*", default=list(CASES))
    args = ap.parse_args()
    args.agent, args.mlfx = os.path.abspath(args.agent), os.path.abspath(args.mlfx)
    if args.fake_cuda_target:
        args.fake_cuda_target = os.path.abspath(args.fake_cuda_target)
    if os.geteuid() != 0:
        print("SKIP: the armed daemon's tests load eBPF programs and trace other processes: run as root")
        return 77
    with tempfile.TemporaryDirectory(prefix="mlfx-daemon-") as tmp:
        args.keys = os.path.join(tmp, "keys")
        os.makedirs(args.keys)
        subprocess.run([args.mlfx, "keys", "gen", "--kind", "device", "--out", os.path.join(args.keys, "dev")],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([args.mlfx, "keys", "gen", "--kind", "lab", "--out", os.path.join(args.keys, "lab")],
                       check=True, stdout=subprocess.DEVNULL)
        args.trusted = os.path.join(tmp, "trusted")  # the device key under the device id bundles name
        os.makedirs(args.trusted)
        shutil.copy2(os.path.join(args.keys, "dev.pub"), os.path.join(args.trusted, socket.gethostname() + ".pub"))
        for name in args.cases:
            try:
                CASES[name](args, tmp)
            except Exception as e:  # a case that cannot go on fails, the others still run
                expect(False, f"{name}: {type(e).__name__}: {e}")
    if failures:
        print(f"{len(failures)} failure(s):", *failures, sep="\n  ")
        return 1
    print("all daemon cases passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
