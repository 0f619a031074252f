#!/usr/bin/env bash
# The main job, end to end on this machine: set up, build, then
#   generate a device key and a lab key,
#   seal real evidence (this machine's kernel memory map and a copy of a live process's
#   memory map and executable) into one bundle, signed by the device, encrypted to the lab,
#   verify it without the lab key, open it with the lab key, and check SHA256SUMS;
#   then capture a live PyTorch process with mlfx-agent and recover its model bit-exactly.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/packaging/build.sh"
mlfx="${BUILD_DIR:-$root/build}/analyzer/mlfx"
work=$(mktemp -d "${TMPDIR:-/tmp}/mlfx-demo-XXXXXX")
echo "== working in $work"
cd "$work"

echo "== keys"
"$mlfx" keys gen --kind device --out device
"$mlfx" keys gen --kind lab --out lab
mkdir trusted && cp device.pub trusted/

echo "== seal: a live process's memory map and executable, plus /proc/iomem"
sleep 300 & victim=$!
cat "/proc/$victim/maps" > "maps.$victim"
"$mlfx" bundle seal "maps.$victim" "/proc/$victim/exe" - --name maps --name exe --name iomem \
  --out evidence.mlfx --device-key device.key --recipient lab.pub \
  --case DEMO-1 --note "demo capture of pid $victim" --legacy-hashes < /proc/iomem
kill "$victim"

echo "== info"
"$mlfx" bundle info evidence.mlfx
echo "== verify (no lab key needed)"
"$mlfx" bundle verify evidence.mlfx --trusted-devices trusted
echo "== open"
"$mlfx" bundle open evidence.mlfx --key lab.key --out opened --trusted-devices trusted
(cd opened && sha256sum -c SHA256SUMS)
cmp opened/exe "$(command -v sleep)" && echo "opened/exe is byte-identical to $(command -v sleep)"
echo "== tamper: flip one bit and verify again (must fail)"
cp evidence.mlfx tampered.mlfx
printf '\x01' | dd of=tampered.mlfx bs=1 seek=200 conv=notrunc status=none
if "$mlfx" bundle verify tampered.mlfx -q; then echo "tampering NOT detected" >&2; exit 1; fi
echo "== capture a live PyTorch process (the bundled victim: a small ResNet) and recover its model"
agent="${BUILD_DIR:-$root/build}/agent/mlfx-agent"
/usr/bin/python3 "$root/tests/victims/torch_victim.py" resnet victim-truth 2> victim.log &
victim=$!
trap 'touch "$work/victim-truth/stop"' EXIT
for _ in $(seq 600); do [ -f victim-truth/ready ] && break; sleep 0.2; done
"$agent" capture --pid "$victim" --out capture.mlfx --device-key device.key --recipient lab.pub \
  --case DEMO-2 --note "live capture of pid $victim"
"$mlfx" bundle verify capture.mlfx --trusted-devices trusted -q
"$mlfx" recover capture.mlfx --key lab.key --out recovered --trusted-devices trusted
echo "== compare with the ground truth the victim wrote outside the capture"
/usr/bin/python3 "$root/tests/victims/check_recovery.py" victim-truth recovered
ls recovered/models/*
echo "== demo complete: $work"
