#!/usr/bin/env python3
"""Benchmark (not a test) of issue 13's figures, in one VM-lab guest on Debian's kernel under
QEMU software emulation, ROUNDS interleaved rounds, `sync` before every timed run, medians and
ratios (median measured / median reference):

    tests/bench/physical_bench.py [--build BUILD_DIR] [--rounds N] [--memory MIB] [--victim NAME]

  sealed     mlfx-agent capture --source lime (LiME's output streamed through a FIFO into the
             sealer: hashed, encrypted, signed, no plaintext at rest) to the guest's disk
             vs  stock LiME (insmod lime.ko path=FILE format=lime) writing an unsealed image
             to the same disk, insmod to rmmod + sync                        (goal <= 1.2)
  kmod       mlfx-agent capture --source kmod (our mlfx_mem.ko, read with pread into the
             sealer)  vs  the same stock LiME reference
  recover    on the host: mlfx recover --pid VICTIM of the sealed whole-memory bundle  vs
             mlfx recover of a process capture of the same victim (mlfx-agent capture
             --source process in the guest)
  native     on the host's own CPU (no emulation; the host kernel cannot load LiME): the guest's
             LiME image piped into the sealer (cat IMAGE | mlfx bundle seal -) vs written plain
             (cat IMAGE > FILE), both to the host's disk + sync: what sealing as it streams
             costs where the CPU's AES and SHA instructions run natively

Times in the guest are whole commands as a user runs them, start-up, module load and unload
included, read with the guest's clock (which runs with the host's under TCG). Emulation makes
every figure slower than on hardware (and crypto more than copying): quote the ratios.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "vmlab"))
sys.path.insert(0, os.path.join(ROOT, "tests", "kmod"))
import kmod_build  # noqa: E402
import vmlab  # noqa: E402

PYTHON = "/usr/bin/python3"
VICTIMS = os.path.join(ROOT, "tests", "victims")


def host(*args):
    subprocess.run(list(args), check=True, stdout=subprocess.DEVNULL)


def timed_in_guest(guest, cmd, timeout=3600):
    """Seconds for `sync; CMD; sync` in the guest, by the guest's /proc/uptime around the command."""
    out = guest.check(f"sync; a=$(cut -d' ' -f1 /proc/uptime); {cmd}; rc=$?; sync; "
                      f"b=$(cut -d' ' -f1 /proc/uptime); echo \"timing $a $b $rc\"", timeout=timeout)
    _, a, b, rc = out.strip().splitlines()[-1].split()
    if rc != "0":
        raise SystemExit(f"benchmark command failed ({rc}): {cmd}\n{out}")
    return float(b) - float(a)


