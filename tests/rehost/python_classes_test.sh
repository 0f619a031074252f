#!/usr/bin/env bash
# Issue 5, rehost path (b): models whose classes are the victim's own (not torch.nn) cannot be
# built from the architecture alone; `mlfx rehost` says so and what is missing, and with the
# analyst's source (--code-path) the lab's Python rebuilds them: a torch.load-able full model
# and a TorchScript export whose outputs equal the live model's bit for bit. Real victims of
# several scenarios (custom blocks, LSTM, tied weights, many dtypes and strided parameters).
#   python_classes_test.sh BUILD_DIR
set -euo pipefail
build=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=/usr/bin/python3
mlfx=$build/analyzer/mlfx
work=$(mktemp -d "${TMPDIR:-/tmp}/mlfx-rehost-py-XXXXXX")
victim=
cleanup() {
  [ -n "$victim" ] && kill "$victim" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
"$mlfx" keys gen --kind device --out dev > /dev/null
"$mlfx" keys gen --kind lab --out lab > /dev/null

for scenario in resnet lstm tied dtypes torchvision; do
  echo "== $scenario"
  "$py" "$root/tests/victims/torch_victim.py" "$scenario" "gt-$scenario" &
  victim=$!
  for _ in $(seq 240); do [ -f "gt-$scenario/ready" ] && break; sleep 0.25; done
  "$build/agent/mlfx-agent" capture --pid "$victim" --out "$scenario.mlfx" --device-key dev.key --recipient lab.pub > /dev/null
  touch "gt-$scenario/stop"
  wait "$victim" || true
  victim=
  "$mlfx" recover "$scenario.mlfx" --key lab.key --out "rec-$scenario" -q > /dev/null
  model=$(ls -d "rec-$scenario"/models/0-*)
  if [ "$scenario" = resnet ]; then
    # Neither path without the source: exit 3, and the message names the class to supply.
    set +e
    "$mlfx" rehost "$model" --out no-python --no-python 2> err1; rc1=$?
    "$mlfx" rehost "$model" --out no-code 2> err2; rc2=$?
    set -e
    [ "$rc1" = 3 ] && [ "$rc2" = 3 ] || fail "exit $rc1 / $rc2 without the source, want 3"
    grep -q "__main__.ResNetSmall.*not a torch.nn class" err1 || { cat err1; fail "path (a) does not name the class"; }
    grep -q "ResNetSmall.*--code-path" err2 || { cat err2; fail "path (b) does not ask for the source"; }
    [ ! -e no-code/model.full.pt ] || fail "a model file was written without the classes"
  fi
  if [ "$scenario" = torchvision ]; then
    # A library's classes (torchvision) import in the lab: path (b) without any --code-path.
    "$mlfx" rehost "$model" --out tv > /dev/null
    "$py" -c "import json; r = json.load(open('tv/rehost.json')); assert r['path'] == 'python-classes', r['path']; \
assert 'torchvision' in str(r['python_classes']['classes']), r['python_classes']['classes']"
  fi
  MLFX_CLI=$mlfx "$py" "$here/python_rehost_selftest.py" "$scenario" "gt-$scenario" "rec-$scenario" "$work/out-$scenario"
done
echo PASS
