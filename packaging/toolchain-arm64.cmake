# Cross-building for arm64 (aarch64) on Debian 12 with its cross toolchain (g++-aarch64-linux-gnu)
# and multiarch libraries (dpkg --add-architecture arm64; libssl-dev:arm64, libgtest-dev:arm64).
# packaging/build-agent.sh --arch arm64 installs them and uses this file.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# Multiarch: the target's libraries and CMake packages live beside the host's, under
# /usr/lib/aarch64-linux-gnu; the architecture-independent headers in /usr/include serve both.
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# pkg-config (FindOpenSSL asks it for hints) must describe arm64 libraries, not the host's.
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig)

# Test binaries run under qemu-user on the multiarch arm64 runtime (libc6:arm64, libstdc++6:arm64
# in /lib/aarch64-linux-gnu; its loader is /lib/ld-linux-aarch64.so.1). Not with
# `-L /usr/aarch64-linux-gnu`: that loader is the cross package's glibc build, and the
# libc.so.6 it then finds is the multiarch one; mixing two glibc builds hangs at the first thread.
find_program(MLFX_QEMU_AARCH64 NAMES qemu-aarch64-static qemu-aarch64)
if(MLFX_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${MLFX_QEMU_AARCH64})
endif()
