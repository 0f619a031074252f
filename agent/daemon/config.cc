#include "daemon/config.h"

#include <algorithm>
#include <cctype>
#include <csignal>
#include <initializer_list>

// toml++ compiled into this file alone (header-only, no exceptions): the agent binary links
// nothing but OpenSSL and the C/C++ runtime (tests/packaging/agent_build_test.py), so not
// Debian's libtomlplusplus.so; its parse errors come back as values, not exceptions.
#define TOML_HEADER_ONLY 1
#define TOML_EXCEPTIONS 0
#define TOML_ENABLE_FORMATTERS 0
#include <toml++/toml.h>

#include "mlfx/base/file.h"
#include "mlfx/base/host.h"

namespace mlfx::agent::daemon {

namespace {

using std::chrono::microseconds;
using std::chrono::seconds;

constexpr size_t kMaxConfigBytes = 1 << 20;
constexpr size_t kCommMax = 15;          // /proc/PID/comm: TASK_COMM_LEN 16 with the NUL
constexpr int64_t kPidMax = 1 << 22;     // the kernel's PID_MAX_LIMIT
constexpr microseconds kPsiWindowMin{500'000}, kPsiWindowMax{10'000'000};

constexpr std::pair<TriggerKind, std::string_view> kTriggerNames[] = {
    {TriggerKind::kFatalSignal, "fatal-signal"},   {TriggerKind::kMemoryPressure, "memory-pressure"},
    {TriggerKind::kOomKill, "oom-kill"},           {TriggerKind::kPtraceAttach, "ptrace-attach"},
    {TriggerKind::kMemoryWrite, "memory-write"},   {TriggerKind::kModuleLoad, "module-load"},
    {TriggerKind::kAppAnomaly, "app-anomaly"},     {TriggerKind::kOnDemand, "on-demand"},
    {TriggerKind::kLabRequest, "lab-request"},     {TriggerKind::kLibraryInjection, "library-injection"},
    {TriggerKind::kCudaError, "cuda-error"},
};
constexpr std::pair<SourceKind, std::string_view> kSourceNames[] = {
    {SourceKind::kProcess, "process"}, {SourceKind::kLime, "lime"},
    {SourceKind::kKmod, "kmod"},       {SourceKind::kGpu, "gpu"},
};
// The signals that kill a process with a core: the ones worth holding it alive for.
constexpr std::pair<int, std::string_view> kFatalSignals[] = {
    {SIGSEGV, "SIGSEGV"}, {SIGBUS, "SIGBUS"}, {SIGILL, "SIGILL"}, {SIGFPE, "SIGFPE"}, {SIGABRT, "SIGABRT"},
};

template <class Names>
std::string name_list(const Names& names) {
  std::string out;
  for (const auto& [value, name] : names) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

std::string join(const std::vector<std::string_view>& words) {
  std::string out;
  for (std::string_view w : words) out += (out.empty() ? "" : ", ") + std::string(w);
  return out;
}

std::string quoted(std::string_view s) { return "\"" + std::string(s) + "\""; }

std::string_view type_name(toml::node_type type) {
  switch (type) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a floating-point number";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::none: break;
  }
  return "nothing";
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// "number[.fraction]unit" scaled by the unit's multiplier, the fraction rounded down; nullopt
// when the text is not that or overflows 64 bits.
std::optional<uint64_t> parse_scaled(std::string_view text,
                                     std::initializer_list<std::pair<std::string_view, uint64_t>> units) {
  size_t i = 0;
  unsigned __int128 whole = 0, fraction = 0, fraction_scale = 1;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])) && i < 19)
    whole = whole * 10 + static_cast<unsigned>(text[i++] - '0');
  if (i == 0) return std::nullopt;
  if (i < text.size() && text[i] == '.') {
    const size_t start = ++i;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])) && i - start < 18) {
      fraction = fraction * 10 + static_cast<unsigned>(text[i++] - '0');
      fraction_scale *= 10;
    }
    if (i == start) return std::nullopt;
  }
  const std::string_view unit = text.substr(i);
  for (const auto& [suffix, multiplier] : units) {
    if (unit != suffix) continue;
    const unsigned __int128 value = whole * multiplier + fraction * multiplier / fraction_scale;
    if (value > UINT64_MAX) return std::nullopt;
    return static_cast<uint64_t>(value);
  }
  return std::nullopt;
}

