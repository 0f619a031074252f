#!/usr/bin/env python3
"""mlfx ps / mlfx maps on real whole-memory images of Debian's kernel (tests/vmlab), with 4-level
and 5-level paging: a guest runs a Python victim; the guest's own view (/proc/PID/status, maps,
smaps_rollup) is recorded; stock LiME images the RAM; the image, /proc/kallsyms, the BTF and
/proc/version are sealed into a bundle; then the processes, each one's parent, uid, threads and
comm, each mapping (range, perms, offset, path) and each process's resident pages found by
walking the kernel's structures must equal what the guest said (resident pages: between the
victim's Rss before and after the capture, since LiME's page-cache writes may evict its clean
file pages while it runs). Images stay in a temporary
directory. Missing QEMU, kernel, busybox or LiME: fail, or skip (77) with MLFX_VMLAB_OPTIONAL=1.
usage: kernel_walk_vmlab_test.py --mlfx PATH [--la57]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vmlab"))
import vmlab  # noqa: E402

SKIP = 77
VICTIM = ("import time; x = bytearray(b'MLFX-KWALK' * 400000); "
          "open('/tmp/kwalk-ready', 'w').write('1'); time.sleep(1000)")


def fail(message):
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def expect(cond, message):
    if not cond:
        fail(message)


def capture(guest, out, pid):
    guest.check(f"cat /proc/{pid}/maps > /mnt/out/victim.maps; cat /proc/1/maps > /mnt/out/init.maps")
    guest.check(f"cat /proc/{pid}/smaps_rollup > /mnt/out/victim.smaps; cat /proc/1/smaps_rollup > /mnt/out/init.smaps")
    guest.check("cat /proc/kallsyms > /mnt/out/kallsyms; cat /sys/kernel/btf/vmlinux > /mnt/out/btf; "
                "cat /proc/version > /mnt/out/version")
    guest.check("for p in /proc/[0-9]*; do echo \"${p#/proc/} $(grep -E '^(PPid|Uid|Threads)' $p/status | "
                "tr '\\n' ' ') $(cat $p/comm)\"; done > /mnt/out/status.txt")
    lime = f"/lib/modules/{guest.kernel_version}/updates/dkms/lime.ko"
    expect(os.path.exists(lime), f"{lime} is missing (packaging/setup-deps.sh builds lime-forensics-dkms)")
    guest.check(f'insmod /mnt/host{lime} "path=/mnt/disk/mem.lime format=lime"', timeout=600)
    guest.check(f"cat /proc/{pid}/smaps_rollup > /mnt/out/victim.smaps.after")
    guest.check("dd if=/mnt/disk/mem.lime of=/mnt/out/mem.lime bs=1M && rm /mnt/disk/mem.lime", timeout=600)
    guest.check("rmmod lime")


def seal(mlfx, out):
    with open(f"{out}/version") as f:
        banner = f.read()
    context = {"source": "lime", "kernel": {"banner": banner, "machine": "x86_64", "page_size": 4096,
                                            "btf": True, "kallsyms": True}}
    with open(f"{out}/context", "w") as f:
        json.dump(context, f)
    for kind in ("lab", "device"):
        subprocess.run([mlfx, "keys", "gen", "--kind", kind, "--out", f"{out}/{kind}"], check=True,
                       stdout=subprocess.DEVNULL)
    subprocess.run([mlfx, "bundle", "seal", "-q", f"{out}/mem.lime", f"{out}/context", f"{out}/kallsyms",
                    f"{out}/btf", "--name", "memory", "--name", "context", "--name", "kallsyms", "--name", "btf",
                    "--out", f"{out}/b.mlfx", "--device-key", f"{out}/device.key", "--recipient", f"{out}/lab.pub"],
                   check=True, stdout=subprocess.DEVNULL)
    os.remove(f"{out}/mem.lime")


def mlfx_json(mlfx, out, *args):
    r = subprocess.run([mlfx, *args, f"{out}/b.mlfx", "--key", f"{out}/lab.key", "-q", "--json"],
                       capture_output=True, text=True)
    expect(r.returncode == 0, f"mlfx {' '.join(args)} failed: {r.stderr}")
    return json.loads(r.stdout)


def guest_processes(out):
    procs = {}
    with open(f"{out}/status.txt") as f:
        for line in f:
            fields = line.split()
            comm = fields[-1]
            if comm.startswith("kworker"):
                comm = comm.split("-")[0]  # /proc/PID/comm adds a worker's current work queue
            procs[int(fields[0])] = {"ppid": int(re.search(r"PPid:\s*(\d+)", line).group(1)),
                                     "uid": int(re.search(r"Uid:\s*(\d+)", line).group(1)),
                                     "threads": int(re.search(r"Threads:\s*(\d+)", line).group(1)),
                                     "comm": comm[:15]}
    return procs


def guest_maps(path):
    maps = []
    with open(path) as f:
        for line in f:
            p = line.split(None, 5)
            start, end = (int(x, 16) for x in p[0].split("-"))
            maps.append([start, end, p[1], int(p[2], 16), p[5].strip() if len(p) > 5 else ""])
    return maps


def rss_pages(path):
    with open(path) as f:
        return int(re.search(r"^Rss:\s+(\d+) kB", f.read(), re.M).group(1)) // 4


def check(mlfx, la57):
    with tempfile.TemporaryDirectory(prefix="mlfx-kwalk-") as out:
        cpu = "qemu64,+la57" if la57 else "qemu64"
        with vmlab.Guest(memory_mib=384, cpus=2, cpu=cpu, disk_mib=512, out_dir=out) as guest:
            victim = guest.spawn(f"exec chroot /mnt/host /usr/bin/python3 -c \"{VICTIM}\"")
            deadline = time.monotonic() + 300
            while guest.run("test -e /tmp/kwalk-ready || test -e /mnt/host/tmp/kwalk-ready")[0] != 0:
                expect(time.monotonic() < deadline, "the victim did not start within 300 s")
                time.sleep(2)
            capture(guest, out, victim.pid)
        seal(mlfx, out)
        levels = 5 if la57 else 4

        ps = mlfx_json(mlfx, out, "ps")
        expect(ps["kernel"]["levels"] == levels, f"{ps['kernel']['levels']} levels found, {levels} expected")
        walked = {p["pid"]: p for p in ps["processes"]}
        guest_view = guest_processes(out)
        # The task list changes while LiME reads the RAM: the shells that listed /proc are gone,
        # the capture's own commands have come, and the kernel starts and ends worker threads
        # (kthreadd's children, pid 2) for its I/O; the lab's command loop decodes each command
        # with base64, whose task may not yet be reaped. Every other task must be there as listed.
        lab = ("sh", "base64")
        def kernel_thread(task):
            return task["ppid"] == 2
        transient = {p for p in guest_view if p not in walked}
        for pid in transient:
            expect(guest_view[pid]["comm"] in lab + ("cat", "grep", "tr") or kernel_thread(guest_view[pid]),
                   f"pid {pid} ({guest_view[pid]}) missing")
        extra = {p for p in walked if p not in guest_view} - {0}
        for pid in extra:
            expect(walked[pid]["comm"] in lab + ("insmod", "dd") or kernel_thread(walked[pid]),
                   f"pid {pid} ({walked[pid]['comm']}) invented?")
        same = 0
        for pid, g in guest_view.items():
            if pid in transient:
                continue
            w = walked[pid]
            got = {"ppid": w["ppid"], "uid": w["uid"], "threads": w["threads"], "comm": w["comm"]}
            if kernel_thread(g) and got["uid"] == -1 and got["comm"] == g["comm"]:
                continue  # a kernel thread ending during the capture: its credentials already freed
            expect(got == g, f"pid {pid}: walked {got}, the guest said {g}")
            same += 1
        print(f"ps: {same} processes as the guest listed them ({len(ps['processes'])} walked)")

        for pid, name in ((victim.pid, "victim"), (1, "init")):
            maps = mlfx_json(mlfx, out, "maps", "--pid", str(pid))
            got = [[m["start"], m["end"], m["perms"], m["offset"], m["path"]] for m in maps["maps"]]
            want = guest_maps(f"{out}/{name}.maps")
            for g, w in zip(got, want):
                expect(g == w, f"pid {pid}: walked {g}, /proc/{pid}/maps says {w}")
            expect(len(got) == len(want), f"pid {pid}: {len(got)} mappings walked, {len(want)} in /proc/{pid}/maps")
            # Rss counts normal pages only: not those of VM_PFNMAP or VM_IO mappings ([vvar]).
            present = sum(m["pages"]["present"] for m in maps["maps"] if not m["flags"] & (0x400 | 0x4000))
            rss = rss_pages(f"{out}/{name}.smaps")
            # The victim sleeps, but LiME's writes fill the page cache and the kernel may drop the
            # victim's clean file pages meanwhile: its resident pages in the image lie between its
            # Rss before and after. (init, the lab's shell, runs the capture's commands.)
            if name == "victim":
                after = rss_pages(f"{out}/victim.smaps.after")
                expect(after <= present <= rss, f"pid {pid}: {present} present pages walked, Rss {rss} before "
                                                f"the capture and {after} after")
            expect(maps["pages"]["not_in_image"] == 0, f"pid {pid}: present pages outside the image")
            print(f"maps of pid {pid}: {len(got)} mappings as /proc/{pid}/maps, {present} pages resident "
                  f"(Rss before the capture: {rss})")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mlfx", required=True)
    parser.add_argument("--la57", action="store_true")
    args = parser.parse_args()
    reason = vmlab.missing()
    if reason:
        if os.environ.get("MLFX_VMLAB_OPTIONAL"):
            print(f"SKIP: {reason}")
            return SKIP
        fail(f"{reason} (set MLFX_VMLAB_OPTIONAL=1 to skip instead)")
    check(args.mlfx, args.la57)
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
