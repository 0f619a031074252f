#!/usr/bin/env python3
"""VM lab: run commands inside Debian's own kernel under QEMU software emulation (stdlib only).

    from vmlab import Guest
    with Guest(memory_mib=1024, cpus=2) as guest:          # boots; always powered off on exit
        print(guest.kernel_version)                          # e.g. 6.1.0-57-amd64
        status, output = guest.run("uname -r", timeout=30)   # busybox sh in the initramfs
        guest.check("chroot /mnt/host /usr/bin/python3 -c 'print(1)'")
        victim = guest.spawn("chroot /mnt/host /usr/bin/python3 victim.py")   # keeps running
        guest.check("cp /proc/iomem /mnt/out/")             # lands in guest.out_dir on the host

The guest is Debian's kernel (the newest /boot/vmlinuz-* with modules, or the one given) with a
busybox initramfs built here and cached outside the repository ($MLFX_VMLAB_CACHE, default
/var/cache/mlfx-vmlab). The host's root is shared read-only at /mnt/host (virtio-9p), a writable
host directory at /mnt/out; /proc, /sys, /dev, /tmp, /mnt/out are mounted inside /mnt/host too,
so `chroot /mnt/host PROGRAM` runs host programs with the same paths. Commands go over a
virtio-serial port (no tty in the way: output is byte-exact) and end with a sentinel line that
carries the exit status. The kernel console goes to console.log in the guest's work directory.
Any error or timeout kills QEMU; the work directory (console log, QEMU's stderr) is then kept
and named in the error.

Other architectures: Guest(platform=...) (a Platform: QEMU, machine, console, kernel, busybox and
the directory shared at /mnt/host); vmlab_arm64.platform() is an arm64 guest with an arm64 Debian.

Run as a program for a quick look: `vmlab.py run 'CMD'...` or `vmlab.py measure`.
"""
import base64
import contextlib
import ctypes
import gzip
import hashlib
import io
import lzma
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time

QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
COMMAND_PORT = "mlfx.cmd"
READY = b"MLFX-VMLAB-READY "
INIT_FAILED = "MLFX-VMLAB-INIT-FAILED"
DEFAULT_CACHE = "/var/cache/mlfx-vmlab"
SETUP_HINT = "install the VM lab with packaging/setup-deps.sh (qemu-system-x86, linux-image-amd64, busybox-static)"

# What the init needs, in load order once dependencies are added (modules.dep): the virtio PCI
# transport, the command port (virtio_console), the 9p shares and the scratch disk (ext4).
MODULES = ["virtio_pci", "virtio_console", "9pnet_virtio", "9p", "virtio_blk", "crc32c_generic", "ext4"]

# KASLR stays on, as on real machines. An oops panics and panic=-1 with -no-reboot ends QEMU, so
# a crashing module fails the test at once with the oops in the console log.
KERNEL_CMDLINE = "console={console} quiet panic=-1 oops=panic rdinit=/init"


class Platform:
    """What differs between guest architectures: QEMU and its machine, the serial console, where
    the kernel (KERNEL_ROOT/boot/vmlinuz-V), its modules (KERNEL_ROOT/lib/modules/V) and a static
    busybox come from, and which host directory the guest sees at /mnt/host (HOST_ROOT: the host's
    own root, or a userland of the guest's architecture such as vmlab_arm64's)."""

    def __init__(self, name, qemu, machine, console, cpu, busybox=BUSYBOX, kernel_root="/", host_root="/",
                 setup_hint=SETUP_HINT):
        self.name, self.qemu, self.machine, self.console, self.cpu = name, qemu, list(machine), console, cpu
        self.busybox, self.kernel_root, self.host_root = busybox, kernel_root, host_root
        self.setup_hint = setup_hint

    def kernel_image(self, version):
        return os.path.join(self.kernel_root, "boot", f"vmlinuz-{version}")

    def modules_dir(self, version):
        return os.path.join(self.kernel_root, "lib", "modules", version)

    def __repr__(self):
        return f"Platform({self.name}, kernel_root={self.kernel_root!r}, host_root={self.host_root!r})"


# This machine: its own kernel package and busybox, its root at /mnt/host.
HOST = Platform("x86_64", QEMU, ["-machine", "pc"], "ttyS0", "qemu64")


