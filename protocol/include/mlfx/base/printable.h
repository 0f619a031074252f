// Text read from evidence (class names, module paths, stream names, device ids, notes, case
// ids, mapped file names) is chosen by whoever shaped the evidence. Before it reaches a
// terminal or a page it passes through here, so that it cannot move the cursor, retitle or
// clear the window, fake a line of output, reorder what is shown, or hide behind bytes that
// are not text.
#pragma once

#include <string>
#include <string_view>

#include "mlfx/base/json.h"

namespace mlfx {

// `s` as valid UTF-8 that no terminal acts on: C0 control characters, DEL, C1 control
// characters, Unicode bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069) and
// bytes that are not UTF-8 become visible escapes ("\n", "\t", "\r", "\x1b", "\u{202e}",
// "\xff"), and a backslash becomes "\\" so that an escape in the input cannot pass for one.
// Everything else, other scripts included, is kept as it is.
std::string printable(std::string_view s);

// JSON text for a terminal or a pipe: ASCII only (every other character as a \u escape) and
// bytes that are not UTF-8 replaced by U+FFFD, so the output is valid JSON whatever the
// evidence held. `indent` as for nlohmann::json::dump.
std::string printable_json(const json::Json& j, int indent = -1);

}  // namespace mlfx
