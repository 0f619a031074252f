// The daemon's structured log: one line per event on standard error, which systemd hands to
// journald. "journal": an sd-daemon priority prefix ("<4>") and key=value fields; "json": one
// JSON object per line; "text": a time stamp, the level and key=value fields (a terminal).
#pragma once

#include <mutex>
#include <string>

#include "mlfx/base/json.h"

namespace mlfx::agent::daemon {

enum class Level { kError = 3, kWarning = 4, kNotice = 5, kInfo = 6, kDebug = 7 };

class Log {
 public:
  explicit Log(std::string format = "journal") : format_(std::move(format)) {}
  void set_format(std::string format);
  // `event`: a short name ("armed", "trigger", "captured"); `fields`: a JSON object.
  void write(Level level, const std::string& event, const json::Json& fields = json::Json::object());
  void info(const std::string& event, const json::Json& fields = json::Json::object()) { write(Level::kInfo, event, fields); }
  void warn(const std::string& event, const json::Json& fields = json::Json::object()) { write(Level::kWarning, event, fields); }
  void error(const std::string& event, const json::Json& fields = json::Json::object()) { write(Level::kError, event, fields); }

 private:
  std::mutex mu_;
  std::string format_;
};

}  // namespace mlfx::agent::daemon
