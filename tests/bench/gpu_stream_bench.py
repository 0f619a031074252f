#!/usr/bin/env python3
"""Benchmark (not a test): the agent's half of a GPU capture, on a machine without a GPU. The
driver is played by tests/agent/fake_cuda_target (a GPU core dump built per NVIDIA's public
format, streamed into the FIFO the dump file names, as the driver documents); each round times,
whole commands as a user runs them, `sync` before each:

  agent:  mlfx-agent capture --pid P --source gpu --out B.mlfx   (trigger, FIFO -> hash +
          encrypt + write the bundle, context, custody)
  cat:    the same trigger and FIFO read by `cat FIFO > FILE`     (the same bytes from the same
          producer written to disk, plainly)

interleaved, medians. The producer's own speed bounds both: the ratio is what the agent adds to
a plain copy of the stream. (The GPU's half, the driver's dump against a plain cudaMemcpy, runs on
a GPU machine: tests/gpu/run_gpu_check.sh.)

    tests/bench/gpu_stream_bench.py [--build DIR] [--bytes N] [--rounds N] [--json FILE]
Root only (the agent's GPU directory and the FIFO's owner).
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sh(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--bytes", type=int, default=2 << 30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    agent, mlfx = os.path.join(a.build, "agent/mlfx-agent"), os.path.join(a.build, "analyzer/mlfx")
    fake = os.path.join(a.build, "tests/agent/fake_cuda_target")
    work = tempfile.mkdtemp(prefix="mlfx-gpu-bench-", dir="/var/tmp")
    gpu_dir = os.path.join(work, "gpu")
    sh([mlfx, "keys", "gen", "--kind", "device", "--out", os.path.join(work, "dev")])
    sh([mlfx, "keys", "gen", "--kind", "lab", "--out", os.path.join(work, "lab")])
    env = dict(os.environ)
    for line in sh([agent, "gpu-env", "--dir", gpu_dir]).stdout.split():
        k, v = line.split("=", 1)
        env[k] = v
    env["CUDA_COREDUMP_SHOW_PROGRESS"] = "0"
    ready = os.path.join(work, "ready")
    target = subprocess.Popen([fake, "--global-bytes", str(a.bytes), "--ready", ready], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not os.path.exists(ready):
            time.sleep(0.05)
        pid = target.pid
        bundle, plain = os.path.join(work, "b.mlfx"), os.path.join(work, "plain.nvcudmp")
        fifo, pipe = os.path.join(gpu_dir, "core.%d" % pid), os.path.join(gpu_dir, "corepipe.%d" % pid)
        times = {"agent": [], "cat": []}
        size = None
        for r in range(a.rounds):
            subprocess.run(["sync"], check=True)
            t = time.monotonic()
            sh([agent, "capture", "--pid", str(pid), "--source", "gpu", "--gpu-dir", gpu_dir, "--out", bundle,
                "--device-key", os.path.join(work, "dev.key"), "--recipient", os.path.join(work, "lab.pub"), "-q"])
            times["agent"].append(time.monotonic() - t)
            os.remove(bundle)
            subprocess.run(["sync"], check=True)
            t = time.monotonic()
            os.mkfifo(fifo, 0o600)
            cat = subprocess.Popen(["sh", "-c", 'exec cat "$0" > "$1"', fifo, plain])
            with open(pipe, "wb", buffering=0) as p:
                p.write(b"1")
            cat.wait()
            times["cat"].append(time.monotonic() - t)
            os.remove(fifo)
            size = os.path.getsize(plain)
            os.remove(plain)
            print("round %d: agent %.2f s, cat %.2f s" % (r + 1, times["agent"][-1], times["cat"][-1]), flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        out = {"dump_bytes": size, "rounds": a.rounds, "seconds": times, "median_seconds": med,
               "agent_mib_per_s": size / med["agent"] / 2**20, "cat_mib_per_s": size / med["cat"] / 2**20,
               "ratio_agent_over_cat": med["agent"] / med["cat"]}
        print(json.dumps({k: v for k, v in out.items() if k != "seconds"}, indent=1))
        if a.json:
            json.dump(out, open(a.json, "w"), indent=1)
    finally:
        target.kill()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
