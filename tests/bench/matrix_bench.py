#!/usr/bin/env python3
"""Benchmark (not a test): recovery time of the ~60 M-parameter victim on every entry of the
version matrix (tests/matrix/chroots.py: Debian bookworm, trixie, sid), against writing its
outputs (`cp -r` of the recovered output directory), in the same run, interleaved round by
round, `sync` before each timed command. Whole commands as a user runs them, start-up included.

    tests/bench/matrix_bench.py [--build DIR] [--rounds N] [--suites bookworm,trixie,sid] [--json FILE]

Per suite: the `big` victim (tests/victims/torch_victim.py) runs in the suite's chroot, the
agent captures it into a sealed bundle once, then each round times
  recover:  mlfx recover BUNDLE --key LAB.key --out DIR -q   (decrypt, verify, walk, write)
  cp -r:    cp -r DIR DIR.copy                                (the same bytes written again)
and the recovery is checked bit-exact against the victim's ground truth once (inside the
chroot, with the suite's own torch). Prints medians and the ratio of medians. Root only.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "matrix"))
import chroots  # noqa: E402


def run(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def timed(argv):
    subprocess.run(["sync"], check=True)
    t = time.monotonic()
    run(argv)
    return time.monotonic() - t


def tree_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def bench_suite(suite, mlfx, agent, rounds, work):
    root = chroots.get(suite)
    gt = os.path.join(work, "gt")
    os.makedirs(gt)
    run([mlfx, "keys", "gen", "--kind", "device", "--out", os.path.join(work, "dev")])
    run([mlfx, "keys", "gen", "--kind", "lab", "--out", os.path.join(work, "lab")])
    victim = subprocess.Popen(chroots.python_command(root, work, ["/mnt/victims/torch_victim.py", "big",
                                                                  chroots.inside(gt, work)]),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(work, "victim.err"), "w"))
    try:
        for _ in range(1800):
            if os.path.exists(os.path.join(gt, "ready")) or victim.poll() is not None:
                break
            time.sleep(0.2)
        if not os.path.exists(os.path.join(gt, "ready")):
            raise SystemExit("%s: the victim did not start: %s" % (suite, open(os.path.join(work, "victim.err")).read()))
        bundle = os.path.join(work, "big.mlfx")
        capture = run([agent, "capture", "--pid", str(victim.pid), "--out", bundle, "--device-key",
                       os.path.join(work, "dev.key"), "--recipient", os.path.join(work, "lab.pub"), "--case", "BENCH",
                       "-q"]).stdout
    finally:
        open(os.path.join(gt, "stop"), "w").close()
        victim.wait(60)
    recover_s, copy_s = [], []
    out = os.path.join(work, "out")
    for r in range(rounds):
        for d in (out, out + ".copy"):
            shutil.rmtree(d, ignore_errors=True)
        recover_s.append(timed([mlfx, "recover", bundle, "--key", os.path.join(work, "lab.key"), "--out", out, "-q"]))
        copy_s.append(timed(["cp", "-r", out, out + ".copy"]))
        print("  %s round %d: recover %.2f s, cp -r %.2f s" % (suite, r + 1, recover_s[-1], copy_s[-1]), flush=True)
    check = subprocess.run(chroots.python_command(root, work, ["/mnt/victims/check_recovery.py",
                                                               chroots.inside(gt, work), chroots.inside(out, work)]),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check.returncode != 0:
        raise SystemExit("%s: recovery is not bit-exact:\n%s" % (suite, check.stdout))
    report = json.load(open(os.path.join(out, "report.json")))
    info = chroots.info(suite)
    return {"suite": suite, "python": report["python"]["version"], "torch": report["torch"]["version"],
            "layouts": [report["python"]["layout"], report["torch"]["layout"]],
            "bundle_bytes": os.path.getsize(bundle), "output_bytes": tree_bytes(out),
            "parameters": sum(m.get("parameters", 0) for m in report["models"]),
            "recover_s": recover_s, "cp_s": copy_s,
            "recover_median_s": statistics.median(recover_s), "cp_median_s": statistics.median(copy_s),
            "ratio": statistics.median(recover_s) / statistics.median(copy_s),
            "capture": capture.strip().splitlines()[0] if capture.strip() else "", "chroot": info.get("python", {}),
            "last_recover_timings_ms": report["timings"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--suites", default=",".join(chroots.SUITES))
    ap.add_argument("--json")
    a = ap.parse_args()
    mlfx = os.path.join(os.path.realpath(a.build), "analyzer", "mlfx")
    agent = os.path.join(os.path.realpath(a.build), "agent", "mlfx-agent")
    results = []
    for suite in a.suites.split(","):
        work = tempfile.mkdtemp(prefix="mlfx-matrix-bench-")
        try:
            results.append(bench_suite(suite, mlfx, agent, a.rounds, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| suite | Python | torch | parameters | outputs | recover median | cp -r median | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print("| %s | %s | %s | %.1f M | %.0f MiB | %.2f s | %.2f s | %.1f |" % (
            r["suite"], r["python"], r["torch"], r["parameters"] / 1e6, r["output_bytes"] / 2**20,
            r["recover_median_s"], r["cp_median_s"], r["ratio"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