def timed_on_host(*args):
    subprocess.run(["sync"], check=True)
    start = time.monotonic()
    subprocess.run(list(args), check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def line(name, measured, reference, what, ref_what, goal=None):
    m, r = statistics.median(measured), statistics.median(reference)
    rounds = " ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(measured, reference))
    print(f"{name:8s} {what}: median {m:.1f} s  vs  {ref_what}: median {r:.1f} s  ratio {m / r:.2f}"
          f"{f'  (goal <= {goal})' if goal else ''}   rounds {rounds}", flush=True)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--memory", type=int, default=1024, help="guest RAM in MiB")
    p.add_argument("--victim", default="resnet", help="tests/victims/torch_victim.py scenario")
    p.add_argument("--cpu", default="qemu64", help="QEMU -cpu: qemu64 (no AES-NI/SHA-NI: OpenSSL's generic code, "
                                                   "emulated), or max (TCG's emulated AES-NI, PCLMUL, AVX2)")
    args = p.parse_args(argv)
    build = os.path.abspath(args.build)
    agent, mlfx = os.path.join(build, "agent", "mlfx-agent"), os.path.join(build, "analyzer", "mlfx")
    reason = vmlab.missing()
    if reason:
        raise SystemExit(f"the VM lab cannot run here: {reason}")
    kernel = vmlab.installed_kernels()[-1]
    lime = f"/mnt/host/lib/modules/{kernel}/updates/dkms/lime.ko"  # the guest's / is its initramfs
    with tempfile.TemporaryDirectory(prefix="mlfx-physical-bench-") as tmp:
        out = os.path.join(tmp, "out")
        os.makedirs(out)
        host(mlfx, "keys", "gen", "--kind", "device", "--out", os.path.join(out, "dev"))
        host(mlfx, "keys", "gen", "--kind", "lab", "--out", os.path.join(tmp, "lab"))
        shutil.copy2(os.path.join(tmp, "lab.pub"), out)
        shutil.copy2(kmod_build.build_module(os.path.join(ROOT, "kmod"), kernel, tmp), out)
        keys = "--device-key /mnt/out/dev.key --recipient /mnt/out/lab.pub"
        disk = 3 * args.memory + 1024
        with vmlab.Guest(kernel_version=kernel, memory_mib=args.memory, cpus=2, cpu=args.cpu, out_dir=out,
                         disk_mib=disk, host_cache="loose") as g:
            print(f"guest {kernel}, {args.memory} MiB, 2 vCPUs ({args.cpu}, TCG), booted in {g.boot_seconds:.1f} s; "
                  f"host {os.cpu_count()} cores", flush=True)
            victim = g.spawn(f"exec chroot /mnt/host {PYTHON} {VICTIMS}/torch_victim.py {args.victim} /mnt/out/gt")
            deadline = time.monotonic() + 900
            while not os.path.exists(os.path.join(out, "gt", "ready")):
                if time.monotonic() > deadline:
                    raise SystemExit("the victim did not start:\n" + g.run(f"cat {victim.log}")[1])
                time.sleep(1)
            pid = victim.pid
            a = f"chroot /mnt/host {agent}"
            ram = int(g.check("awk '/MemTotal/ {print $2}' /proc/meminfo").strip()) * 1024
            print(f"victim {args.victim}, pid {pid}; guest MemTotal {ram >> 20} MiB", flush=True)
            # The bundles for the recover comparison first, before the rounds' gigabytes of disk
            # writes push more of the victim's clean file pages out of RAM.
            g.check(f"{a} capture --source process --pid {pid} --out /mnt/disk/p.mlfx {keys} -q", timeout=1800)
            g.check(f"{a} capture --source lime --pid {pid} --out /mnt/disk/r.mlfx {keys} -q", timeout=1800)
            for name in ("r.mlfx", "p.mlfx"):
                g.check(f"dd if=/mnt/disk/{name} of=/mnt/out/{name} bs=1M 2>/dev/null && rm /mnt/disk/{name}", timeout=1800)
            ref, sealed, kmod = [], [], []
            for n in range(args.rounds):
                ref.append(timed_in_guest(g, f"insmod {lime} 'path=/mnt/disk/ref.lime format=lime' && rmmod lime"))
                size = int(g.check("stat -c %s /mnt/disk/ref.lime").strip())
                g.check("rm -f /mnt/disk/ref.lime")
                sealed.append(timed_in_guest(g, f"{a} capture --source lime --pid {pid} --out /mnt/disk/s.mlfx {keys} -q"))
                kmod.append(timed_in_guest(g, f"{a} capture --source kmod --module /mnt/out/mlfx_mem.ko --pid {pid} "
                                              f"--out /mnt/disk/k.mlfx {keys} -q"))
                print(f"round {n + 1}: LiME to disk {ref[-1]:.1f} s ({size >> 20} MiB), sealed {sealed[-1]:.1f} s, "
                      f"kmod {kmod[-1]:.1f} s", flush=True)
                g.check("rm -f /mnt/disk/s.mlfx /mnt/disk/k.mlfx")
            open(os.path.join(out, "gt", "stop"), "w").close()
            g.poweroff()
        line("sealed", sealed, ref, "capture --source lime (sealed)", "stock LiME to disk", 1.2)
        line("kmod", kmod, ref, "capture --source kmod (sealed)", "stock LiME to disk")
        phys, proc = [], []
        lab = os.path.join(tmp, "lab.key")
        for n in range(args.rounds):
            for d in ("rp", "rq"):
                shutil.rmtree(os.path.join(tmp, d), ignore_errors=True)
            # --sysroot /: the guest ran this host's files, and a physical image holds only the
            # file pages that were in its page cache (under memory pressure the interpreter's
            # symbol tables are dropped). The process capture holds them all; same options.
            proc.append(timed_on_host(mlfx, "recover", os.path.join(out, "p.mlfx"), "--key", lab,
                                      "--sysroot", "/", "--out", os.path.join(tmp, "rq"), "-q"))
            phys.append(timed_on_host(mlfx, "recover", os.path.join(out, "r.mlfx"), "--key", lab, "--sysroot", "/",
                                      "--pid", str(pid), "--out", os.path.join(tmp, "rp"), "-q"))
        sizes = {n: os.path.getsize(os.path.join(out, n)) >> 20 for n in ("r.mlfx", "p.mlfx")}
        line("recover", phys, proc, f"recover from the physical bundle ({sizes['r.mlfx']} MiB)",
             f"recover from the process capture ({sizes['p.mlfx']} MiB)")

        opened = os.path.join(tmp, "opened")
        host(mlfx, "bundle", "open", os.path.join(out, "r.mlfx"), "--key", lab, "--out", opened, "-q")
        image = os.path.join(opened, "memory")
        host("cat", image)  # in the page cache, as RAM is for LiME
        seal_keys = ["--device-key", os.path.join(out, "dev.key"), "--recipient", os.path.join(out, "lab.pub")]
        plain, sealed_native = [], []
        for n in range(args.rounds):
            for f in ("plain.lime", "native.mlfx"):
                if os.path.exists(os.path.join(tmp, f)):
                    os.remove(os.path.join(tmp, f))
            plain.append(timed_on_host("sh", "-c", f"cat {image} > {tmp}/plain.lime && sync"))
            sealed_native.append(timed_on_host("sh", "-c", f"cat {image} | {mlfx} bundle seal - --name memory -q "
                                                           f"--out {tmp}/native.mlfx {' '.join(seal_keys)} && sync"))
        line("native", sealed_native, plain, f"cat LiME image ({os.path.getsize(image) >> 20} MiB) | mlfx bundle seal -",
             "cat LiME image > file", 1.2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
