#include "capture/physical/khugepaged_pause.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "mlfx/base/file.h"

namespace mlfx::agent::physical {

namespace {

// A sysfs attribute takes one write(); an error names the errno.
Status write_setting(const std::string& path, const std::string& value) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return fail(Errc::kIo, "cannot open " + path + ": " + errno_text(errno));
  ssize_t n;
  do n = ::write(fd, value.data(), value.size());
  while (n < 0 && errno == EINTR);
  const int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(value.size()))
    return fail(Errc::kIo, "cannot write '" + value + "' to " + path + ": " + (n < 0 ? errno_text(err) : "short write"));
  return {};
}

}  // namespace

std::string selected_choice(const std::string& text) {
  const size_t open = text.find('['), close = text.find(']', open == std::string::npos ? 0 : open);
  if (open == std::string::npos || close == std::string::npos) return {};
  return text.substr(open + 1, close - open - 1);
}

void KhugepagedPause::pause() {
  if (paused_) return;
  auto text = read_small_file(setting_, 4096);
  if (!text) {
    not_done_ = "transparent huge pages are not available (" + text.error().message() + ")";
    return;
  }
  was_ = selected_choice(*text);
  if (was_.empty()) {
    not_done_ = setting_ + " names no selected mode: '" + *text + "'";
    return;
  }
  if (was_ == "never") {
    not_done_ = "transparent huge pages are off already: khugepaged does not run";
    return;
  }
  if (auto st = write_setting(setting_, "never"); !st) {
    not_done_ = st.error().message();
    return;
  }
  paused_ = true;
}

Status KhugepagedPause::resume() {
  if (!paused_) return {};
  paused_ = false;
  if (auto st = write_setting(setting_, was_); !st) {
    restore_error_ = st.error().message();
    return fail(Errc::kIo, "transparent huge pages stay off after the capture: " + restore_error_ +
                               "; restore them with: echo " + was_ + " > " + setting_);
  }
  restored_ = true;
  return {};
}

json::Json KhugepagedPause::to_json() const {
  json::Json j = {{"setting", setting_}, {"was", was_.empty() ? json::Json(nullptr) : json::Json(was_)},
                  {"paused", paused_ || restored_ || !restore_error_.empty()}, {"restored", restored_}};
  if (!not_done_.empty()) j["not_paused"] = not_done_;
  if (!restore_error_.empty()) j["restore_error"] = restore_error_;
  return j;
}

}  // namespace mlfx::agent::physical
