// The CUPTI injection library's recording logic (agent/cupti/), without a GPU: the allocation
// table fed as the driver callbacks would (alloc/free, pitch, managed, async, pool, VMM, contexts,
// address reuse, the bound), the JSON-lines event log as protocol/doc/cupti-allocations.md
// specifies it, CUDA error events and their rate-limited anomaly notices, the trigger FIFO and
// the output paths.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "cupti/copy_out.h"
#include "cupti/cuda_errors.h"
#include "cupti/recorder.h"
#include "cupti/trigger.h"
#include "test_util.h"

namespace mlfx::cupti {
namespace {

using nlohmann::json;
using testing::TempDir;

constexpr uint64_t kCtx0 = 0x5550000, kCtx1 = 0x5551000;
constexpr uint64_t kMiB = 1 << 20;

// A call site inside this test binary.
void __attribute__((noinline)) caller_in_test() { asm volatile(""); }
uint64_t test_return_address() { return reinterpret_cast<uint64_t>(&caller_in_test) + 4; }

std::vector<json> log_lines(const std::string& path) {
  std::vector<json> out;
  std::istringstream in(testing::read_file(path));
  std::string line;
  while (std::getline(in, line)) out.push_back(json::parse(line));  // throws (fails) when malformed
  return out;
}

std::vector<json> events(const std::string& path, const std::string& type) {
  std::vector<json> out;
  for (auto& j : log_lines(path))
    if (j["event"] == type) out.push_back(j);
  return out;
}

struct Fixture {
  TempDir dir;
  std::string log = dir / "events.jsonl";
  uint64_t now_ns = 1'000'000'000;
  std::unique_ptr<Recorder> recorder;