class VmlabError(Exception):
    """The lab could not do what was asked; the message says what and where to look."""


class Unavailable(VmlabError):
    """QEMU, the kernel or busybox is missing here."""


class BootError(VmlabError):
    """The guest did not come up (timeout, QEMU exited, init failed)."""


class GuestTimeout(VmlabError):
    """A command did not finish in time; the guest was killed."""


class GuestDied(VmlabError):
    """QEMU exited while a command ran (kernel panic, oops, poweroff by the command)."""


class CommandFailed(VmlabError):
    """guest.check(): the command exited non-zero."""

    def __init__(self, cmd, status, output):
        self.cmd, self.status, self.output = cmd, status, output
        super().__init__(f"guest command exited {status}: {cmd}\n--- output ---\n{output.rstrip()}")


# ---------------------------------------------------------------------------------------------
# What is installed

SKIP = 77  # ctest's SKIP_RETURN_CODE for the VM tests


def unavailable(reason):
    """What a VM test exits with when the lab cannot run here: a failure, or a skip (SKIP) where
    MLFX_VMLAB_OPTIONAL=1 says the lab is optional on this machine."""
    if os.environ.get("MLFX_VMLAB_OPTIONAL") == "1":
        print(f"SKIP: {reason}")
        return SKIP
    print(f"FAIL: {reason} (MLFX_VMLAB_OPTIONAL=1 makes this a skip)")
    return 1


def _version_key(version):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", version)]


def installed_kernels(platform=HOST):
    """Kernel versions with both boot/vmlinuz-VERSION and lib/modules/VERSION/modules.dep under the
    platform's kernel root (/ for this machine), oldest first."""
    boot = os.path.join(platform.kernel_root, "boot")
    found = []
    for name in os.listdir(boot) if os.path.isdir(boot) else []:
        if name.startswith("vmlinuz-"):
            version = name[len("vmlinuz-"):]
            if os.path.exists(os.path.join(platform.modules_dir(version), "modules.dep")):
                found.append(version)
    return sorted(found, key=_version_key)


def missing(kernel_version=None, platform=HOST):
    """Why the lab cannot run here (a sentence), or None when it can."""
    hint = platform.setup_hint
    if shutil.which(platform.qemu) is None:
        return f"{platform.qemu} is not installed; {hint}"
    if not _is_static_busybox(platform.busybox):
        return f"{platform.busybox} is missing or not statically linked; {hint}"
    kernels = installed_kernels(platform)
    where = f"{platform.kernel_root.rstrip('/')}/boot and {platform.kernel_root.rstrip('/')}/lib/modules"
    if kernel_version is None and not kernels:
        return f"no kernel with modules under {where}; {hint}"
    if kernel_version is not None and kernel_version not in kernels:
        return f"kernel {kernel_version} is not installed (have: {', '.join(kernels) or 'none'}); {hint}"
    image = platform.kernel_image(kernel_version or kernels[-1])
    if not os.access(image, os.R_OK):
        return f"{image} is not readable by this user"
    return None


