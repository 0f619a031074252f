#!/usr/bin/env python3
"""An aarch64 process captured on a real arm64 kernel, recovered bit-exactly on this machine.

    test_aarch64_capture.py --mlfx PATH/mlfx [--agent-out DIR] [--scenario mlp]

The guest (tests/vmlab/vmlab_arm64.py): Debian's arm64 kernel under qemu-system-aarch64 (TCG,
-machine virt, cortex-a72) with an arm64 Debian bookworm userland (debootstrap + qemu-user,
python3-torch 1.13) at /mnt/host. In it, a torch victim (tests/victims/torch_victim.py, the MLP:
the cheapest under emulation) runs under the userland's /usr/bin/python3 and writes its ground
truth to the output share; our arm64-built mlfx-agent (packaging/build-agent.sh --arch arm64, run
by this test: a no-op when up to date) captures it from inside the guest into a sealed bundle;
the victim is still running and computes the same outputs afterwards. On the host: the bundle's
core is an EM_AARCH64 ELF core and its context says aarch64; `mlfx recover` gives the victim's
models, which tests/victims/check_recovery.py compares bit for bit with the ground truth.

The first run builds the fixture (kernel, busybox, userland: several minutes, root); later runs
reuse it. Exit 0 passed, 1 failed; a missing prerequisite fails it (packaging/setup-deps.sh
installs them), or skips it (77) with MLFX_VMLAB_OPTIONAL=1. MLFX_VMLAB_KEEP=1 keeps the files.
"""
import argparse
import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

import vmlab  # noqa: E402
import vmlab_arm64  # noqa: E402

VICTIMS = os.path.join(ROOT, "tests", "victims")
PYTHON = "/usr/bin/python3"
EM_AARCH64 = 183
STARTED = time.monotonic()

# The outputs the victim computed after the capture equal those before it, bit for bit.
SAME_OUTPUTS = r"""
import sys, torch
before, after = torch.load(sys.argv[1]), torch.load(sys.argv[2])
assert before.keys() == after.keys(), (before.keys(), after.keys())
for k in before:
    assert torch.equal(before[k], after[k]), k
print("outputs unchanged:", ", ".join(before))
"""


class Failed(Exception):
    pass


def expect(ok, what, detail=""):
    if not ok:
        raise Failed(what + (f"\n--- detail ---\n{detail}" if detail else ""))


def step(what):
    print(f"[{time.monotonic() - STARTED:6.1f} s] {what}", flush=True)


def run_host(*args, ok=(0,)):
    proc = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    expect(proc.returncode in ok, f"{' '.join(args)} exited {proc.returncode}", proc.stdout)
    return proc.stdout


