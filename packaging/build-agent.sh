#!/usr/bin/env bash
# Builds mlfx-agent alone (no analyzer: no libtorch, ISA-L or libpng), for this machine or
# cross-built for arm64 with Debian 12's cross toolchain and multiarch libraries.
#
# usage: packaging/build-agent.sh [--arch arm64] --out DIR [--test] [-- CMAKE_ARGS...]
#   --arch arm64  cross-build for aarch64 (Jetson, cars); default: this machine's architecture
#   --out DIR     where the stripped mlfx-agent goes (DIR/mlfx-agent)
#   --test        also build the agent's tests and run the unit tier (`ctest -L unit`); an arm64
#                 build runs them under qemu-user (ptrace-based tests cannot run there)
#   CMAKE_ARGS    passed to the configure step (e.g. --trace-expand)
#
# Installs what it needs from the machine's apt sources, only when something is missing (root or
# sudo needed then); for arm64 it adds the arm64 architecture to dpkg. Multiarch libraries must
# be the same version for both architectures, so installing libssl-dev:arm64 may upgrade the
# machine's own OpenSSL to the archive's version (apt says so before it does).
# The build directory, ${MLFX_AGENT_BUILD_DIR:-<checkout>/build-agent-ARCH} (ignored by git), is
# reused by later runs; compiles go through ccache when it is installed, whose cache lives
# outside the repository and, the build directory being at the same place in every checkout,
# serves a fresh clone too (paths relative to the checkout).
#
# Exit codes: 0 built (and tested), 1 build or test failure, 2 usage error, 3 the packages it
# needs cannot be installed (e.g. no arm64 in the configured archive, or no root).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

usage() {  # usage [EXIT_CODE]
  sed -n '5,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

arch="" out="" run_tests=0 cmake_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) [ $# -ge 2 ] || usage; arch=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
    --test) run_tests=1; shift ;;
    --) shift; cmake_args=("$@"); break ;;
    -h|--help) usage 0 ;;
    *) echo "build-agent: unknown argument '$1'" >&2; usage ;;
  esac
done
[ -n "$out" ] || { echo "build-agent: --out DIR is required" >&2; usage; }

host_arch=$(dpkg --print-architecture)
case "${arch:-$host_arch}" in
  "$host_arch") arch=$host_arch cross=0 ;;
  arm64|aarch64) arch=arm64 cross=1 ;;
  *) echo "build-agent: --arch $arch: this script builds for this machine ($host_arch) or arm64" >&2; exit 2 ;;
esac
triplet=aarch64-linux-gnu

# --- Dependencies: the agent's own, nothing of the analyzer's ---------------------------------

packages=(cmake ninja-build binutils file nlohmann-json3-dev libcli11-dev libexpected-dev libboost-dev
          libtomlplusplus-dev)
if [ "$cross" = 1 ]; then
  packages+=("g++-$triplet" libssl-dev:arm64)
  # GoogleTest for arm64, and the C++ runtime the tests run on under qemu-user: the arm64
  # packages' own (with the libc6:arm64 that libssl3:arm64 brings), one consistent glibc.
  [ "$run_tests" = 1 ] && packages+=(libgtest-dev:arm64 libstdc++6:arm64 python3)
else
  # The eBPF triggers: clang and bpftool compile them against this kernel's BTF; libbpf, libelf and
  # zlib are linked statically.
  packages+=(g++ libssl-dev clang bpftool libbpf-dev libelf-dev zlib1g-dev pkg-config)
  [ "$run_tests" = 1 ] && packages+=(libgtest-dev python3)
fi

