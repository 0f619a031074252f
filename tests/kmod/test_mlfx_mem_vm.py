#!/usr/bin/env python3
"""mlfx_mem.ko on Debian's real kernel, in the VM lab (tests/vmlab): one boot of a 1 GiB guest
with a virtio-mem device (hot-plugged RAM that the iomem tree nests under its device, which
LiME 1.9.1 misses; half of it left unplugged), secret memory enabled, and a victim whose frames
we know.

    test_mlfx_mem_vm.py --reader PATH/mlfx_mem_reader --kmod KMOD_SOURCE_DIR

The module is built on the host for the guest's kernel in a temporary copy of kmod/. In the
guest: insmod; a second insmod refused with "File exists"; the reader's INFO and its invariant
checks (tests/kmod/mlfx_mem_reader.c: tree order, RAM flags equal to /proc/iomem's outermost
System RAM, ENXIO outside RAM, short counts at RAM ends, one opener, read-only); a scan of all
RAM: the victim's pattern found, every unreadable page reported with its reason (the unplugged
virtio-mem half and memfd_secret pages EAGAIN, a soft-poisoned page EHWPOISON, never EIO), read
+ unreadable = RAM; the victim's pages read by frame number equal what it wrote, byte for byte;
rmmod refused while a reader holds the device; lockdown raised to confidentiality: the device
refuses to open (EPERM); rmmod clean, and an unsigned module then refused ("Operation not
permitted", Secure Boot's lockdown); no kernel warning. LiME's view
(top-level "System RAM" of /proc/iomem) is compared with ours: the bytes it would miss.

Exit 0 passed, 1 failed. A missing VM lab (QEMU, kernel, busybox) or missing headers for the
guest's kernel fail it (packaging/setup-deps.sh installs them), as the lab's own test does; with
MLFX_VMLAB_OPTIONAL=1 they skip it (77).
"""
import argparse
import os
import re
import secrets
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "vmlab"))
sys.path.insert(0, HERE)

import guest_victim  # noqa: E402  (page_content: what the victim writes)
import kmod_build  # noqa: E402

VICTIM_PAGES = 4096  # 16 MiB
# A virtio-mem device: 256 MiB of region, 64 MiB plugged. Linux adds it a 128 MiB memory block
# at a time, so one "System RAM (virtio_mem)" of 128 MiB appears under "virtioN", half of it
# plugged and the other half fake-offline pages (PageOffline).
VIRTIO_MEM = ["-m", "1024,slots=1,maxmem=2G",
              "-object", "memory-backend-ram,id=vmem0,size=256M",
              "-device", "virtio-mem-pci,id=vmem0dev,memdev=vmem0,requested-size=64M"]
APPEND = "memhp_default_state=online secretmem.enable=1"
KERNEL_TROUBLE = re.compile(r"\bBUG:|\bWARNING:|\bOops:|general protection fault|Call Trace:|\bRIP: ")


class Failed(Exception):
    pass


def expect(ok, what, detail=""):
    if not ok:
        raise Failed(f"{what}" + (f"\n{detail}" if detail else ""))
    print(f"ok {what}", flush=True)


def iomem_system_ram(text):
    """(LiME 1.9.1's view: top-level lines named exactly "System RAM", all System RAM lines
    outermost at any depth) as lists of (start, end)."""
    top, outermost, ram_indent = [], [], -1
    for line in text.splitlines():
        m = re.match(r"^( *)([0-9a-f]+)-([0-9a-f]+) : (.*)$", line)
        if not m:
            continue
        indent, start, end, name = len(m.group(1)), int(m.group(2), 16), int(m.group(3), 16), m.group(4)
        if ram_indent >= 0 and indent <= ram_indent:
            ram_indent = -1
        if indent == 0 and name == "System RAM":
            top.append((start, end))
        if ram_indent < 0 and name.startswith("System RAM"):
            outermost.append((start, end))
            ram_indent = indent
    return top, outermost


def parse_scan(text):
    ram, unreadable, summary = [], [], {}
    for line in text.splitlines():
        parts = line.split()
        if line.startswith("ram "):
            ram.append((int(parts[1], 16), int(parts[2], 16), line.split("name=", 1)[1]))
        elif line.startswith("unreadable "):
            unreadable.append((int(parts[1], 16), int(parts[2], 16), parts[3]))
        elif line.startswith("summary "):
            summary = {k: int(v) for k, v in (p.split("=") for p in parts[1:])}
    return ram, unreadable, summary


def reason_at(unreadable, address):
    for start, end, reason in unreadable:
        if start <= address <= end:
            return reason
    return None


def read_pfns(path):
    with open(path) as f:
        lines = f.read().split()
    if lines and lines[0] == "unsupported":
        return None
    return [int(x, 16) for x in lines]


def wait_for(path, seconds, guest, spawned):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline or not guest.running(spawned.pid):
            _, log = guest.run(f"cat {spawned.log}")
            raise Failed(f"the victim did not get ready ({path}); its log:\n{log}")
        time.sleep(1)


