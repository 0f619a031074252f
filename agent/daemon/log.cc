#include "daemon/log.h"

#include <algorithm>
#include <cstdio>

#include "mlfx/base/clock.h"

namespace mlfx::agent::daemon {
namespace {

const char* level_name(Level l) {
  switch (l) {
    case Level::kError: return "error";
    case Level::kWarning: return "warning";
    case Level::kNotice: return "notice";
    case Level::kInfo: return "info";
    case Level::kDebug: return "debug";
  }
  return "info";
}

// Evidence may hold bytes that are not UTF-8 (a process names itself): replaced, never thrown on.
std::string dump(const json::Json& j) { return j.dump(-1, ' ', false, json::Json::error_handler_t::replace); }

// key=value, a value quoted when it has spaces, quotes or control characters (JSON escaping).
std::string key_values(const json::Json& fields) {
  std::string out;
  for (auto it = fields.begin(); it != fields.end(); ++it) {
    std::string v;
    if (it->is_string()) {
      v = it->get<std::string>();
    } else if (it->is_array() && std::all_of(it->begin(), it->end(), [](const json::Json& e) { return e.is_string(); })) {
      for (const auto& e : *it) v += (v.empty() ? "" : ",") + e.get<std::string>();  // a list of names
    } else {
      v = dump(*it);
    }
    bool plain = !v.empty();
    for (unsigned char c : v) plain = plain && c > ' ' && c != '"' && c != '=' && c < 0x7f;
    out += " " + it.key() + "=" + (plain ? v : dump(json::Json(v)));
  }
  return out;
}

}  // namespace

void Log::set_format(std::string format) {
  std::lock_guard lock(mu_);
  format_ = std::move(format);
}

void Log::write(Level level, const std::string& event, const json::Json& fields) {
  std::string line;
  std::lock_guard lock(mu_);
  if (format_ == "json") {
    json::Json j = {{"time", utc_timestamp()}, {"level", level_name(level)}, {"event", event}};
    for (auto it = fields.begin(); it != fields.end(); ++it) j[it.key()] = *it;
    line = dump(j);
  } else if (format_ == "text") {
    line = utc_timestamp() + " " + level_name(level) + " " + event + key_values(fields);
  } else {
    line = "<" + std::to_string(static_cast<int>(level)) + ">" + event + key_values(fields);
  }
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace mlfx::agent::daemon