def _is_static_busybox(path):
    """An ELF file without a program interpreter (PT_INTERP), of either byte order's 64-bit class."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    order = "<" if data[5] == 1 else ">"
    phoff, = struct.unpack_from(order + "Q", data, 32)
    phentsize, phnum = struct.unpack_from(order + "HH", data, 54)
    for i in range(phnum):
        at = phoff + i * phentsize
        if at + 4 > len(data):
            return False
        if struct.unpack_from(order + "I", data, at)[0] == 3:  # PT_INTERP: dynamically linked
            return False
    return True


# ---------------------------------------------------------------------------------------------
# The initramfs

INIT_SCRIPT = r"""#!/bin/busybox sh
# mlfx vmlab init (PID 1): mounts, the host shares, then the command loop on the virtio port.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
fail() { echo "MLFX-VMLAB-INIT-FAILED: $*"; sleep 1; poweroff -f; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t tmpfs -o mode=1777 tmp /tmp
hostname vmlab
ip link set lo up

for m in $(cat /etc/vmlab-modules); do insmod "/lib/vmlab/$m" || fail "insmod $m"; done

hostcache=loose
tree=
for word in $(cat /proc/cmdline); do
  case "$word" in
    vmlab.hostcache=*) hostcache=${word#*=} ;;
    vmlab.tree=*) tree=${word#*=} ;;
  esac
done
P9="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o "$P9,ro,cache=$hostcache" hostroot /mnt/host || fail "cannot mount the host root (9p tag hostroot)"
mount -t 9p -o "$P9" out /mnt/out || fail "cannot mount the output share (9p tag out)"
if [ -b /dev/vda ]; then
  # No ext4lazyinit thread: it would come and go while an image is read (tests compare task lists).
  mkdir -p /mnt/disk && mount -t ext4 -o noinit_itable,no_prefetch_block_bitmaps /dev/vda /mnt/disk \
    || fail "cannot mount the scratch disk /dev/vda"
fi

# The chroot tree: a read-only 9p directory still serves as a mount point.
H=/mnt/host
mount -t proc proc $H/proc || fail "mount $H/proc"
mount -t sysfs sysfs $H/sys || fail "mount $H/sys"
mount -t devtmpfs devtmpfs $H/dev || fail "mount $H/dev"
mount --bind /dev/pts $H/dev/pts
mount --bind /dev/shm $H/dev/shm
mount --bind /tmp $H/tmp || fail "mount $H/tmp"
[ -d $H/run ] && mount -t tmpfs -o mode=755 run $H/run
if [ -d $H/mnt ]; then
  mount -t tmpfs -o mode=755 mnt $H/mnt && mkdir -p $H/mnt/out && mount --bind /mnt/out $H/mnt/out
  [ -d /mnt/disk ] && mkdir -p $H/mnt/disk && mount --bind /mnt/disk $H/mnt/disk
fi
# The source tree (and its build) where the mounts above hide it (a clone under /tmp): its own
# read-only share at the same path.
if [ -n "$tree" ]; then
  mkdir -p "$H$tree" && mount -t 9p -o "$P9,ro,cache=$hostcache" tree "$H$tree" || fail "cannot mount the tree at $H$tree"
fi

port=
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  for d in /sys/class/virtio-ports/*; do
    [ "$(cat $d/name 2>/dev/null)" = "mlfx.cmd" ] && port=/dev/${d##*/}
  done
  [ -n "$port" ] && [ -c "$port" ] && break
  sleep 0.25
done
[ -c "$port" ] || fail "no virtio port named mlfx.cmd"
exec 3<>"$port" || fail "cannot open $port"
echo "vmlab: command port $port ready"
printf 'MLFX-VMLAB-READY %s\n' "$(uname -r)" >&3

# One request a line: RUN TOKEN BASE64(CMD) | POWEROFF. A command's stdin is /dev/null, its
# stdout and stderr the port; then a line "\nTOKEN STATUS\n" ends its output.
set -f
cd /
while :; do
  if ! IFS= read -r line <&3; then sleep 0.2; continue; fi
  set -- $line
  case "$1" in
    RUN)
      cmd=$(printf %s "$3" | base64 -d)
      sh -c "$cmd" </dev/null >&3 2>&3 3>&-
      printf '\n%s %d\n' "$2" "$?" >&3 ;;
    POWEROFF)
      sync; poweroff -f ;;
  esac
