#!/usr/bin/env bash
# Packs what the GPU check (run_gpu_check.sh) runs into DIR (default .gpu-kit in the repository,
# ignored by git): mlfx, mlfx-agent and libmlfx_cupti.so from the build (stripped), and the
# shared libraries they need that a CUDA image may lack (ISA-L, this machine's OpenSSL 3).
#   tests/gpu/make_kit.sh [DIR]        (BUILD_DIR: the build to take them from, default build/)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD_DIR:-$root/build}
kit=${1:-$root/.gpu-kit}
rm -rf "$kit"
mkdir -p "$kit/lib"
for b in analyzer/mlfx agent/mlfx-agent agent/cupti/libmlfx_cupti.so; do
  [ -f "$build/$b" ] || { echo "make_kit: $build/$b is missing: build first (packaging/build.sh)" >&2; exit 1; }
  strip -o "$kit/$(basename "$b")" "$build/$b"
done
for lib in libisal.so.2 libssl.so.3 libcrypto.so.3; do
  path=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ && !found {print $NF; found = 1}')
  [ -n "$path" ] || { echo "make_kit: $lib not found" >&2; exit 1; }
  cp -L "$path" "$kit/lib/"
done
grep -qx '/.gpu-kit/' "$root/.git/info/exclude" 2>/dev/null || echo '/.gpu-kit/' >> "$root/.git/info/exclude"
du -sh "$kit"
