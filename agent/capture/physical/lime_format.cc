#include "capture/physical/lime_format.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace mlfx::agent::physical {

void encode_lime_header(uint8_t* out, uint64_t start, uint64_t end) {
  store_le<uint32_t>(out, kLimeMagic);
  store_le<uint32_t>(out + 4, kLimeVersion);
  store_le<uint64_t>(out + 8, start);
  store_le<uint64_t>(out + 16, end);
  std::memset(out + 24, 0, 8);
}

Status LimeStreamChecker::feed(ByteView data) {
  while (!data.empty()) {
    if (data_left_ > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(data_left_, data.size()));
      data_left_ -= n;
      data_bytes_ += n;
      offset_ += n;
      data = data.subspan(n);
      continue;
    }
    const size_t n = std::min(kLimeHeaderSize - header_fill_, data.size());
    std::memcpy(header_ + header_fill_, data.data(), n);
    header_fill_ += n;
    offset_ += n;
    data = data.subspan(n);
    if (header_fill_ == kLimeHeaderSize) {
      header_fill_ = 0;
      MLFX_TRY(header_complete());
    }
  }
  return {};
}

Status LimeStreamChecker::header_complete() {
  const uint64_t at = offset_ - kLimeHeaderSize;
  auto bad = [&](const std::string& why) {
    return fail(Error(Errc::kBadFormat, "LiME stream: " + why).at({"LiME stream", std::nullopt, at}));
  };
  const uint32_t magic = load_le<uint32_t>(header_), version = load_le<uint32_t>(header_ + 4);
  const uint64_t start = load_le<uint64_t>(header_ + 8), end = load_le<uint64_t>(header_ + 16);
  if (magic != kLimeMagic)
    return bad(ranges_.empty() ? "no LiME magic at the start (not format=lime?)"
                               : "no LiME magic where the next range header should be (damaged stream)");
  if (version != kLimeVersion) return bad("range header version " + std::to_string(version) + " (only 1 is known)");
  if (std::any_of(header_ + 24, header_ + 32, [](uint8_t b) { return b != 0; }))
    return bad("reserved bytes of a range header are not zero");
  if (end < start) return bad("range " + hex_address(start) + "-" + hex_address(end) + " ends before it starts");
  if (start == 0 && end == UINT64_MAX) return bad("a range covers the whole address space");
  if (!ranges_.empty() && start <= ranges_.back().end)
    return bad("ranges unsorted or overlapping: " + hex_address(start) + " after the range ending at " +
               hex_address(ranges_.back().end));
  if (ranges_.size() == kLimeMaxRanges) return bad("more than " + std::to_string(kLimeMaxRanges) + " ranges");
  ranges_.push_back({start, end});
  data_left_ = end - start + 1;
  return {};
}

Status LimeStreamChecker::finish() const {
  auto bad = [&](const std::string& why) {
    return fail(Error(Errc::kBadFormat, "LiME stream: " + why).at({"LiME stream", std::nullopt, offset_}));
  };
  if (header_fill_ > 0) return bad("ends inside a range header (" + std::to_string(header_fill_) + " of 32 bytes)");
  if (data_left_ > 0)
    return bad("ends " + std::to_string(data_left_) + " bytes before the end of the range at " +
               hex_address(ranges_.back().start) + " (truncated)");
  if (ranges_.empty()) return bad("no range at all (empty stream)");
  return {};
}

}  // namespace mlfx::agent::physical
