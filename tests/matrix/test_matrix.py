#!/usr/bin/env python3
"""One entry of the version matrix, end to end: a real python3 + torch of a Debian release
(chroots.py) runs every model family of the recovery tests in one victim; mlfx-agent captures
it; mlfx recovers every model, checked bit for bit with the release's own torch.

    test_matrix.py --suite bookworm|trixie|sid --mlfx MLFX --agent MLFX_AGENT [--keep]

Steps: get the chroot (built on first use, a few minutes; cached), start
tests/victims/torch_victim.py families inside it, capture it (`mlfx-agent capture`), check
the victim survived with unchanged outputs, `mlfx recover` the bundle, run
tests/victims/check_recovery.py inside the chroot against the victim's ground truth, and check
that report.json names the suite's Python and torch. Root only (chroot, mounts): exits 77
(skipped) otherwise, or when debootstrap is not installed. --keep leaves the work directory
(bundle, ground truth, recovery) and prints where.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import chroots  # noqa: E402

SKIP = 77


class Failed(Exception):
    pass


def step(what):
    print("--", what, flush=True)


def run(argv, timeout=600):
    """(exit status, stdout+stderr) of a command."""
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return 124, (e.output or "") + "\n(timed out after %d s)" % timeout
    return p.returncode, p.stdout


def tail(text, lines=25):
    return "\n".join(text.rstrip().splitlines()[-lines:])


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def process_state(pid):
    stat = read("/proc/%d/stat" % pid)
    return stat[stat.rfind(")") + 2] if ")" in stat else "?"


class Victim:
    """The families victim inside the chroot; its pid is the chroot's python's."""

    def __init__(self, root, work):
        self.root, self.work = root, work
        self.gt = os.path.join(work, "gt")
        self.stderr_path = os.path.join(work, "victim.stderr")
        argv = chroots.python_command(root, work, [chroots.VICTIMS_MOUNT + "/torch_victim.py", "families",
                                                   chroots.inside(self.gt, work)])
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        self.pid = self.proc.pid

    def stderr(self):
        return tail(read(self.stderr_path))

    def wait_file(self, name, timeout):
        path = os.path.join(self.gt, name)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if os.path.exists(path):
                return True
            if self.proc.poll() is not None:
                raise Failed("the victim ended (exit %s) while waiting for %s; its stderr:\n%s"
                             % (self.proc.returncode, name, self.stderr()))
            time.sleep(0.1)
        return False

    def touch(self, name):
        with open(os.path.join(self.gt, name), "w") as f:
            f.write("1")

    def stop(self):
        if self.proc.poll() is None:
            if os.path.isdir(self.gt):
                self.touch("stop")
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def in_chroot_python(root, work, code, *args):
    return run(chroots.python_command(root, work, ["-c", code] + list(args)), timeout=300)


SAME_OUTPUTS = ("import sys, torch; a = torch.load(sys.argv[1]); b = torch.load(sys.argv[2]); "
                "bad = [k for k in a if k not in b or not torch.equal(a[k], b[k])]; "
                "print('outputs differ:', bad) if bad else None; sys.exit(1 if bad or a.keys() != b.keys() else 0)")


def check_victim_survived(victim, root, work):
    beat = read(os.path.join(victim.gt, "heartbeat"))
    if victim.proc.poll() is not None:
        raise Failed("the victim died during the capture (exit %s); its stderr:\n%s" % (victim.proc.returncode, victim.stderr()))
    time.sleep(0.3)
    state = process_state(victim.pid)
    if state in ("t", "T"):
        raise Failed("the victim is left stopped (state %s) after the capture" % state)
    victim.touch("check")
    if not victim.wait_file("checked", 120):
        raise Failed("the victim did not answer `check` within 120 s after the capture; its stderr:\n" + victim.stderr())
    if read(os.path.join(victim.gt, "heartbeat")) == beat:
        raise Failed("the victim's heartbeat stopped after the capture")
    rc, out = in_chroot_python(root, work, SAME_OUTPUTS, chroots.inside(os.path.join(victim.gt, "outputs_before.pt"), work),
                               chroots.inside(os.path.join(victim.gt, "outputs_after.pt"), work))
    if rc != 0:
        raise Failed("the victim's outputs changed after the capture (compared with the chroot's torch):\n" + tail(out))


def check_report(report_path, suite):
    want = chroots.SUITES[suite]
    try:
        with open(report_path) as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        raise Failed("cannot read %s: %s" % (report_path, e))
    python = str(report.get("python", {}).get("version"))
    torch = str(report.get("torch", {}).get("version"))
    if not python.startswith(want["python"] + "."):
        raise Failed("report.json: python.version is %s; %s ships Python %s" % (python, suite, want["python"]))
    if not report.get("torch", {}).get("loaded") or not (torch == want["torch"] or torch.startswith(want["torch"] + ".")):
        raise Failed("report.json: torch.version is %s (loaded %s); %s ships torch %s"
                     % (torch, report.get("torch", {}).get("loaded"), suite, want["torch"]))
    incomplete = [m.get("directory") for m in report.get("models", []) if not m.get("complete")]
    if incomplete:
        raise Failed("report.json: models not complete: %s" % incomplete)
    return python, torch, len(report.get("models", []))


def matrix_entry(args, work):
    step("chroot %s (built on first use; cache %s)" % (args.suite, chroots.cache_root()))
    try:
        root = chroots.get(args.suite)
        held = chroots.info(args.suite)
    except (chroots.ChrootError, OSError, subprocess.CalledProcessError) as e:
        raise Failed("cannot get the %s chroot: %s" % (args.suite, e))
    print("   %s: Python %s, torch %s (%s)" % (root, held["python"]["version"], held["torch"]["version"],
                                                held["torch"]["package_version"]), flush=True)

    step("keys")
    keys = os.path.join(work, "keys")
    os.makedirs(keys)
    for kind, prefix in (("device", "dev"), ("lab", "lab")):
        rc, out = run([args.mlfx, "keys", "gen", "--kind", kind, "--out", os.path.join(keys, prefix)])
        if rc != 0:
            raise Failed("mlfx keys gen --kind %s failed (exit %d):\n%s" % (kind, rc, tail(out)))

    step("victim: torch_victim.py families in the %s chroot" % args.suite)
    victim = Victim(root, work)
    try:
        if not victim.wait_file("ready", 600):
            raise Failed("the victim was not ready within 600 s; its stderr:\n" + victim.stderr())
        if read(os.path.join(victim.gt, "ready")).strip() != str(victim.pid):
            raise Failed("the victim's pid is %s, not the pid started (%d): the command line does not exec down to python"
                         % (read(os.path.join(victim.gt, "ready")).strip(), victim.pid))

        step("capture pid %d" % victim.pid)
        bundle = os.path.join(work, "capture.mlfx")
        start = time.monotonic()
        rc, out = run([args.agent, "capture", "--pid", str(victim.pid), "--out", bundle,
                       "--device-key", os.path.join(keys, "dev.key"), "--recipient", os.path.join(keys, "lab.pub"),
                       "--case", "MATRIX-" + args.suite, "-q"])
        if rc != 0:
            raise Failed("mlfx-agent capture failed (exit %d):\n%s" % (rc, tail(out)))
        print("   captured in %.1f s, %.0f MiB" % (time.monotonic() - start, os.path.getsize(bundle) / 2**20), flush=True)

        step("the victim survived")
        check_victim_survived(victim, root, work)
    finally:
        victim.stop()

    step("recover")
    recovered = os.path.join(work, "recovered")
    start = time.monotonic()
    rc, out = run([args.mlfx, "recover", bundle, "--key", os.path.join(keys, "lab.key"), "--out", recovered, "-q"])
    if rc != 0:
        raise Failed("mlfx recover of the %s victim (Python %s, torch %s) failed (exit %d):\n%s"
                     % (args.suite, held["python"]["version"], held["torch"]["version"], rc, tail(out)))
    print("   recovered in %.1f s" % (time.monotonic() - start), flush=True)

    step("check_recovery.py with the chroot's torch")
    rc, out = run(chroots.python_command(root, work, [chroots.VICTIMS_MOUNT + "/check_recovery.py",
                                                      chroots.inside(victim.gt, work), chroots.inside(recovered, work)]))
    print(out.rstrip(), flush=True)
    if rc != 0:
        raise Failed("check_recovery.py found differences (exit %d)" % rc)

    step("report.json")
    python, torch, n = check_report(os.path.join(recovered, "report.json"), args.suite)
    print("   Python %s, torch %s, %d models" % (python, torch, n), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", required=True, choices=list(chroots.SUITES))
    ap.add_argument("--mlfx", required=True)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("SKIP: needs root (debootstrap, chroot, mounts in a private namespace)")
        return SKIP
    if not chroots.is_built(args.suite) and not shutil.which("debootstrap"):
        print("SKIP: the %s chroot is not built and debootstrap is not installed: run packaging/setup-deps.sh" % args.suite)
        return SKIP
    for tool in (args.mlfx, args.agent):
        if not os.access(tool, os.X_OK):
            print("FAIL: %s is not an executable" % tool)
            return 1
    work = tempfile.mkdtemp(prefix="mlfx-matrix-%s-" % args.suite)
    ok = False
    try:
        matrix_entry(args, work)
        ok = True
    except Failed as e:
        print("FAIL [%s]: %s" % (args.suite, e), flush=True)
    finally:
        if args.keep:
            print("kept the work directory:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("PASS" if ok else "FAILED", "matrix_" + args.suite)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
