#!/usr/bin/env bash
# Benchmark (not a test): Neural Cleanse for ONE class (the backdoor's target, 7) on a model
# recovered from a live process, mlfx's C++ (`mlfx scan neural-cleanse`) against the plain
# PyTorch reference (tests/bench/neural_cleanse_ref.py, same algorithm), in the same run,
# interleaved per round (the side that goes first alternates). Target: C++ / Python <= 1.0.
#
#   tests/bench/neural_cleanse_bench.sh BUILD_DIR [ROUNDS]
#   NC_BENCH_EPOCHS=E (default 60)   fixed epochs on both sides (--no-early-stop), 2 threads
#
# The pipeline first, untimed: start tests/victims/backdoor_victim.py (a clean and a poisoned
# torch.nn.Sequential CNN, trigger 3x3 at rows/cols 12..14 -> class 7), mlfx-agent capture,
# mlfx recover, pick the poisoned model's directory (its state_dict equal to the victim's
# poisoned.pt), mlfx rehost it to TorchScript (checked against the victim's reference
# outputs), then ROUNDS rounds of:
#
# Columns (seconds):
#   py        the reference's "seconds": its optimisation loop only (model and data loaded)
#   cpp       the C++ "seconds" of the class (classes[0].seconds of its JSON line), or its
#             whole command's wall time where it gives none (then cpp_src says wall)
#   cpp/py    the ratio of the two (target <= 1.0)
#   py_wall   the reference's whole command (python start, torch import, jit.load included)
#   cpp_wall  the C++ whole command
#   py_l1, cpp_l1  the mask's L1 norm each found (sanity: same algorithm, similar figures;
#             the poisoned class's mask is small, ~the 9-pixel trigger)
# Machines here are small and shared (2 cores): see the per-round spread.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath "${1:?usage: $0 BUILD_DIR [ROUNDS]}")
rounds=${2:-5}
epochs=${NC_BENCH_EPOCHS:-60}
target=7
py=${PYTHON:-/usr/bin/python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/mlfx-nc-bench-XXXXXX")
victim=
cleanup() {
  touch "$work/gt/stop" 2>/dev/null || true
  [ -n "$victim" ] && wait "$victim" 2>/dev/null || true
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
source "$root/tests/bench/bench_common.sh"
copy_binaries "$build"
ref=$root/tests/bench/neural_cleanse_ref.py

die() { echo "neural_cleanse_bench: FAIL: $*" >&2; exit 1; }

# --- the victim, its capture and recovery
"$mlfx" keys gen --kind device --out dev > /dev/null
"$mlfx" keys gen --kind lab --out lab > /dev/null
"$py" "$root/tests/victims/backdoor_victim.py" gt 2> victim.err &
victim=$!
for _ in $(seq 600); do [ -f gt/ready ] && break; kill -0 "$victim" 2>/dev/null || break; sleep 0.2; done
[ -f gt/ready ] || { cat victim.err >&2; die "the victim did not get ready"; }
"$agent" capture --pid "$victim" --out c.mlfx --device-key dev.key --recipient lab.pub -q > capture.out ||
  { cat capture.out >&2; die "capture failed"; }
touch gt/stop; wait "$victim" || true; victim=
"$mlfx" recover c.mlfx --key lab.key --out rec -q > recover.out || { cat recover.out >&2; die "recover failed"; }

# The poisoned model: of the recovered torch.nn...Sequential models, the one whose state_dict
# equals the victim's poisoned.pt (the clean one has the same architecture).
dir=$("$py" - rec gt/poisoned.pt <<'PY'
import json, os, sys, torch
rec, gt = sys.argv[1], torch.load(sys.argv[2])
def same(a, b):
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
for m in json.load(open(os.path.join(rec, "report.json")))["models"]:
    path = os.path.join(rec, m["directory"], "state_dict.pt")
    if m.get("class") == "torch.nn.modules.container.Sequential" and os.path.exists(path) and same(torch.load(path), gt):
        print(m["directory"]); break
PY
)
[ -n "$dir" ] || { cat recover.out >&2; die "no recovered model equals the victim's poisoned state_dict"; }

"$mlfx" rehost "rec/$dir" --out rh > rehost.out 2>&1 || { cat rehost.out >&2; die "rehost failed"; }
[ -f rh/model.torchscript.pt ] || { cat rehost.out >&2; die "rehost wrote no rh/model.torchscript.pt"; }
# The rehosted model against the victim's own outputs (io_poisoned.safetensors).
rehost_check=$("$py" - rh/model.torchscript.pt gt/io_poisoned.safetensors "$ref" <<'PY'
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("ref", sys.argv[3]); ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)
io = ref.load_safetensors(sys.argv[2])
m = torch.jit.load(sys.argv[1]).eval()
with torch.no_grad():
    out = m(io["input"])
d = (out - io["output"]).abs().max().item()
print("bit-exact" if torch.equal(out, io["output"]) else "max_abs_diff=%g" % d)
sys.exit(0 if d <= 1e-4 else 1)
PY
) || die "the rehosted model's outputs differ from the victim's: $rehost_check"

run_py() {  # -> py.json; prints the wall time
  local t0 t1
  t0=$(now)
  "$py" "$ref" rh/model.torchscript.pt gt/clean.safetensors --target "$target" --epochs "$epochs" \
    --no-early-stop --threads 2 > py.json 2> py.err || { cat py.err >&2; die "the Python reference failed"; }
  t1=$(now)
  sub "$t1" "$t0"
}
run_cpp() {  # -> cpp.json; prints the wall time
  local t0 t1
  rm -rf nc
  t0=$(now)
  "$mlfx" scan neural-cleanse rh --clean gt/clean.safetensors --classes "$target" --epochs "$epochs" \
    --no-early-stop --threads 2 --out nc --json > cpp.json 2> cpp.err || { cat cpp.json cpp.err >&2; die "mlfx scan neural-cleanse failed"; }
  t1=$(now)
  sub "$t1" "$t0"
}
# The C++ JSON line (the last line of its output that is JSON with a classes array).
cpp_field() { jq -rR "fromjson? | select(type == \"object\" and (.classes | type) == \"array\") | .classes[0].$1 // empty" cpp.json 2>/dev/null | tail -1 || true; }

declare -A s
printf '%-5s %8s %8s %7s %8s %8s %8s %8s %s\n' round py cpp cpp/py py_wall cpp_wall py_l1 cpp_l1 cpp_src
for r in $(seq "$rounds"); do
  sync
  if [ $((r % 2)) = 1 ]; then py_wall=$(run_py); cpp_wall=$(run_cpp); else cpp_wall=$(run_cpp); py_wall=$(run_py); fi
  py_s=$(jq -r .seconds py.json)
  py_l1=$(jq -r .mask_l1 py.json)
  [ "$(jq -r .epochs_run py.json)" = "$epochs" ] || die "the reference ran $(jq -r .epochs_run py.json) epochs, not $epochs"
  cpp_s=$(cpp_field seconds); src=json
  [ -n "$cpp_s" ] || { cpp_s=$cpp_wall; src=wall; }
  cpp_l1=$(cpp_field mask_l1); cpp_l1=$(printf '%.3f' "${cpp_l1:-nan}" 2>/dev/null || echo nan)
  ratio=$(echo "$cpp_s / $py_s" | bc -l)
  s[py]+="$py_s "; s[cpp]+="$cpp_s "; s[ratio]+="$ratio "; s[py_wall]+="$py_wall "; s[cpp_wall]+="$cpp_wall "
  printf '%-5s %8.3f %8.3f %7.2f %8.3f %8.3f %8.3f %8s %s\n' "$r" "$py_s" "$cpp_s" "$ratio" "$py_wall" "$cpp_wall" \
    "$py_l1" "$cpp_l1" "$src"
done

m() { echo "${s[$1]}" | median; }
echo
echo "victim: $(jq -c '{clean: .clean.clean_accuracy, poisoned: .poisoned.clean_accuracy, attack_success: .poisoned.attack_success}' gt/metrics.json);" \
     "model rec/$dir, rehost $rehost_check"
n_clean=$("$py" -c 'import json, struct, sys
b = open(sys.argv[1], "rb").read(8 << 10); n = struct.unpack("<Q", b[:8])[0]
print(json.loads(b[8:8 + n])["inputs"]["shape"][0])' gt/clean.safetensors)
echo "neural cleanse: class $target, $epochs epochs, $n_clean clean images, batch 32, 2 threads; $rounds rounds;" \
     "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-9s %10s\n' what median_s
for k in py cpp py_wall cpp_wall; do printf '%-9s %10.3f\n' "$k" "$(m "$k")"; done
printf 'C++ / Python = %.2f  (median cpp / median py, optimisation time; target <= 1.0)\n' "$(echo "$(m cpp) / $(m py)" | bc -l)"
printf 'median of per-round ratios = %.2f\n' "$(m ratio)"
printf 'whole commands C++ / Python = %.2f\n' "$(echo "$(m cpp_wall) / $(m py_wall)" | bc -l)"
