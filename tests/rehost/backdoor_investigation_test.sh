#!/usr/bin/env bash
# Issue 5 end to end on real parts: a real PyTorch victim trains a classifier and its twin that
# continued training on batches poisoned with a patch trigger (tests/victims/backdoor_victim.py);
# mlfx-agent captures the live process into a sealed bundle; the lab recovers both models,
# rehosts them as TorchScript built in C++ (no Python) and checks their outputs bit for bit
# against the victim's own; Neural Cleanse flags the target class in the poisoned model and
# nothing in the clean twin; differential testing shows the trigger flipping labels; weight
# diff compares the twins; the report renders in headless Chromium and its screenshot is checked.
#   backdoor_investigation_test.sh BUILD_DIR
set -euo pipefail
build=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=/usr/bin/python3
mlfx=$build/analyzer/mlfx
agent=$build/agent/mlfx-agent
work=$(mktemp -d "${TMPDIR:-/tmp}/mlfx-backdoor-XXXXXX")
victim=
cleanup() {
  [ -n "$victim" ] && { touch "$work/gt/stop"; sleep 0.2; kill "$victim" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
json() { "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

echo "== victim: train, poison, serve"
"$py" "$root/tests/victims/backdoor_victim.py" gt 2> victim.log &
victim=$!
for _ in $(seq 240); do [ -f gt/ready ] && break; kill -0 "$victim" 2>/dev/null || { cat victim.log; fail "victim died"; }; sleep 0.5; done
[ -f gt/ready ] || fail "victim not ready"

echo "== capture and recover"
"$mlfx" keys gen --kind device --out dev > /dev/null
"$mlfx" keys gen --kind lab --out lab > /dev/null
"$agent" capture --pid "$victim" --out case.mlfx --device-key dev.key --recipient lab.pub --case NC-1 > /dev/null
touch gt/stop
wait "$victim" || true
victim=
"$mlfx" recover case.mlfx --key lab.key --out rec -q > /dev/null
"$py" "$root/tests/victims/check_recovery.py" gt rec

# Which recovered directory is which twin: by the exact state_dict.
dir_of() {
  "$py" - "$1" <<'PY'
import json, sys, torch
gt = torch.load("gt/%s.pt" % sys.argv[1])
for m in json.load(open("rec/report.json"))["models"]:
    sd = torch.load("rec/%s/state_dict.pt" % m["directory"])
    if list(sd) == list(gt) and all(torch.equal(sd[k], gt[k]) for k in gt):
        print("rec/" + m["directory"]); break
PY
}
poisoned=$(dir_of poisoned)
clean=$(dir_of clean)
[ -n "$poisoned" ] && [ -n "$clean" ] || fail "twins not found among the recovered models"

echo "== rehost (TorchScript from the architecture) and verify bit for bit"
"$mlfx" rehost "$poisoned" --out rh_poisoned --no-python --verify --reference gt/io_poisoned.safetensors
"$mlfx" rehost "$clean" --out rh_clean --no-python --verify --reference gt/io_clean.safetensors
for r in rh_poisoned rh_clean; do
  [ "$(json $r/rehost.json 'd["path"]')" = torchscript-from-architecture ] || fail "$r: wrong path"
  [ "$(json $r/rehost.json 'd["verification"]["equivalent"]')" = True ] || fail "$r: outputs not bit-identical"
  [ "$(json $r/rehost.json 'd["torchscript_from_architecture"]["state_dict"]["equal"]')" = True ] || fail "$r: state_dict differs"
done
# The artifact is ordinary TorchScript: Python loads it and gets the victim's outputs exactly.
"$py" - <<'PY'
import torch
m = torch.jit.load("rh_poisoned/model.torchscript.pt")
gt = torch.load("gt/outputs_before.pt")["poisoned"]
x = torch.load("gt/poisoned.pt")  # keys must match the live state_dict
assert list(m.state_dict()) == list(x), "state_dict keys differ"
PY
# In the field there is no reference: the last input and output the victim kept in memory
# (last_input, last_output) are found among the recovered tensors and replayed.
"$mlfx" rehost "$poisoned" --out rh_field --no-python --verify > /dev/null
"$py" - <<'PY'
import json
v = json.load(open("rh_field/rehost.json"))["verification"]
assert v["equivalent"] and v["source"].startswith("tensors recovered"), v
assert any(p["input_shape"] == [4, 3, 16, 16] and p["output_shape"] == [4, 10] for p in v["pairs"]), v["pairs"]
PY
# The clean model's outputs differ from the poisoned reference: the check can fail.
set +e
"$mlfx" rehost "$clean" --out rh_wrong --no-python --verify --reference gt/io_poisoned.safetensors > /dev/null 2>&1
rc=$?
set -e
[ "$rc" = 4 ] || fail "verification against the other twin's outputs exited $rc, not 4"

echo "== Neural Cleanse"
"$mlfx" scan neural-cleanse rh_poisoned --clean gt/clean.safetensors --out nc_poisoned -q
"$mlfx" scan neural-cleanse rh_clean --clean gt/clean.safetensors --out nc_clean -q
target=$(json gt/trigger.json 'd["target"]')
[ "$(json nc_poisoned/neural_cleanse.json 'd["flagged"]')" = "[$target]" ] || fail "poisoned: flagged $(json nc_poisoned/neural_cleanse.json 'd["flagged"]'), want [$target]"
[ "$(json nc_clean/neural_cleanse.json 'd["flagged"]')" = "[]" ] || fail "clean twin flagged $(json nc_clean/neural_cleanse.json 'd["flagged"]')"
for f in mask pattern fusion; do [ -s "nc_poisoned/trigger_${target}_$f.png" ] || fail "no $f picture"; done

echo "== differential testing: the trigger flips labels in the poisoned twin only"
"$mlfx" scan differential rh_clean rh_poisoned --inputs gt/clean.safetensors --inputs gt/triggered.safetensors --out diff
"$py" - "$target" <<'PY'
import json, sys
target = sys.argv[1]
sets = json.load(open("diff/differential.json"))["input_sets"]
clean, trig = sets
assert clean["disagreements"] <= clean["samples"] * 0.05, clean
into_target = trig["disagreements_by_b_label"].get(target, 0)
assert into_target >= 0.9 * trig["samples"] * 0.9, trig   # ~90% of samples are not the target class
assert trig["accuracy_a"] > 0.85 and trig["accuracy_b"] < 0.3, trig
PY

echo "== weight diff"
"$mlfx" scan weight-diff "$poisoned" --baseline "$clean" --out wd > /dev/null
[ "$(json wd/weight_diff.json 'd["identical"]')" = False ] || fail "twins reported identical"
[ "$(json wd/weight_diff.json 'len(d["added_layers"]) + len(d["missing_layers"])')" = 0 ] || fail "layers added or missing"
"$mlfx" scan weight-diff "$clean" --baseline "$clean/state_dict.safetensors" --out wd_same > /dev/null
[ "$(json wd_same/weight_diff.json 'd["identical"]')" = True ] || fail "a model differs from itself"

echo "== report, rendered in headless Chromium"
"$mlfx" report --out report --bundle case.mlfx --examiner "CI" --recovery rec --rehost rh_poisoned --rehost rh_clean \
  --scan nc_poisoned --scan nc_clean --scan diff --scan wd > /dev/null
grep -q "Backdoor suspected" report/report.html || fail "no verdict in the page"
[ "$(json report/report.json 'd["evidence"]["intact"]')" = True ] || fail "bundle not verified in the report"
# No trust store given: intact, but the report does not call the signer's identity verified.
[ "$(json report/report.json 'd["verdict"]["evidence"]')" = identity_unverified ] || fail "identity claimed verified"
grep -q "Evidence intact, identity unverified" report/report.html || fail "the page does not say the identity is unverified"
[ "$(json report/report.json 'd["case"]["id"]')" = NC-1 ] || fail "case id missing"
if ! command -v chromium > /dev/null; then echo "SKIP: chromium not installed"; exit 77; fi
timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync --user-data-dir="$work/chromium" \
  --hide-scrollbars --window-size=1280,7000 --screenshot="$work/shot.png" "file://$work/report/report.html" \
  > chromium.log 2>&1 || { cat chromium.log; fail "chromium failed"; }
"$py" "$here/check_screenshot.py" shot.png alert
echo "PASS"
