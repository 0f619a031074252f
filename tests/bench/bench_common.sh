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
