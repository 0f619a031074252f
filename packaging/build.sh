#!/usr/bin/env bash
# Installs dependencies (idempotent) and builds mlfx into BUILD_DIR (default: build).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
"$root/packaging/setup-deps.sh"
source "$root/packaging/compiler_cache.sh"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${compiler_cache[@]}" "$@" > /dev/null
cmake --build "$build" -j"$(nproc)"
