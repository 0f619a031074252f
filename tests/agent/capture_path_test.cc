// The agent's one capture path (agent/capture/capture.h) with recording sources: every source
// frozen before any is read, each read into its own stream, all thawed before the last stream
// is sealed, every frozen source thawed on every failure, the context streams and the custody
// acquisition per source. The real process source runs end to end in agent_cli_test.
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "bundle_fixture.h"
#include "capture/capture.h"
#include "test_util.h"

namespace mlfx::agent {
namespace {

using Log = std::vector<std::string>;

class RecordingSource final : public CaptureSource {
 public:
  RecordingSource(std::string name, std::string data, Log& log) : name_(std::move(name)), data_(std::move(data)), log_(log) {}
  std::string fail_at;  // "freeze", "read" or "thaw": that step fails
  std::string context_name;  // its context stream's name (default NAME-context)
  bool before_freeze = false;  // reads before the freeze, as the GPU source does

  std::string name() const override { return name_; }
  bool reads_before_freeze() const override { return before_freeze; }
  uint64_t expected_bytes() const override { return data_.size(); }
  Status freeze() override {
    log_.push_back("freeze " + name_);
    if (fail_at == "freeze") return fail(Errc::kIo, "cannot stop it");
    frozen_ = true;
    return {};
  }
  Status read(bundle::BundleWriter& w, bool) override {
    log_.push_back("read " + name_);
    MLFX_TRY(w.begin_stream(name_, "test"));
    MLFX_TRY(w.write(as_bytes(data_)));
    if (fail_at == "read") return fail(Errc::kIo, "memory went away");
    return {};
  }
  Status thaw() override {
    if (!frozen_) return {};
    frozen_ = false;
    log_.push_back("thaw " + name_);
    if (fail_at == "thaw") return fail(Errc::kIo, "cannot release it");
    return {};
  }
  void stream_sealed(const bundle::StreamInfo&) override { log_.push_back("sealed " + name_); }
  json::Json manifest_context() const override { return {{"bytes", data_.size()}}; }
  std::string context_stream() const override { return context_name.empty() ? name_ + "-context" : context_name; }
  std::string context_stream_source() const override { return "test"; }
  json::Json context() const override { return {{"source", name_}}; }
  json::Json acquisition() const override { return {{"method", "recorded"}}; }
  bool complete() const override { return true; }
  bool frozen() const { return frozen_; }