def run_in_guest(guest, reader, module, out):
    page = 4096
    R = "chroot /mnt/host /mnt/out/mlfx_mem_reader"
    token = ("MLFXVICTIM" + secrets.token_hex(11)).encode()  # 32 bytes, new every run

    iomem = guest.check("cat /proc/iomem")
    lime_view, outermost = iomem_system_ram(iomem)

    victim = guest.spawn(f"chroot /mnt/host /usr/bin/python3 /mnt/out/guest_victim.py /mnt/out "
                         f"{VICTIM_PAGES} {token.decode()}")
    wait_for(os.path.join(out, "ready"), 300, guest, victim)

    # Load; loading twice is refused by the kernel with EEXIST.
    guest.check("chroot /mnt/host /sbin/insmod /mnt/out/mlfx_mem.ko")
    status, output = guest.run("chroot /mnt/host /sbin/insmod /mnt/out/mlfx_mem.ko")
    expect(status != 0 and "File exists" in output, "second insmod refused: File exists", output)
    dmesg = guest.check("dmesg")
    expect("mlfx_mem: version 1.0.0: /dev/mlfx_mem ready" in dmesg, "module says it is ready", dmesg[-2000:])

    info = dict(line.split(" ", 1) for line in guest.check(f"{R} info").splitlines() if " " in line)
    expect(info.get("kernel_release") == guest.kernel_version and info.get("uapi_version") == "1"
           and int(info.get("module_core_bytes", 0)) > 0 and int(info.get("module_alloc_bytes", 0)) >= page,
           "INFO: release, uapi version, footprint", str(info))
    print(f"footprint: core {info['module_core_bytes']} bytes, allocated {info['module_alloc_bytes']} bytes")

    status, output = guest.run(f"{R} check", timeout=300)
    print(output)
    expect(status == 0, "reader invariant checks", output)

    started = time.monotonic()
    status, output = guest.run(f"{R} scan {token.decode()}", timeout=600)
    seconds = time.monotonic() - started
    expect(status == 0, "scan of all RAM", output)
    print(output)
    ram, unreadable, summary = parse_scan(output)
    print(f"scan: {summary.get('ram_bytes', 0) >> 20} MiB of RAM in {seconds:.1f} s (emulated)")

    # Our RAM ranges: every System RAM, nested ones included; LiME 1.9.1's are a subset.
    ours = [(s, e) for s, e, _ in ram]
    expect(ours == outermost, "RAM ranges = /proc/iomem's outermost System RAM", f"{ours}\n{outermost}")
    nested = [(s, e, n) for s, e, n in ram if (s, e) not in lime_view]
    expect(set(lime_view) <= set(ours), "LiME 1.9.1's ranges are all ours")
    expect(any("virtio_mem" in n for _, _, n in nested), "nested virtio-mem RAM found (LiME 1.9.1 misses it)",
           str(nested))
    missed = sum(e - s + 1 for s, e, _ in nested)
    print(f"LiME 1.9.1 would image {len(lime_view)} ranges and miss {len(nested)} nested ones: {missed >> 20} MiB")

    expect(summary.get("read_bytes", 0) + summary.get("unreadable_bytes", 0) == summary.get("ram_bytes", -1),
           "read + unreadable = RAM", str(summary))
    reasons = {reason for _, _, reason in unreadable}
    expect(reasons <= {"EAGAIN", "EHWPOISON", "ENXIO"}, "unreadable pages have a reason, none EIO", str(reasons))
    expect(summary.get("marker_pages", 0) >= VICTIM_PAGES, "the victim's pattern pages are found in RAM",
           str(summary))
    vmem = next((s, e) for s, e, n in ram if "virtio_mem" in n)
    offline = sum(min(e, vmem[1]) - max(s, vmem[0]) + 1 for s, e, r in unreadable
                  if r == "EAGAIN" and s <= vmem[1] and e >= vmem[0])
    expect(offline >= 64 << 20, "unplugged virtio-mem pages reported EAGAIN", f"{offline} bytes")

    secret = read_pfns(os.path.join(out, "secret_pfns.txt"))
    poison = read_pfns(os.path.join(out, "poison_pfns.txt"))
    if secret is not None:
        expect(all(reason_at(unreadable, p * page) == "EAGAIN" for p in secret),
               "memfd_secret pages (out of the direct map) reported EAGAIN", str(secret))
    else:
        print("skip memfd_secret: the guest kernel has none")
    if poison is not None:
        expect(all(reason_at(unreadable, p * page) == "EHWPOISON" for p in poison),
               "the soft-poisoned page reported EHWPOISON", str(poison))
    else:
        print("skip poison: madvise(MADV_HWPOISON) refused")

    # The victim's pages by frame number: exactly what it wrote.
    output = guest.check(f"{R} pages /mnt/out/pattern_pfns.txt /mnt/out/pattern.bin", timeout=300)
    expect("unreadable" not in output.replace("unreadable=0", ""), "the victim's frames are readable", output)
    with open(os.path.join(out, "pattern.bin"), "rb") as f:
        data = f.read()
    wrong = [i for i in range(VICTIM_PAGES)
             if data[i * page:(i + 1) * page] != guest_victim.page_content(token, i)]
    expect(len(data) == VICTIM_PAGES * page and not wrong, "the victim's pages read by frame are byte-exact",
           f"{len(wrong)} pages differ, first {wrong[:5]}")
    for name, pfns, reason in (("secret_pfns.txt", secret, "EAGAIN"), ("poison_pfns.txt", poison, "EHWPOISON")):
        if pfns is not None:
            output = guest.check(f"{R} pages /mnt/out/{name} /mnt/out/unreadable.bin")
            expect(output.count(f" {reason}") == len(pfns), f"pages of {name} refused with {reason}", output)

    # rmmod while the device is open: refused; once closed: clean.
    holder = guest.spawn(f"{R} hold 600")
    deadline = time.monotonic() + 60
    while "holding" not in guest.run(f"cat {holder.log}")[1]:
        if time.monotonic() > deadline:
            raise Failed("the holder did not open the device: " + guest.run(f"cat {holder.log}")[1])
        time.sleep(0.5)
    status, output = guest.run("chroot /mnt/host /sbin/rmmod mlfx_mem")
    expect(status != 0 and "in use" in output, "rmmod refused while a reader holds the device", output)
    guest.check(f"chroot /mnt/host /bin/kill -TERM -- -{holder.pid}")  # its process group
    deadline = time.monotonic() + 60
    while guest.running(holder.pid):
        if time.monotonic() > deadline:
            raise Failed("the holder did not end on SIGTERM")
        time.sleep(0.5)

    # Lockdown, raised at run time as it cannot be lowered: confidentiality closes the device,
    # as it closes /proc/kcore; an unsigned module no longer loads (Secure Boot's refusal).
    lockdown = "/sys/kernel/security/lockdown"
    guest.run("grep -q securityfs /proc/mounts || mount -t securityfs securityfs /sys/kernel/security")
    locked = guest.run(f"test -e {lockdown}")[0] == 0
    if locked:
        guest.check(f"echo confidentiality > {lockdown}")
        status, output = guest.run(f"{R} info")
        expect(status == 2 and "Operation not permitted" in output, "confidentiality lockdown: open refused, EPERM",
               output)
        expect("locked down (confidentiality)" in guest.check("dmesg | tail -20"), "the module says why")
    else:
        print("skip lockdown: no lockdown LSM in the guest")

    guest.check("chroot /mnt/host /sbin/rmmod mlfx_mem")
    status, _ = guest.run("test -e /dev/mlfx_mem")
    expect(status != 0 and "mlfx_mem" not in guest.check("cat /proc/modules"), "rmmod: module and device gone")
    if locked:
        status, output = guest.run("chroot /mnt/host /sbin/insmod /mnt/out/mlfx_mem.ko")
        dmesg_tail = guest.check("dmesg | tail -5")
        print(f"unsigned insmod under lockdown: {output.strip()} / {dmesg_tail.strip().splitlines()[-1]}")
        expect(status != 0 and "Operation not permitted" in output, "locked down: an unsigned module is refused",
               output + dmesg_tail)

    dmesg = guest.check("dmesg")
    expect("mlfx_mem: unloaded" in dmesg, "module says it unloaded")
    trouble = [line for line in dmesg.splitlines() if KERNEL_TROUBLE.search(line)]
    expect(not trouble, "no kernel warning, oops or BUG", "\n".join(trouble))
    expect(guest.running(victim.pid), "the victim still runs")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reader", required=True, help="the built mlfx_mem_reader")
    parser.add_argument("--kmod", required=True, help="kmod/ source directory")
    args = parser.parse_args(argv)
    import vmlab
    reason = vmlab.missing()
    if reason:
        return vmlab.unavailable(reason)
    kernel = vmlab.installed_kernels()[-1]
    if kernel not in kmod_build.kernels_with_headers():
        return vmlab.unavailable(f"no headers for the guest's kernel {kernel}; install linux-headers-{kernel} "
                                 "(packaging/setup-deps.sh does)")

    with tempfile.TemporaryDirectory(prefix="mlfx-kmod-vm-") as tmp:
        try:
            module = kmod_build.build_module(args.kmod, kernel, tmp)
        except kmod_build.BuildError as e:
            print(f"FAIL building the module: {e}")
            return 1
        out = os.path.join(tmp, "out")
        os.makedirs(out)
        for path in (module, args.reader, os.path.join(HERE, "guest_victim.py")):
            shutil.copy2(path, out)
        try:
            with vmlab.Guest(kernel_version=kernel, memory_mib=1024, cpus=2, out_dir=out, append=APPEND,
                             qemu_args=VIRTIO_MEM, extra_modules=["virtio_mem"]) as guest:
                print(f"guest {guest.kernel_version} booted in {guest.boot_seconds:.1f} s", flush=True)
                run_in_guest(guest, args.reader, module, out)
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