std::optional<microseconds> parse_duration_text(std::string_view text) {
  constexpr uint64_t s = 1'000'000;
  const auto us = parse_scaled(text, {{"ms", 1'000}, {"s", s}, {"m", 60 * s}, {"h", 3600 * s}, {"d", 86400 * s}});
  if (!us || *us > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
  return microseconds(static_cast<int64_t>(*us));
}

std::optional<uint64_t> parse_size_text(std::string_view text, bool per_second) {
  if (per_second && text.ends_with("/s")) text.remove_suffix(2);
  constexpr uint64_t k = 1024;
  return parse_scaled(text, {{"", 1}, {"B", 1}, {"K", k}, {"KiB", k}, {"M", k * k}, {"MiB", k * k},
                             {"G", k * k * k}, {"GiB", k * k * k}, {"T", k * k * k * k}, {"TiB", k * k * k * k}});
}

// A value with where it was written, for messages about it after the fact.
template <class T>
struct Located {
  T value;
  toml::source_region at;
};

// Turns problems into "FILE:LINE:COLUMN: reason", kInvalidArgument.
class Refuser {
 public:
  explicit Refuser(const std::string& path) : path_(path) {}
  tl::unexpected<Error> operator()(const toml::source_region& at, std::string_view reason) const {
    return (*this)(at.begin.line, at.begin.column, reason);
  }
  tl::unexpected<Error> operator()(uint32_t line, uint32_t column, std::string_view reason) const {
    if (line == 0) line = column = 1;  // a place toml++ does not know: the file as a whole
    return fail(Errc::kInvalidArgument,
                path_ + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + std::string(reason));
  }
  tl::unexpected<Error> whole_file(std::string_view reason) const { return (*this)(1, 1, reason); }

 private:
  const std::string& path_;
};

// One table of the file and the keys valid in it: reads typed values, refusing keys it does
// not know, wrong types and missing required keys, each at its place in the file.
class Section {
 public:
  Section(const Refuser& refuse, const toml::table& table, std::string place, std::vector<std::string_view> keys)
      : refuse_(refuse), table_(table), place_(std::move(place)), keys_(std::move(keys)) {}

  const std::string& place() const { return place_; }
  void rename(std::string place) { place_ = std::move(place); }
  const toml::source_region& at() const { return table_.source(); }
  bool has(std::string_view key) const { return table_.contains(key); }
  const toml::node* node(std::string_view key) const { return table_.get(key); }
  std::string label(std::string_view key) const {
    return place_.empty() ? std::string(key) : place_ + " " + std::string(key);
  }

  tl::unexpected<Error> refuse(const toml::source_region& at, std::string_view reason) const {
    return refuse_(at, reason);
  }
  tl::unexpected<Error> refuse_key(std::string_view key, std::string_view reason) const {
    return refuse_(table_.get(key)->source(), label(key) + " " + std::string(reason));
  }

  // Every key must be one this place knows: a typo is refused, not ignored.
  Status known_keys() const {
    for (const auto& [key, value] : table_) {
      if (std::find(keys_.begin(), keys_.end(), key.str()) != keys_.end()) continue;
      std::string reason = "unknown key " + quoted(key.str()) + (place_.empty() ? " at the top level" : " in " + place_);
      if (auto near = nearest_key(key.str())) reason += " (did you mean " + std::string(*near) + "?)";
      reason += "; valid keys here: " + join(keys_);
      return refuse_(key.source(), reason);
    }
    return {};
  }

  Result<std::optional<Located<std::string>>> string(std::string_view key) const {
    const toml::node* n = node(key);
    if (!n) return std::optional<Located<std::string>>();
    const auto* s = n->as_string();
    if (!s) return type_error(key, *n, "a string");
    if (s->get().empty()) return refuse_key(key, "is empty");
    return std::optional<Located<std::string>>(Located<std::string>{s->get(), n->source()});
  }

  Result<Located<std::string>> required_string(std::string_view key, std::string_view example) const {
    MLFX_ASSIGN(auto s, string(key));
    if (!s) return missing(key, example);
    return *s;
  }

  // An absolute path (the daemon runs from / and must not depend on where it was started).
  Result<std::optional<std::string>> path(std::string_view key) const {
    MLFX_ASSIGN(auto s, string(key));
    if (!s) return std::optional<std::string>();
    MLFX_TRY(check_absolute(key, *s));
    return std::optional<std::string>(s->value);
  }

  Result<std::string> required_path(std::string_view key, std::string_view example) const {
    MLFX_ASSIGN(auto p, path(key));
    if (!p) return missing(key, example);
    return *p;
  }

  Status check_absolute(std::string_view key, const Located<std::string>& s) const {
    if (s.value.starts_with('/')) return {};
    return refuse_(s.at, label(key) + " " + quoted(s.value) + " must be an absolute path (starting with /)");
  }

  // A list of strings; a single string too where `one_allowed`. Absent: empty; present but
  // empty: refused (it would select or name nothing).
  Result<std::vector<Located<std::string>>> strings(std::string_view key, bool one_allowed) const {
    std::vector<Located<std::string>> out;
    const toml::node* n = node(key);
    if (!n) return out;
    const std::string_view wanted = one_allowed ? "a string or an array of strings" : "an array of strings";
    if (const auto* s = n->as_string(); s && one_allowed) {
      if (s->get().empty()) return refuse_key(key, "is empty");
      out.push_back({s->get(), n->source()});
      return out;
    }
    const auto* array = n->as_array();
    if (!array) return type_error(key, *n, wanted);
    if (array->empty()) return refuse_key(key, "is an empty array: list at least one, or leave the key out");
    for (const toml::node& element : *array) {
      const auto* s = element.as_string();
      if (!s) return refuse_(element.source(), label(key) + " must be " + std::string(wanted) + ", but holds " +
                                                   std::string(type_name(element.type())));
      if (s->get().empty()) return refuse_(element.source(), label(key) + " holds an empty string");
      out.push_back({s->get(), element.source()});
    }
    return out;
  }

  Result<std::vector<std::string>> paths(std::string_view key, bool one_allowed) const {
    MLFX_ASSIGN(auto items, strings(key, one_allowed));
    std::vector<std::string> out;
    for (const auto& item : items) {
      MLFX_TRY(check_absolute(key, item));
      out.push_back(item.value);
    }
    return out;
  }

  Result<std::optional<bool>> boolean(std::string_view key) const {
    const toml::node* n = node(key);
    if (!n) return std::optional<bool>();
    const auto* b = n->as_boolean();
    if (!b) return type_error(key, *n, "true or false");
    return std::optional<bool>(b->get());
  }

  Result<std::optional<int64_t>> integer(std::string_view key) const {
    const toml::node* n = node(key);
    if (!n) return std::optional<int64_t>();
    const auto* i = n->as_integer();
    if (!i) return type_error(key, *n, "an integer");
    return std::optional<int64_t>(i->get());
  }

  // "500ms", "30s", "5m", "1h", "1d" or an integer number of seconds.
  Result<std::optional<microseconds>> duration(std::string_view key) const {
    const toml::node* n = node(key);
    if (!n) return std::optional<microseconds>();
    const std::string_view form = "a duration: a string such as \"500ms\", \"30s\", \"5m\", \"1h\" or \"1d\", or an "
                                  "integer number of seconds";
    if (const auto* i = n->as_integer()) {
      if (i->get() < 0 || i->get() > INT64_MAX / 1'000'000) return refuse_key(key, "must be " + std::string(form));
      return std::optional<microseconds>(seconds(i->get()));
    }
    const auto* s = n->as_string();
    if (!s) return type_error(key, *n, form);
    const auto us = parse_duration_text(s->get());
    if (!us) return refuse_key(key, quoted(s->get()) + " is not " + std::string(form));
    return std::optional<microseconds>(*us);
  }

  // A duration the daemon keeps in whole seconds, at least `min`.
  Result<std::optional<seconds>> whole_seconds(std::string_view key, seconds min) const {
    MLFX_ASSIGN(auto us, duration(key));
    if (!us) return std::optional<seconds>();
    if (*us % seconds(1) != microseconds(0))
      return refuse_key(key, "must be a whole number of seconds (such as \"90s\" or \"2m\")");
    if (*us < min) return refuse_key(key, "must be at least " + std::to_string(min.count()) + "s");
    return std::optional<seconds>(std::chrono::duration_cast<seconds>(*us));
  }

  // "20G", "512M", "1.5T" (binary: 1K = 1024) or an integer number of bytes; not zero.
  Result<std::optional<uint64_t>> size(std::string_view key, bool per_second) const {
    const toml::node* n = node(key);
    if (!n) return std::optional<uint64_t>();
    const std::string form = std::string("a size") + (per_second ? " per second" : "") +
                             ": an integer number of bytes or a string such as \"512M\", \"20G\" or \"1.5T\" "
                             "(K, M, G, T: binary, 1K = 1024)";
    std::optional<uint64_t> bytes;
    if (const auto* i = n->as_integer()) {
      if (i->get() >= 0) bytes = static_cast<uint64_t>(i->get());
    } else if (const auto* s = n->as_string()) {
      bytes = parse_size_text(s->get(), per_second);
      if (!bytes) return refuse_key(key, quoted(s->get()) + " is not " + form);
    } else {
      return type_error(key, *n, form);
    }
    if (!bytes) return refuse_key(key, "must be " + form);
    if (*bytes == 0) return refuse_key(key, "must not be zero");
    return std::optional<uint64_t>(*bytes);
  }

  // A sub-table (written [a.b] or as an inline { ... }).
  Result<const toml::table*> table(std::string_view key) const {
    const toml::node* n = node(key);
    if (!n) return nullptr;
    const auto* t = n->as_table();
    if (!t) return type_error(key, *n, "a table");
    return t;
  }

  tl::unexpected<Error> missing(std::string_view key, std::string_view example) const {
    return refuse_(at(), place_ + " needs " + std::string(key) + " (for example " + std::string(example) + ")");
  }

  tl::unexpected<Error> type_error(std::string_view key, const toml::node& n, std::string_view wanted) const {
    return refuse_(n.source(), label(key) + " must be " + std::string(wanted) + ", not " +
                                   std::string(type_name(n.type())));
  }

 private:
  std::optional<std::string_view> nearest_key(std::string_view key) const {
    std::optional<std::string_view> best;
    size_t best_distance = 3;  // further than 2 edits is no longer a typo
    for (std::string_view k : keys_)
      if (const size_t d = edit_distance(key, k); d < best_distance) best = k, best_distance = d;
    return best;
  }

  const Refuser& refuse_;
  const toml::table& table_;
  std::string place_;
  std::vector<std::string_view> keys_;
};

// The whole file: each section in turn, then the references between them.
class ConfigParser {
 public:
  ConfigParser(const toml::table& root, const std::string& path) : root_(root), refuse_(path) {
    config_.path = path;
  }

  Result<DaemonConfig> parse() {
    Section root(refuse_, root_, "", {"agent", "spool", "upload", "lab_requests", "target", "rule"});
    MLFX_TRY(root.known_keys());
    MLFX_TRY(parse_agent(root));
    MLFX_TRY(parse_spool(root));
    MLFX_TRY(parse_upload(root));
    MLFX_TRY(parse_lab_requests(root));
    MLFX_TRY(parse_array_of_tables(root, "target", &ConfigParser::parse_target));
    MLFX_TRY(parse_array_of_tables(root, "rule", &ConfigParser::parse_rule));
    if (config_.targets.empty())
      return refuse_.whole_file("no [[target]]: add at least one [[target]] saying which processes to arm "
                                "(exe, comm, cmdline, cgroup, unit or pid)");
    if (config_.rules.empty())
      return refuse_.whole_file("no [[rule]]: add at least one [[rule]] saying which triggers (on = [...]) "
                                "set off a capture");
    return std::move(config_);
  }

 private:
  Status parse_agent(const Section& root) {
    MLFX_ASSIGN(const toml::table* table, root.table("agent"));
    if (!table)
      return refuse_.whole_file("no [agent] table: it needs device_key (the key that signs bundles) and recipients "
                                "(the lab keys bundles are encrypted to)");
    Section s(refuse_, *table, "[agent]",
              {"device_id", "device_key", "recipients", "control_socket", "control_group", "anomaly_socket",
               "gpu_dir", "log_format", "capture_timeout", "ebpf"});
    MLFX_TRY(s.known_keys());
    AgentSpec& a = config_.agent;
    MLFX_ASSIGN(auto device_id, s.string("device_id"));
    a.device_id = device_id ? device_id->value : local_host_identity().hostname;
    MLFX_ASSIGN(a.device_key, s.required_path("device_key", "device_key = \"/etc/mlfx/device.key\""));
    MLFX_ASSIGN(a.recipients, s.paths("recipients", false));
    if (a.recipients.empty()) return s.missing("recipients", "recipients = [\"/etc/mlfx/lab.pub\"]");
    MLFX_ASSIGN(auto control_socket, s.path("control_socket"));
    if (control_socket) a.control_socket = *control_socket;
    MLFX_ASSIGN(auto control_group, s.string("control_group"));
    if (control_group) a.control_group = control_group->value;
    MLFX_ASSIGN(auto anomaly_socket, s.path("anomaly_socket"));
    if (anomaly_socket) a.anomaly_socket = *anomaly_socket;
    MLFX_ASSIGN(auto gpu_dir, s.path("gpu_dir"));
    if (gpu_dir) a.gpu_dir = *gpu_dir;
    MLFX_ASSIGN(auto log_format, s.string("log_format"));
    if (log_format) {
      if (log_format->value != "journal" && log_format->value != "json" && log_format->value != "text")
        return s.refuse(log_format->at, "[agent] log_format " + quoted(log_format->value) +
                                            " is not one of \"journal\", \"json\", \"text\"");
      a.log_format = log_format->value;
    }
    MLFX_ASSIGN(auto timeout, s.whole_seconds("capture_timeout", seconds(1)));
    if (timeout) a.capture_timeout = *timeout;
    MLFX_ASSIGN(auto ebpf, s.boolean("ebpf"));
    if (ebpf) a.ebpf = *ebpf;
    return {};
  }

  Status parse_spool(const Section& root) {
    MLFX_ASSIGN(const toml::table* table, root.table("spool"));
    if (!table) return {};
    Section s(refuse_, *table, "[spool]", {"dir", "quota"});
    MLFX_TRY(s.known_keys());
    MLFX_ASSIGN(auto dir, s.path("dir"));
    if (dir) config_.spool.dir = *dir;
    MLFX_ASSIGN(config_.spool.quota, s.size("quota", false));
    return {};
  }

  Status parse_upload(const Section& root) {
    MLFX_ASSIGN(const toml::table* table, root.table("upload"));
    if (!table) return {};
    Section s(refuse_, *table, "[upload]", {"server", "ca", "cert", "key", "crl", "intake_key", "bandwidth", "poll"});
    MLFX_TRY(s.known_keys());
    UploadSpec u;
    MLFX_ASSIGN(auto server, s.required_string("server", "server = \"intake.lab.example:7443\""));
    if (auto hp = parse_host_port(server.value, "[upload] server", false); !hp)
      return s.refuse(server.at, hp.error().message());
    u.server = server.value;
    MLFX_ASSIGN(u.ca, s.required_path("ca", "ca = \"/etc/mlfx/tls/ca.pem\""));
    MLFX_ASSIGN(u.cert, s.required_path("cert", "cert = \"/etc/mlfx/tls/agent.pem\""));
    MLFX_ASSIGN(u.key, s.required_path("key", "key = \"/etc/mlfx/tls/agent.key\""));
    MLFX_ASSIGN(u.crl, s.path("crl"));
    // The intake's receipt key pinned: its .pub file or its "sha256:..." fingerprint.
    MLFX_ASSIGN(auto intake_key, s.string("intake_key"));
    if (intake_key && !intake_key->value.starts_with("sha256:")) MLFX_TRY(s.check_absolute("intake_key", *intake_key));
    if (intake_key) u.intake_key = intake_key->value;
    MLFX_ASSIGN(u.bandwidth, s.size("bandwidth", true));
    MLFX_ASSIGN(auto poll, s.whole_seconds("poll", seconds(1)));
    if (poll) u.poll = *poll;
    config_.upload = std::move(u);
    return {};
  }

  Status parse_lab_requests(const Section& root) {
    MLFX_ASSIGN(const toml::table* table, root.table("lab_requests"));
    if (!table) return {};
    Section s(refuse_, *table, "[lab_requests]", {"signers", "max_age"});
    MLFX_TRY(s.known_keys());
    LabRequestSpec l;
    MLFX_ASSIGN(l.signers, s.paths("signers", false));
    if (l.signers.empty()) return s.missing("signers", "signers = [\"/etc/mlfx/lab-requests.pub\"]");
    MLFX_ASSIGN(auto max_age, s.whole_seconds("max_age", seconds(1)));
    if (max_age) l.max_age = *max_age;
    if (!config_.upload)
      return s.refuse(s.at(), "[lab_requests] needs an [upload] section: lab capture requests arrive over the "
                              "session to the intake");
    config_.lab_requests = std::move(l);
    return {};
  }

  using TableParser = Status (ConfigParser::*)(Section&);

  Status parse_array_of_tables(const Section& root, std::string_view key, TableParser parse_one) {
    const toml::node* n = root.node(key);
    if (!n) return {};
    const auto* array = n->as_array();
    if (!array || !array->is_array_of_tables())
      return refuse_(n->source(), std::string(key) + " must be written as [[" + std::string(key) +
                                      "]] tables (an array of tables), not as " + std::string(type_name(n->type())));
    size_t index = 0;
    for (const toml::node& element : *array) {
      ++index;
      Section s(refuse_, *element.as_table(), "[[" + std::string(key) + "]] #" + std::to_string(index),
                key == "target" ? std::vector<std::string_view>{"name", "exe", "comm", "cmdline", "cgroup", "unit", "pid"}
                                : std::vector<std::string_view>{"name", "targets", "on", "signals", "sources",
                                                                "memory_pressure", "max_captures", "window",
                                                                "cooldown"});
      MLFX_TRY((this->*parse_one)(s));
    }
    return {};
  }

  // name: required, [A-Za-z0-9_.-]+, unique among its kind; the section is renamed after it.
  template <class Spec>
  Result<std::string> parse_name(Section& s, const std::vector<Spec>& earlier) {
    MLFX_ASSIGN(auto name, s.required_string("name", "name = \"perception\""));
    for (char c : name.value)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.' && c != '-')
        return s.refuse(name.at, s.label("name") + " " + quoted(name.value) +
                                     " may hold only letters, digits, '_', '.' and '-'");
    for (const Spec& other : earlier)
      if (other.name == name.value)
        return s.refuse(name.at, s.label("name") + " " + quoted(name.value) + " is already used by the one on line " +
                                     std::to_string(other.line));
    s.rename(s.place().substr(0, s.place().find(' ')) + " " + quoted(name.value));
    return name.value;
  }

  Status parse_target(Section& s) {
    MLFX_TRY(s.known_keys());
    TargetSpec t;
    t.line = static_cast<int>(s.at().begin.line);
    MLFX_ASSIGN(t.name, parse_name(s, config_.targets));
    MLFX_ASSIGN(t.exe, s.paths("exe", true));
    MLFX_ASSIGN(auto comms, s.strings("comm", true));
    for (const auto& comm : comms) {
      if (comm.value.size() > kCommMax)
        return s.refuse(comm.at, s.label("comm") + " " + quoted(comm.value) + " is longer than 15 bytes: the kernel "
                                     "keeps only the first 15 (write " + quoted(comm.value.substr(0, kCommMax)) + ")");
      t.comm.push_back(comm.value);
    }
    MLFX_ASSIGN(auto cmdline, s.string("cmdline"));
    if (cmdline) {
      try {
        t.cmdline_re.emplace(cmdline->value, std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        return s.refuse(cmdline->at, s.label("cmdline") + " " + quoted(cmdline->value) +
                                         " is not a valid regular expression (ECMAScript): " + e.what());
      }
      t.cmdline = cmdline->value;
    }
    MLFX_ASSIGN(auto cgroups, s.strings("cgroup", true));
    for (const auto& cgroup : cgroups) {
      if (!cgroup.value.starts_with('/'))
        return s.refuse(cgroup.at, s.label("cgroup") + " " + quoted(cgroup.value) + " must be a cgroup path "
                                       "starting with / (as in /proc/PID/cgroup, e.g. \"/system.slice/x.service\")");
      t.cgroup.push_back(cgroup.value);
    }
    MLFX_ASSIGN(auto units, s.strings("unit", true));
    for (const auto& unit : units) {
      if (!unit_name_ok(unit.value))
        return s.refuse(unit.at, s.label("unit") + " " + quoted(unit.value) + " is not a systemd unit name with a "
                                     "cgroup: write NAME.service, NAME.scope or NAME.slice");
      t.unit.push_back(unit.value);
    }
    MLFX_ASSIGN(t.pid, parse_pids(s));
    if (t.exe.empty() && t.comm.empty() && !t.cmdline && t.cgroup.empty() && t.unit.empty() && t.pid.empty())
      return s.refuse(s.at(), s.place() + " selects no process: give at least one of exe, comm, cmdline, cgroup, "
                                          "unit or pid");
    config_.targets.push_back(std::move(t));
    return {};
  }

  static bool unit_name_ok(std::string_view unit) {
    if (unit.find('/') != std::string_view::npos) return false;
    for (std::string_view suffix : {".service", ".scope", ".slice"})
      if (unit.size() > suffix.size() && unit.ends_with(suffix)) return true;
    return false;
  }

  Result<std::vector<pid_t>> parse_pids(const Section& s) {
    std::vector<pid_t> pids;
    const toml::node* n = s.node("pid");
    if (!n) return pids;
    std::vector<const toml::node*> items;
    if (const auto* array = n->as_array()) {
      if (array->empty()) return s.refuse_key("pid", "is an empty array: list at least one, or leave the key out");
      for (const toml::node& element : *array) items.push_back(&element);
    } else {
      items.push_back(n);
    }
    for (const toml::node* item : items) {
      const auto* i = item->as_integer();
      if (!i) return s.type_error("pid", *item, "an integer or an array of integers");
      if (i->get() <= 0 || i->get() > kPidMax)
        return s.refuse(item->source(), s.label("pid") + " " + std::to_string(i->get()) + " is not a process id "
                                            "(1 to " + std::to_string(kPidMax) + ")");
      pids.push_back(static_cast<pid_t>(i->get()));
    }
    return pids;
  }

  Status parse_rule(Section& s) {
    MLFX_TRY(s.known_keys());
    RuleSpec r;
    r.line = static_cast<int>(s.at().begin.line);
    MLFX_ASSIGN(r.name, parse_name(s, config_.rules));
    MLFX_TRY(parse_rule_targets(s, r));
    MLFX_TRY(parse_rule_on(s, r));
    MLFX_TRY(parse_rule_signals(s, r));
    MLFX_TRY(parse_rule_sources(s, r));
    MLFX_TRY(parse_rule_pressure(s, r));
    MLFX_ASSIGN(auto max_captures, s.integer("max_captures"));
    if (max_captures) {
      if (*max_captures < 1 || *max_captures > UINT32_MAX) return s.refuse_key("max_captures", "must be between 1 and " + std::to_string(UINT32_MAX));
      r.max_captures = static_cast<uint32_t>(*max_captures);
    }
    MLFX_ASSIGN(auto window, s.whole_seconds("window", seconds(1)));
    if (window) r.window = *window;
    MLFX_ASSIGN(auto cooldown, s.whole_seconds("cooldown", seconds(0)));
    if (cooldown) r.cooldown = *cooldown;
    config_.rules.push_back(std::move(r));
    return {};
  }

  Status parse_rule_targets(const Section& s, RuleSpec& r) {
    MLFX_ASSIGN(auto targets, s.strings("targets", false));
    for (const auto& target : targets) {
      if (!config_.target(target.value)) {
        std::string known;
        for (const TargetSpec& t : config_.targets) known += (known.empty() ? "" : ", ") + t.name;
        return s.refuse(target.at, s.label("targets") + " names " + quoted(target.value) + ", but no [[target]] has "
                                       "that name (targets: " + known + ")");
      }
      if (std::find(r.targets.begin(), r.targets.end(), target.value) != r.targets.end())
        return s.refuse(target.at, s.label("targets") + " lists " + quoted(target.value) + " twice");
      r.targets.push_back(target.value);
    }
    return {};
  }

  Status parse_rule_on(const Section& s, RuleSpec& r) {
    if (!s.has("on"))
      return s.missing("on", "on = [\"fatal-signal\"]; triggers: " + name_list(kTriggerNames));
    MLFX_ASSIGN(auto kinds, s.strings("on", false));
    for (const auto& kind : kinds) {
      const auto parsed = parse_trigger_kind(kind.value);
      if (!parsed)
        return s.refuse(kind.at, s.label("on") + ": unknown trigger " + quoted(kind.value) + "; triggers: " +
                                     name_list(kTriggerNames));
      if (std::find(r.on.begin(), r.on.end(), *parsed) != r.on.end())
        return s.refuse(kind.at, s.label("on") + " lists " + quoted(kind.value) + " twice");
      if (*parsed == TriggerKind::kLabRequest && !config_.lab_requests)
        return s.refuse(kind.at, s.label("on") + ": \"lab-request\" needs a [lab_requests] section naming the lab "
                                     "keys whose requests are honoured");
      r.on.push_back(*parsed);
    }
    return {};
  }

  bool triggered_by(const RuleSpec& r, TriggerKind kind) const {
    return std::find(r.on.begin(), r.on.end(), kind) != r.on.end();
  }

  Status parse_rule_signals(const Section& s, RuleSpec& r) {
    const toml::node* n = s.node("signals");
    const bool fatal = triggered_by(r, TriggerKind::kFatalSignal);
    if (!n) {
      if (fatal)
        for (const auto& [number, name] : kFatalSignals) r.signals.push_back(number);
      return {};
    }
    if (!fatal) return s.refuse_key("signals", "is only meaningful with \"fatal-signal\" in on");
    const auto* array = n->as_array();
    if (!array) return s.type_error("signals", *n, "an array of signal names or numbers");
    if (array->empty()) return s.refuse_key("signals", "is an empty array: list at least one, or leave it out for all five");
    for (const toml::node& element : *array) {
      MLFX_ASSIGN(const int signal, parse_signal(s, element));
      if (std::find(r.signals.begin(), r.signals.end(), signal) != r.signals.end())
        return s.refuse(element.source(), s.label("signals") + " lists " + std::string(signal_name(signal)) + " twice");
      r.signals.push_back(signal);
    }
    return {};
  }

  static std::string_view signal_name(int number) {
    for (const auto& [n, name] : kFatalSignals)
      if (n == number) return name;
    return "?";
  }

  Result<int> parse_signal(const Section& s, const toml::node& element) {
    const std::string allowed = "a fatal signal can be " + name_list(kFatalSignals) + " (or their numbers)";
    if (const auto* i = element.as_integer()) {
      for (const auto& [number, name] : kFatalSignals)
        if (i->get() == number) return number;
      return s.refuse(element.source(), s.label("signals") + ": signal " + std::to_string(i->get()) +
                                            " is not one of them: " + allowed);
    }
    const auto* text = element.as_string();
    if (!text) return s.type_error("signals", element, "an array of signal names or numbers");
    for (const auto& [number, name] : kFatalSignals)
      if (text->get() == name || text->get() == name.substr(3)) return number;
    return s.refuse(element.source(), s.label("signals") + ": " + quoted(text->get()) + " is not one of them: " + allowed);
  }

  Status parse_rule_sources(const Section& s, RuleSpec& r) {
    if (!s.has("sources")) {
      r.sources = {SourceKind::kProcess};
      return {};
    }
    MLFX_ASSIGN(auto names, s.strings("sources", false));
    for (const auto& name : names) {
      std::optional<SourceKind> kind;
      for (const auto& [k, n] : kSourceNames)
        if (name.value == n) kind = k;
      if (!kind)
        return s.refuse(name.at, s.label("sources") + ": unknown source " + quoted(name.value) + "; sources: " +
                                     name_list(kSourceNames));
      if (std::find(r.sources.begin(), r.sources.end(), *kind) != r.sources.end())
        return s.refuse(name.at, s.label("sources") + " lists " + quoted(name.value) + " twice");
      const auto other_whole_memory = *kind == SourceKind::kLime ? SourceKind::kKmod : SourceKind::kLime;
      if ((*kind == SourceKind::kLime || *kind == SourceKind::kKmod) &&
          std::find(r.sources.begin(), r.sources.end(), other_whole_memory) != r.sources.end())
        return s.refuse(name.at, s.label("sources") + " lists both \"lime\" and \"kmod\": a capture reads the whole "
                                     "memory once; pick one");
      r.sources.push_back(*kind);
    }
    // The GPU first: its dump needs the CUDA driver running, so it comes before anything else
    // is read from a frozen process.
    std::stable_partition(r.sources.begin(), r.sources.end(), [](SourceKind k) { return k == SourceKind::kGpu; });
    return {};
  }

  Status parse_rule_pressure(const Section& s, RuleSpec& r) {
    MLFX_ASSIGN(const toml::table* table, s.table("memory_pressure"));
    if (!table) return {};
    if (!triggered_by(r, TriggerKind::kMemoryPressure))
      return s.refuse_key("memory_pressure", "is only meaningful with \"memory-pressure\" in on");
    Section p(refuse_, *table, "memory_pressure of " + s.place(), {"stall", "window"});
    MLFX_TRY(p.known_keys());
    MLFX_ASSIGN(auto stall, p.duration("stall"));
    if (stall) r.pressure.stall = *stall;
    MLFX_ASSIGN(auto window, p.duration("window"));
    if (window) r.pressure.window = *window;
    const toml::source_region& at = table->source();
    if (r.pressure.window < kPsiWindowMin || r.pressure.window > kPsiWindowMax)
      return p.refuse(p.has("window") ? p.node("window")->source() : at,
                      p.place() + ": window must be between 500ms and 10s (the kernel's PSI triggers allow no other)");
    if (r.pressure.stall <= microseconds(0) || r.pressure.stall > r.pressure.window)
      return p.refuse(p.has("stall") ? p.node("stall")->source() : at,
                      p.place() + ": stall must be more than zero and at most the window (" +
                          std::to_string(r.pressure.window.count() / 1000) + "ms)");
    return {};
  }

  const toml::table& root_;
  Refuser refuse_;
  DaemonConfig config_;
};

}  // namespace

std::string_view trigger_kind_name(TriggerKind kind) {
  for (const auto& [k, name] : kTriggerNames)
    if (k == kind) return name;
  return "unknown";
}

std::optional<TriggerKind> parse_trigger_kind(std::string_view name) {
  for (const auto& [kind, n] : kTriggerNames)
    if (n == name) return kind;
  return std::nullopt;
}

std::string_view source_kind_name(SourceKind kind) {
  for (const auto& [k, name] : kSourceNames)
    if (k == kind) return name;
  return "unknown";
}

const TargetSpec* DaemonConfig::target(std::string_view name) const {
  for (const TargetSpec& t : targets)
    if (t.name == name) return &t;
  return nullptr;
}

std::vector<const RuleSpec*> DaemonConfig::rules_for(std::string_view target, TriggerKind kind) const {
  std::vector<const RuleSpec*> out;
  for (const RuleSpec& r : rules) {
    const bool names_it = r.targets.empty() || std::find(r.targets.begin(), r.targets.end(), target) != r.targets.end();
    if (names_it && std::find(r.on.begin(), r.on.end(), kind) != r.on.end()) out.push_back(&r);
  }
  return out;
}

Result<DaemonConfig> parse_config(std::string_view text, const std::string& path) {
  toml::parse_result parsed = toml::parse(text, path);
  if (!parsed) {
    const toml::parse_error& e = parsed.error();
    return Refuser(path)(e.source(), "not valid TOML: " + std::string(e.description()));
  }
  return ConfigParser(parsed.table(), path).parse();
}

Result<DaemonConfig> load_config(const std::string& path) {
  auto text = read_small_file(path, kMaxConfigBytes);
  if (!text) return fail(std::move(text).error().context("reading the agent configuration " + path));
  return parse_config(*text, path);
}

}  // namespace mlfx::agent::daemon
