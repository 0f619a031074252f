#!/usr/bin/env python3
"""arm64 guests for the VM lab: Debian's arm64 kernel under qemu-system-aarch64 (software
emulation, `-machine virt`) with an arm64 Debian userland at /mnt/host (stdlib only).

    import vmlab, vmlab_arm64
    with vmlab.Guest(memory_mib=2048, platform=vmlab_arm64.platform()) as guest:
        guest.check("chroot /mnt/host /usr/bin/python3 -c 'import platform; print(platform.machine())'")

Everything but the fixture is vmlab's: the same initramfs builder, init script, command channel,
9p shares and errors. The fixture, cached in vmlab's cache directory ($MLFX_VMLAB_CACHE, default
/var/cache/mlfx-vmlab) and built on first use (root; a few minutes for the userland):

  arm64-boot-KEY/      boot/vmlinuz-KVER, lib/modules/KVER (depmod'ed; only the modules the lab
                       loads) and bin/busybox, from the arm64 archive's linux-image-arm64 and
                       busybox-static (`apt-get download PACKAGE:arm64`: nothing is installed);
  arm64-SUITE-KEY/     `debootstrap --arch=arm64 --foreign --variant=minbase --include=python3-torch
                       SUITE DIR MIRROR`, its second stage run under qemu-user (binfmt_misc
                       registers qemu-aarch64 from qemu-user-static's binfmt.d entry when it is not
                       registered yet). MIRROR: this machine's apt sources (tests/matrix/chroots.py).

KEY hashes what each is made from (package versions, module list, suite, packages, layout), so a
change builds a new one; each is built in a temporary directory and renamed when complete, under a
lock (a second builder waits), and rebuilt when missing; older keys are removed.

By hand: `vmlab_arm64.py build` (the fixture), `vmlab_arm64.py run 'CMD'...`, `vmlab_arm64.py measure`.
"""
import contextlib
import fcntl
import functools
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "matrix"))

import chroots  # noqa: E402  (the apt mirror and removing half-built trees: one implementation)
import vmlab  # noqa: E402

QEMU = "qemu-system-aarch64"
MACHINE = ["-machine", "virt"]
CONSOLE = "ttyAMA0"
# No pointer authentication or SVE to emulate: cortex-a72 runs faster under TCG than "max".
CPU = "cortex-a72"
SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ["python3-torch"]
KERNEL_PACKAGE = "linux-image-arm64"
BUSYBOX_PACKAGE = "busybox-static"
INFO_FILE = "mlfx-vmlab-arm64.json"  # written last in each fixture directory
LAYOUT = 1                           # bump when what the builders put in the fixture changes
BINFMT = "/proc/sys/fs/binfmt_misc"
BINFMT_CONF = "/usr/lib/binfmt.d/qemu-aarch64.conf"
SETUP_HINT = ("install the arm64 VM lab with packaging/setup-deps.sh (qemu-system-arm, qemu-user-static, "
              "debootstrap) and give dpkg the arm64 architecture (packaging/build-agent.sh --arch arm64 does)")


class FixtureError(vmlab.Unavailable):
    """The arm64 kernel, busybox or userland could not be made here."""


# ---------------------------------------------------------------------------------------------
# What the fixture is made from

@functools.cache
def _candidates():
    """{package: its apt fields} of the arm64 packages apt would install, from one apt-cache call
    (a few seconds: this machine's apt keeps no package cache)."""
    names = [f"{p}:arm64" for p in (KERNEL_PACKAGE, BUSYBOX_PACKAGE)]
    out = subprocess.run(["apt-cache", "show", "--no-all-versions"] + names, capture_output=True, text=True)
    found = {}
    for stanza in re.split(r"\n\s*\n", out.stdout):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.M))
        if "Package" in fields and "Version" in fields:
            found[fields["Package"]] = fields
    for name in (KERNEL_PACKAGE, BUSYBOX_PACKAGE):
        if name not in found:
            raise FixtureError(f"apt knows no {name}:arm64 ({out.stderr.strip() or 'no candidate'}); {SETUP_HINT}")
    return found


def boot_recipe():
    """The packages (name, version) the kernel and busybox come from: the versioned kernel package
    linux-image-arm64 depends on (the same version), and busybox-static."""
    fields = _candidates()
    kernel = fields[KERNEL_PACKAGE]
    match = re.match(r"(linux-image-[^\s,(]+)", kernel.get("Depends", ""))
    if not match:
        raise FixtureError(f"{KERNEL_PACKAGE}:arm64 depends on no linux-image package: {kernel.get('Depends')!r}")
    return {"kernel": [match.group(1), kernel["Version"]],
            "busybox": [BUSYBOX_PACKAGE, fields[BUSYBOX_PACKAGE]["Version"]],
            "modules": vmlab.MODULES, "layout": LAYOUT}


