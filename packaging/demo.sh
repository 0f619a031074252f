#!/usr/bin/env bash
# The main job, end to end on this machine: set up, build, then
#   generate a device key and a lab key,
#   seal real evidence (this machine's kernel memory map and a copy of a live process's
#   memory map and executable) into one bundle, signed by the device, encrypted to the lab,
#   verify it without the lab key, open it with the lab key, and check SHA256SUMS;
#   then capture a live PyTorch process with mlfx-agent into its spool, ship the bundle over
#   mutual TLS to a local intake (mlfx serve) under a lab CA, and recover the model bit-exactly
#   from the intake's evidence store.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/packaging/build.sh" -DMLFX_BUILD_TESTS=OFF  # the programs only: mlfx, mlfx-torch, mlfx-agent
mlfx="${BUILD_DIR:-$root/build}/analyzer/mlfx"
work=$(mktemp -d "${TMPDIR:-/tmp}/mlfx-demo-XXXXXX")
echo "== working in $work"
cd "$work"

echo "== keys"
"$mlfx" keys gen --kind device --out device
"$mlfx" keys gen --kind lab --out lab
# The lab's trust store binds each device id to its key: trusted/<device-id>.pub.
mkdir trusted && cp device.pub trusted/demo-device.pub

echo "== seal: a live process's memory map and executable, plus /proc/iomem"
sleep 300 & victim=$!
cat "/proc/$victim/maps" > "maps.$victim"
"$mlfx" bundle seal "maps.$victim" "/proc/$victim/exe" - --name maps --name exe --name iomem \
  --out evidence.mlfx --device-key device.key --device-id demo-device --recipient lab.pub \
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
"$agent" capture --pid "$victim" --spool spool --device-key device.key --device-id demo-device --recipient lab.pub \
  --case DEMO-2 --note "live capture of pid $victim"
"$agent" status --spool spool
echo "== ship it to the lab intake: mutual TLS 1.3 under a lab CA, verified on arrival"
"$mlfx" ca init --out ca
"$mlfx" ca issue --ca ca --device device.pub --id demo-device --out device.pem
"$mlfx" keys gen --kind device --out intake
"$mlfx" ca issue --ca ca --server --key intake.pub --name 127.0.0.1,localhost --out intake.pem
"$mlfx" serve --listen 127.0.0.1:0 --port-file intake.port --store store --ca-dir ca \
  --cert intake.pem --key intake.key 2> intake.log &
intake=$!
trap 'touch "$work/victim-truth/stop"; kill "$intake" 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s intake.port ] && break; sleep 0.1; done
"$agent" ship --once --spool spool --server "127.0.0.1:$(cat intake.port)" --ca ca/ca.pem \
  --cert device.pem --key device.key --intake-key intake.pub
"$agent" status --spool spool
stored=$(ls store/objects/*.mlfx)
echo "intake stored $stored; its custody log now ends with:"
tail -n 1 "${stored%.mlfx}.custody.jsonl"
kill "$intake"
echo "== recover the model from the intake's evidence store"
# The lab CA is a trust store too: its certificates bind device ids to keys.
"$mlfx" bundle verify "$stored" --trusted-devices ca -q
"$mlfx" recover "$stored" --key lab.key --out recovered --trusted-devices ca
echo "== compare with the ground truth the victim wrote outside the capture"
/usr/bin/python3 "$root/tests/victims/check_recovery.py" victim-truth recovered
ls recovered/models/*
echo "== rehost it live (its classes come from the victim's source) and write the case report"
model=$(ls -d recovered/models/0-*)
"$mlfx" rehost "$model" --out rehosted --code-path "$root/tests/victims/torch_victim.py" \
  --code-path "$root/tests/victims/victim_serve.py"
"$mlfx" report --out report --bundle "$stored" --trusted-devices ca --recovery recovered --rehost rehosted
echo "== demo complete: $work (open $work/report/report.html)"
