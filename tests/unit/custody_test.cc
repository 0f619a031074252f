#include <gtest/gtest.h>

#include "mlfx/custody/custody_log.h"

namespace mlfx::custody {
namespace {

const std::string kBundle = "00112233445566778899aabbccddeeff";

class CustodyTest : public ::testing::Test {
 protected:
  crypto::SigningKey device = *crypto::SigningKey::generate();
  crypto::SigningKey lab = *crypto::SigningKey::generate();
  CustodyLog log{kBundle};

  void SetUp() override {
    Actor dev{"device", "car-17", "car-17", "root"}, analyst{"lab", "lab-1", "lab-1", "alice"};
    ASSERT_TRUE(log.append("acquired", dev, device, {{"pid", 42}}, {{"bytes", 100}}));
    ASSERT_TRUE(log.append("sealed", dev, device, {}, {{"manifest_sha256", "ab"}}));
    ASSERT_TRUE(log.append("received", analyst, lab, {}, {}));
    ASSERT_TRUE(log.append("opened", analyst, lab, {}, {}));
  }

  Result<ChainReport> reparse_and_verify(const std::string& text) {
    MLFX_ASSIGN(CustodyLog l, CustodyLog::parse(text, kBundle));
    return l.verify();
  }
  std::vector<std::string> lines() {
    std::vector<std::string> out;
    std::string s = log.serialize();
    size_t pos = 0, nl;
    while ((nl = s.find('\n', pos)) != std::string::npos) {
      out.push_back(s.substr(pos, nl - pos + 1));
      pos = nl + 1;
    }
    return out;
  }
  static std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& l : v) s += l;
    return s;
  }
};

TEST_F(CustodyTest, IntactChainVerifies) {
  auto r = reparse_and_verify(log.serialize());
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->events, 4u);
  EXPECT_EQ(r->types, (std::vector<std::string>{"acquired", "sealed", "received", "opened"}));
  EXPECT_EQ(r->fingerprints[0], device.public_key().fingerprint());
  EXPECT_EQ(r->fingerprints[3], lab.public_key().fingerprint());
}

TEST_F(CustodyTest, RemovalOfAnyEventIsDetected) {
  for (size_t i = 0; i + 1 < 4; ++i) {  // removing the tail needs an outside anchor
    auto l = lines();
    l.erase(l.begin() + static_cast<long>(i));
    EXPECT_FALSE(reparse_and_verify(join(l))) << "removed " << i;
  }
}

TEST_F(CustodyTest, ReorderingIsDetected) {
  auto l = lines();
  std::swap(l[1], l[2]);
  EXPECT_FALSE(reparse_and_verify(join(l)));
}

TEST_F(CustodyTest, EditingAnyFieldIsDetected) {
  for (const char* field : {"utc", "type", "actor", "details", "parameters", "tool"}) {
    auto ev = log.events();
    auto copy = CustodyLog(kBundle);
    std::string text;
    for (size_t i = 0; i < ev.size(); ++i) {
      json::Json e = ev[i];
      if (i == 1) {
        if (std::string(field) == "type") e["type"] = "verified";
        else if (std::string(field) == "actor") e["actor"]["user"] = "mallory";
        else e[field] = "edited";
      }
      text += json::canonical(e) + "\n";
    }
    auto r = reparse_and_verify(text);
    ASSERT_FALSE(r) << field;
    EXPECT_EQ(r.error().code(), Errc::kCorrupt) << field;
  }
}

TEST_F(CustodyTest, ResignedEventBreaksTheChainAfterIt) {
  // Mallory edits event 1 and re-signs it with her own key: event 1 verifies, event 2 does not.
  crypto::SigningKey mallory = *crypto::SigningKey::generate();
  auto ev = log.events();
  auto forged = CustodyLog::parse(json::canonical(ev[0]) + "\n", kBundle);
  ASSERT_TRUE(forged);
  ASSERT_TRUE(forged->append("sealed", {"device", "car-17", "car-17", "root"}, mallory, {},
                             {{"manifest_sha256", "cd"}}));
  std::string text = forged->serialize();
  text += json::canonical(ev[2]) + "\n" + json::canonical(ev[3]) + "\n";
  auto r = reparse_and_verify(text);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("custody event 2"), std::string::npos) << r.error().message();
}

TEST_F(CustodyTest, OnlyCanonicalLinesAreAccepted) {
  auto l = lines();
  std::string spaced = l[1];
  spaced.insert(1, " ");  // same JSON value, different bytes
  l[1] = spaced;
  auto r = CustodyLog::parse(join(l), kBundle);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("canonical"), std::string::npos);
  l = lines();
  l[0].insert(1, "\"type\":\"sealed\",");  // a duplicate key that some parsers would read
  EXPECT_FALSE(CustodyLog::parse(join(l), kBundle));
}

TEST_F(CustodyTest, OtherBundleTruncatedLineAndUnknownType) {
  auto other = CustodyLog::parse(log.serialize(), "ffffffffffffffffffffffffffffffff");
  ASSERT_TRUE(other);
  EXPECT_FALSE(other->verify());
  std::string text = log.serialize();
  EXPECT_FALSE(CustodyLog::parse(text.substr(0, text.size() - 1), kBundle));
  EXPECT_FALSE(CustodyLog::parse("[1,2]\n", kBundle));
  EXPECT_FALSE(log.append("teleported", {}, device, {}, {}));
}

}  // namespace
}  // namespace mlfx::custody