def _key(recipe):
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def userland_recipe():
    return {"suite": SUITE, "variant": VARIANT, "packages": sorted(PACKAGES), "arch": "arm64", "layout": LAYOUT}


# ---------------------------------------------------------------------------------------------
# Building, once per machine

def _is_built(path):
    return os.path.isfile(os.path.join(path, INFO_FILE))


def _cached(prefix, recipe, build):
    """The fixture directory PREFIX-KEY in the cache, made by build(tmp_dir) -> info dict when missing."""
    cache = vmlab.cache_dir()
    final = os.path.join(cache, f"{prefix}-{_key(recipe)}")
    if _is_built(final):
        return final
    if os.geteuid() != 0:
        raise FixtureError(f"building {final} needs root (apt-get download, debootstrap, chroot); {SETUP_HINT}")
    with open(final + ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"vmlab_arm64: waiting for another process building {final}", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_built(final):
            return final
        for stale in glob.glob(os.path.join(cache, f".{os.path.basename(final)}.tmp.*")) + [final]:
            chroots.remove_tree(stale)  # left by a builder that died
        tmp = os.path.join(cache, f".{os.path.basename(final)}.tmp.{os.getpid()}")
        os.makedirs(tmp)
        started = time.monotonic()
        try:
            info = build(tmp)
            info.update(recipe=recipe, build_seconds=round(time.monotonic() - started, 1),
                        built=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            with open(os.path.join(tmp, INFO_FILE), "w") as f:
                json.dump(info, f, indent=1)
            os.rename(tmp, final)
        except BaseException:
            chroots.remove_tree(tmp)
            raise
        print(f"vmlab_arm64: built {final} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        for old in glob.glob(os.path.join(cache, f"{prefix}-" + "[0-9a-f]" * 12)):
            if old != final:
                chroots.remove_tree(old)  # made from other packages: not used any more
    return final


def _run(argv, log=None, what=None, **kwargs):
    """Run argv; its output goes to LOG (a path) when given. FixtureError naming the log's end on failure."""
    if log is None:
        result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)
        if result.returncode != 0:
            raise FixtureError(f"{what or argv[0]} failed (exit {result.returncode}): {' '.join(argv)}\n"
                               f"{(result.stdout + result.stderr).strip()[-3000:]}")
        return result.stdout
    with open(log, "a") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs).returncode
    if code != 0:
        with open(log, errors="replace") as f:
            tail = "".join(f.readlines()[-20:])
        raise FixtureError(f"{what or argv[0]} failed (exit {code}); the end of {log}:\n{tail}")
    return None


def _download(packages, where):
    """The .deb files of PACKAGES (name=version, arm64) fetched into WHERE, nothing installed."""
    _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root"] + [f"{p}:arm64={v}" for p, v in packages],
         what="apt-get download", cwd=where)
    return {p: glob.glob(os.path.join(where, f"{p}_*_arm64.deb"))[0] for p, _ in packages}


def _extract(deb, into, members):
    tar = subprocess.Popen(["tar", "-x", "-C", into, "--wildcards"] + members, stdin=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    deb_status = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], stdout=tar.stdin).returncode
    tar.stdin.close()
    tar_error = tar.stderr.read().decode(errors="replace")
    if tar.wait() != 0 or deb_status != 0:
        raise FixtureError(f"cannot extract {members} from {deb}: {tar_error.strip()}")


def _build_boot(tmp):
    """Kernel, the lab's modules (depmod'ed here: the package leaves that to its postinst) and busybox."""
    recipe = boot_recipe()
    kernel, busybox = recipe["kernel"], recipe["busybox"]
    debs = _download([tuple(kernel), tuple(busybox)], tmp)
    _extract(debs[kernel[0]], tmp, ["./boot/vmlinuz-*", "./lib/modules/*"])
    _extract(debs[busybox[0]], tmp, ["./bin/busybox"])
    for deb in debs.values():
        os.remove(deb)
    (version,) = os.listdir(os.path.join(tmp, "lib", "modules"))
    _run(["depmod", "-b", tmp, version], what="depmod")
    fixture = _platform(tmp, "/")
    keep = set(vmlab._module_closure(version, vmlab.MODULES, fixture))
    modules = fixture.modules_dir(version)
    for dirpath, _, files in os.walk(os.path.join(modules, "kernel"), topdown=False):
        for name in files:
            if os.path.relpath(os.path.join(dirpath, name), modules) not in keep:
                os.remove(os.path.join(dirpath, name))
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)  # empty now
    if not vmlab._is_static_busybox(fixture.busybox):
        raise FixtureError(f"{busybox[0]}:arm64 gave no static {fixture.busybox}")
    return {"kernel_version": version, "modules": sorted(keep)}


