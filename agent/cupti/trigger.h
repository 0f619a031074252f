// The copy-out's trigger: a FIFO the library creates (mkfifo 0600) and a thread of its own that
// waits on it; each write by the agent (one byte is enough) starts one copy-out.
#pragma once

#include <functional>
#include <string>

namespace mlfx::cupti {

// Creates the FIFO at `path` (or takes one already there that this user owns, mode 0600) and
// opens it read-write, so reading never sees end-of-file when a writer closes. The descriptor,
// or -1 with *error.
int open_trigger_fifo(const std::string& path, std::string* error);

// Starts a detached thread (every signal blocked: the process's handlers stay on its own
// threads) that reads `fd` and calls `on_trigger` once per read that returns bytes. The thread
// runs for the process's life. False with *error when it could not start.
bool start_trigger_thread(int fd, std::function<void()> on_trigger, std::string* error);

}  // namespace mlfx::cupti
