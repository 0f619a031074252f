#include "arch.h"

#include <elf.h>
#include <sys/user.h>

namespace mlfx::agent::process {
namespace {

#if defined(__x86_64__)
// The XSAVE area grows with CPU features (AVX-512, AMX tiles: ~11 KiB today).
constexpr RegsetSpec kRegsets[] = {
    {NT_PRFPREG, "CORE", sizeof(user_fpregs_struct), true},
    {NT_X86_XSTATE, "LINUX", 64 << 10, false},
};
constexpr ArchInfo kArch{"x86_64", EM_X86_64, kRegsets};
#elif defined(__aarch64__)
// gdb needs NT_ARM_PAC_MASK to strip pointer-authentication bits from return addresses
// (Debian builds arm64 with -mbranch-protection=standard) and NT_ARM_TLS for thread-locals.
// Features the CPU or kernel lacks fail PTRACE_GETREGSET and are left out, as in kernel cores.
constexpr RegsetSpec kRegsets[] = {
    {NT_PRFPREG, "CORE", sizeof(user_fpsimd_struct), true},
    {NT_ARM_TLS, "LINUX", 64, false},
    {NT_ARM_SYSTEM_CALL, "LINUX", 64, false},
    {NT_ARM_SVE, "LINUX", 64 << 10, false},
    {NT_ARM_PAC_MASK, "LINUX", 64, false},
    {NT_ARM_TAGGED_ADDR_CTRL, "LINUX", 64, false},
};
constexpr ArchInfo kArch{"aarch64", EM_AARCH64, kRegsets};
#else
#error "mlfx-agent process capture supports x86_64 and aarch64"
#endif

}  // namespace

const ArchInfo& host_arch() { return kArch; }

}  // namespace mlfx::agent::process