def ensure_binfmt():
    """arm64 programs run here under qemu-user: register qemu-user-static's binfmt_misc entry (with
    its F flag the interpreter is opened now, so it works inside chroots) when it is not registered."""
    entry = os.path.join(BINFMT, "qemu-aarch64")
    if os.path.exists(entry):
        with open(entry) as f:
            if f.readline().strip() == "enabled":
                return
        with open(entry, "w") as f:
            f.write("1")
        return
    if not os.path.exists(BINFMT_CONF):
        raise FixtureError(f"{BINFMT_CONF} is missing: qemu-user-static is not installed; {SETUP_HINT}")
    if not os.path.exists(os.path.join(BINFMT, "register")):
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT], what="mounting binfmt_misc")
    with open(BINFMT_CONF) as f:
        line = next(l.strip() for l in f if l.strip() and not l.startswith("#"))
    with open(os.path.join(BINFMT, "register"), "w") as f:
        f.write(line)


def _debootstrap():
    return shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")


def _build_userland(tmp):
    """An arm64 Debian made in two stages: unpacked here (debootstrap --foreign), configured by its own
    arm64 programs under qemu-user (the second stage)."""
    debootstrap = _debootstrap()
    if not debootstrap:
        raise FixtureError(f"debootstrap is not installed; {SETUP_HINT}")
    url = chroots.mirror()
    log = re.sub(r"\.tmp\.\d+$", ".build.log", tmp)  # kept when the build fails
    with contextlib.suppress(FileNotFoundError):
        os.remove(log)
    print(f"vmlab_arm64: debootstrap --arch=arm64 {SUITE} from {url}, several minutes (log {log})",
          file=sys.stderr, flush=True)
    root = os.path.join(tmp, "root")
    _run([debootstrap, "--arch=arm64", "--foreign", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
          SUITE, root, url], log=log, what="debootstrap (first stage)")
    ensure_binfmt()
    # dpkg syncs every file it unpacks; a half-built tree is thrown away anyway.
    unsafe_io = os.path.join(root, "etc", "dpkg", "dpkg.cfg.d", "mlfx-vmlab-unsafe-io")
    os.makedirs(os.path.dirname(unsafe_io), exist_ok=True)
    with open(unsafe_io, "w") as f:
        f.write("force-unsafe-io\n")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    _run(["chroot", root, "/debootstrap/debootstrap", "--second-stage"], log=log, env=env,
         what="debootstrap --second-stage (arm64 under qemu-user)")
    os.remove(unsafe_io)
    _run(["sync", "-f", root], what="sync")
    for deb in glob.glob(os.path.join(root, "var/cache/apt/archives/*.deb")):
        os.remove(deb)
    probe = _run(["chroot", root, "/usr/bin/python3", "-c",
                  "import platform, sys; print(platform.machine(), platform.python_version())"],
                 what="the arm64 userland's python3", env=env).split()
    torch = _run(["chroot", root, "dpkg-query", "-W", "-f=${Version}", "python3-torch"], env=env,
                 what="dpkg-query python3-torch")
    if probe[0] != "aarch64":
        raise FixtureError(f"the arm64 userland's python3 says it runs on {probe[0]}")
    with contextlib.suppress(FileNotFoundError):
        os.remove(log)
    return {"mirror": url, "machine": probe[0], "python": probe[1], "torch_package": torch}


def boot_dir():
    return _cached("arm64-boot", boot_recipe(), _build_boot)


def userland_dir():
    """The arm64 userland's root directory (built first when missing)."""
    return os.path.join(_cached(f"arm64-{SUITE}", userland_recipe(), _build_userland), "root")


def info(fixture_dir):
    with open(os.path.join(fixture_dir.rstrip("/").removesuffix("/root"), INFO_FILE)) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# The platform

def _platform(boot, host_root):
    return vmlab.Platform("arm64", QEMU, MACHINE, CONSOLE, CPU, busybox=os.path.join(boot, "bin", "busybox"),
                          kernel_root=boot, host_root=host_root, setup_hint=SETUP_HINT)


def missing():
    """Why an arm64 guest cannot run here (a sentence), or None. Does not build anything."""
    for program in (QEMU, "apt-get", "dpkg-deb", "depmod"):
        if shutil.which(program) is None:
            return f"{program} is not installed; {SETUP_HINT}"
    if not os.path.exists(BINFMT_CONF) and not os.path.exists(os.path.join(BINFMT, "qemu-aarch64")):
        return f"qemu-user-static is not installed; {SETUP_HINT}"
    if not _debootstrap():
        return f"debootstrap is not installed; {SETUP_HINT}"
    try:
        boot_recipe()
    except FixtureError as e:
        return str(e)
    return None


def platform():
    """The arm64 platform for vmlab.Guest(platform=...): kernel, busybox and userland built when missing."""
    boot = boot_dir()
    return _platform(boot, userland_dir())


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        print(boot_dir())
        print(userland_dir())
        sys.exit(0)
    sys.exit(vmlab._main(sys.argv[1:], platform, "Boot the arm64 VM lab guest and run commands in it."))
