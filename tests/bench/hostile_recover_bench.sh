#!/usr/bin/env bash
# Benchmark (not a test) of `mlfx recover` on hostile process memory (issue 11): every shape of
# tests/fuzz/hostile_shapes.h built into a core of about BYTES by make_hostile_core, beside two
# references: an honest synthetic core of the same size (one model filling it) and a real
# python3 + torch victim (torch_victim.py mlp) captured by mlfx-agent. Medians over RUNS runs
# of the wall time and the peak RSS (GNU time), the exit code and the bytes written.
#
#   tests/bench/hostile_recover_bench.sh [BUILD_DIR] [RUNS] [BYTES]      (as root: the capture)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath "${1:-$root/build}")
runs=${2:-3}
bytes=${3:-16777216}
source "$root/tests/bench/bench_common.sh"
work=$(mktemp -d "${TMPDIR:-/tmp}/mlfx-hostile-bench-XXXXXX")
cleanup() { touch "$work/gt/stop" 2>/dev/null || true; chmod -R u+w "$work"; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
copy_binaries "$build"
gen=$build/tests/adversarial/memory/make_hostile_core

# The real victim's core, through the agent and an opened bundle.
"$mlfx" keys gen --kind device --out dev > /dev/null
"$mlfx" keys gen --kind lab --out lab > /dev/null
/usr/bin/python3 "$root/tests/victims/torch_victim.py" mlp gt 2> victim.err &
for _ in $(seq 600); do [ -f gt/ready ] && break; sleep 0.2; done
[ -f gt/ready ] || { cat victim.err; exit 1; }
"$agent" capture --pid "$(cat gt/ready)" --out victim.mlfx --device-key dev.key --recipient lab.pub -q > /dev/null
"$mlfx" bundle open -q victim.mlfx --key lab.key --out opened > /dev/null
cp opened/core victim.core
touch gt/stop

"$gen" benign "$bytes" benign.core
shapes=$("$gen" --list | awk '{print $1}')
for s in $shapes; do "$gen" "$s" "$bytes" "$s.core"; done

# One run: "seconds peak_rss_kib exit_code bytes_written".
measure() {
  rm -rf out
  local rc=0
  /usr/bin/time -f "%e %M" -o time.txt "$mlfx" recover "$1" --out out -q > /dev/null 2>&1 || rc=$?
  echo "$(cat time.txt | tail -1) $rc $(du -sb out 2>/dev/null | cut -f1)"
}
printf "%-22s %8s %10s %8s %6s %12s\n" core core_MiB median_s rss_MiB exit written_MiB
for c in victim benign $shapes; do
  t="" m="" last=""
  for _ in $(seq "$runs"); do
    last=$(measure "$c.core")
    t+="$(echo "$last" | cut -d' ' -f1) "
    m+="$(echo "$last" | cut -d' ' -f2) "
  done
  printf "%-22s %8d %10.2f %8d %6s %12d\n" "$c" "$(( $(stat -c %s "$c.core") >> 20 ))" "$(echo "$t" | median)" \
    "$(( $(echo "$m" | median | cut -d. -f1) >> 10 ))" "$(echo "$last" | cut -d' ' -f3)" "$(( $(echo "$last" | cut -d' ' -f4) >> 20 ))"
done
echo "$runs runs each; cpu: $(nproc) cores; $("$mlfx" --version)"
