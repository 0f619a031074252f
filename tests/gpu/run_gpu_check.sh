#!/usr/bin/env bash
# The GPU end-to-end check of issue 16, on a machine with an NVIDIA GPU and a CUDA PyTorch
# (python3), as root, from the repository root:
#
#   tests/gpu/run_gpu_check.sh KIT OUT
#
# KIT: what tests/gpu/make_kit.sh packed (mlfx, mlfx-agent, libmlfx_cupti.so, lib/). OUT: where
# the results go (summary.json, run.log, and the small real fixtures for tests/gpu/fixtures/).
#  1. families: every model family of the recovery tests on cuda:0, in a process armed with
#     `mlfx-agent gpu-env`; `mlfx-agent capture --source gpu,process` (pipe-triggered dump, then
#     the process); `mlfx recover`; check_recovery.py bit-exact against the victim's own ground
#     truth; check_gpu_run.py: the dump (read independently) holds every CUDA storage's bytes, the
#     caching allocator's segments lie in its sections, report.json agrees; the victim survived.
#  2. bench: the ~60 M-parameter victim on cuda:0; rounds of a GPU-only capture interleaved with
#     the victim's own cudaMemcpy of the same ranges (the dump's memory sections) into pinned
#     memory: throughput of each, medians.
#  3. cupti: a victim armed with `gpu-env --cupti` alone (CUDA_INJECTION64_PATH=libmlfx_cupti.so):
#     `capture --source gpu,process` takes the library's copy-out; `mlfx recover`, bit-exact.
#  4. fixtures: the mlp victim's real driver dump and the cupti copy-out, gzip'd, with the truth
#     of their CUDA storages (tests/gpu/gpu_fixture_test.cc replays them in CI).
# Each part runs on when an earlier one fails; summary.json says what passed.
# MLFX_GPU_CHECK_PARTS="1 3" runs only those parts (a rerun of what failed).
set -uo pipefail
kit=$(realpath "$1")
out=$(realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export LD_LIBRARY_PATH="$kit/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" PYTHONUNBUFFERED=1
mlfx=$kit/mlfx
agent=$kit/mlfx-agent
py=${PYTHON:-python3}
w=$(mktemp -d /tmp/mlfx-gpu.XXXXXX)
gpu_dir=/run/mlfx-agent/gpu
exec > >(tee "$out/run.log") 2>&1
step() { echo "== [${SECONDS}s] $*"; }
want() { [[ " ${MLFX_GPU_CHECK_PARTS:-1 2 3 4} " == *" $1 "* ]]; }
result() { $py "$here/check_gpu_run.py" record --summary "$out/summary.json" "$@"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$py -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'
uname -r
$mlfx keys gen --kind lab --out "$w/lab" > /dev/null && $mlfx keys gen --kind device --out "$w/dev" > /dev/null || exit 1
arm=$($agent gpu-env --dir "$gpu_dir") || { echo "gpu-env failed"; exit 1; }
echo "$arm"

# start_victim NAME SCENARIO ARMED [VAR=VALUE...]: a CUDA victim, ready when it has written its truth.
start_victim() {
  local name=$1 scenario=$2 armed=$3
  shift 3
  mkdir -p "$w/$name"
  local env_arm=""
  [ "$armed" = armed ] && env_arm=$arm
  # shellcheck disable=SC2086 # one VAR=VALUE a line
  env $env_arm "$@" MLFX_VICTIM_DEVICE=cuda $py "$root/tests/victims/torch_victim.py" "$scenario" "$w/$name/gt" \
    > "$w/$name/victim.log" 2>&1 &
  echo $! > "$w/$name/pid"
  for _ in $(seq 900); do
    [ -e "$w/$name/gt/ready" ] && return 0
    kill -0 "$(cat "$w/$name/pid")" 2>/dev/null || break
    sleep 0.2
  done
  echo "victim $name did not start:"; tail -20 "$w/$name/victim.log"; return 1
}
capture() {  # NAME SOURCES BUNDLE
  $agent capture --pid "$(cat "$w/$1/pid")" --source "$2" --gpu-dir "$gpu_dir" --out "$3" --device-key "$w/dev.key" \
    --recipient "$w/lab.pub" --case GPU-CHECK -q
}
open_bundle() { $mlfx bundle open -q "$1" --key "$w/lab.key" --out "$2"; }

step "1. families on cuda:0: capture --source gpu,process, recover, bit-exact"
if want 1 && start_victim fam families armed; then
  t0=$(date +%s%N)
  capture fam gpu,process "$w/fam.mlfx"; rc=$?
  echo "capture exit $rc in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  kill -0 "$(cat "$w/fam/pid")" && echo "victim alive after the capture" || echo "VICTIM DIED"
  if [ $rc -eq 0 ] && open_bundle "$w/fam.mlfx" "$w/fam/open"; then
    $mlfx recover "$w/fam.mlfx" --key "$w/lab.key" --out "$w/fam/rec" -q; echo "recover exit $?"
    $py "$root/tests/victims/check_recovery.py" "$w/fam/gt" "$w/fam/rec"; echo "check_recovery exit $?"
    result families --gt "$w/fam/gt" --dump "$w/fam/open/gpu-core" --context "$w/fam/open/gpu-context" \
      --report "$w/fam/rec/report.json" --pid "$(cat "$w/fam/pid")"
  fi
fi

step "2. bench: GPU dump vs cudaMemcpy of the same ranges"
if want 2 && start_victim big big armed; then
  for r in 1 2 3 4 5; do
    sync
    capture big gpu "$w/big-$r.mlfx" && open_bundle "$w/big-$r.mlfx" "$w/big/open-$r" || { echo "round $r failed"; continue; }
    $py "$here/check_gpu_run.py" ranges --dump "$w/big/open-$r/gpu-core" > "$w/big/gt/bench_d2h.req"
    rm -f "$w/big/gt/bench_d2h.json"
    mv "$w/big/gt/bench_d2h.req" "$w/big/gt/bench_d2h"
    for _ in $(seq 600); do [ -e "$w/big/gt/bench_d2h.json" ] && break; sleep 0.1; done
    cp "$w/big/gt/bench_d2h.json" "$w/big/d2h-$r.json"; rm -f "$w/big/gt/bench_d2h"
    rm -f "$w/big-$r.mlfx"
  done
  result bench --contexts "$w"/big/open-*/gpu-context --d2h "$w"/big/d2h-*.json
fi

step "3. cupti: the CUPTI library's copy-out as the agent's gpu source, recovered bit-exactly"
# Armed for the copy-out alone (gpu-env --cupti, without the driver's variables), so that the
# agent uses it; the event log beside it.
cupti_arm=$($agent gpu-env --dir "$gpu_dir" --cupti "$kit/libmlfx_cupti.so" | grep -E '^(CUDA_INJECTION64_PATH|MLFX_CUPTI_)')
# shellcheck disable=SC2086 # one VAR=VALUE a line
if want 3 && start_victim cupti cnn plain $cupti_arm MLFX_CUPTI_LOG="$w/cupti-events.jsonl"; then
  pid=$(cat "$w/cupti/pid")
  head -c 2000 "$w/cupti-events.jsonl"; echo
  capture cupti gpu,process "$w/cupti.mlfx"; echo "capture exit $?"
  grep '"copy-out"' "$w/cupti-events.jsonl"
  if open_bundle "$w/cupti.mlfx" "$w/cupti/open"; then
    $mlfx recover "$w/cupti.mlfx" --key "$w/lab.key" --out "$w/cupti/rec" -q; echo "recover exit $?"
    $py "$root/tests/victims/check_recovery.py" "$w/cupti/gt" "$w/cupti/rec"; echo "check_recovery exit $?"
    result cupti --gt "$w/cupti/gt" --dump "$w/cupti/open/gpu-core" --context "$w/cupti/open/gpu-context" \
      --report "$w/cupti/rec/report.json" --events "$w/cupti-events.jsonl" --pid "$pid"
  fi
fi

step "4. fixtures: a small real driver dump and a copy-out, with their truth"
if want 4 && start_victim small mlp armed; then
  capture small gpu "$w/small.mlfx" && open_bundle "$w/small.mlfx" "$w/small/open" && \
    result fixture --name driver-mlp --gt "$w/small/gt" --dump "$w/small/open/gpu-core" \
      --context "$w/small/open/gpu-context" --out "$out"
fi
[ -f "$w/cupti/open/gpu-core" ] && \
  result fixture --name cupti-cnn --gt "$w/cupti/gt" --dump "$w/cupti/open/gpu-core" --out "$out"

for v in "$w"/*/pid; do kill "$(cat "$v")" 2>/dev/null; done
step "done"
cat "$out/summary.json"
