#!/usr/bin/env bash
# Issue 11, item 1, the reproduction as reported: a signed bundle carries the core of a process
# whose model's class is evilmod.Net, and a second stream named evilmod.py that runs code when
# imported. `mlfx bundle open`, then `mlfx recover` and `mlfx rehost` inside the opened folder:
# evilmod.py never runs (its marker file never appears) and rehost exits 3 naming the class.
# Real victim (python3 + torch), real agent capture, real bundle.
#   evidence_bundle_test.sh BUILD_DIR
set -euo pipefail
build=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
mlfx=$build/analyzer/mlfx
work=$(mktemp -d "${TMPDIR:-/tmp}/mlfx-adv-bundle-XXXXXX")
victim=
cleanup() {
  [ -n "$victim" ] && kill "$victim" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
cd "$work"
mkdir device state markers attacker trusted
"$mlfx" keys gen --kind device --out dev > /dev/null
"$mlfx" keys gen --kind lab --out lab > /dev/null
cp dev.pub trusted/

# On the device: a model of class evilmod.Net (the device's own evilmod.py is benign).
cat > device/evilmod.py <<'PY'
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)
PY
"$py" "$here/evilmod_victim.py" device state &
victim=$!
for _ in $(seq 240); do [ -f state/ready ] && break; sleep 0.25; done
[ -f state/ready ] || fail "the victim did not start"
"$build/agent/mlfx-agent" capture --pid "$victim" --out cap.mlfx --device-key dev.key --device-id dev --recipient lab.pub > /dev/null
touch state/stop
wait "$victim" || true
victim=

# The hostile bundle: the capture's streams, and evilmod.py that marks when it runs.
"$mlfx" bundle open cap.mlfx --key lab.key --out cap --trusted-devices trusted -q > /dev/null || true
[ -f cap/core ] && [ -f cap/context ] || fail "the capture did not open"
"$py" "$here/craft.py" plant attacker "$work/markers"
"$mlfx" bundle seal cap/core cap/context attacker/evilmod.py --name core --name context --name evilmod.py \
  --device-key dev.key --recipient lab.pub --device-id dev --out hostile.mlfx -q > /dev/null

echo "== bundle open, recover, rehost inside the opened folder"
"$mlfx" bundle open hostile.mlfx --key lab.key --out case --trusted-devices trusted -q > /dev/null || true
[ -f case/evilmod.py ] && [ -f case/core ] || fail "the hostile bundle did not open"
cd case
"$mlfx" recover core --out rec -q > /dev/null
model=$(ls -d rec/models/0-*)
grep -q '"evilmod.Net"' "$model/architecture.json" || fail "the recovered model is not of class evilmod.Net"
rc=0
"$mlfx" rehost "$model" --out rh 2> rehost.err || rc=$?
[ -z "$(ls -A "$work/markers")" ] || fail "code from the bundle ran: $(ls "$work/markers")"
[ "$rc" = 3 ] || { cat rehost.err; fail "rehost exit $rc, want 3"; }
grep -q 'class "evilmod.Net" .*--code-path' rehost.err || { cat rehost.err; fail "the message does not name evilmod.Net"; }
"$py" -c "import json, sys; x = json.load(open('rh/rehost.json'))['executed_code']; \
assert x['code_files'] == [] and 'evilmod' not in json.dumps(x['library_modules']), x"
echo PASS
