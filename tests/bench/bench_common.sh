# Shared by the benchmark scripts (sourced): time stamps and medians.
now() { date +%s.%N; }
sub() { echo "$1 - $2" | bc -l; }
# Median of numbers given one per line or separated by spaces.
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# Copies mlfx and mlfx-agent from BUILD_DIR into ./bin and points $mlfx and $agent there, so a
# rebuild of BUILD_DIR during the run cannot mix versions.
copy_binaries() {
  mkdir -p bin
  cp "$1/analyzer/mlfx" "$1/agent/mlfx-agent" bin/
  mlfx=$PWD/bin/mlfx
  agent=$PWD/bin/mlfx-agent
}
# Wall-clock seconds of one command run as a user runs it (its output dropped), after a `sync`
# so that no earlier run's writeback is counted.
timed() { local t0 t1; sync; t0=$(now); "$@" > /dev/null 2>&1 || { echo "bench: FAIL: $*" >&2; return 1; }; t1=$(now); sub "$t1" "$t0"; }
# Starts tests/victims/torch_victim.py SCENARIO with its ground truth in GT_DIR; echoes its pid.
start_victim() {
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  /usr/bin/python3 "$root/tests/victims/torch_victim.py" "$1" "$2" 2> "$2.err" > /dev/null &
  for _ in $(seq 600); do [ -f "$2/ready" ] && break; sleep 0.2; done
  [ -f "$2/ready" ] || { cat "$2.err" >&2; return 1; }
  cat "$2/ready"
}
# The floor of reading a process's memory: every readable mapping through /proc/PID/mem, in
# 8 MiB preads, as a user-space tool would (python3). Echoes the bytes read.
raw_read_mappings() {
  /usr/bin/python3 - "$1" <<'PY'
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
}
