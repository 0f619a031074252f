#!/usr/bin/env bash
# Installs every build, test and benchmark dependency of mlfx from Debian 12 packages.
# Idempotent: packages already present are left alone; safe to run on every build.
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config git ccache
  # libraries
  libssl-dev openssl nlohmann-json3-dev libcli11-dev libexpected-dev libisal-dev libboost-dev
  # the armed daemon: its TOML config, eBPF triggers (libbpf CO-RE skeletons), journald logging
  libtomlplusplus-dev libbpf-dev libsystemd-dev
  # rehost and white-box scans (libtorch), the report's pictures (libpng)
  libtorch-dev libpng-dev
  # victims and their inspection: real Python + PyTorch processes, gdb to check cores
  python3 python3-torch python3-numpy python3-torchvision gdb procps
  # tests, fuzzing, benchmarks
  googletest libgtest-dev libgmock-dev clang-14 libclang-rt-14-dev libfuzzer-14-dev
  coreutils util-linux bc
  # the version matrix (tests/matrix): other Debian releases' python3 + torch in chroots
  debootstrap debian-archive-keyring
  # the report is checked in a headless browser
  chromium
  # the VM lab: Debian's own kernel under QEMU software emulation, a busybox initramfs, stock LiME
  # built by DKMS for that kernel, and the headers our module builds against
  qemu-system-x86 linux-image-amd64 linux-headers-amd64 busybox-static dkms lime-forensics-dkms bpftool
  cpio kmod
  # the arm64 VM lab (tests/vmlab/vmlab_arm64.py): QEMU for aarch64 guests, qemu-user for the
  # second stage of its arm64 userland's debootstrap (above); Debian's arm64 kernel and busybox
  # are fetched with `apt-get download` (dpkg's arm64 architecture: packaging/build-agent.sh adds it)
  qemu-system-arm qemu-user-static
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then exec sudo "$0" "$@"; fi
  echo "setup-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "setup-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
