#!/usr/bin/env bash
# Benchmark (not a test) for capture and recovery of a ~60 M-parameter PyTorch victim, each
# against its reference in the same run; medians and ratios over RUNS rounds:
#   capture:  mlfx-agent capture (freeze, read, core, seal)  vs  a raw read of every readable
#             mapping through /proc/PID/mem  vs  gcore. Two figures for the agent: how long the
#             target is frozen (as reported in the context stream) and the whole command,
#             sealing and fsync included. gcore keeps its target stopped for its whole run.
#   recovery: mlfx recover of the plain ELF core  vs  cat CORE > /dev/null (warm cache)
#
#   tests/bench/capture_recover_bench.sh [BUILD_DIR] [RUNS]      (as root)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath "${1:-$root/build}")
runs=${2:-3}
mlfx=$build/analyzer/mlfx
agent=$build/agent/mlfx-agent
work=$(mktemp -d "${TMPDIR:-/tmp}/mlfx-bench-XXXXXX")
cleanup() { touch "$work/gt/stop" 2>/dev/null || true; chmod -R u+w "$work"; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
"$mlfx" keys gen --kind device --out dev > /dev/null
"$mlfx" keys gen --kind lab --out lab > /dev/null

/usr/bin/python3 "$root/tests/victims/torch_victim.py" big gt 2> victim.err &
victim=$!
for _ in $(seq 600); do [ -f gt/ready ] && break; sleep 0.2; done
[ -f gt/ready ] || { cat victim.err; exit 1; }

cat > rawread.py <<'PY'
import os, sys
pid = sys.argv[1]; total = 0; buf = 8 << 20
fd = os.open("/proc/%s/mem" % pid, os.O_RDONLY)
for line in open("/proc/%s/maps" % pid):
    rng, perms = line.split()[:2]
    if perms[0] != "r": continue
    start, end = (int(x, 16) for x in rng.split("-"))
    pos = start
    while pos < end:
        try:
            n = len(os.pread(fd, min(buf, end - pos), pos))
        except OSError:
            break
        if n == 0: break
        total += n; pos += n
print(total)
PY

seconds() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
source "$root/tests/bench/bench_common.sh"
declare -A s
for i in $(seq "$runs"); do
  s[raw]+="$(seconds /usr/bin/python3 rawread.py "$victim") "
  rm -f "core.$victim"
  s[gcore]+="$(seconds gcore -o core "$victim") "
  rm -f "core.$victim"
  # gcore leaves its core in the page cache; the agent's bundle is on disk when it exits.
  s[gcore_sync]+="$(seconds sh -c "gcore -o core $victim && sync core.$victim") "
  rm -f cap.mlfx
  t0=$(date +%s.%N)
  "$agent" capture --pid "$victim" --out cap.mlfx --device-key dev.key --recipient lab.pub -q > agent.out
  t1=$(date +%s.%N)
  s[capture]+="$(echo "$t1 - $t0" | bc -l) "
  s[frozen]+="$(sed -n 's/.*frozen \([0-9]*\) ms.*/\1/p' agent.out | awk '{print $1 / 1000}') "
done
raw_bytes=$(/usr/bin/python3 rawread.py "$victim")
"$mlfx" bundle open -q cap.mlfx --key lab.key --out opened > /dev/null
cp opened/core core.elf
cat core.elf > /dev/null
for i in $(seq "$runs"); do
  s[cat]+="$(seconds sh -c 'cat core.elf > /dev/null') "
  rm -rf rec
  s[recover]+="$(seconds "$mlfx" recover core.elf --out rec -q) "
  rm -rf recb
  s[recover_bundle]+="$(seconds "$mlfx" recover cap.mlfx --key lab.key --out recb -q) "
done
/usr/bin/python3 "$root/tests/victims/check_recovery.py" gt recb > /dev/null
/usr/bin/python3 "$root/tests/victims/check_recovery.py" gt rec > /dev/null

echo "victim: $(jq -r '.models[0].parameters' rec/report.json 2>/dev/null || grep -o '"parameters": [0-9]*' rec/report.json | head -1) parameters," \
     "$((raw_bytes >> 20)) MiB readable memory, core $(( $(stat -c %s core.elf) >> 20 )) MiB; $runs runs; cpu: $(nproc) cores"
printf "%-15s %10s\n" what median_s
for k in raw gcore gcore_sync frozen capture cat recover recover_bundle; do printf "%-15s %10.3f\n" "$k" "$(echo "${s[$k]}" | median)"; done
m() { echo "${s[$1]}" | median; }
printf 'frozen / raw read    = %.2f  (target <= 1.5)\n' "$(echo "$(m frozen) / $(m raw)" | bc -l)"
printf 'gcore / frozen       = %.2f  (target >= 5: time the target stands still)\n' "$(echo "$(m gcore) / $(m frozen)" | bc -l)"
printf 'capture / raw read   = %.2f  (whole command: sealed, signed and fsynced)\n' "$(echo "$(m capture) / $(m raw)" | bc -l)"
printf 'gcore / capture      = %.2f  (whole command)\n' "$(echo "$(m gcore) / $(m capture)" | bc -l)"
printf 'gcore_sync / capture = %.2f  (whole command, both durable on disk)\n' "$(echo "$(m gcore_sync) / $(m capture)" | bc -l)"
printf 'recover / cat        = %.2f  (target <= 1.0)\n' "$(echo "$(m recover) / $(m cat)" | bc -l)"
printf 'recover_bundle / cat = %.2f  (from the bundle: verified and decrypted on the way)\n' "$(echo "$(m recover_bundle) / $(m cat)" | bc -l)"
