#!/usr/bin/env python3
"""mlfx-agent builds alone (packaging/build-agent.sh), for this machine or cross-built for arm64.

Runs build-agent.sh into a temporary directory with CMake's JSON trace of the configure step,
then checks that
  - nothing of the analyzer is configured: no libtorch (find_package(Torch)), libpng or ISA-L
    (pkg_check_modules) is looked for, no file under analyzer/ is read;
  - the stripped binary links only OpenSSL and the C/C++ runtime (its NEEDED entries);
  - it runs: `mlfx-agent --help` (under qemu-user for arm64);
  - arm64: the binary and the test binaries are AArch64 and the unit tests passed under qemu-user.
Exit 77 (skipped, with the reason) when build-agent.sh cannot install what it needs, e.g. the
configured archive has no arm64.

usage: agent_build_test.py SOURCE_DIR [--arch arm64]
"""
import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
CANNOT_INSTALL = 3  # build-agent.sh: the packages it needs cannot be installed

# What the analyzer looks for and the agent must not (the analyzer's CMake files, by name).
FORBIDDEN_PACKAGE = re.compile(r"torch|caffe2|png|isal", re.IGNORECASE)
# The only libraries the agent may need: OpenSSL and the C/C++ runtime.
ALLOWED_NEEDED = re.compile(r"^(libssl|libcrypto|libstdc\+\+|libc|libm|libgcc_s)\.so\.\d+$")


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def build(source, arch, out, trace):
    cmd = [os.path.join(source, "packaging", "build-agent.sh"), "--out", out]
    if arch == "arm64":
        cmd += ["--arch", "arm64", "--test"]
    cmd += ["--", "--trace-expand", "--trace-format=json-v1", f"--trace-redirect={trace}"]
    print("$", " ".join(cmd), flush=True)
    run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # ninja's progress lines and compiler warnings are noise here; the rest is the story.
    print("\n".join(line for line in run.stdout.splitlines() if not line.startswith("[")))
    if run.returncode == CANNOT_INSTALL:
        print(f"SKIPPED: build-agent.sh cannot install what the {arch} build needs (see above)")
        sys.exit(SKIP)
    if run.returncode != 0:
        fail(f"build-agent.sh exited {run.returncode}")
    return run.stdout


def trace_calls(trace):
    with open(trace) as f:
        for line in f:
            entry = json.loads(line)
            if "cmd" in entry:
                yield entry["cmd"].lower(), entry.get("args", []), entry.get("file", "")


def check_trace(trace, source):
    analyzer = os.path.join(os.path.realpath(source), "analyzer") + os.sep
    realpath = functools.lru_cache(maxsize=None)(os.path.realpath)
    looked_for, found_openssl = [], False
    for cmd, args, file in trace_calls(trace):
        where = f"{file}: {cmd}({' '.join(args)})"
        if realpath(file).startswith(analyzer):
            fail(f"the agent-alone configure read the analyzer's {where}")
        if cmd == "find_package" and args:
            found_openssl |= args[0] == "OpenSSL"
            if FORBIDDEN_PACKAGE.search(args[0]):
                looked_for.append(where)
        elif cmd in ("pkg_check_modules", "pkg_search_module"):
            modules = [a for a in args[1:] if not a.isupper()]  # past the prefix and keywords
            if any(FORBIDDEN_PACKAGE.search(m) for m in modules):
                looked_for.append(where)
        elif cmd in ("find_library", "find_path") and any(FORBIDDEN_PACKAGE.search(a) for a in args[1:]):
            looked_for.append(where)
    if not found_openssl:
        fail(f"{trace} holds no find_package(OpenSSL): the trace did not record the configure step")
    if looked_for:
        fail("the agent-alone configure looks for the analyzer's libraries:\n  " + "\n  ".join(looked_for))
    print("trace: no libtorch, libpng or ISA-L looked for; nothing under analyzer/ read")


def needed(binary):
    out = subprocess.run(["readelf", "-d", binary], check=True, capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", out)


def machine(binary):
    out = subprocess.run(["readelf", "-h", binary], check=True, capture_output=True, text=True).stdout
    return re.search(r"Machine:\s+(.*)", out).group(1).strip()


def qemu():
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        if shutil.which(name):
            return [name]
    fail("build-agent.sh --arch arm64 --test ran, yet no qemu-aarch64 is installed")


def check_binary(binary, arch):
    libs = needed(binary)
    unexpected = [lib for lib in libs if not ALLOWED_NEEDED.match(lib)]
    if unexpected or "libssl.so.3" not in libs:
        fail(f"mlfx-agent needs {libs}; only OpenSSL and the C/C++ runtime are expected")
    print(f"mlfx-agent: {os.path.getsize(binary)} bytes, NEEDED {' '.join(libs)}")
    if arch == "arm64":
        kind = subprocess.run(["file", "-b", binary], check=True, capture_output=True, text=True).stdout
        if "ARM aarch64" not in kind or machine(binary) != "AArch64":
            fail(f"not an AArch64 binary: {kind.strip()}, readelf: {machine(binary)}")
    runner = qemu() if arch == "arm64" else []
    run = subprocess.run(runner + [binary, "--help"], capture_output=True, text=True, timeout=60)
    if run.returncode != 0 or "capture" not in run.stdout:
        fail(f"mlfx-agent --help exited {run.returncode}:\n{run.stdout}{run.stderr}")
    print(f"{' '.join(runner + ['mlfx-agent', '--help'])}: ok")


def check_cross_tests(output):
    """The unit tier ran under qemu-user: its binaries are AArch64 and ctest says all passed."""
    build_dir = re.search(r"^build-agent: built in \d+ s in (.*)$", output, re.MULTILINE)
    summary = re.search(r"(\d+)% tests passed, (\d+) tests failed out of (\d+)", output)
    if not build_dir or not summary:
        fail("build-agent.sh --test printed no build directory or ctest summary")
    test_binary = os.path.join(build_dir.group(1), "tests", "unit", "base_test")
    if machine(test_binary) != "AArch64":
        fail(f"{test_binary} is {machine(test_binary)}, not AArch64: the tests did not run under qemu")
    failed, total = int(summary.group(2)), int(summary.group(3))
    if failed or total < 20:
        fail(f"unit tests under qemu-user: {failed} failed out of {total}")
    print(f"unit tests under qemu-user: {total} passed")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("--arch", choices=["native", "arm64"], default="native")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlfx-agent-build-") as tmp:
        out, trace = os.path.join(tmp, "out"), os.path.join(tmp, "trace.json")
        output = build(args.source, args.arch, out, trace)
        check_trace(trace, args.source)
        check_binary(os.path.join(out, "mlfx-agent"), args.arch)
        if args.arch == "arm64":
            check_cross_tests(output)
    print("ok")


if __name__ == "__main__":
    main()
