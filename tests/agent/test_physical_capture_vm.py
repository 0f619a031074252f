#!/usr/bin/env python3
"""Whole-memory capture by the agent on Debian's real kernel, in the VM lab (one boot).

    test_physical_capture_vm.py --agent PATH/mlfx-agent --mlfx PATH/mlfx --kmod KMOD_SOURCE_DIR

The guest (1 GiB, plus a virtio-mem device whose hot-plugged RAM the iomem tree nests under its
device, where LiME 1.9.1 does not look) runs a real torch victim (tests/victims/torch_victim.py).
In it, the agent (this build, through chroot /mnt/host):
  - refuses a pid that does not exist before anything is loaded;
  - refuses --source kmod while mlfx_mem is already loaded, saying so, without freezing the victim;
  - captures with stock LiME (the DKMS module, default path) and --pid VICTIM;
  - is interrupted (SIGINT) during a LiME capture: exit 1, LiME unloaded, no bundle, victim running;
  - captures with our mlfx_mem.ko (built here for the guest's kernel) and --pid VICTIM;
  - leaves no module loaded, no FIFO or image file behind, transparent_hugepage as it was
    (khugepaged is paused while the image is read), and the victim running and answering.
On the host, each bundle: `mlfx bundle verify` (attributed: exit 0); opened, its `memory` parsed
by a LiME reader written here from the format's documentation; LiME's digest equals the agent's
and the SHA-256 of the image; the nested virtio-mem RAM is listed as missed by LiME and is in our
module's image (its unplugged half listed unreadable, EAGAIN); LiME's zero-filled partial page is
listed; the module's SHA-256; kallsyms and BTF; the banner occurs in the image; every sampled
page of the victim, found through the captured pagemap, hashes in the image as in the context;
and `mlfx recover --pid VICTIM` gives the victim's models bit-exactly (tests/victims/check_recovery.py).
A third capture, with our module and without --pid (no per-process context): `mlfx recover` finds
the victim on the kernel's task list (captured BTF and kallsyms) and reads it through its own page
tables, bit-exactly; without --pid it tries every user process and recovers the victim alone.
The same with the LiME image sealed again without its per-process context. The context records
the build-id of the victim's interpreter, as readelf reads it here.

Exit 0 passed, 1 failed. A missing VM lab or missing headers for the guest's kernel fail it
(packaging/setup-deps.sh installs them); with MLFX_VMLAB_OPTIONAL=1 they skip it (77).
"""
import argparse, shlex
import bisect
import contextlib
import hashlib
import json
import mmap
import os
import re
import shutil
import struct
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

VICTIMS = os.path.join(ROOT, "tests", "victims")
PYTHON = "/usr/bin/python3"
DEVICE_ID = "vmlab-guest"
PAGE = 4096
# As the module's own VM test: 256 MiB of virtio-mem region, 64 MiB plugged; Linux adds a 128 MiB
# "System RAM (virtio_mem)" block under "virtioN", half plugged, half offline pages.
VIRTIO_MEM = ["-m", "1024,slots=1,maxmem=2G",
              "-object", "memory-backend-ram,id=vmem0,size=256M",
              "-device", "virtio-mem-pci,id=vmem0dev,memdev=vmem0,requested-size=64M"]
# Hot-plugged memory stays offline until the victim is ready, then is onlined: the victim's models
# live in boot RAM (which LiME reads), and the nested RAM still holds pages only our module reads.
APPEND = "memhp_default_state=offline"
ONLINE_HOTPLUGGED = ("n=0; for m in /sys/devices/system/memory/memory*; do "
                     "if [ \"$(cat $m/state)\" = offline ]; then echo online > $m/state && n=$((n+1)); fi; done; echo $n")

# The LiME format (protocol/doc/physical-capture.md): <u32 magic, u32 version, u64 start,
# u64 end (inclusive), u8[8] reserved>, little-endian, then end - start + 1 bytes.
LIME_HEADER = struct.Struct("<IIQQ8s")
LIME_MAGIC = 0x4C694D45
STARTED = time.monotonic()

