#!/usr/bin/env python3
"""The agent's systemd unit and example configuration, as an operator installs them.

    agent_unit_test.py SOURCE_DIR MLFX_AGENT

  - packaging/mlfx-agent.service passes `systemd-analyze verify` (with ExecStart pointing at the
    built agent), and its exposure is reported (`systemd-analyze security --offline`);
  - the unit keeps exactly the capabilities its comment lists, and no more;
  - its ExecStartPre check accepts packaging/mlfx-agent.toml (`mlfx-agent run --check`).
Skipped (77) where systemd-analyze is not installed.
"""
import os, re, shutil, subprocess, sys, tempfile

EXPECTED_CAPS = {"CAP_SYS_PTRACE", "CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH",
                 "CAP_SYS_MODULE", "CAP_CHOWN", "CAP_FOWNER"}


def main():
    src, agent = sys.argv[1], os.path.abspath(sys.argv[2])
    unit_path = os.path.join(src, "packaging", "mlfx-agent.service")
    unit = open(unit_path).read()
    caps = set(re.search(r"^CapabilityBoundingSet=(.*)$", unit, re.M).group(1).split())
    if caps != EXPECTED_CAPS:
        print("FAIL: CapabilityBoundingSet is", sorted(caps), "expected", sorted(EXPECTED_CAPS))
        return 1
    documented = set(re.findall(r"^#\s+((?:CAP_[A-Z_]+\s*)+)", unit, re.M))
    listed = {c for line in documented for c in line.split()}
    if listed != caps:
        print("FAIL: the comment explains", sorted(listed), "but the unit keeps", sorted(caps))
        return 1
    example = os.path.join(src, "packaging", "mlfx-agent.toml")
    check = subprocess.run([agent, "run", "--config", example, "--check"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    print(check.stdout.strip())
    if check.returncode != 0:
        print("FAIL: the unit's ExecStartPre check refuses the example configuration")
        return 1
    if not shutil.which("systemd-analyze"):
        print("SKIP: systemd-analyze is not installed; the unit's syntax is not verified")
        return 77
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mlfx-agent.service")
        with open(path, "w") as f:
            f.write(unit.replace("/usr/bin/mlfx-agent", agent))
        verify = subprocess.run(["systemd-analyze", "verify", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        if verify.returncode != 0 or verify.stdout.strip():
            print("FAIL: systemd-analyze verify:", verify.stdout)
            return 1
        security = subprocess.run(["systemd-analyze", "security", "--offline=yes", path], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        level = [l for l in security.stdout.splitlines() if "Overall exposure level" in l]
        print("systemd-analyze verify: ok;", level[0].strip() if level else "security: " + security.stdout[-200:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