# (grep > /dev/null, not grep -q: with pipefail, a writer cut off by grep -q fails the pipe)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep "install ok installed" > /dev/null; }
qemu_installed() { command -v qemu-aarch64-static > /dev/null || command -v qemu-aarch64 > /dev/null; }
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo > /dev/null; then sudo "$@"
  else echo "build-agent: need root to run: $*" >&2; exit 3
  fi
}
apt() { as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"; }
has_candidate() { apt-cache policy "$1" 2>/dev/null | grep "Candidate: [^(]" > /dev/null; }

install_missing() {
  local missing=() p added_arch=0 updated=0
  for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
  if [ "$cross" = 1 ] && [ "$run_tests" = 1 ] && ! qemu_installed; then missing+=(qemu-user-static); fi
  [ ${#missing[@]} -eq 0 ] && return 0

  echo "build-agent: installing ${missing[*]}" >&2
  if [ "$cross" = 1 ] && ! dpkg --print-foreign-architectures | grep -x arm64 > /dev/null; then
    as_root dpkg --add-architecture arm64
    added_arch=1
  fi
  local stale=$added_arch
  for p in "${missing[@]}"; do has_candidate "$p" || stale=1; done
  if [ "$stale" = 1 ]; then
    if ! apt update -qq; then
      # Leave the machine as it was: a foreign architecture its archive lacks breaks apt-get update.
      [ "$added_arch" = 1 ] && as_root dpkg --remove-architecture arm64
      echo "build-agent: apt-get update failed (does the configured archive carry $arch?)" >&2
      exit 3
    fi
    updated=1
  fi
  for p in "${missing[@]}"; do
    if ! has_candidate "$p"; then
      [ "$added_arch" = 1 ] && as_root dpkg --remove-architecture arm64
      echo "build-agent: the configured apt sources do not offer $p" >&2
      exit 3
    fi
  done
  # Say what else changes: multiarch twins are upgraded to the same version as the new package.
  local upgrades
  upgrades=$(apt-get -s install --no-install-recommends "${missing[@]}" 2>/dev/null |
             sed -n 's/^Inst \([^ ]*\) \[\([^]]*\)\] (\([^ ]*\).*/  \1 \2 -> \3/p')
  if [ -n "$upgrades" ]; then
    printf 'build-agent: this also upgrades (multiarch packages must be the same version):\n%s\n' "$upgrades" >&2
  fi
  # Package lists older than the archive name files it no longer has: update once and retry.
  if ! apt install -y -qq --no-install-recommends "${missing[@]}" > /dev/null &&
     ! { [ "$updated" = 0 ] && apt update -qq && apt install -y -qq --no-install-recommends "${missing[@]}" > /dev/null; }; then
    echo "build-agent: apt-get install ${missing[*]} failed" >&2
    exit 3
  fi
}
install_missing

# --- Configure and build ----------------------------------------------------------------------

build=${MLFX_AGENT_BUILD_DIR:-$root/build-agent-$arch}
mkdir -p "$build" "$out"
exec 9> "$build.lock"
flock 9  # one build at a time in this directory (a user and a test may share it)

# A build directory configured for another checkout (MLFX_AGENT_BUILD_DIR shared) is started
# afresh (ccache keeps that cheap).
cache_home=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
if [ -n "$cache_home" ] && [ "$cache_home" != "$root" ]; then
  echo "build-agent: $build was configured for $cache_home; starting it afresh for $root" >&2
  find "$build" -mindepth 1 -delete
fi

# shellcheck source=packaging/compiler_cache.sh
source "$root/packaging/compiler_cache.sh"
tests=OFF
[ "$run_tests" = 1 ] && tests=ON
config=(-G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMLFX_BUILD_AGENT=ON -DMLFX_BUILD_ANALYZER=OFF
        -DMLFX_WITH_LIBTORCH=OFF -DMLFX_BUILD_TESTS="$tests")
# A cross build has no eBPF triggers yet (its BPF object would need the target kernel's BTF and
# arm64 libbpf): its daemon arms fatal signals (ptrace), on-demand and app-anomaly triggers.
[ "$cross" = 1 ] && config+=(-DCMAKE_TOOLCHAIN_FILE="$root/packaging/toolchain-arm64.cmake" -DMLFX_AGENT_EBPF=OFF)

started=$SECONDS
cmake -S "$root" -B "$build" "${config[@]}" "${compiler_cache[@]}" "${cmake_args[@]}" > "$build/configure.log" ||
  { cat "$build/configure.log" >&2; echo "build-agent: configure failed (log: $build/configure.log)" >&2; exit 1; }
if [ "$run_tests" = 1 ]; then
  cmake --build "$build" -j"$(nproc)"
else
  cmake --build "$build" -j"$(nproc)" --target mlfx-agent
fi

strip_tool=$(sed -n 's/^CMAKE_STRIP:FILEPATH=//p' "$build/CMakeCache.txt")
"${strip_tool:-strip}" -o "$out/mlfx-agent.tmp" "$build/agent/mlfx-agent"
mv "$out/mlfx-agent.tmp" "$out/mlfx-agent"
echo "build-agent: built in $((SECONDS - started)) s in $build"

# --- What was built ---------------------------------------------------------------------------

binary=$out/mlfx-agent
echo "mlfx-agent ($arch): $binary, $(stat -c %s "$binary") bytes stripped"
file -b "$binary"
echo "NEEDED: $(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
if [ "$cross" = 0 ]; then
  ldd "$binary"
fi

# Unit tests that need what qemu-user does not emulate: it takes madvise() advice other than
# MADV_DONTNEED as a hint and drops it, so the kernel never marks the pages (MADV_DONTDUMP,
# MADV_HUGEPAGE). They run natively.
qemu_unsupported='^(SecureMemory\.BuffersAreNotDumped|CaptureIoPolicy\.ChunkBuffersAskForHugePages)$'

if [ "$run_tests" = 1 ]; then
  exclude=()
  if [ "$cross" = 1 ]; then
    echo "build-agent: unit tests under $(sed -n 's/^MLFX_QEMU_AARCH64:FILEPATH=//p' "$build/CMakeCache.txt")," \
         "except $qemu_unsupported (qemu-user drops their madvise advice)"
    exclude=(-E "$qemu_unsupported")
  fi
  ctest --test-dir "$build" -L unit "${exclude[@]}" -j"$(nproc)" --output-on-failure
fi