# With part of the victim outside the image: every tensor exported equals the ground truth's
# (keys matched by name), and every ground-truth key not exported is listed in models[].missing.
NOTHING_INVENTED = r"""
import json, os, sys, torch
gt_dir, rec_dir = sys.argv[1], sys.argv[2]
report = json.load(open(os.path.join(rec_dir, "report.json")))
raw = lambda t: bytes(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()) if t.numel() else b""
for exp in json.load(open(os.path.join(gt_dir, "models.json"))):
    gt = torch.load(os.path.join(gt_dir, exp["state_dict"]))
    found = [m for m in report["models"] if m["class"] == exp["class"]]
    if not found:
        print("NOT FOUND %s (%s): not recovered at all" % (exp["name"], exp["class"]))
        continue
    for m in found:
        sd = torch.load(os.path.join(rec_dir, m["directory"], "state_dict.pt"))
        for k, t in sd.items():
            if k in gt and raw(t) != raw(gt[k]):
                sys.exit("INVENTED %s %s: exported bytes differ from the victim's" % (exp["name"], k))
        absent = [k for k in gt if k not in sd]
        unlisted = [k for k in absent if k not in m["missing"]] if m["missing_count"] <= 1000 else []
        if unlisted:
            sys.exit("UNLISTED %s: %s not exported and not listed missing" % (exp["name"], unlisted))
        print("OK %s: %d tensors exact, %d listed missing" % (exp["name"], len(sd), len(absent)))
"""


class Failed(Exception):
    pass


def gnu_build_id(path):
    out = subprocess.run(["readelf", "-n", path], stdout=subprocess.PIPE, text=True, check=True).stdout
    match = re.search(r"Build ID: ([0-9a-f]+)", out)
    return match.group(1) if match else None


def expect(ok, what, detail=""):
    if not ok:
        raise Failed(what + (f"\n--- detail ---\n{detail}" if detail else ""))


def step(what):
    print(f"[{time.monotonic() - STARTED:6.1f} s] {what}", flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def run_host(*args, ok=(0,)):
    proc = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    expect(proc.returncode in ok, f"{' '.join(args)} exited {proc.returncode}", proc.stdout)
    return proc.stdout


class LimeImage:
    """A LiME file read from the format's documentation: where each physical address is."""

    def __init__(self, path):
        self.f = open(path, "rb")
        self.map = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ)
        self.ranges = []  # (start, end inclusive, file offset of the data)
        offset, size = 0, len(self.map)
        while offset < size:
            expect(offset + LIME_HEADER.size <= size, f"{path}: range header cut short at {offset}")
            magic, version, start, end, reserved = LIME_HEADER.unpack_from(self.map, offset)
            expect(magic == LIME_MAGIC and version == 1, f"{path}: bad range header at offset {offset}")
            expect(reserved == b"\0" * 8, f"{path}: reserved bytes not zero at offset {offset}")
            expect(end >= start, f"{path}: range {start:#x}-{end:#x} ends before it starts")
            expect(not self.ranges or start > self.ranges[-1][1], f"{path}: ranges unsorted or overlapping at {start:#x}")
            data = offset + LIME_HEADER.size
            expect(data + end - start + 1 <= size, f"{path}: range {start:#x}-{end:#x} truncated")
            self.ranges.append((start, end, data))
            offset = data + end - start + 1

    def merged(self):
        out = []
        for start, end, _ in self.ranges:
            if out and out[-1][1] + 1 == start:
                out[-1][1] = end
            else:
                out.append([start, end])
        return [tuple(r) for r in out]

    def read(self, address, length):
        for start, end, data in self.ranges:
            if start <= address and address + length - 1 <= end:
                return self.map[data + address - start:data + address - start + length]
        return None

    def holds(self, address):
        if not hasattr(self, "_starts"):
            self._merged = self.merged()
            self._starts = [s for s, _ in self._merged]
        i = bisect.bisect_right(self._starts, address) - 1
        return i >= 0 and address <= self._merged[i][1]

    def close(self):
        self.map.close()
        self.f.close()


def parse_pagemap(path):
    """The pagemap stream: "MLFXPMAP", u32 version, u32 count; records u32 pid, u32 flags,
    u64 start, u64 pages, then pages x u64 raw /proc/PID/pagemap entries."""
    with open(path, "rb") as f:
        data = f.read()
    expect(data[:8] == b"MLFXPMAP", "pagemap stream: no MLFXPMAP header")
    version, count = struct.unpack_from("<II", data, 8)
    expect(version == 1, f"pagemap stream: version {version}")
    at, records = 16, []
    for _ in range(count):
        pid, flags, start, pages = struct.unpack_from("<IIQQ", data, at)
        at += 24
        records.append((pid, start, struct.unpack_from(f"<{pages}Q", data, at)))
        at += pages * 8
    expect(at == len(data), "pagemap stream: bytes after its records")
    return records