 private:
  std::string name_, data_;
  Log& log_;
  bool frozen_ = false;
};

class CapturePathTest : public ::testing::Test {
 protected:
  Result<CaptureOutcome> run(const std::vector<CaptureSource*>& sources, const CaptureTrigger* trigger = nullptr) {
    auto out = File::create_new(path_, 0600);
    EXPECT_TRUE(out) << out.error().to_string();
    return capture_to_bundle(sources, std::move(*out), *keys_.device.signing, {keys_.lab.box->public_key()},
                             bundle::SealParams{}, false, trigger);
  }
  testing::TempDir dir_;
  std::string path_ = dir_.path() + "/b.mlfx";
  testing::TestKeys keys_ = testing::make_keys();
  Log log_;
};

TEST_F(CapturePathTest, FreezesEverySourceBeforeReadingAndThawsBeforeTheLastStreamIsSealed) {
  RecordingSource gpu("gpu", std::string(3000, 'g'), log_), mem("process", std::string(5000, 'p'), log_);
  auto r = run({&gpu, &mem});
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(log_, (Log{"freeze gpu", "freeze process", "read gpu", "sealed gpu", "read process", "thaw gpu",
                       "thaw process", "sealed process"}));
  auto reader = bundle::BundleReader::open(path_);
  ASSERT_TRUE(reader) << reader.error().to_string();
  std::vector<std::string> names;
  for (const auto& s : reader->manifest().streams) names.push_back(s.name);
  EXPECT_EQ(names, (std::vector<std::string>{"gpu", "process", "gpu-context", "process-context"}));
  auto plain = testing::decrypt_all(*reader, *keys_.lab.box);
  ASSERT_TRUE(plain) << plain.error().to_string();
  EXPECT_EQ((*plain)[0], std::string(3000, 'g'));
  EXPECT_EQ((*plain)[1], std::string(5000, 'p'));
  EXPECT_EQ(json::Json::parse((*plain)[3])["source"], "process");
  // Several sources: each one's facts under its name, in the manifest and the custody event.
  EXPECT_EQ(reader->manifest().context["gpu"]["bytes"], 3000);
  EXPECT_EQ(reader->custody().events().front()["details"]["process"]["method"], "recorded");
  EXPECT_EQ(r->contexts.size(), 2u);
}

TEST_F(CapturePathTest, TwoSourcesNamingTheirContextAlikeGetDistinctStreams) {
  // The process source and a whole-memory source both call theirs "context" (the daemon's
  // coordinated capture of process + lime): the second is "<source>.context".
  RecordingSource mem("process", "core", log_), lime("lime", "image", log_);
  mem.context_name = lime.context_name = "context";
  auto r = run({&mem, &lime});
  ASSERT_TRUE(r) << r.error().to_string();
  auto reader = bundle::BundleReader::open(path_);
  ASSERT_TRUE(reader);
  std::vector<std::string> names;
  for (const auto& s : reader->manifest().streams) names.push_back(s.name);
  EXPECT_EQ(names, (std::vector<std::string>{"process", "lime", "context", "lime.context"}));
}

TEST_F(CapturePathTest, OneSourceKeepsItsFieldsAtTheTop) {
  RecordingSource mem("process", "abc", log_);
  ASSERT_TRUE(run({&mem}));
  auto reader = bundle::BundleReader::open(path_);
  ASSERT_TRUE(reader);
  EXPECT_EQ(reader->manifest().context["bytes"], 3);
}

TEST_F(CapturePathTest, AFailedReadThawsEveryFrozenSourceAndNamesTheSource) {
  RecordingSource gpu("gpu", "g", log_), mem("process", "p", log_);
  mem.fail_at = "read";
  auto r = run({&gpu, &mem});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().to_string().find("process source: memory went away"), std::string::npos) << r.error().to_string();
  EXPECT_FALSE(gpu.frozen());
  EXPECT_FALSE(mem.frozen());
}

TEST_F(CapturePathTest, AFailedFreezeThawsTheSourcesFrozenBeforeIt) {
  RecordingSource gpu("gpu", "g", log_), mem("process", "p", log_);
  mem.fail_at = "freeze";
  auto r = run({&gpu, &mem});
  ASSERT_FALSE(r);
  EXPECT_EQ(log_, (Log{"freeze gpu", "freeze process", "thaw gpu"}));
}

TEST_F(CapturePathTest, AFailedThawFailsTheCaptureAfterThawingTheOthers) {
  RecordingSource gpu("gpu", "g", log_), mem("process", "p", log_);
  gpu.fail_at = "thaw";
  auto r = run({&gpu, &mem});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().to_string().find("gpu source: cannot release it"), std::string::npos) << r.error().to_string();
  EXPECT_FALSE(mem.frozen());
}

// The GPU dump is written by a thread inside the target: it is read (and sealed) before the
// process is frozen, and the timeline says so.
TEST_F(CapturePathTest, ASourceThatReadsBeforeTheFreezeIsReadAndSealedFirst) {
  RecordingSource gpu("gpu", "g", log_), mem("process", "p", log_);
  gpu.before_freeze = true;
  CaptureTrigger trigger;
  trigger.monotonic_ns = monotonic_ns();
  auto r = run({&gpu, &mem}, &trigger);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(log_, (Log{"read gpu", "sealed gpu", "freeze process", "read process", "thaw process", "sealed process"}));
  std::vector<std::string> events;
  for (const auto& e : r->timeline["events"])
    events.push_back(e["event"].get<std::string>() + (e.contains("source") ? " " + e["source"].get<std::string>() : "") +
                     (e.contains("note") ? " (" + e["note"].get<std::string>() + ")" : ""));
  EXPECT_EQ(events, (std::vector<std::string>{"capture_start", "read_start gpu (before_freeze)",
                                              "read_end gpu (before_freeze)", "frozen", "read_start process",
                                              "read_end process", "thawed", "sealed"}));
}

TEST_F(CapturePathTest, ASourceThatReadsBeforeTheFreezeMustComeFirst) {
  RecordingSource gpu("gpu", "g", log_), mem("process", "p", log_);
  gpu.before_freeze = true;
  auto r = run({&mem, &gpu});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kInvalidArgument);
  EXPECT_TRUE(log_.empty());
}

TEST_F(CapturePathTest, NoSourceIsRefused) {
  auto r = run({});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kInvalidArgument);
}

}  // namespace
}  // namespace mlfx::agent