def build_arm64_agent(out_dir):
    """Our agent cross-built for arm64 (its build directory and ccache are reused)."""
    proc = subprocess.run(["bash", os.path.join(ROOT, "packaging", "build-agent.sh"), "--arch", "arm64",
                           "--out", out_dir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode == 3:  # the packages it needs cannot be installed here
        return None, proc.stdout
    expect(proc.returncode == 0, f"packaging/build-agent.sh --arch arm64 exited {proc.returncode}", proc.stdout[-4000:])
    return os.path.join(out_dir, "mlfx-agent"), proc.stdout


def wait_for(path, timeout, guest, victim):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if not guest.running(victim.pid):
            log = guest.run(f"cat {victim.log}")[1]
            raise Failed(f"the victim ended before {os.path.basename(path)} appeared", log)
        expect(time.monotonic() < deadline, f"no {path} after {timeout} s", guest.run(f"cat {victim.log}")[1])
        time.sleep(1)


def capture_in_guest(guest, out, scenario):
    """Victim started, captured by the arm64 agent, checked alive; returns the bundle's host path."""
    gt = os.path.join(out, "gt")
    os.makedirs(gt)
    arch = guest.check("chroot /mnt/host /usr/bin/python3 -c 'import platform; print(platform.machine())'").strip()
    expect(arch == "aarch64", f"the guest's python3 runs on {arch!r}, not aarch64")
    step("guest python3 is aarch64; starting the victim")
    victim = guest.spawn(f"chroot /mnt/host /usr/bin/python3 /mnt/out/victims/torch_victim.py {scenario} /mnt/out/gt",
                         log="/mnt/out/victim.log")
    wait_for(os.path.join(gt, "ready"), 900, guest, victim)
    step(f"victim {victim.pid} ready; capturing it with the arm64 agent")

    started = time.monotonic()
    status, output = guest.run(f"chroot /mnt/host /mnt/out/mlfx-agent capture --pid {victim.pid} "
                               f"--out /mnt/out/victim.mlfx --device-key /mnt/out/dev.key "
                               f"--recipient /mnt/out/lab.pub --case aarch64-vmlab -q", timeout=900)
    expect(status == 0, f"mlfx-agent capture exited {status} in the arm64 guest", output)
    bundle = os.path.join(out, "victim.mlfx")
    step(f"captured in {time.monotonic() - started:.1f} s: {os.path.getsize(bundle) >> 20} MiB")

    expect(guest.running(victim.pid), "the victim is not running after the capture", guest.run(f"cat {victim.log}")[1])
    with open(os.path.join(gt, "heartbeat")) as f:
        beat = f.read()
    open(os.path.join(gt, "check"), "w").close()
    wait_for(os.path.join(gt, "checked"), 300, guest, victim)
    with open(os.path.join(gt, "heartbeat")) as f:
        expect(f.read() != beat, "the victim's heartbeat stopped after the capture")
    open(os.path.join(gt, "stop"), "w").close()
    step("the victim ran on and recomputed its outputs; told to stop")
    return bundle, gt


def check_on_host(mlfx, tmp, bundle, gt):
    key = os.path.join(tmp, "lab.key")
    opened = os.path.join(tmp, "opened")
    run_host(mlfx, "bundle", "open", "-q", bundle, "--key", key, "--out", opened)
    with open(os.path.join(opened, "core"), "rb") as f:
        header = f.read(64)
    expect(header[:4] == b"\x7fELF" and struct.unpack_from("<H", header, 16)[0] == 4,
           "the bundle's core is not an ELF core", header.hex())
    machine = struct.unpack_from("<H", header, 18)[0]
    expect(machine == EM_AARCH64, f"the core's e_machine is {machine}, not EM_AARCH64 ({EM_AARCH64})")
    context = {}
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError), open(os.path.join(opened, "context")) as f:
        context = json.load(f)
    machines = sorted({v for k, v in _items(context) if k == "machine"})
    expect(machines == ["aarch64"], f"the capture's context names machine(s) {machines}, not aarch64",
           json.dumps(context)[:2000])
    step("the bundle holds an EM_AARCH64 core; its context says aarch64")

    recovered = os.path.join(tmp, "recovered")
    started = time.monotonic()
    run_host(mlfx, "recover", bundle, "--key", key, "--out", recovered, "-q")
    step(f"mlfx recover took {time.monotonic() - started:.1f} s")
    with open(os.path.join(recovered, "report.json")) as f:
        report = json.load(f)
    print(f"report.json: python {report['python']['version']}, torch {report['torch']['version']}, "
          f"{len(report['models'])} model(s), machine {report['process']['machine']}", flush=True)
    expect(report["process"]["machine"] == "aarch64",
           f"report.json names machine {report['process']['machine']!r}, not aarch64")
    check = run_host(PYTHON, os.path.join(VICTIMS, "check_recovery.py"), gt, recovered)
    print(check.rstrip())
    print(run_host(PYTHON, "-c", SAME_OUTPUTS, os.path.join(gt, "outputs_before.pt"),
                   os.path.join(gt, "outputs_after.pt")).rstrip())


def _items(value):
    """Every (key, value) pair anywhere in a JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v
            yield from _items(v)
    elif isinstance(value, list):
        for v in value:
            yield from _items(v)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mlfx", required=True, help="the built mlfx (this machine's)")
    parser.add_argument("--agent-out", default=None,
                        help="where build-agent.sh puts the arm64 mlfx-agent (default: a temporary directory)")
    parser.add_argument("--scenario", default="mlp", help="torch_victim.py scenario (default mlp)")
    parser.add_argument("--memory", type=int, default=2048, help="guest MiB (default 2048)")
    args = parser.parse_args(argv)
    args.mlfx = os.path.abspath(args.mlfx)

    keep = os.environ.get("MLFX_VMLAB_KEEP") == "1"
    with (contextlib.nullcontext(tempfile.mkdtemp(prefix="mlfx-aarch64-vm-")) if keep
          else tempfile.TemporaryDirectory(prefix="mlfx-aarch64-vm-")) as tmp:
        if keep:
            print(f"keeping {tmp}", flush=True)
        try:
            step("building the arm64 agent (packaging/build-agent.sh --arch arm64)")
            agent, log = build_arm64_agent(args.agent_out or os.path.join(tmp, "agent"))
            if agent is None:
                return vmlab.unavailable(f"packaging/build-agent.sh cannot install what an arm64 build needs:\n{log[-2000:]}")
            reason = vmlab_arm64.missing()  # after the agent's build: it gives dpkg the arm64 architecture
            if reason:
                return vmlab.unavailable(reason)
            step("the fixture: arm64 kernel, busybox, userland (built once per machine)")
            platform = vmlab_arm64.platform()
            out = os.path.join(tmp, "out")
            os.makedirs(os.path.join(out, "victims"))
            run_host(args.mlfx, "keys", "gen", "--kind", "device", "--out", os.path.join(tmp, "dev"))
            run_host(args.mlfx, "keys", "gen", "--kind", "lab", "--out", os.path.join(tmp, "lab"))
            for name in ("dev.key", "lab.pub"):
                shutil.copy2(os.path.join(tmp, name), out)
            shutil.copy2(agent, out)
            for name in ("torch_victim.py", "victim_serve.py"):
                shutil.copy2(os.path.join(VICTIMS, name), os.path.join(out, "victims"))
            with vmlab.Guest(memory_mib=args.memory, cpus=2, out_dir=out, platform=platform,
                             boot_timeout=300) as guest:
                step(f"booted {guest.kernel_version} ({platform.qemu} -cpu {guest.cpu}) in {guest.boot_seconds:.1f} s")
                bundle, gt = capture_in_guest(guest, out, args.scenario)
                guest.poweroff()
            check_on_host(args.mlfx, tmp, bundle, gt)
        except Failed as e:
            print(f"FAIL {e}")
            return 1
        except vmlab.Unavailable as e:
            return vmlab.unavailable(str(e))
        except vmlab.VmlabError as e:
            print(f"FAIL the VM lab: {e}")
            return 1
    step("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