def parse_moved(path):
    """The moved stream: "MLFXMOVD", u32 version, u32 count; then count x {u32 pid, u32 flags,
    u64 vaddr, one page}."""
    with open(path, "rb") as f:
        data = f.read()
    expect(data[:8] == b"MLFXMOVD", "moved stream: no MLFXMOVD header")
    version, count = struct.unpack_from("<II", data, 8)
    expect(version == 1 and len(data) == 16 + count * (16 + PAGE), f"moved stream: version {version}, {count} pages")
    pages = {}
    for i in range(count):
        at = 16 + i * (16 + PAGE)
        pid, _, vaddr = struct.unpack_from("<IIQ", data, at)
        pages[(pid, vaddr)] = data[at + 16:at + 16 + PAGE]
    return pages


def frame_of(records, pid, vaddr):
    for p, start, entries in records:
        if p == pid and start <= vaddr < start + len(entries) * PAGE:
            entry = entries[(vaddr - start) // PAGE]
            return entry & ((1 << 55) - 1) if entry >> 63 & 1 else None
    return None


DAEMON_CONFIG = """\
[agent]
device_id = "{device}"
device_key = "/mnt/out/dev.key"
recipients = ["/mnt/out/lab.pub"]
log_format = "json"

[spool]
dir = "/mnt/disk/spool"

[[target]]
name = "victim"
pid = [{pid}]

[[rule]]
name = "manual"
on = ["on-demand"]
sources = ["process", "lime"]
"""


def check_daemon(lab, victim):
    """The armed daemon on Debian's kernel: an on-demand trigger captures the victim's process and
    the whole memory (stock LiME) under one freeze into one bundle in its spool (the scratch disk),
    with the trigger and the timeline in the manifest; the module unloaded, the victim running."""
    g = lab.guest
    with open(os.path.join(lab.out, "daemon.toml"), "w") as f:
        f.write(DAEMON_CONFIG.format(device=DEVICE_ID, pid=victim))
    daemon = g.spawn(lab.agent("run --config /mnt/out/daemon.toml"), log="/mnt/out/daemon.log")
    log = os.path.join(lab.out, "daemon.log")
    deadline = time.monotonic() + 300
    while '"event":"started"' not in (open(log).read() if os.path.exists(log) else ""):
        if time.monotonic() > deadline or not g.running(daemon.pid):
            raise Failed("the daemon did not start in the guest", open(log).read() if os.path.exists(log) else "")
        time.sleep(1)
    hooks = [json.loads(line) for line in open(log) if '"hook_' in line or "ebpf_unavailable" in line]
    step(f"daemon: started in the guest; eBPF on Debian's {g.kernel_version}: "
         + ("; ".join(f"{h.get('trigger', h.get('event'))}: {h.get('reason', h.get('error', ''))[:80]}" for h in hooks)
            or "every hook attached"))
    started = time.monotonic()
    status, output = g.run(lab.agent("trigger --pid %d --reason 'vm lab: process and whole memory' --json" % victim),
                           timeout=1200)
    expect(status == 0, f"mlfx-agent trigger exited {status}", output)
    trigger = json.loads(output[output.index("["):])[0]
    step(f"daemon: trigger {trigger['id']}: {trigger['outcome']} in {time.monotonic() - started:.0f} s: "
         f"{trigger['detail']}")
    expect(trigger["outcome"] == "captured", "the daemon's coordinated capture", trigger)
    info = json.loads(g.check(f"chroot /mnt/host {lab.args.mlfx} bundle info {shlex.quote(trigger['detail'])} --json",
                              timeout=600))
    streams = [s["name"] for s in info["manifest"]["streams"]]
    ctx = info["manifest"]["context"]
    step(f"daemon: one bundle with streams {streams}; frozen {ctx['timeline'].get('frozen_ms', 0):.0f} ms, skew "
         f"{ctx['timeline'].get('skew_ms', 0):.0f} ms between the sources' reads")
    expect("core" in streams and "memory" in streams and "context" in streams and "lime.context" in streams,
           "the process core, the whole memory and each one's context in one bundle", streams)
    reads = [e["source"] for e in ctx["timeline"]["events"] if e["event"] == "read_start"]
    expect(reads == ["process", "lime"], f"the sources read in order under one freeze: {reads}")
    verify = g.run(f"chroot /mnt/host {lab.args.mlfx} bundle verify -q {shlex.quote(trigger['detail'])}", timeout=900)
    expect(verify[0] in (0, 5), f"the daemon's bundle verifies in the guest (exit {verify[0]})", verify[1])
    g.run(f"kill -TERM {daemon.pid}")
    deadline = time.monotonic() + 60
    while g.running(daemon.pid) and time.monotonic() < deadline:
        time.sleep(1)
    expect(not g.running(daemon.pid), "the daemon stopped on SIGTERM")
    lab.after_capture("daemon", victim)


def iomem_virtio_mem(context):
    return [e for e in context["iomem"] if e["name"] == "System RAM (virtio_mem)"]


class Lab:
    def __init__(self, guest, args, tmp, out):
        self.guest, self.args, self.tmp, self.out = guest, args, tmp, out
        self.keys = f"--device-key /mnt/out/dev.key --recipient /mnt/out/lab.pub --device-id {DEVICE_ID}"
        self.thp = self.transparent_hugepage() if guest else None

    def transparent_hugepage(self):
        return self.guest.check("cat /sys/kernel/mm/transparent_hugepage/enabled").strip()

    def agent(self, cmd):
        return f"chroot /mnt/host {self.args.agent} {cmd}"

    def modules_loaded(self):
        return [line.split()[0] for line in self.guest.check("cat /proc/modules").splitlines()
                if line.split()[0] in ("lime", "mlfx_mem")]

    def victim_state(self, pid):
        status = self.guest.check(f"cat /proc/{pid}/status")
        return next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("State:"))

    def leftovers(self):
        """FIFO directories, device nodes or images the agent could have left in the guest."""
        return self.guest.run("ls -d /mnt/host/run/mlfx-* /mnt/host/tmp/mlfx-* /mnt/host/dev/shm/mlfx-* "
                              "/mnt/host/run/*.sha256 2>/dev/null")[1].split()

    def after_capture(self, what, victim):
        expect(self.modules_loaded() == [], f"{what}: a module is still loaded", self.guest.check("cat /proc/modules"))
        expect(self.leftovers() == [], f"{what}: files left behind", " ".join(self.leftovers()))
        state = self.victim_state(victim)
        expect(not state.startswith("t") and not state.startswith("T"), f"{what}: the victim is left stopped: {state}")
        # khugepaged is paused while the image is read (less smear), and the mode written back.
        expect(self.transparent_hugepage() == self.thp, f"{what}: transparent_hugepage is "
                                                        f"'{self.transparent_hugepage()}', was '{self.thp}'")

    def capture(self, source, victim, extra="", name=None, freeze=True):
        """freeze=False: no --pid, so no per-process context (the lab walks the kernel's task list)."""
        bundle = f"/mnt/out/{name or source}.mlfx"
        started = time.monotonic()
        pid = f"--pid {victim} " if freeze else ""
        status, output = self.guest.run(self.agent(f"capture --source {source} {pid}--out {bundle} "
                                                   f"{self.keys} -q {extra}"), timeout=1200)
        step(f"{source}: exit {status} in {time.monotonic() - started:.0f} s\n{output.rstrip()}")
        expect(status == 0, f"capture --source {source} exited {status}", output)
        self.after_capture(source, victim)
        return self.guest.host_path(bundle), output


