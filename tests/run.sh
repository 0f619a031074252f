#!/usr/bin/env bash
# Sets up, builds and runs every test: the unit, integration and CLI suites (gcc), the same
# suites under AddressSanitizer + UBSan, and the libFuzzer targets (clang) for
# MLFX_FUZZ_SECONDS each. The last line is ctest's summary of the main suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
jobs=$(nproc)
fuzz_seconds=${MLFX_FUZZ_SECONDS:-60}

packaging/setup-deps.sh
source packaging/compiler_cache.sh

echo "== [${SECONDS}s] fuzzing (clang, libFuzzer, ASan/UBSan), ${fuzz_seconds}s per target"
CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DMLFX_FUZZ=ON "${compiler_cache[@]}" \
  -DMLFX_FUZZ_SECONDS="$fuzz_seconds" > /dev/null
cmake --build build-fuzz -j"$jobs"
(cd build-fuzz && ctest -j"$jobs" --output-on-failure)

echo "== [${SECONDS}s] sanitizers (gcc, ASan/UBSan): unit, tamper and CLI suites (not the large ones, nor the soak)"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMLFX_SANITIZE=ON "${compiler_cache[@]}" > /dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 \
   ctest -j"$jobs" --output-on-failure -LE 'large|fuzz' -E '^SoakTest\.')

echo "== [${SECONDS}s] main suite"
BUILD_DIR="$root/build" packaging/build.sh
cd build
ctest -j"$jobs" --output-on-failure