done
"""


def _module_closure(kernel_version, names, platform=HOST):
    """Module files (relative to lib/modules/VER) in load order, dependencies first."""
    base = platform.modules_dir(kernel_version)
    deps = {}
    with open(f"{base}/modules.dep") as f:
        for line in f:
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
    builtin = set()
    with contextlib.suppress(FileNotFoundError), open(f"{base}/modules.builtin") as f:
        builtin = {_module_name(line.strip()) for line in f}
    by_name = {_module_name(path): path for path in deps}
    order = []

    def visit(path):
        if path in order:
            return
        for dep in reversed(deps[path]):  # modules.dep lists the deepest dependency last
            visit(dep)
        order.append(path)

    for name in names:
        key = name.replace("-", "_")
        if key in builtin:
            continue
        if key not in by_name:
            raise Unavailable(f"module {name} is not in {base}/modules.dep; {platform.setup_hint}")
        visit(by_name[key])
    return order


def _module_name(path):
    name = os.path.basename(path)
    return name.split(".ko")[0].replace("-", "_")


def _read_module(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", path], check=True, capture_output=True).stdout
    return data


class _Cpio:
    """A newc archive, the format the kernel unpacks into its initial rootfs."""

    def __init__(self):
        self.out = io.BytesIO()
        self.ino = 1

    def _entry(self, name, mode, data=b""):
        name_bytes = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_bytes), 0]
        self.ino += 1
        self.out.write(b"070701" + b"".join(b"%08X" % v for v in fields) + name_bytes)
        self._pad()
        self.out.write(data)
        self._pad()

    def _pad(self):
        self.out.write(b"\0" * (-self.out.tell() % 4))

    def directory(self, name):
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name, data, mode=0o644):
        self._entry(name, stat.S_IFREG | mode, data)

    def finish(self):
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


def cache_dir():
    path = os.environ.get("MLFX_VMLAB_CACHE", DEFAULT_CACHE)
    try:
        os.makedirs(path, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    if "MLFX_VMLAB_CACHE" in os.environ:
        raise VmlabError(f"cannot write the VM lab cache {path} (MLFX_VMLAB_CACHE)")
    fallback = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mlfx-vmlab")
    os.makedirs(fallback, exist_ok=True)
    return fallback


def initramfs(kernel_version, extra_modules=(), platform=HOST):
    """Path of the cached initramfs for this kernel, built first when missing."""
    modules = _module_closure(kernel_version, MODULES + list(extra_modules), platform)
    base = platform.modules_dir(kernel_version)
    key = hashlib.sha256()
    key.update(INIT_SCRIPT.encode())
    with open(platform.busybox, "rb") as f:
        key.update(hashlib.sha256(f.read()).digest())
    for rel in modules:
        st = os.stat(f"{base}/{rel}")
        key.update(f"{rel} {st.st_size} {st.st_mtime_ns}\n".encode())
    path = os.path.join(cache_dir(), f"initramfs-{kernel_version}-{key.hexdigest()[:16]}.cpio.gz")
    if os.path.exists(path):
        return path

    archive = _Cpio()
    for d in ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "etc",
              "mnt", "mnt/host", "mnt/out", "lib", "lib/vmlab"]:
        archive.directory(d)
    with open(platform.busybox, "rb") as f:
        archive.file("bin/busybox", f.read(), 0o755)
    archive.file("init", INIT_SCRIPT.encode(), 0o755)
    names = []
    for rel in modules:
        name = _module_name(rel) + ".ko"
        archive.file(f"lib/vmlab/{name}", _read_module(f"{base}/{rel}"))
        names.append(name)
    archive.file("etc/vmlab-modules", ("\n".join(names) + "\n").encode())
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(gzip.compress(archive.finish(), compresslevel=6))
    os.replace(tmp, path)  # atomic: tests building at once each write their own file
    return path


# ---------------------------------------------------------------------------------------------
# The guest

def _die_with_parent():
    """QEMU gets SIGKILL when the test process dies, even by SIGKILL (ctest's timeout)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Spawned:
    """A background process in the guest: its pid and the guest path of its log."""

    def __init__(self, pid, log):
        self.pid, self.log = pid, log

    def __repr__(self):
        return f"Spawned(pid={self.pid}, log={self.log!r})"


class Guest:
    """A QEMU guest running Debian's kernel; a context manager that always ends QEMU.

    kernel_version: a version under /boot (default: the newest with modules).
    memory_mib, cpus: the guest's RAM and vCPUs. cpu: QEMU's -cpu (e.g. "max", "qemu64,+la57" for
    5-level paging; default: the platform's). out_dir: host directory shared writable at /mnt/out
    (default: a fresh one in the work directory, removed with it). append: extra kernel command-line words.
    qemu_args: extra QEMU arguments. boot_timeout: seconds until the command port is ready.
    disk_mib: when > 0, a scratch ext4 disk of that size (sparse file in the work directory,
    guest.disk_image) mounted at /mnt/disk: a real block device for writes of small blocks,
    which over 9p cost a round trip each (LiME writes 4 KiB at a time). host_cache: the 9p
    cache mode of /mnt/host: "loose" (default) caches what the guest read, so it may not see a
    host file changed after it read it; "none" sees every change but made `import torch` about
    3x slower here. platform: the guest's architecture, kernel and /mnt/host (default: this
    machine's; vmlab_arm64.platform() gives an arm64 guest with an arm64 Debian userland).
    """

    def __init__(self, kernel_version=None, memory_mib=1024, cpus=2, cpu=None, out_dir=None,
                 append="", qemu_args=(), boot_timeout=180, extra_modules=(), disk_mib=0,
                 host_cache="loose", platform=HOST):
        reason = missing(kernel_version, platform)
        if reason:
            raise Unavailable(reason)
        self.platform = platform
        self.kernel_version = kernel_version or installed_kernels(platform)[-1]
        self.memory_mib, self.cpus, self.cpu = memory_mib, cpus, cpu or platform.cpu
        self.append, self.qemu_args = append, list(qemu_args)
        self.boot_timeout = boot_timeout
        self.extra_modules = list(extra_modules)
        self.disk_mib, self.host_cache = disk_mib, host_cache
        self.workdir = tempfile.mkdtemp(prefix="mlfx-vmlab-")
        self._own_out = out_dir is None
        self.out_dir = os.path.abspath(out_dir) if out_dir else os.path.join(self.workdir, "out")
        os.makedirs(self.out_dir, exist_ok=True)
        self.console_log = os.path.join(self.workdir, "console.log")
        self.qemu_log = os.path.join(self.workdir, "qemu.log")
        self.disk_image = os.path.join(self.workdir, "disk.img") if disk_mib > 0 else None
        self.boot_seconds = None
        self.proc = None
        self._conn = None
        self._pending = bytearray()
        self._spawned = 0

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self._finish(failed=True)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        self._finish(failed=exc_type is not None)
        return False

    def hidden_tree(self):
        """The source tree, when it lies where the guest mounts its own file systems over the host's
        (/tmp, /run, /mnt...): then it is shared again at its path. None otherwise, and None when
        /mnt/host is not this machine's root (another architecture's userland: the tree's programs
        would not run there)."""
        if self.platform.host_root != "/":
            return None
        tree = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
        hidden = ("/tmp", "/run", "/mnt", "/dev", "/proc", "/sys")
        return tree if any(tree == h or tree.startswith(h + "/") for h in hidden) and " " not in tree else None

    def qemu_command(self, initrd, socket_path):
        share = "security_model=none,multidevs=remap"
        tree = self.hidden_tree()
        tree_args = ["-fsdev", f"local,id=tree,path={tree},readonly=on,{share}",
                     "-device", "virtio-9p-pci,fsdev=tree,mount_tag=tree"] if tree else []
        platform = self.platform
        return [platform.qemu, "-accel", "tcg", *platform.machine, "-cpu", self.cpu,
                "-m", str(self.memory_mib), "-smp", str(self.cpus),
                "-nodefaults", "-display", "none", "-vga", "none", "-no-reboot",
                "-kernel", platform.kernel_image(self.kernel_version), "-initrd", initrd,
                "-append", f"{KERNEL_CMDLINE.format(console=platform.console)} vmlab.hostcache={self.host_cache}"
                           f"{f' vmlab.tree={tree}' if tree else ''} {self.append}".strip(),
                "-chardev", f"file,id=console,path={self.console_log}", "-serial", "chardev:console",
                "-chardev", f"socket,id=cmd,path={socket_path}",
                "-device", "virtio-serial-pci", "-device", f"virtserialport,chardev=cmd,name={COMMAND_PORT}",
                "-fsdev", f"local,id=hostroot,path={platform.host_root},readonly=on,{share}",
                "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
                "-fsdev", f"local,id=out,path={self.out_dir},{share}",
                "-device", "virtio-9p-pci,fsdev=out,mount_tag=out",
                *tree_args, *self._disk_args(), *self.qemu_args]

    def _disk_args(self):
        if not self.disk_image:
            return []
        return ["-drive", f"file={self.disk_image},format=raw,if=virtio,cache=unsafe,discard=unmap"]

    def _make_disk(self):
        mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
        with open(self.disk_image, "wb") as f:
            f.truncate(self.disk_mib << 20)
        result = subprocess.run([mkfs, "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,nodiscard", self.disk_image],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise VmlabError(f"mkfs.ext4 of the scratch disk failed: {result.stderr.strip()} (e2fsprogs installed?)")

    def start(self):
        initrd = initramfs(self.kernel_version, self.extra_modules, self.platform)
        if self.disk_image:
            self._make_disk()
        socket_path = os.path.join(self.workdir, "cmd.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(socket_path)
        listener.listen(1)
        started = time.monotonic()
        deadline = started + self.boot_timeout
        with open(self.qemu_log, "wb") as qemu_log:
            self.proc = subprocess.Popen(self.qemu_command(initrd, socket_path), stdin=subprocess.DEVNULL,
                                         stdout=qemu_log, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        try:
            listener.settimeout(0.2)
            while self._conn is None:
                self._check_alive("while booting", BootError)
                self._check_deadline(deadline, f"QEMU did not connect the command port within {self.boot_timeout}s")
                with contextlib.suppress(socket.timeout):
                    self._conn, _ = listener.accept()
        finally:
            listener.close()
        while READY not in self._pending or not self._pending.split(READY, 1)[1].count(b"\n"):
            self._check_deadline(deadline, f"the guest did not reach its command loop within {self.boot_timeout}s")
            self._receive(deadline, "while booting", BootError)
        line = self._pending.split(READY, 1)[1].split(b"\n", 1)
        self._pending = bytearray(line[1])
        booted = line[0].decode().strip()
        if booted != self.kernel_version:
            raise BootError(f"the guest runs kernel {booted}, not {self.kernel_version}{self._diagnostics()}")
        self.boot_seconds = time.monotonic() - started

    def poweroff(self, timeout=30):
        """Power the guest off (sync first); QEMU is killed if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            self._conn.sendall(b"POWEROFF\n")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self):
        """End QEMU at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _finish(self, failed):
        try:
            if failed:
                self.kill()
            else:
                self.poweroff()
        finally:
            self.kill()
            self._cleanup(failed)

    def _cleanup(self, failed):
        if os.environ.get("MLFX_VMLAB_KEEP"):
            return
        if self._own_out:
            shutil.rmtree(self.out_dir, ignore_errors=True)  # may hold GiBs of images
        if self.disk_image:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.disk_image)
        if failed:
            return  # the console log and QEMU's stderr stay for diagnosis; errors name them
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- commands -----------------------------------------------------------------------------

    def run(self, cmd, timeout=300):
        """Run CMD with the initramfs's busybox sh; (exit status, stdout+stderr as text).

        On timeout the guest is killed and GuestTimeout raised (the command channel cannot be
        trusted afterwards)."""
        if not self.alive or self._conn is None:
            raise GuestDied(f"the guest is not running; cannot run: {cmd}{self._diagnostics()}")
        token = f"MLFX-DONE-{secrets.token_hex(8)}".encode()
        self._pending = bytearray()  # stray bytes from before (a background process' leaked output)
        self._conn.sendall(b"RUN %s %s\n" % (token, base64.b64encode(cmd.encode())))
        end = re.compile(rb"\n" + re.escape(token) + rb" (\d+)\n")
        deadline = time.monotonic() + timeout
        searched = 0  # the sentinel cannot start before this offset: big outputs are searched once
        while True:
            match = end.search(self._pending, max(0, searched - len(token) - 16))
            searched = len(self._pending)
            if match:
                output = self._pending[:match.start()]
                self._pending = self._pending[match.end():]
                return int(match.group(1)), output.decode(errors="replace")
            if time.monotonic() >= deadline:
                partial = self._pending.decode(errors="replace")[-2000:]
                self.kill()
                raise GuestTimeout(f"guest command did not finish within {timeout}s and the guest was killed: "
                                   f"{cmd}\n--- output so far (last 2000 chars) ---\n{partial}{self._diagnostics()}")
            self._receive(deadline, f"while running: {cmd}", GuestDied)

    def check(self, cmd, timeout=300):
        """Run CMD; its output, or CommandFailed (with the output) when it exits non-zero."""
        status, output = self.run(cmd, timeout)
        if status != 0:
            raise CommandFailed(cmd, status, output)
        return output

    def spawn(self, cmd, log=None):
        """Start CMD in the background in its own session (stdin /dev/null, output to LOG, a guest
        path, default /tmp/vmlab-spawn-N.log); returns Spawned(pid, log)."""
        self._spawned += 1
        log = log or f"/tmp/vmlab-spawn-{self._spawned}.log"
        out = self.check(f"setsid sh -c {shlex.quote(cmd)} </dev/null >{shlex.quote(log)} 2>&1 & echo $!")
        return Spawned(int(out.split()[-1]), log)

    def running(self, pid):
        """Whether guest process PID still runs (and is not a zombie)."""
        status, out = self.run(f"cat /proc/{int(pid)}/stat 2>/dev/null")
        return status == 0 and out.split(") ")[-1][:1] not in ("Z", "X", "")

    def host_path(self, guest_path):
        """The host path of a file the guest wrote under /mnt/out."""
        rel = os.path.relpath(guest_path, "/mnt/out")
        if rel.startswith(".."):
            raise ValueError(f"{guest_path} is not under /mnt/out")
        return os.path.join(self.out_dir, rel)

    # -- plumbing -----------------------------------------------------------------------------

    def _receive(self, deadline, doing, error):
        self._conn.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
        try:
            data = self._conn.recv(1 << 16)
        except socket.timeout:
            self._check_alive(doing, error)
            return
        if not data:
            self._check_alive(doing, error)
            self.kill()
            raise error(f"the command port closed {doing}{self._diagnostics()}")
        self._pending += data

    def _check_alive(self, doing, error):
        if self.proc.poll() is not None:
            code = self.proc.returncode
            self.kill()
            raise error(f"QEMU exited (status {code}) {doing}{self._diagnostics()}")

    def _check_deadline(self, deadline, message):
        if time.monotonic() >= deadline:
            self.kill()
            raise BootError(f"{message}{self._diagnostics()}")

    def _diagnostics(self):
        parts = []
        for label, path in (("QEMU", self.qemu_log), ("console", self.console_log)):
            with contextlib.suppress(OSError), open(path, errors="replace") as f:
                tail = f.read()[-3000:].strip()
                if tail:
                    parts.append(f"--- {label} ({path}, last lines) ---\n{tail}")
        with contextlib.suppress(OSError), open(self.console_log, errors="replace") as f:
            failed = [line for line in f if INIT_FAILED in line]
            if failed:
                parts.insert(0, f"init failed: {failed[-1].strip()}")
        return ("\n" + "\n".join(parts)) if parts else ""


# ---------------------------------------------------------------------------------------------
# A quick look by hand

def _main(argv, make_platform=lambda: HOST, description="Boot the VM lab guest and run commands in it."):
    import argparse
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--memory", type=int, default=1024, help="MiB (default 1024)")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--cpu", default=None, help="QEMU -cpu (default: the platform's)")
    parser.add_argument("--kernel", default=None)
    parser.add_argument("--disk", type=int, default=0, help="scratch disk at /mnt/disk, MiB")
    parser.add_argument("--host-cache", default="loose", help="9p cache mode of /mnt/host")
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("run", help="run each CMD in turn").add_argument("cmd", nargs="+")
    sub.add_parser("measure", help="boot-to-shell and torch-import times")
    args = parser.parse_args(argv)
    with Guest(args.kernel, args.memory, args.cpus, args.cpu, disk_mib=args.disk,
               host_cache=args.host_cache, platform=make_platform()) as guest:
        print(f"booted {guest.kernel_version} in {guest.boot_seconds:.1f} s", file=sys.stderr)
        if args.what == "run":
            for cmd in args.cmd:
                status, output = guest.run(cmd, timeout=600)
                sys.stdout.write(output)
                print(f"[exit {status}]", file=sys.stderr)
        else:
            for label, cmd in (("python3 -c pass", "chroot /mnt/host /usr/bin/python3 -c pass"),
                               ("import torch", "chroot /mnt/host /usr/bin/python3 -c 'import torch'"),
                               ("import torch again", "chroot /mnt/host /usr/bin/python3 -c 'import torch'")):
                started = time.monotonic()
                guest.check(cmd, timeout=600)
                print(f"{label}: {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