def check_refusals(lab, victim):
    g = lab.guest
    step("a pid that does not exist: refused before anything is loaded")
    status, out = g.run(lab.agent(f"capture --source lime --pid 999999 --out /mnt/out/no.mlfx {lab.keys}"))
    expect(status == 1 and "no such process: pid 999999" in out, f"--pid 999999: exit {status}", out)
    expect(lab.modules_loaded() == [] and not os.path.exists(os.path.join(lab.out, "no.mlfx")),
           "--pid 999999 loaded a module or left a bundle")

    step("mlfx_mem already loaded: --source kmod refused, saying so; the victim not frozen")
    g.check("insmod /mnt/out/mlfx_mem.ko")
    status, out = g.run(lab.agent(f"capture --source kmod --module /mnt/out/mlfx_mem.ko --pid {victim} "
                                  f"--out /mnt/out/no.mlfx {lab.keys}"))
    expect(status == 1 and "already loaded" in out and "rmmod mlfx_mem" in out, f"kmod while loaded: exit {status}", out)
    expect(lab.modules_loaded() == ["mlfx_mem"], "the agent removed a module it did not load")
    g.check("rmmod mlfx_mem")
    lab.after_capture("refused kmod", victim)
    expect(not os.path.exists(os.path.join(lab.out, "no.mlfx")), "a refused capture left a bundle")


