#include "capture/physical/pagemap.h"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

#include "capture/process/procfs.h"

namespace mlfx::agent::physical {

namespace {
constexpr size_t kHeaderSize = 16, kRecordHeaderSize = 24;
constexpr size_t kReadEntries = 64 * 1024;  // entries per pread of /proc/PID/pagemap
}  // namespace

bool pagemap_recorded(const process::MapEntry& m) { return m.readable() && m.path != "[vsyscall]"; }

PagemapWriter::PagemapWriter() : out_(kHeaderSize) { std::memcpy(out_.data(), kPagemapMagic, 8); }

Status PagemapWriter::add_mapping(int fd, pid_t pid, const process::MapEntry& m, uint64_t page_size,
                                  uint64_t max_total_pages) {
  const std::string where = "/proc/" + std::to_string(pid) + "/pagemap, mapping " + m.range_name();
  if (m.start % page_size || m.end % page_size || m.end <= m.start)
    return fail(Errc::kBadFormat, where + ": not a page-aligned range");
  const uint64_t pages = (m.end - m.start) / page_size;
  if (pages > max_total_pages - total_pages_)
    return fail(Errc::kUnsupported, where + ": the pagemap would exceed " + std::to_string(max_total_pages) +
                                        " pages in all (a huge readable mapping); capture fewer processes");
  const size_t at = out_.size();
  out_.resize(at + kRecordHeaderSize + pages * 8);
  uint8_t* h = out_.data() + at;
  store_le<uint32_t>(h, static_cast<uint32_t>(pid));
  store_le<uint32_t>(h + 4, 0);
  store_le<uint64_t>(h + 8, m.start);
  store_le<uint64_t>(h + 16, pages);
  uint8_t* entries = h + kRecordHeaderSize;
  for (uint64_t done = 0; done < pages;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kReadEntries, pages - done));
    const off_t offset = static_cast<off_t>((m.start / page_size + done) * 8);
    const ssize_t got = ::pread(fd, entries + done * 8, n * 8, offset);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0 || got % 8) {
      out_.resize(at);
      if (got == 0) return fail(Errc::kNotFound, where + ": no entries (did the process exit?)");
      return fail(Errc::kIo, where + ": " + (got < 0 ? process::errno_name(errno) : "a partial entry"));
    }
    done += static_cast<uint64_t>(got) / 8;
  }
  // The entries are the kernel's u64s in host order; the stream is little-endian.
  if constexpr (std::endian::native != std::endian::little)
    for (uint64_t i = 0; i < pages; ++i) {
      uint64_t v;
      std::memcpy(&v, entries + i * 8, 8);
      store_le<uint64_t>(entries + i * 8, v);
    }
  total_pages_ += pages;
  ++records_;
  last_entries_at_ = at + kRecordHeaderSize;
  return {};
}

std::span<const uint8_t> PagemapWriter::last_entries() const {
  if (!records_) return {};
  return std::span<const uint8_t>(out_.data() + last_entries_at_, out_.size() - last_entries_at_);
}

Bytes PagemapWriter::finish() {
  store_le<uint32_t>(out_.data() + 8, kPagemapVersion);
  store_le<uint32_t>(out_.data() + 12, records_);
  Bytes done = std::move(out_);
  *this = PagemapWriter();
  return done;
}

Result<std::vector<PagemapRecord>> parse_pagemap_stream(ByteView s) {
  auto bad = [](const std::string& why, size_t at) {
    return fail(Error(Errc::kBadFormat, "pagemap stream: " + why).at({"pagemap", std::nullopt, at}));
  };
  if (s.size() < kHeaderSize || std::memcmp(s.data(), kPagemapMagic, 8) != 0) return bad("no MLFXPMAP header", 0);
  if (load_le<uint32_t>(s.data() + 8) != kPagemapVersion) return bad("unknown version", 8);
  const uint32_t count = load_le<uint32_t>(s.data() + 12);
  std::vector<PagemapRecord> out;
  size_t at = kHeaderSize;
  for (uint32_t i = 0; i < count; ++i) {
    if (s.size() - at < kRecordHeaderSize) return bad("record header cut short", at);
    PagemapRecord r;
    r.pid = load_le<uint32_t>(s.data() + at);
    r.flags = load_le<uint32_t>(s.data() + at + 4);
    r.start = load_le<uint64_t>(s.data() + at + 8);
    const uint64_t pages = load_le<uint64_t>(s.data() + at + 16);
    at += kRecordHeaderSize;
    if (pages > (s.size() - at) / 8) return bad("record runs past the end", at);
    r.entries.resize(pages);
    for (uint64_t p = 0; p < pages; ++p) r.entries[p] = load_le<uint64_t>(s.data() + at + p * 8);
    at += pages * 8;
    out.push_back(std::move(r));
  }
  if (at != s.size()) return bad("bytes after the last record", at);
  return out;
}

}  // namespace mlfx::agent::physical
