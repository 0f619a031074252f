#!/usr/bin/env bash
# Benchmark (not a test): sealing and opening a large file vs. hashing it, in the same run,
# pinned to one core. Quotes medians and ratios; machines here are noisy.
#
#   tests/bench/seal_open_bench.sh [BUILD_DIR] [SIZE_MIB] [RUNS]
#
# References: `sha256sum` (coreutils, the issue's reference) and `openssl dgst -sha256`
# (SHA-NI accelerated where the CPU has it: the fastest a plain hash of the file gets).
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/bench_common.sh"
build=${1:-build}
size_mib=${2:-1024}
runs=${3:-5}
mlfx=$(realpath "$build/analyzer/mlfx")
work=$(mktemp -d "${TMPDIR:-/tmp}/mlfx-bench-XXXXXX")
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
cd "$work"

head -c "${size_mib}M" /dev/urandom > input.bin
"$mlfx" keys gen --kind device --out dev > /dev/null
"$mlfx" keys gen --kind lab --out lab > /dev/null
cat input.bin > /dev/null  # warm page cache

pin="taskset -c 0"
seconds() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }

declare -A samples
for i in $(seq "$runs"); do
  samples[sha256sum]+="$(seconds $pin sha256sum input.bin) "
  samples[openssl]+="$(seconds $pin openssl dgst -sha256 input.bin) "
  rm -f b.mlfx
  samples[seal]+="$(seconds $pin "$mlfx" bundle seal input.bin --out b.mlfx --device-key dev.key --recipient lab.pub -q) "
  chmod -R u+w out 2>/dev/null || true; rm -rf out
  samples[open]+="$(seconds $pin "$mlfx" bundle open b.mlfx --key lab.key --out out -q) "
  samples[verify]+="$(seconds $pin "$mlfx" bundle verify b.mlfx -q) "
done
cmp input.bin out/input.bin

echo "file: ${size_mib} MiB random, ${runs} runs, one core (taskset -c 0), warm cache"
echo "cpu:  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-10s %10s %12s %14s %14s\n' what median_s MiB/s vs_sha256sum vs_openssl
m_sha=$(echo "${samples[sha256sum]}" | tr ' ' '\n' | grep . | median)
m_ossl=$(echo "${samples[openssl]}" | tr ' ' '\n' | grep . | median)
for k in sha256sum openssl seal open verify; do
  m=$(echo "${samples[$k]}" | tr ' ' '\n' | grep . | median)
  printf '%-10s %10.3f %12.0f %14.2f %14.2f\n' "$k" "$m" "$(echo "$size_mib / $m" | bc -l)" \
    "$(echo "$m / $m_sha" | bc -l)" "$(echo "$m / $m_ossl" | bc -l)"
done