def check_interrupted_lime(lab, victim):
    step("SIGINT during a LiME capture: LiME unloaded, no bundle, the victim released")
    g = lab.guest
    cmd = lab.agent(f"capture --source lime --pid {victim} --out /mnt/out/interrupted.mlfx {lab.keys} -q")
    spawned = g.spawn(f"{cmd} & echo $! > /mnt/out/interrupted.pid; wait $!; echo exit=$? > /mnt/out/interrupted.status")
    time.sleep(8)
    with open(os.path.join(lab.out, "interrupted.pid")) as f:
        pid = int(f.read())
    expect(lab.modules_loaded() == ["lime"], "LiME is not loaded 8 s into its capture", g.check(f"cat {spawned.log}"))
    expect(lab.victim_state(victim).startswith("t"), "the victim is not frozen during the capture")
    g.check(f"kill -INT {pid}")
    status_file = os.path.join(lab.out, "interrupted.status")
    deadline = time.monotonic() + 120
    while not os.path.exists(status_file) and time.monotonic() < deadline:
        time.sleep(1)
    log = g.check(f"cat {spawned.log}")
    expect(os.path.exists(status_file), "the interrupted capture did not end", log)
    with open(status_file) as f:
        status = f.read().strip()
    step(f"interrupted: {status}: {log.strip()}")
    expect(status == "exit=1" and "interrupted" in log, f"interrupted capture: {status}", log)
    expect(not os.path.exists(os.path.join(lab.out, "interrupted.mlfx")), "an interrupted capture left its bundle")
    lab.after_capture("interrupted lime", victim)


def reseal_without_context(lab, opened, name):
    """The image of a capture with --pid sealed again without what --pid adds (the pagemap, the
    moved pages, the processes in the context): what a capture without --pid holds."""
    with open(os.path.join(opened, "context")) as f:
        context = json.load(f)
    context["processes"] = []
    with open(os.path.join(opened, "context.bare"), "w") as f:
        json.dump(context, f)
    bundle = os.path.join(lab.tmp, f"{name}.mlfx")
    run_host(lab.args.mlfx, "bundle", "seal", "-q", *(os.path.join(opened, n) for n in
                                                      ("memory", "context.bare", "kallsyms", "btf")),
             "--name", "memory", "--name", "context", "--name", "kallsyms", "--name", "btf", "--out", bundle,
             "--device-key", os.path.join(lab.tmp, "dev.key"), "--recipient", os.path.join(lab.tmp, "lab.pub"))
    return bundle


