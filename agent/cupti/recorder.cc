#include "cupti/recorder.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "cupti/json_line.h"

namespace mlfx::cupti {
namespace {

uint64_t clock_ns(clockid_t clock) {
  timespec ts{};
  ::clock_gettime(clock, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

void add_call_site(JsonLine& j, const CallSite& site) {
  j.hex("caller", site.return_address);
  if (!site.object.empty()) j.str("object", site.object).hex("object_offset", site.offset);
}

}  // namespace

struct Recorder::Line {
  JsonLine json;
  uint64_t seq = 0;
};

Recorder::Recorder(RecorderConfig config)
    : config_(std::move(config)),
      table_(config_.max_entries),
      error_lines_(config_.error_line_interval_ns),
      notices_limit_(config_.notice_interval_ns) {
  if (!config_.monotonic_ns) config_.monotonic_ns = [] { return clock_ns(CLOCK_MONOTONIC); };
  if (config_.log_path.empty()) return;
  log_fd_ = ::open(config_.log_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (log_fd_ < 0) log_error_ = "open " + config_.log_path + ": " + std::strerror(errno);
}

Recorder::~Recorder() {
  if (log_fd_ >= 0) ::close(log_fd_);
}

Recorder::Line Recorder::begin(std::string_view event) {
  Line line;
  line.seq = ++seq_;
  line.json.str("event", event).unum("seq", line.seq).unum("time_ns", clock_ns(CLOCK_REALTIME));
  line.json.num("tid", static_cast<int64_t>(::syscall(SYS_gettid)));
  return line;
}

void Recorder::write(Line& line, bool essential) {
  if (log_fd_ < 0) return;
  if (!essential && log_bytes_ >= config_.log_max_bytes) {
    if (lines_dropped_++ == 0) {  // said once; the copy-out events count the rest
      Line full = begin("log-full");
      full.json.unum("max_bytes", config_.log_max_bytes);
      write(full, true);
    }
    return;
  }
  const std::string text = line.json.done();
  // One write per line: O_APPEND keeps concurrent writers' (other processes') lines whole.
  ssize_t n;
  do n = ::write(log_fd_, text.data(), text.size());
  while (n < 0 && errno == EINTR);
  if (n > 0) log_bytes_ += static_cast<uint64_t>(n);
}

void Recorder::start(std::string_view settings_json) {
  std::lock_guard lock(mu_);
  Line l = begin("start");
  l.json.num("pid", ::getpid()).str("version", kVersion).raw("settings", settings_json);
  write(l, true);
}

void Recorder::notice(std::string_view what, std::string_view detail) {
  std::lock_guard lock(mu_);
  Line l = begin("notice");
  l.json.str("what", what).str("detail", detail);
  write(l, true);
}

void Recorder::alloc(std::string_view api, RangeKind kind, uint64_t address, uint64_t size,
                     uint64_t context, uint64_t stream, uint64_t return_address, uint64_t pitch,
                     uint64_t pool) {
  LiveRange range;
  range.address = address;
  range.size = size;
  range.kind = kind;
  range.context = context;
  range.stream = stream;
  range.site = resolve_call_site(return_address);  // dladdr: outside the lock
  range.time_ns = clock_ns(CLOCK_REALTIME);
  range.device = table_.device_of(context);
  std::lock_guard lock(mu_);
  Line l = begin("alloc");
  range.seq = l.seq;
  const auto added = table_.add_range(range);
  l.json.str("api", api)
      .str("kind", range_kind_name(kind))
      .hex("address", address)
      .unum("size", size);
  if (kind == RangeKind::kPitch) l.json.unum("pitch", pitch);
  if (kind == RangeKind::kPool) l.json.hex("pool", pool);
  l.json.num("device", range.device).hex("context", context).hex("stream", stream);
  add_call_site(l.json, range.site);
  l.json.boolean("tracked", added.tracked).boolean("replaced", added.replaced);
  write(l, false);
}

void Recorder::free(std::string_view api, uint64_t address, uint64_t context, uint64_t stream) {
  std::lock_guard lock(mu_);
  Line l = begin("free");
  const auto removed = table_.remove_range(address);
  l.json.str("api", api).hex("address", address).hex("context", context).hex("stream", stream);
  l.json.boolean("known", removed.found);
  if (removed.found)
    l.json.str("kind", range_kind_name(removed.range.kind))
        .unum("size", removed.range.size)
        .unum("alloc_seq", removed.range.seq);
  write(l, false);
}

void Recorder::reserve(uint64_t address, uint64_t size, uint64_t context) {
  std::lock_guard lock(mu_);
  Line l = begin("reserve");
  const auto added = table_.add_reservation({address, size, l.seq});
  l.json.hex("address", address)
      .unum("size", size)
      .hex("context", context)
      .boolean("tracked", added.tracked);
  write(l, false);
}

void Recorder::address_free(uint64_t address, uint64_t size) {
  std::lock_guard lock(mu_);
  Line l = begin("address-free");
  const bool known = table_.remove_reservation(address);
  l.json.hex("address", address).unum("size", size).boolean("known", known);
  write(l, false);
}

void Recorder::create(uint64_t handle, uint64_t size, int device) {
  std::lock_guard lock(mu_);
  Line l = begin("create");
  PhysicalHandle h;
  h.handle = handle;
  h.size = size;
  h.device = device;
  h.seq = l.seq;
  const auto added = table_.add_handle(h);
  l.json.hex("handle", handle)
      .unum("size", size)
      .num("device", device)
      .boolean("tracked", added.tracked);
  write(l, false);
}

void Recorder::release(uint64_t handle) {
  std::lock_guard lock(mu_);
  Line l = begin("release");
  const bool known = table_.remove_handle(handle);
  l.json.hex("handle", handle).boolean("known", known);
  write(l, false);
}

void Recorder::map(uint64_t address, uint64_t size, uint64_t offset, uint64_t handle,
                   uint64_t context, uint64_t return_address) {
  LiveRange range;
  range.address = address;
  range.size = size;
  range.kind = RangeKind::kVmm;
  range.context = context;
  range.handle = handle;
  range.handle_offset = offset;
  range.site = resolve_call_site(return_address);
  range.time_ns = clock_ns(CLOCK_REALTIME);
  const auto physical = table_.handle(handle);
  // The memory's device is the handle's (cuMemCreate's location), not the current context's.
  range.device = physical ? physical->device : table_.device_of(context);
  std::lock_guard lock(mu_);
  Line l = begin("map");
  range.seq = l.seq;
  const auto added = table_.add_range(range);
  l.json.hex("address", address).unum("size", size).unum("offset", offset).hex("handle", handle);
  l.json.boolean("handle_known", physical.has_value())
      .num("device", range.device)
      .hex("context", context);
  add_call_site(l.json, range.site);
  l.json.boolean("tracked", added.tracked).boolean("replaced", added.replaced);
  write(l, false);
}

void Recorder::unmap(uint64_t address, uint64_t size) {
  std::lock_guard lock(mu_);
  Line l = begin("unmap");
  const size_t removed = table_.remove_mapped(address, size);
  l.json.hex("address", address).unum("size", size).unum("ranges", removed);
  write(l, false);
}

void Recorder::context_created(uint64_t context, int device) {
  std::lock_guard lock(mu_);
  Line l = begin("context-created");
  const auto added = table_.add_context({context, device, l.seq});
  l.json.hex("context", context).num("device", device).boolean("tracked", added.tracked);
  write(l, true);
}

void Recorder::context_destroyed(uint64_t context) {
  std::lock_guard lock(mu_);
  Line l = begin("context-destroyed");
  const size_t dropped = table_.remove_context(context);
  l.json.hex("context", context).unum("ranges", dropped);
  write(l, true);
}

bool Recorder::result(std::string_view api, int code) {
  if (is_benign_result(code)) return false;
  const uint64_t now = config_.monotonic_ns();
  // The daemon's notice first, outside the lock: one non-blocking send.
  uint64_t notices_suppressed = 0;
  bool notified = false;
  std::string notice_error;
  const bool notice_due =
      !config_.anomaly_socket.empty() && notices_limit_.allow(now, &notices_suppressed);
  if (notice_due)
    notified = send_anomaly(config_.anomaly_socket, anomaly_message(std::string(api), code),
                            &notice_error);
  std::lock_guard lock(mu_);
  ++errors_;
  if (notified) ++notices_;
  uint64_t lines_suppressed = 0;
  if (!error_lines_.allow(now, &lines_suppressed)) return true;  // a storm (sticky errors): counted
  Line l = begin("error");
  l.json.str("api", api).num("code", code);
  if (const char* name = cuda_error_name(code)) l.json.str("error", name);
  l.json.unum("suppressed", lines_suppressed).boolean("notified", notified);
  if (!notice_error.empty()) l.json.str("notice_error", notice_error);
  write(l, true);
  return true;
}

void Recorder::trigger(std::string_view source) {
  std::lock_guard lock(mu_);
  Line l = begin("trigger");
  l.json.str("source", source);
  write(l, true);
}

void Recorder::copy_out(const std::string& output, const CopyOutReport& report) {
  std::string failures = "[";
  for (const auto& f : report.failures) {
    if (failures.size() > 1) failures += ',';
    JsonLine j;
    j.hex("address", f.address).unum("size", f.size).unum("offset", f.offset).str("error", f.error);
    failures += j.done(false);
  }
  failures += ']';
  const TableStats stats = table_.stats();
  std::lock_guard lock(mu_);
  Line l = begin("copy-out");
  l.json.str("output", output).boolean("written", report.written);
  if (!report.error.empty()) l.json.str("error", report.error);
  l.json.unum("ranges", report.ranges)
      .unum("bytes", report.bytes)
      .unum("dump_bytes", report.dump_bytes);
  l.json.unum("ms", report.ms)
      .unum("failed_ranges", report.failed_ranges)
      .raw("failures", failures);
  l.json.unum("overflow", stats.overflow)
      .unum("errors", errors_)
      .unum("lines_dropped", lines_dropped_);
  write(l, true);
}

uint64_t Recorder::error_events() const {
  std::lock_guard lock(mu_);
  return errors_;
}

uint64_t Recorder::notices_sent() const {
  std::lock_guard lock(mu_);
  return notices_;
}

RecorderConfig config_from_env() {
  RecorderConfig config;
  const pid_t pid = ::getpid();
  const int64_t now = static_cast<int64_t>(::time(nullptr));
  if (const char* v = std::getenv("MLFX_CUPTI_LOG"); v && *v)
    config.log_path = expand_path(v, pid, now);
  if (const char* v = std::getenv("MLFX_CUPTI_MAX_RANGES"); v && *v) {
    const unsigned long long n = std::strtoull(v, nullptr, 10);
    if (n > 0) config.max_entries = static_cast<size_t>(n);
  }
  const char* socket = std::getenv("MLFX_ANOMALY_SOCKET");
  config.anomaly_socket =
      socket ? socket : "/run/mlfx-agent/anomaly.sock";  // set empty: no notices
  return config;
}

}  // namespace mlfx::cupti
