// The agent's spool and retry policy on their own: quota, idempotent queueing, what happens
// to a bundle on a receipt or a refusal, and the backoff's bounds.
#include <gtest/gtest.h>

#include "intake/intake_lab.h"
#include "upload/spool.h"
#include "upload/uploader.h"

namespace mlfx::testing {
namespace {

using agent::Spool;

class SpoolTest : public ::testing::Test {
 protected:
  void SetUp() override { car_ = lab_.add_device("car-1"); }
  IntakeLab lab_;
  Device car_;
};

TEST_F(SpoolTest, QueuesOnlySoundBundlesOnceAndOldestFirst) {
  auto spool = Spool::open(lab_.dir() / "spool");
  ASSERT_TRUE(spool) << spool.error().to_string();
  const std::string a = lab_.seal(car_, 100000, 4096, 1);
  const std::string b = lab_.seal(car_, 200000, 4096, 2);
  auto ea = spool->add(a);
  ASSERT_TRUE(ea) << ea.error().to_string();
  auto eb = spool->add(b);
  ASSERT_TRUE(eb);
  auto again = spool->add(a);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->name, ea->name) << "the same bundle is queued once";
  EXPECT_EQ(ea->bundle_digest, IntakeLab::digest_of(a));
  EXPECT_EQ(read_file(ea->path), read_file(a)) << "a copy; the source stays";
  EXPECT_TRUE(fs::exists(a));
  auto q = spool->queue();
  ASSERT_TRUE(q);
  ASSERT_EQ(q->size(), 2u);
  EXPECT_EQ((*q)[0].name, ea->name);
  EXPECT_EQ((*q)[1].name, eb->name);

  // Not a bundle, or a bundle with a broken signature: refused with the reason.
  write_file(lab_.dir() / "junk.mlfx", "not a bundle");
  auto junk = spool->add(lab_.dir() / "junk.mlfx");
  ASSERT_FALSE(junk);
  std::string tampered = read_file(b);
  const std::string field = "\"hostname\":\"";
  const size_t at = tampered.find(field);
  ASSERT_NE(at, std::string::npos);
  tampered[at + field.size()] ^= 1;  // still valid JSON, no longer what the device signed
  write_file(lab_.dir() / "tampered.mlfx", tampered);
  auto bad = spool->add(lab_.dir() / "tampered.mlfx");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().to_string().find("signature"), std::string::npos) << bad.error().to_string();
  EXPECT_EQ(spool->queue()->size(), 2u);
}

TEST_F(SpoolTest, QuotaIsKeptAndRefusalSaysWhatToDo) {
  const std::string a = lab_.seal(car_, 300000, 4096, 3);
  auto spool = Spool::open(lab_.dir() / "spool", 400000);
  ASSERT_TRUE(spool);
  ASSERT_TRUE(spool->add(a));
  const std::string b = lab_.seal(car_, 300000, 4096, 4);
  auto full = spool->add(b);
  ASSERT_FALSE(full);
  EXPECT_NE(full.error().to_string().find("quota"), std::string::npos) << full.error().to_string();
  EXPECT_NE(full.error().to_string().find("mlfx-agent ship"), std::string::npos);
  // The quota is remembered by the spool.
  auto reopened = Spool::open(lab_.dir() / "spool");
  ASSERT_TRUE(reopened);
  EXPECT_EQ(reopened->quota(), 400000u);
  EXPECT_FALSE(reopened->add(b));
  // The CLI says the same, with a non-zero exit.
  auto r = IntakeLab::agent("spool add --spool " + lab_.dir() / "spool" + " " + b);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("quota"), std::string::npos) << r.output;
}

TEST_F(SpoolTest, ReceiptRemovesTheBundleRefusalMovesItAside) {
  auto spool = Spool::open(lab_.dir() / "spool");
  ASSERT_TRUE(spool);
  auto a = spool->add(lab_.seal(car_, 50000, 4096, 5));
  auto b = spool->add(lab_.seal(car_, 60000, 4096, 6));
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(spool->record_attempt(*a, "connection refused"));
  auto q = spool->queue();
  EXPECT_EQ((*q)[0].attempts, 1u);
  EXPECT_EQ((*q)[0].last_error, "connection refused");
  wire::SignedReceipt receipt;
  receipt.receipt.bundle_digest = a->bundle_digest;
  receipt.signature = Bytes(64, 1);
  ASSERT_TRUE(spool->complete(*a, receipt));
  EXPECT_FALSE(fs::exists(a->path));
  EXPECT_EQ(*spool->receipt_count(), 1u);
  ASSERT_TRUE(spool->reject(*b, "wrong_device: not ours"));
  EXPECT_TRUE(spool->queue()->empty());
  auto rejected = spool->rejected();
  ASSERT_EQ(rejected->size(), 1u);
  EXPECT_EQ((*rejected)[0].rejected_reason, "wrong_device: not ours");
  EXPECT_TRUE(fs::exists((*rejected)[0].path));
  auto r = IntakeLab::agent("status --spool " + lab_.dir() / "spool");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("rejected by the intake"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("receipts: 1"), std::string::npos) << r.output;
}

TEST(Backoff, ExponentialWithFullJitterUnderTheCap) {
  using std::chrono::milliseconds;
  for (unsigned failures = 0; failures < 40; ++failures) {
    const int64_t ceiling = std::min<int64_t>(300000, int64_t(1000) << std::min(failures, 30u));
    int64_t most = 0;
    for (int i = 0; i < 200; ++i) {
      const int64_t d = agent::backoff_delay(failures, milliseconds(1000), milliseconds(300000)).count();
      ASSERT_GE(d, 0);
      ASSERT_LE(d, ceiling);
      most = std::max(most, d);
    }
    EXPECT_GT(most, ceiling / 2) << "jitter spans the whole window";
  }
}

}  // namespace
}  // namespace mlfx::testing