def check_bundle(lab, source, bundle, victim, module_sha256, gt):
    """Returns the image sealed again without its per-process context (LiME), else None."""
    step(f"{source}: verify, open, check the image against the context")
    trusted = os.path.join(lab.tmp, "trusted")
    verify = run_host(lab.args.mlfx, "bundle", "verify", "-q", "--trusted-devices", trusted, bundle)
    opened = os.path.join(lab.tmp, f"open-{source}")
    run_host(lab.args.mlfx, "bundle", "open", bundle, "--key", os.path.join(lab.tmp, "lab.key"), "--out", opened, "-q",
             "--trusted-devices", trusted)
    with open(os.path.join(opened, "manifest.json")) as f:
        manifest = json.load(f)
    names = [s["name"] for s in manifest["streams"]]
    # `moved`: pages the kernel moved (khugepaged, compaction) while the image was read, read
    # from the frozen victim instead; present only when some did.
    expect([n for n in names if n != "moved"] == ["memory", "pagemap", "kallsyms", "btf", "context"] and
           names.index("moved" if "moved" in names else "pagemap") == 1 + ("moved" in names),
           f"{source}: streams {names}", verify)
    moved = parse_moved(os.path.join(opened, "moved")) if "moved" in names else {}
    bare = reseal_without_context(lab, opened, f"{source}-bare") if source == "lime" else None
    with open(os.path.join(opened, "context")) as f:
        context = json.load(f)
    memory = os.path.join(opened, "memory")
    image = LimeImage(memory)
    try:
        expect(context["source"] == source, f"context source {context['source']}")
        khugepaged = context["smear_reduction"]["khugepaged"]
        expect(khugepaged["was"] == "never" or (khugepaged["paused"] and khugepaged["restored"]),
               f"{source}: khugepaged not paused and restored: {khugepaged}")
        expect([tuple((r["start"], r["end"])) for r in context["ranges"]] == image.merged(),
               f"{source}: the context's ranges are not the image's", f"{context['ranges']}\n{image.merged()}")
        expect(context["module"]["sha256"] == module_sha256, f"{source}: module sha256 {context['module']['sha256']}")
        kernel = context["kernel"]
        expect(kernel["kallsyms"] and kernel["btf"] and kernel["page_size"] == PAGE, f"{source}: kernel {kernel}")
        with open(os.path.join(opened, "kallsyms")) as f:
            expect(" T _stext" in f.read(), "kallsyms has no _stext")
        banner = kernel["banner"].strip().encode()
        expect(image.map.find(banner) >= 0, f"{source}: the banner does not occur in the image")

        vmem = iomem_virtio_mem(context)
        expect(len(vmem) == 1 and vmem[0]["depth"] > 0, f"no nested virtio-mem RAM in the guest's iomem: {vmem}")
        vstart, vend = vmem[0]["start"], vmem[0]["end"]
        if source == "lime":
            digest = context["digest"]
            image_sha = sha256_file(memory)
            expect(digest["match"] and digest["tool_sha256"] == digest["sha256"] == image_sha,
                   f"LiME's digest {digest} vs the image's {image_sha}")
            missed = [u for u in context["unreadable"] if u["start"] == vstart and u["end"] == vend]
            expect(len(missed) == 1 and "nested System RAM" in missed[0]["reason"],
                   "the virtio-mem RAM LiME misses is not listed", json.dumps(context["unreadable"]))
            expect(not any(s <= vend and e >= vstart for s, e in image.merged()), "LiME imaged virtio-mem RAM?")
            expect(any(z["end"] % PAGE != PAGE - 1 for z in context["zero_filled"]),
                   "LiME's zero-filled partial page is not listed", json.dumps(context["zero_filled"]))
        else:
            expect("digest" not in context or "tool_sha256" not in context["digest"], "kmod has no tool digest")
            plugged = [r for r in image.merged() if vstart <= r[0] <= vend]
            expect(plugged and sum(e - s + 1 for s, e in plugged) >= 32 << 20,
                   "our module did not image the plugged virtio-mem RAM", str(image.merged()))
            offline = [u for u in context["unreadable"] if vstart <= u["start"] <= vend]
            expect(offline and all(u["reason"].startswith("EAGAIN") for u in offline),
                   "the unplugged virtio-mem pages are not listed as EAGAIN", json.dumps(context["unreadable"]))
            expect(context["zero_filled"] == [], "our module zero-filled something")
            ram = sum(r["end"] - r["start"] + 1 for r in context["ranges"])
            missing = sum(u["end"] - u["start"] + 1 for u in context["unreadable"])
            expect(ram + missing == context["image"]["system_ram_bytes"], "read + unreadable != System RAM")
            expect(context["module"]["footprint"]["core_bytes"] > 0, "no module footprint")

        # The context belongs to this image: each sampled page, found through the pagemap. A
        # page may lie in RAM the tool did not image (LiME and hot-plugged RAM): then the
        # context must say so.
        records = parse_pagemap(os.path.join(opened, "pagemap"))
        proc = next(p for p in context["processes"] if p["pid"] == victim)
        expect(proc["pagemap_records"] == len([r for r in records if r[0] == victim]), "pagemap record count")
        expect(len(proc["page_sample"]) >= 4, f"page sample: {proc['page_sample']}")
        # The build-id of each mapped ELF file (the guest runs this host's files), for --sysroot.
        interpreter = [m for m in proc["maps"] if os.path.basename(m["path"]).startswith("python3")]
        expect(interpreter, "the victim's interpreter is not among its maps")
        for m in interpreter:
            expect(m.get("build_id") == gnu_build_id(m["path"]),
                   f"{m['path']}: build-id {m.get('build_id')} recorded, readelf says {gnu_build_id(m['path'])}")
        listed = [(u["start"], u["end"]) for u in context["unreadable"]]
        in_image = 0
        expect(len(moved) <= proc.get("pages_moved", 0), f"{len(moved)} moved pages, the context counts fewer")
        for s in proc["page_sample"]:
            frame = frame_of(records, victim, s["vaddr"])
            if frame is None and (victim, s["vaddr"]) in moved:  # moved meanwhile: read from the victim
                expect(hashlib.sha256(moved[(victim, s["vaddr"])]).hexdigest() == s["sha256"],
                       f"moved sampled page {s['vaddr']:#x} differs from the sample")
                continue
            expect(frame, f"sampled page {s['vaddr']:#x} is not present in the pagemap")
            page = image.read(frame * PAGE, PAGE)
            if page is None:
                expect(source == "lime" and any(a <= frame * PAGE <= b for a, b in listed),
                       f"sampled page {s['vaddr']:#x} (frame {frame:#x}) is neither in the image nor listed unreadable")
                continue
            in_image += 1
            expect(hashlib.sha256(page).hexdigest() == s["sha256"],
                   f"sampled page {s['vaddr']:#x} differs in the image (frame {frame:#x})")
        expect(in_image > 0, "no sampled page is in the image")
        # The victim's present pages outside the image (LiME: those in the RAM it misses).
        outside = sum(1 for p, start, entries in records if p == victim for e in entries
                      if e >> 63 & 1 and not image.holds((e & ((1 << 55) - 1)) * PAGE))
        step(f"{source}: {proc.get('pages_moved', 0)} of the victim's pages moved by the kernel during the capture "
             f"(zeroed in its pagemap)")
        step(f"{source}: {len(proc['page_sample'])} sampled pages ({in_image} in the image); "
             f"{outside} of the victim's present pages outside the image")
        expect(source == "lime" or outside == 0, f"our module's image lacks {outside} of the victim's pages")
    finally:
        image.close()

    recovered = os.path.join(lab.tmp, f"recovered-{source}")
    recover = [lab.args.mlfx, "recover", bundle, "--key", os.path.join(lab.tmp, "lab.key"), "--out", recovered,
               "--pid", str(victim), "-q"]
    if outside:  # the interpreter's own pages may be among them: recover may be unable to start
        proc = subprocess.run(recover, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            step(f"{source}: recover, with {outside} of the victim's pages outside the image, refuses: "
                 f"{proc.stdout.strip()}")
            expect(proc.returncode == 1, f"recover exited {proc.returncode}", proc.stdout)
            shutil.rmtree(opened, ignore_errors=True)
            return bare
    else:
        run_host(*recover)
    with open(os.path.join(recovered, "report.json")) as f:
        pages = json.load(f)["input"]["process_pages"]
    expect(pages["pages_not_in_image"] == outside,
           f"recover counts {pages['pages_not_in_image']} pages outside the image, the test {outside}")
    if outside == 0:
        step(f"{source}: mlfx recover --pid {victim}: the victim's models, bit-exact")
        print(run_host(PYTHON, os.path.join(VICTIMS, "check_recovery.py"), gt, recovered).rstrip(), flush=True)
    else:
        step(f"{source}: mlfx recover --pid {victim}: what is exported is exact, what is not is listed missing")
        print(run_host(PYTHON, "-c", NOTHING_INVENTED, gt, recovered).rstrip(), flush=True)
    shutil.rmtree(opened, ignore_errors=True)
    return bare


def check_without_context(lab, name, bundle, victim, gt):
    """A capture without --pid: the victim found on the kernel's task list (captured BTF and
    kallsyms) and read through its own page tables, bit-exactly; every user process tried."""
    key = os.path.join(lab.tmp, "lab.key")
    recovered = os.path.join(lab.tmp, f"recovered-{name}")
    run_host(lab.args.mlfx, "recover", bundle, "--key", key, "--out", recovered, "--pid", str(victim), "-q")
    with open(os.path.join(recovered, "report.json")) as f:
        report = json.load(f)
    expect(report["input"]["process_source"] == "page tables", f"process source {report['input']['process_source']}")
    step(f"{name}, no per-process context: mlfx recover --pid {victim} through its page tables, bit-exact")
    print(run_host(PYTHON, os.path.join(VICTIMS, "check_recovery.py"), gt, recovered).rstrip(), flush=True)
    everyone = os.path.join(lab.tmp, f"recovered-{name}-all")
    run_host(lab.args.mlfx, "recover", bundle, "--key", key, "--out", everyone, "-q")
    with open(os.path.join(everyone, "report.json")) as f:
        listed = json.load(f)["processes"]
    recovered_pids = [p["pid"] for p in listed if p["result"] == "recovered"]
    step(f"every user process tried: {len(listed)}, recovered {recovered_pids}")
    expect(recovered_pids == [victim], f"recovered {recovered_pids}, expected only the victim {victim}",
           json.dumps(listed, indent=1))
    expect(all(p["source"] == "page tables" for p in listed), "a process without pagemap not read by its page tables")
    print(run_host(PYTHON, os.path.join(VICTIMS, "check_recovery.py"), gt,
                   os.path.join(everyone, "processes", str(victim))).rstrip(), flush=True)
    run_host(PYTHON, os.path.join(ROOT, "tests", "docs", "outputs_spec_test.py"), everyone)


def wait_for(path, seconds, guest, spawned):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise Failed(f"{path} did not appear in {seconds} s", guest.run(f"cat {spawned.log}")[1])
        time.sleep(1)


def run_in_guest(guest, args, tmp, out):
    lab = Lab(guest, args, tmp, out)
    step(f"guest {guest.kernel_version} booted in {guest.boot_seconds:.1f} s; starting the torch victim")
    spawned = guest.spawn(f"exec chroot /mnt/host {PYTHON} {VICTIMS}/torch_victim.py two /mnt/out/gt")
    gt = os.path.join(out, "gt")
    wait_for(os.path.join(gt, "ready"), 600, guest, spawned)
    with open(os.path.join(gt, "ready")) as f:
        victim = int(f.read())
    expect(victim == spawned.pid, f"the victim's pid {victim} is not the spawned {spawned.pid}")
    blocks = int(guest.check(ONLINE_HOTPLUGGED).split()[-1])
    step(f"victim pid {victim} ready; {blocks} hot-plugged memory block(s) onlined")
    expect(blocks > 0, "no offline hot-plugged memory block to online (virtio-mem)")

    check_refusals(lab, victim)
    lime_bundle, _ = lab.capture("lime", victim)
    check_interrupted_lime(lab, victim)
    kmod_bundle, _ = lab.capture("kmod", victim, "--module /mnt/out/mlfx_mem.ko")
    step("kmod without --pid: no per-process context in the bundle, the victim not frozen")
    bare_bundle, _ = lab.capture("kmod", victim, "--module /mnt/out/mlfx_mem.ko", name="kmod-bare", freeze=False)

    check_daemon(lab, victim)

    step("the victim runs on: heartbeat, and its outputs recomputed after the captures")
    with open(os.path.join(gt, "heartbeat")) as f:
        beat = f.read()
    time.sleep(2)
    with open(os.path.join(gt, "heartbeat")) as f:
        expect(f.read() != beat, "the victim's heartbeat stopped")
    open(os.path.join(gt, "check"), "w").close()
    wait_for(os.path.join(gt, "checked"), 300, guest, spawned)
    open(os.path.join(gt, "stop"), "w").close()

    lime_sha = sha256_file(f"/lib/modules/{guest.kernel_version}/updates/dkms/lime.ko")
    kmod_sha = sha256_file(os.path.join(out, "mlfx_mem.ko"))
    return [("lime", lime_bundle, victim, lime_sha, gt), ("kmod", kmod_bundle, victim, kmod_sha, gt)], \
        (bare_bundle, victim, gt)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agent", required=True, help="the built mlfx-agent")
    parser.add_argument("--mlfx", required=True, help="the built mlfx")
    parser.add_argument("--kmod", required=True, help="kmod/ source directory")
    args = parser.parse_args(argv)
    args.agent, args.mlfx = os.path.abspath(args.agent), os.path.abspath(args.mlfx)
    reason = vmlab.missing()
    if reason:
        return vmlab.unavailable(reason)
    kernel = vmlab.installed_kernels()[-1]
    if kernel not in kmod_build.kernels_with_headers():
        return vmlab.unavailable(f"no headers for the guest's kernel {kernel} (packaging/setup-deps.sh installs them)")
    if not os.path.exists(f"/lib/modules/{kernel}/updates/dkms/lime.ko"):
        return vmlab.unavailable(f"lime-forensics-dkms is not built for {kernel} (packaging/setup-deps.sh)")

    # MLFX_VMLAB_KEEP=1 keeps the bundles and outputs for a look after a failure.
    keep = os.environ.get("MLFX_VMLAB_KEEP") == "1"
    with (contextlib.nullcontext(tempfile.mkdtemp(prefix="mlfx-physical-vm-")) if keep
          else tempfile.TemporaryDirectory(prefix="mlfx-physical-vm-")) as tmp:
        if keep:
            print(f"keeping {tmp}", flush=True)
        try:
            out = os.path.join(tmp, "out")
            os.makedirs(out)
            os.makedirs(os.path.join(tmp, "trusted"))
            run_host(args.mlfx, "keys", "gen", "--kind", "device", "--out", os.path.join(tmp, "dev"))
            run_host(args.mlfx, "keys", "gen", "--kind", "lab", "--out", os.path.join(tmp, "lab"))
            shutil.copy2(os.path.join(tmp, "dev.pub"), os.path.join(tmp, "trusted", f"{DEVICE_ID}.pub"))
            for name in ("dev.key", "lab.pub"):
                shutil.copy2(os.path.join(tmp, name), out)
            try:
                shutil.copy2(kmod_build.build_module(args.kmod, kernel, tmp), out)
            except kmod_build.BuildError as e:
                raise Failed(f"building mlfx_mem.ko for {kernel}: {e}")
            with vmlab.Guest(kernel_version=kernel, memory_mib=1024, cpus=2, out_dir=out, append=APPEND,
                             qemu_args=VIRTIO_MEM, extra_modules=["virtio_mem"], host_cache="loose",
                             disk_mib=4096) as guest:
                bundles, bare = run_in_guest(guest, args, tmp, out)
                # The guest is powered off before the host-side checks: the bundles stay in `out`.
                guest.poweroff()
            without_context = [("kmod-bare", *bare)]  # captured without --pid
            for checks in bundles:
                resealed = check_bundle(Lab(None, args, tmp, out), *checks)
                if resealed:
                    without_context.append((f"{checks[0]}-bare", resealed, *bare[1:]))  # resealed without it
            for checks in without_context:
                check_without_context(Lab(None, args, tmp, out), *checks)
        except Failed as e:
            print(f"FAIL {e}")
            return 1
        except vmlab.VmlabError as e:
            print(f"FAIL the VM lab: {e}")
            return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
