#!/usr/bin/env python3
"""Builds kmod/mlfx_mem.ko for a kernel, out of the source tree (the tests' helper), and, run as
a program, the build test:

    kmod_build.py KMOD_SOURCE_DIR

For every kernel with headers under /lib/modules/*/build: builds with `make KVER=`, and with
`make KDIR=` for one of them, in a temporary copy (kbuild writes its objects next to the
sources); no compiler warning; modinfo names the module, its version, license and the kernel.
`make` for a kernel without headers fails with a message that says so. With dkms installed and
its signing key already made (/var/lib/dkms/mok.key: nothing of the system's is created), `dkms
add` + `dkms build` of kmod/dkms.conf in private trees give a module signed with that key. The
source directory gains no file. No kernel headers at all fail it (packaging/setup-deps.sh
installs Debian's); with MLFX_VMLAB_OPTIONAL=1 that is a skip (77), as for the VM lab.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

SOURCES = ("Kbuild", "Makefile", "mlfx_mem.c", "mlfx_mem_uapi.h")
SKIP = 77


class BuildError(Exception):
    pass


def kernels_with_headers():
    base = "/lib/modules"
    found = [v for v in (os.listdir(base) if os.path.isdir(base) else [])
             if os.path.exists(f"{base}/{v}/build/Makefile")]
    return sorted(found)


def copy_sources(kmod_src, dest):
    os.makedirs(dest, exist_ok=True)
    for name in SOURCES:
        shutil.copy2(os.path.join(kmod_src, name), dest)
    return dest


def run_make(directory, *args):
    proc = subprocess.run(["make", "-C", directory, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    return proc.returncode, proc.stdout


def warnings_in(log):
    return [line for line in log.splitlines() if re.search(r"\bwarning:", line, re.I)]


def build_module(kmod_src, kernel_version, workdir, *, kdir=None):
    """Path of mlfx_mem.ko built for KERNEL_VERSION in WORKDIR (a copy of the sources); the
    build's output is in BuildError when it fails or warns."""
    src = copy_sources(kmod_src, os.path.join(workdir, f"mlfx_mem-{kernel_version}"))
    status, log = run_make(src, f"KDIR={kdir}" if kdir else f"KVER={kernel_version}")
    if status != 0:
        raise BuildError(f"make for {kernel_version} failed ({status}):\n{log}")
    if warnings_in(log):
        raise BuildError(f"make for {kernel_version} warned:\n" + "\n".join(warnings_in(log)))
    ko = os.path.join(src, "mlfx_mem.ko")
    if not os.path.exists(ko):
        raise BuildError(f"make for {kernel_version} made no mlfx_mem.ko:\n{log}")
    return ko


def dkms_conf_version(kmod_src):
    with open(os.path.join(kmod_src, "dkms.conf")) as f:
        match = re.search(r'^PACKAGE_VERSION="([^"]+)"', f.read(), re.M)
    return match.group(1) if match else None


def dkms_build(kmod_src, kernel_version, workdir):
    """The DKMS-built module in private trees (the system's DKMS state untouched); its path."""
    version = dkms_conf_version(kmod_src)
    trees = [f"--dkmstree={workdir}/dkms", f"--sourcetree={workdir}/src", f"--installtree={workdir}/inst"]
    for tree in ("dkms", "inst"):
        os.makedirs(f"{workdir}/{tree}", exist_ok=True)
    src = copy_sources(kmod_src, f"{workdir}/src/mlfx-mem-{version}")
    shutil.copy2(os.path.join(kmod_src, "dkms.conf"), src)
    for action in (["add"], ["build", "-k", kernel_version]):
        proc = subprocess.run(["dkms", *trees, *action, "-m", "mlfx-mem", "-v", version],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        if proc.returncode != 0:
            raise BuildError(f"dkms {action[0]} failed ({proc.returncode}):\n{proc.stdout}")
    for root, _, files in os.walk(f"{workdir}/dkms/mlfx-mem/{version}/{kernel_version}"):
        if "mlfx_mem.ko" in files:
            return os.path.join(root, "mlfx_mem.ko")
    raise BuildError("dkms build made no mlfx_mem.ko")


def modinfo(ko):
    out = subprocess.run(["modinfo", ko], stdout=subprocess.PIPE, text=True, check=True).stdout
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def main(argv):
    kmod_src = os.path.abspath(argv[1])
    kernels = kernels_with_headers()
    if not kernels:
        reason = "no kernel headers under /lib/modules/*/build; packaging/setup-deps.sh installs Debian's"
        if os.environ.get("MLFX_VMLAB_OPTIONAL") == "1":
            print(f"SKIP: {reason}")
            return SKIP
        print(f"FAIL: {reason} (MLFX_VMLAB_OPTIONAL=1 makes this a skip)")
        return 1
    before = sorted(os.listdir(kmod_src))
    failures = []
    with tempfile.TemporaryDirectory(prefix="mlfx-kmod-build-") as tmp:
        for kver in kernels:
            try:
                ko = build_module(kmod_src, kver, tmp)
            except BuildError as e:
                failures.append(str(e))
                continue
            info = modinfo(ko)
            expect = {"name": "mlfx_mem", "version": "1.0.0", "license": "GPL"}
            for key, value in expect.items():
                if info.get(key) != value:
                    failures.append(f"{kver}: modinfo {key} is {info.get(key)!r}, not {value!r}")
            if not info.get("vermagic", "").startswith(kver + " "):
                failures.append(f"{kver}: vermagic {info.get('vermagic')!r}")
            print(f"ok built for {kver}: {os.path.getsize(ko)} bytes, vermagic {info.get('vermagic')}")

        # KDIR= alone: the headers directory, its release read from it.
        kdir = os.path.realpath(f"/lib/modules/{kernels[-1]}/build")
        try:
            build_module(kmod_src, "kdir", tmp, kdir=kdir)
            print(f"ok built with KDIR={kdir}")
        except BuildError as e:
            failures.append(str(e))

        if dkms_conf_version(kmod_src) != "1.0.0":
            failures.append(f"dkms.conf PACKAGE_VERSION {dkms_conf_version(kmod_src)!r} is not the module's 1.0.0")
        if shutil.which("dkms") and os.path.exists("/var/lib/dkms/mok.key"):
            try:
                ko = dkms_build(kmod_src, kernels[-1], os.path.join(tmp, "dkms-run"))
                signer = modinfo(ko).get("signer")
                if not signer:
                    failures.append("the DKMS-built module is not signed")
                else:
                    print(f"ok dkms build for {kernels[-1]}, signed by {signer!r}")
            except BuildError as e:
                failures.append(str(e))
        else:
            print("skip dkms: dkms or its signing key /var/lib/dkms/mok.key is not here")

        # No headers: a clear refusal, before kbuild says anything.
        src = copy_sources(kmod_src, os.path.join(tmp, "missing"))
        status, log = run_make(src, "KVER=0.0.0-no-such-kernel")
        if status == 0 or "no kernel headers for kernel 0.0.0-no-such-kernel" not in log \
                or "linux-headers-0.0.0-no-such-kernel" not in log:
            failures.append(f"make for a kernel without headers: status {status}, output:\n{log}")
        else:
            print("ok missing headers refused: " + next(l for l in log.splitlines() if l.startswith("mlfx_mem:")))

    after = sorted(os.listdir(kmod_src))
    if after != before:
        failures.append(f"the source directory changed: {sorted(set(after) ^ set(before))}")
    for failure in failures:
        print(f"FAIL {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
