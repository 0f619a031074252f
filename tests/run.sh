#!/usr/bin/env bash
# Sets up, builds and runs every test: the libFuzzer targets (clang, ASan/UBSan) for
# MLFX_FUZZ_SECONDS each, the unit-level suites under AddressSanitizer + UBSan (gcc), and every
# suite (gcc). The last line is ctest's summary of the main suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
jobs=$(nproc)
fuzz_seconds=${MLFX_FUZZ_SECONDS:-30}  # 13 targets: the whole run stays under 30 min on 2 cores

packaging/setup-deps.sh
source packaging/compiler_cache.sh

echo "== [${SECONDS}s] fuzzing (clang, libFuzzer, ASan/UBSan), ${fuzz_seconds}s per target"
CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DMLFX_FUZZ=ON "${compiler_cache[@]}" \
  -DMLFX_FUZZ_SECONDS="$fuzz_seconds" > /dev/null
cmake --build build-fuzz -j"$jobs"
(cd build-fuzz && ctest -j"$jobs" --output-on-failure)

# The end-to-end suites (intake, agent, recovery, rehost, adversarial: real processes, minutes
# each under ASan) run in the main suite; their parsers of hostile input run under ASan in the
# fuzz stage above, on corpora that hold the adversarial shapes.
echo "== [${SECONDS}s] sanitizers (gcc, ASan/UBSan): the unit tier, the CLI, PKI and exporter suites, intake shutdown"
# No libtorch here: rehost and scan (mlfx-torch) run in the main suite only.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMLFX_SANITIZE=ON -DMLFX_WITH_LIBTORCH=OFF \
  "${compiler_cache[@]}" > /dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 &&
   ctest -j"$jobs" --output-on-failure -L unit -LE fuzz &&
   ctest -j"$jobs" --output-on-failure -L 'cli|pki|exporters' -LE 'unit|slow' &&
   ctest -j"$jobs" --output-on-failure -R '^HostileClientTest\.StoppingTheIntakeWithUploadsInFlightIsClean$')

# Every other test, once. The fuzz targets' replays (label fuzz) are left out: the fuzz stage
# above just ran the same corpora and regressions under libFuzzer.
echo "== [${SECONDS}s] main suite"
BUILD_DIR="$root/build" packaging/build.sh -DMLFX_BUILD_TESTS=ON
cd build
ctest -j"$jobs" --output-on-failure -LE fuzz
