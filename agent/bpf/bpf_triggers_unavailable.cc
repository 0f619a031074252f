// BpfTriggers in a build without eBPF (-DMLFX_AGENT_EBPF=OFF, e.g. a cross build): open() says so,
// and the daemon arms what needs no eBPF (fatal signals through ptrace, on-demand, app-anomaly).
#include "bpf/bpf_triggers.h"

namespace mlfx::agent::bpf {

struct BpfTriggers::State {};

Result<BpfTriggers> BpfTriggers::open(const Options&) {
  return fail(Errc::kUnsupported, "this mlfx-agent was built without eBPF triggers (-DMLFX_AGENT_EBPF=OFF); "
                                  "build it natively on a kernel with BTF to have them");
}
BpfTriggers::BpfTriggers(std::unique_ptr<State> state) : state_(std::move(state)) {}
BpfTriggers::BpfTriggers(BpfTriggers&&) noexcept = default;
BpfTriggers& BpfTriggers::operator=(BpfTriggers&&) noexcept = default;
BpfTriggers::~BpfTriggers() = default;
std::vector<Hook> BpfTriggers::hooks() const { return {}; }
Status BpfTriggers::arm(pid_t, uint32_t) { return fail(Errc::kUnsupported, "no eBPF triggers in this build"); }
Status BpfTriggers::disarm(pid_t) { return {}; }
int BpfTriggers::ring_fd() const { return -1; }
Status BpfTriggers::drain(const EventCallback&) { return {}; }
Result<int> BpfTriggers::poll(std::chrono::milliseconds, const EventCallback&) { return 0; }
uint64_t BpfTriggers::lost_events() const { return 0; }

}  // namespace mlfx::agent::bpf