  explicit Fixture(size_t max_entries = 1000, std::string socket = "") {
    RecorderConfig config;
    config.max_entries = max_entries;
    config.log_path = log;
    config.anomaly_socket = std::move(socket);
    config.monotonic_ns = [this] { return now_ns; };
    recorder = std::make_unique<Recorder>(config);
    recorder->context_created(kCtx0, 0);
    recorder->context_created(kCtx1, 1);
  }
};

TEST(CuptiTable, AllocAndFree) {
  Fixture f;
  f.recorder->alloc("cuMemAlloc_v2", RangeKind::kDevice, 0x7f0000000000, 4096, kCtx1, 0,
                    test_return_address());
  auto ranges = f.recorder->table().ranges();
  ASSERT_EQ(ranges.size(), 1u);
  EXPECT_EQ(ranges[0].address, 0x7f0000000000u);
  EXPECT_EQ(ranges[0].size, 4096u);
  EXPECT_EQ(ranges[0].kind, RangeKind::kDevice);
  EXPECT_EQ(ranges[0].device, 1);  // the context's device
  EXPECT_EQ(ranges[0].context, kCtx1);
  EXPECT_EQ(ranges[0].site.return_address, test_return_address());
  EXPECT_NE(ranges[0].site.object.find("cupti_recording_test"), std::string::npos)
      << ranges[0].site.object;
  EXPECT_GT(ranges[0].site.offset, 0u);
  EXPECT_GT(ranges[0].seq, 0u);
  EXPECT_GT(ranges[0].time_ns, 0u);
  EXPECT_EQ(f.recorder->table().stats().bytes, 4096u);

  f.recorder->free("cuMemFree_v2", 0x7f0000000000, kCtx1, 0);
  EXPECT_TRUE(f.recorder->table().ranges().empty());
  EXPECT_EQ(f.recorder->table().stats().bytes, 0u);
  f.recorder->free("cuMemFree_v2", 0x1234, kCtx1, 0);  // never allocated: logged as unknown

  auto frees = events(f.log, "free");
  ASSERT_EQ(frees.size(), 2u);
  EXPECT_EQ(frees[0]["known"], true);
  EXPECT_EQ(frees[0]["size"], 4096);
  EXPECT_EQ(frees[0]["alloc_seq"], ranges[0].seq);
  EXPECT_EQ(frees[1]["known"], false);
}

TEST(CuptiTable, PitchManagedAsyncAndPool) {
  Fixture f;
  f.recorder->alloc("cuMemAllocPitch_v2", RangeKind::kPitch, 0x10000, 512 * 100, kCtx0, 0, 0, 512);
  f.recorder->alloc("cuMemAllocManaged", RangeKind::kManaged, 0x20000, 8192, kCtx0, 0, 0);
  f.recorder->alloc("cuMemAllocAsync", RangeKind::kAsync, 0x30000, 1024, kCtx0, 0xabc, 0);
  f.recorder->alloc("cuMemAllocFromPoolAsync", RangeKind::kPool, 0x40000, 2048, kCtx0, 0xabc, 0, 0,
                    0x9000);
  auto ranges = f.recorder->table().ranges();
  ASSERT_EQ(ranges.size(), 4u);
  EXPECT_EQ(ranges[0].kind, RangeKind::kPitch);
  EXPECT_EQ(ranges[0].size, 51200u);
  EXPECT_EQ(ranges[1].kind, RangeKind::kManaged);
  EXPECT_EQ(ranges[2].kind, RangeKind::kAsync);
  EXPECT_EQ(ranges[2].stream, 0xabcu);
  EXPECT_EQ(ranges[3].kind, RangeKind::kPool);

  f.recorder->free("cuMemFreeAsync", 0x30000, kCtx0, 0xabc);
  f.recorder->free("cuMemFreeAsync", 0x40000, kCtx0, 0xabc);
  EXPECT_EQ(f.recorder->table().ranges().size(), 2u);

  auto allocs = events(f.log, "alloc");
  ASSERT_EQ(allocs.size(), 4u);
  EXPECT_EQ(allocs[0]["kind"], "pitch");
  EXPECT_EQ(allocs[0]["pitch"], 512);
  EXPECT_EQ(allocs[1]["kind"], "managed");
  EXPECT_EQ(allocs[2]["kind"], "async");
  EXPECT_EQ(allocs[2]["stream"], "0xabc");
  EXPECT_EQ(allocs[3]["kind"], "pool");
  EXPECT_EQ(allocs[3]["pool"], "0x9000");
  auto frees = events(f.log, "free");
  ASSERT_EQ(frees.size(), 2u);
  EXPECT_EQ(frees[0]["kind"], "async");
  EXPECT_EQ(frees[0]["stream"], "0xabc");
}

TEST(CuptiTable, VmmReserveCreateMapUnmapRelease) {
  Fixture f;
  const uint64_t base = 0x7f1000000000;
  f.recorder->reserve(base, 8 * kMiB, kCtx0);
  f.recorder->create(0xab, 2 * kMiB, 1);  // physical memory on device 1
  f.recorder->map(base, 2 * kMiB, 0, 0xab, kCtx0, test_return_address());
  f.recorder->map(base + 2 * kMiB, 2 * kMiB, kMiB, 0xac, kCtx0, 0);  // a handle never seen

  auto ranges = f.recorder->table().ranges();
  ASSERT_EQ(ranges.size(), 2u);
  EXPECT_EQ(ranges[0].kind, RangeKind::kVmm);
  EXPECT_EQ(ranges[0].device, 1);  // the handle's device, not the current context's
  EXPECT_EQ(ranges[0].handle, 0xabu);
  EXPECT_EQ(ranges[1].device, 0);  // unknown handle: the context's
  EXPECT_EQ(ranges[1].handle_offset, kMiB);
  auto stats = f.recorder->table().stats();
  EXPECT_EQ(stats.reservations, 1u);
  EXPECT_EQ(stats.handles, 1u);
  EXPECT_EQ(stats.bytes, 4 * kMiB);

  f.recorder->release(0xab);  // the mapping stays until unmapped (the driver's rule)
  EXPECT_EQ(f.recorder->table().ranges().size(), 2u);
  EXPECT_EQ(f.recorder->table().stats().handles, 0u);

  f.recorder->unmap(base, 4 * kMiB);
  EXPECT_TRUE(f.recorder->table().ranges().empty());
  f.recorder->address_free(base, 8 * kMiB);
  EXPECT_EQ(f.recorder->table().stats().reservations, 0u);

  auto maps = events(f.log, "map");
  ASSERT_EQ(maps.size(), 2u);
  EXPECT_EQ(maps[0]["handle"], "0xab");
  EXPECT_EQ(maps[0]["handle_known"], true);
  EXPECT_EQ(maps[0]["device"], 1);
  EXPECT_EQ(maps[1]["handle_known"], false);
  EXPECT_EQ(maps[1]["offset"], kMiB);
  auto unmaps = events(f.log, "unmap");
  ASSERT_EQ(unmaps.size(), 1u);
  EXPECT_EQ(unmaps[0]["ranges"], 2);
  EXPECT_EQ(events(f.log, "reserve").at(0)["size"], 8 * kMiB);
  EXPECT_EQ(events(f.log, "address-free").at(0)["known"], true);
  EXPECT_EQ(events(f.log, "create").at(0)["device"], 1);
  EXPECT_EQ(events(f.log, "release").at(0)["known"], true);
}

TEST(CuptiTable, UnmapLeavesOrdinaryAllocationsAlone) {
  Fixture f;
  f.recorder->create(0x1, 4096, 0);
  f.recorder->map(0x100000, 4096, 0, 0x1, kCtx0, 0);
  f.recorder->alloc("cuMemAlloc_v2", RangeKind::kDevice, 0x101000, 4096, kCtx0, 0, 0);
  f.recorder->unmap(0x100000, 0x2000);
  auto ranges = f.recorder->table().ranges();
  ASSERT_EQ(ranges.size(), 1u);
  EXPECT_EQ(ranges[0].kind, RangeKind::kDevice);
}

TEST(CuptiTable, ContextDestroyDropsItsRanges) {
  Fixture f;
  f.recorder->alloc("cuMemAlloc_v2", RangeKind::kDevice, 0x1000, 16, kCtx0, 0, 0);
  f.recorder->alloc("cuMemAlloc_v2", RangeKind::kDevice, 0x2000, 16, kCtx1, 0, 0);
  f.recorder->alloc("cuMemAlloc_v2", RangeKind::kDevice, 0x3000, 16, kCtx0, 0, 0);
  f.recorder->context_destroyed(kCtx0);
  auto ranges = f.recorder->table().ranges();
  ASSERT_EQ(ranges.size(), 1u);
  EXPECT_EQ(ranges[0].context, kCtx1);
  EXPECT_EQ(f.recorder->table().stats().contexts, 1u);
  EXPECT_EQ(f.recorder->table().stats().bytes, 16u);
  auto destroyed = events(f.log, "context-destroyed");
  ASSERT_EQ(destroyed.size(), 1u);
  EXPECT_EQ(destroyed[0]["ranges"], 2);
  EXPECT_EQ(destroyed[0]["context"], "0x5550000");
  EXPECT_EQ(events(f.log, "context-created").size(), 2u);
}

TEST(CuptiTable, AddressReuse) {
  Fixture f;
  f.recorder->alloc("cuMemAlloc_v2", RangeKind::kDevice, 0x1000, 100, kCtx0, 0, 0);
  const uint64_t first = f.recorder->table().ranges().at(0).seq;
  f.recorder->free("cuMemFree_v2", 0x1000, kCtx0, 0);
  f.recorder->alloc("cuMemAlloc_v2", RangeKind::kDevice, 0x1000, 300, kCtx0, 0, 0);
  auto ranges = f.recorder->table().ranges();
  ASSERT_EQ(ranges.size(), 1u);
  EXPECT_EQ(ranges[0].size, 300u);
  EXPECT_GT(ranges[0].seq, first);

  // The address handed out again without a free we saw: the old range is replaced.
  f.recorder->alloc("cuMemAllocManaged", RangeKind::kManaged, 0x1000, 50, kCtx0, 0, 0);
  ranges = f.recorder->table().ranges();
  ASSERT_EQ(ranges.size(), 1u);
  EXPECT_EQ(ranges[0].kind, RangeKind::kManaged);
  EXPECT_EQ(f.recorder->table().stats().bytes, 50u);
  auto allocs = events(f.log, "alloc");
  ASSERT_EQ(allocs.size(), 3u);
  EXPECT_EQ(allocs[1]["replaced"], false);
  EXPECT_EQ(allocs[2]["replaced"], true);
}

TEST(CuptiTable, BoundedWithOverflowCounted) {
  Fixture f(/*max_entries=*/3);
  for (uint64_t i = 0; i < 5; ++i)
    f.recorder->alloc("cuMemAlloc_v2", RangeKind::kDevice, 0x1000 * (i + 1), 64, kCtx0, 0, 0);
  EXPECT_EQ(f.recorder->table().ranges().size(), 3u);
  EXPECT_EQ(f.recorder->table().stats().overflow, 2u);
  auto allocs = events(f.log, "alloc");
  ASSERT_EQ(allocs.size(), 5u);  // every one logged, the last two untracked
  EXPECT_EQ(allocs[2]["tracked"], true);
  EXPECT_EQ(allocs[3]["tracked"], false);
  EXPECT_EQ(allocs[4]["tracked"], false);

  f.recorder->free("cuMemFree_v2", 0x1000, kCtx0, 0);
  f.recorder->alloc("cuMemAlloc_v2", RangeKind::kDevice, 0x9000, 64, kCtx0, 0, 0);
  EXPECT_EQ(f.recorder->table().ranges().size(), 3u);
  EXPECT_EQ(events(f.log, "alloc").back()["tracked"], true);

  // Reservations, handles and contexts are bounded too.
  for (uint64_t i = 0; i < 5; ++i) f.recorder->create(100 + i, 4096, 0);
  EXPECT_EQ(f.recorder->table().stats().handles, 3u);
  EXPECT_EQ(f.recorder->table().stats().overflow, 4u);
}

TEST(CuptiTable, ConcurrentThreads) {
  Fixture f(/*max_entries=*/100000);
  std::vector<std::thread> threads;
  for (uint64_t t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (uint64_t i = 0; i < 2000; ++i) {
        const uint64_t addr = (t << 32) | (i << 12);
        f.recorder->alloc("cuMemAlloc_v2", RangeKind::kDevice, addr, 4096, kCtx0, 0, 0);
        if (i % 2) f.recorder->free("cuMemFree_v2", addr, kCtx0, 0);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(f.recorder->table().ranges().size(), 4000u);
  EXPECT_EQ(f.recorder->table().stats().bytes, 4000u * 4096);
  uint64_t last = 0;
  for (auto& j : log_lines(f.log)) {  // file order is seq order
    EXPECT_EQ(j["seq"].get<uint64_t>(), last + 1);
    last = j["seq"];
  }
}

// Every line of the log parses and carries the common fields; the file is 0600.
TEST(CuptiLog, EveryLineParsesWithCommonFields) {
  Fixture f;
  f.recorder->start(R"({"log":"x"})");
  f.recorder->notice("quote\"and\nnewline", std::string("bad utf-8 \xff\xfe, good \xc3\xa9"));
  f.recorder->alloc("cuMemAlloc_v2", RangeKind::kDevice, 0xdead0000, 10, kCtx0, 0,
                    test_return_address());
  f.recorder->result("cuLaunchKernel", 700);
  f.recorder->trigger("fifo");
  CopyOutReport report;
  report.written = true;
  report.ranges = 1;
  report.bytes = 10;
  report.failures.push_back({0xdead0000, 10, 4, "cuMemcpyDtoH: CUDA_ERROR_ILLEGAL_ADDRESS"});
  report.failed_ranges = 1;
  f.recorder->copy_out("/tmp/x.nvcudmp", report);

  struct stat st {};
  ASSERT_EQ(::stat(f.log.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto lines = log_lines(f.log);
  ASSERT_EQ(lines.size(), 8u);
  uint64_t seq = 0;
  for (auto& j : lines) {
    EXPECT_TRUE(j["event"].is_string());
    EXPECT_EQ(j["seq"].get<uint64_t>(), ++seq);
    EXPECT_GT(j["time_ns"].get<uint64_t>(), 1'500'000'000'000'000'000ull);  // CLOCK_REALTIME, 2017+
    EXPECT_GT(j["tid"].get<int64_t>(), 0);
  }
  auto start = events(f.log, "start").at(0);
  EXPECT_EQ(start["pid"], ::getpid());
  EXPECT_EQ(start["version"], kVersion);
  EXPECT_EQ(start["settings"]["log"], "x");
  auto notice = events(f.log, "notice").at(0);
  EXPECT_EQ(notice["what"], "quote\"and\nnewline");
  EXPECT_EQ(notice["detail"], "bad utf-8 \xef\xbf\xbd\xef\xbf\xbd, good \xc3\xa9");
  auto alloc = events(f.log, "alloc").at(0);
  for (const char* key : {"api", "kind", "address", "size", "device", "context", "stream", "caller",
                          "object", "object_offset", "tracked", "replaced"})
    EXPECT_TRUE(alloc.contains(key)) << key;
  EXPECT_EQ(alloc["address"], "0xdead0000");
  auto error = events(f.log, "error").at(0);
  EXPECT_EQ(error["api"], "cuLaunchKernel");
  EXPECT_EQ(error["code"], 700);
  EXPECT_EQ(error["error"], "CUDA_ERROR_ILLEGAL_ADDRESS");
  EXPECT_EQ(events(f.log, "trigger").at(0)["source"], "fifo");
  auto copy = events(f.log, "copy-out").at(0);
  EXPECT_EQ(copy["written"], true);
  EXPECT_EQ(copy["output"], "/tmp/x.nvcudmp");
  EXPECT_EQ(copy["failed_ranges"], 1);
  EXPECT_EQ(copy["failures"][0]["offset"], 4);
  EXPECT_EQ(copy["failures"][0]["address"], "0xdead0000");
}

TEST(CuptiLog, AppendsToAnExistingLog) {
  TempDir dir;
  const std::string log = dir / "events.jsonl";
  testing::write_file(log, "{\"event\":\"earlier\"}\n");
  RecorderConfig config;
  config.log_path = log;
  Recorder recorder(config);
  recorder.trigger("fifo");
  auto lines = log_lines(log);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["event"], "earlier");
}

TEST(CuptiLog, BoundedSizeKeepsEssentialEvents) {
  TempDir dir;
  RecorderConfig config;
  config.log_path = dir / "events.jsonl";
  config.log_max_bytes = 1000;
  Recorder recorder(config);
  for (uint64_t i = 0; i < 100; ++i)
    recorder.alloc("cuMemAlloc_v2", RangeKind::kDevice, 0x1000 * (i + 1), 64, kCtx0, 0, 0);
  recorder.result("cuLaunchKernel", 700);
  EXPECT_EQ(recorder.table().ranges().size(), 100u);  // the table does not depend on the log
  EXPECT_EQ(events(config.log_path, "log-full").size(), 1u);
  EXPECT_LT(events(config.log_path, "alloc").size(), 10u);
  EXPECT_EQ(events(config.log_path, "error").size(), 1u);
}

TEST(CuptiLog, UnwritableLogIsReported) {
  RecorderConfig config;
  config.log_path = "/nonexistent-dir/events.jsonl";
  Recorder recorder(config);
  EXPECT_NE(recorder.log_error().find("/nonexistent-dir/events.jsonl"), std::string::npos);
  recorder.alloc("cuMemAlloc_v2", RangeKind::kDevice, 0x1000, 64, kCtx0, 0, 0);  // still recorded
  EXPECT_EQ(recorder.table().ranges().size(), 1u);
}

TEST(CuptiErrors, BenignResultsAreNotEvents) {
  for (int code : {0, 500, 600, 704, 705, 712, 713, 801})
    EXPECT_TRUE(is_benign_result(code)) << code;
  for (int code : {1, 2, 200, 700, 719, 999}) EXPECT_FALSE(is_benign_result(code)) << code;
  EXPECT_STREQ(cuda_error_name(700), "CUDA_ERROR_ILLEGAL_ADDRESS");
  EXPECT_STREQ(cuda_error_name(2), "CUDA_ERROR_OUT_OF_MEMORY");
  EXPECT_EQ(cuda_error_name(123456), nullptr);

  Fixture f;
  EXPECT_FALSE(f.recorder->result("cuStreamQuery", 600));
  EXPECT_TRUE(f.recorder->result("cuMemAlloc_v2", 2));
  EXPECT_EQ(f.recorder->error_events(), 1u);
  EXPECT_EQ(events(f.log, "error").size(), 1u);
}

TEST(CuptiErrors, MessageFormat) {
  EXPECT_EQ(
      anomaly_message("cuLaunchKernel", 700),
      R"({"op":"cuda-error","api":"cuLaunchKernel","error":"CUDA_ERROR_ILLEGAL_ADDRESS","code":700})");
  EXPECT_EQ(anomaly_message("cuX", 123456),
            R"({"op":"cuda-error","api":"cuX","error":"CUDA_ERROR_123456","code":123456})");
}

// A listening SOCK_SEQPACKET socket standing in for the daemon's anomaly socket.
struct FakeDaemon {
  TempDir dir;
  std::string path = dir / "anomaly.sock";
  int fd = -1;
  FakeDaemon() {
    fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(::listen(fd, 16), 0);
  }
  ~FakeDaemon() { ::close(fd); }
  // The messages waiting, one per connection.
  std::vector<std::string> received() {
    std::vector<std::string> out;
    for (;;) {
      const int c = ::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (c < 0) break;
      char buf[4096];
      const ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n > 0) out.emplace_back(buf, static_cast<size_t>(n));
      ::close(c);
    }
    return out;
  }
};

TEST(CuptiErrors, NoticesAreRateLimitedToOnePerSecond) {
  FakeDaemon daemon;
  ASSERT_EQ(::fcntl(daemon.fd, F_SETFL, O_NONBLOCK), 0);
  Fixture f(1000, daemon.path);
  f.recorder->result("cuLaunchKernel", 700);
  f.now_ns += 300'000'000;
  f.recorder->result("cuCtxSynchronize", 700);  // 0.3 s later: counted, not sent
  f.now_ns += 500'000'000;
  f.recorder->result("cuMemcpyDtoH_v2", 700);  // 0.8 s: not sent
  f.now_ns += 300'000'000;
  f.recorder->result("cuMemFree_v2", 700);  // 1.1 s: sent

  auto messages = daemon.received();
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(
      messages[0],
      R"({"op":"cuda-error","api":"cuLaunchKernel","error":"CUDA_ERROR_ILLEGAL_ADDRESS","code":700})");
  EXPECT_EQ(json::parse(messages[1])["api"], "cuMemFree_v2");
  EXPECT_EQ(f.recorder->notices_sent(), 2u);
  EXPECT_EQ(f.recorder->error_events(), 4u);
  auto errors = events(f.log, "error");
  ASSERT_EQ(errors.size(), 4u);  // 0.3 s apart: over the 0.1 s line interval, all logged
  EXPECT_EQ(errors[0]["notified"], true);
  EXPECT_EQ(errors[1]["notified"], false);
  EXPECT_EQ(errors[3]["notified"], true);
}

TEST(CuptiErrors, ErrorStormLinesAreRateLimitedAndCounted) {
  Fixture f;
  for (int i = 0; i < 50; ++i)
    f.recorder->result("cuLaunchKernel", 700);  // a sticky error, all at once
  f.now_ns += 200'000'000;
  f.recorder->result("cuLaunchKernel", 700);
  auto errors = events(f.log, "error");
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0]["suppressed"], 0);
  EXPECT_EQ(errors[1]["suppressed"], 49);
  EXPECT_EQ(f.recorder->error_events(), 51u);
}

TEST(CuptiErrors, AbsentDaemonNeitherBlocksNorFails) {
  TempDir dir;
  Fixture f(1000, dir / "no-such.sock");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(f.recorder->result("cuLaunchKernel", 719));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
  auto error = events(f.log, "error").at(0);
  EXPECT_EQ(error["notified"], false);
  EXPECT_NE(error["notice_error"].get<std::string>().find("no-such.sock"), std::string::npos);
}

TEST(CuptiErrors, FullDaemonBacklogDoesNotBlock) {
  FakeDaemon daemon;  // listening, never accepting: the backlog fills
  Fixture f(1000, daemon.path);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i) {
    f.now_ns += 2'000'000'000;  // past the rate limit every time
    f.recorder->result("cuLaunchKernel", 700);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_LT(f.recorder->notices_sent(), 100u);
}

TEST(CuptiPaths, Expansion) {
  EXPECT_EQ(expand_path("/run/mlfx/trigger.%p", 42, 7), "/run/mlfx/trigger.42");
  EXPECT_EQ(expand_path("core.%p.%t.nvcudmp", 42, 1700000000), "core.42.1700000000.nvcudmp");
  EXPECT_EQ(expand_path("100%%-%p", 1, 0), "100%-1");
  EXPECT_EQ(expand_path("a%xb%", 1, 0), "a%xb%");
  EXPECT_EQ(expand_path("plain", 1, 0), "plain");
}

TEST(CuptiPaths, ConfigFromEnvironment) {
  ::setenv("MLFX_CUPTI_LOG", "/tmp/mlfx-cupti.%p.jsonl", 1);
  ::setenv("MLFX_CUPTI_MAX_RANGES", "1234", 1);
  ::setenv("MLFX_ANOMALY_SOCKET", "/tmp/a.sock", 1);
  RecorderConfig config = config_from_env();
  EXPECT_EQ(config.log_path, "/tmp/mlfx-cupti." + std::to_string(::getpid()) + ".jsonl");
  EXPECT_EQ(config.max_entries, 1234u);
  EXPECT_EQ(config.anomaly_socket, "/tmp/a.sock");
  ::unsetenv("MLFX_CUPTI_LOG");
  ::unsetenv("MLFX_CUPTI_MAX_RANGES");
  ::unsetenv("MLFX_ANOMALY_SOCKET");
  config = config_from_env();
  EXPECT_EQ(config.log_path, "");
  EXPECT_EQ(config.max_entries, 65536u);
  EXPECT_EQ(config.anomaly_socket, "/run/mlfx-agent/anomaly.sock");
}

TEST(CuptiTrigger, FifoWriteStartsOneCopyOut) {
  TempDir dir;
  const std::string path = expand_path(dir / "trigger.%p", ::getpid(), 0);
  std::string error;
  const int fd = open_trigger_fifo(path, &error);
  ASSERT_GE(fd, 0) << error;
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  std::atomic<int> triggers{0};
  ASSERT_TRUE(start_trigger_thread(
      fd, [&] { ++triggers; }, &error))
      << error;
  for (int round = 1; round <= 2; ++round) {  // the agent opens, writes a byte, closes; twice
    const int w = ::open(path.c_str(), O_WRONLY | O_NONBLOCK);
    ASSERT_GE(w, 0);
    ASSERT_EQ(::write(w, "x", 1), 1);
    ::close(w);
    for (int i = 0; i < 500 && triggers < round; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_EQ(triggers, round);
  }
}

TEST(CuptiTrigger, RefusesWhatIsNotOurFifo) {
  TempDir dir;
  std::string error;
  testing::write_file(dir / "file", "x");
  EXPECT_LT(open_trigger_fifo(dir / "file", &error), 0);
  EXPECT_NE(error.find("not a FIFO"), std::string::npos) << error;
  ASSERT_EQ(::mkfifo((dir / "open").c_str(), 0666), 0);
  ::chmod((dir / "open").c_str(), 0666);
  error.clear();
  EXPECT_LT(open_trigger_fifo(dir / "open", &error), 0);
  EXPECT_NE(error.find("0600"), std::string::npos) << error;
  error.clear();
  EXPECT_LT(open_trigger_fifo("/nonexistent-dir/t", &error), 0);
  EXPECT_NE(error.find("mkfifo /nonexistent-dir/t"), std::string::npos) << error;
}

TEST(CuptiOutput, NewFileFifoAndNoOverwrite) {
  TempDir dir;
  std::string error;
  int fd = open_output(dir / "dump", &error);
  ASSERT_GE(fd, 0) << error;
  ::close(fd);
  struct stat st {};
  ASSERT_EQ(::stat((dir / "dump").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_LT(open_output(dir / "dump", &error), 0);  // existing evidence is never overwritten
  EXPECT_NE(error.find("not overwritten"), std::string::npos) << error;

  ASSERT_EQ(::mkfifo((dir / "pipe").c_str(), 0600), 0);
  std::thread reader([&] {
    const int r = ::open((dir / "pipe").c_str(), O_RDONLY);
    char buf[8];
    while (::read(r, buf, sizeof buf) > 0) {
    }
    ::close(r);
  });
  fd = open_output(dir / "pipe", &error);
  EXPECT_GE(fd, 0) << error;
  EXPECT_EQ(::write(fd, "abc", 3), 3);
  ::close(fd);
  reader.join();
}

}  // namespace
}  // namespace mlfx::cupti
