// The intake against peers that never authenticate (issue 11, item 2), over real TLS on
// loopback against a real `mlfx serve`, each with a real `mlfx-agent ship` that must get its
// bundle stored meanwhile:
//   - 256 plain TCP connections that never speak (they used to take every connection slot,
//     so that `ship` failed with "connection limit" for everyone);
//   - slowloris: bytes dribbled during the handshake, and during the HELLO frame of an
//     authenticated connection, which must not hold a slot past the handshake deadline;
//   - a sustained flood of 1,000 connections from eight addresses (silent, garbage, the start
//     of a ClientHello), reopened as soon as the intake closes them.
// Only authenticated sessions count against --max-connections; connections still in their
// handshake are capped in all and per source address, the oldest of the busiest address
// making room for a newer one, under a short deadline.
#include "adversarial/intake/hostile_peers.h"  // first: it includes <utility> before any asio header

namespace mlfx::testing {
namespace {

using nlohmann::json;

class AnonymousTest : public ::testing::Test {
 protected:
  void SetUp() override {
    raise_fd_limit();
    car_ = lab_.add_device("car-1");
  }

  // `car-1` ships a fresh bundle; it must be stored.
  void expect_good_upload(uint64_t seed, const std::string& extra = "--once --timeout 20") {
    const std::string bundle = lab_.seal(car_, 1 << 20, 65536, seed);
    lab_.queue(car_, bundle);
    auto r = lab_.ship(car_, extra);
    EXPECT_EQ(r.exit_code, 0) << r.output << read_file(lab_.log_path()).substr(0, 4000);
    EXPECT_TRUE(fs::exists(lab_.object_path(bundle))) << "the good device's bundle is stored";
  }

  IntakeLab lab_;
  Device car_;
};

TEST_F(AnonymousTest, IdlePlainConnectionsDoNotLockOutAShipment) {
  lab_.start_server();  // the defaults: 256 sessions, 32 handshakes per address
  // From the agent's own address: the hardest case for a per-address cap.
  std::vector<int> idle;
  for (int i = 0; i < 256; ++i) idle.push_back(tcp_connect(lab_.port(), "127.0.0.1"));
  for (int fd : idle) ASSERT_GE(fd, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // accepted by now
  const size_t held = open_sockets(lab_.server_pid());
  expect_good_upload(1);
  EXPECT_LE(held, 32u + 4u) << "the intake holds at most --max-handshakes-per-address of them";
  for (int fd : idle) close(fd);
  EXPECT_TRUE(lab_.server_running());
}

TEST_F(AnonymousTest, SlowlorisHoldsNoSlotPastTheHandshakeDeadline) {
  lab_.start_server("--handshake-timeout 1 --idle-timeout 3");
  {
    // 300 connections dribbling a ClientHello, a byte each per 200 ms, reopened when closed.
    TcpFlood loris({lab_.port(), {"127.0.0.2", "127.0.0.3"}, 300, client_hello_start(), std::chrono::milliseconds(200)});
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    expect_good_upload(2);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    EXPECT_GT(loris.closed_by_intake(), 0u);
    std::printf("slowloris: %zu connections opened, %zu closed by the intake (most to make room for newer ones)\n",
                loris.opened(), loris.closed_by_intake());
  }
  // Fewer than the caps, so that none is displaced: each is closed at the deadline.
  {
    TcpFlood loris({lab_.port(), {"127.0.0.4"}, 20, client_hello_start(), std::chrono::milliseconds(300), 0});
    for (int i = 0; i < 200 && loris.closed_by_intake() < 20; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(loris.closed_by_intake(), 20u) << "every dribbling handshake was closed";
    std::printf("slowloris under the caps: longest held %.1f s (--handshake-timeout 1)\n", loris.longest_held_s());
  }
  // Authenticated, then dribbling the HELLO frame: the handshake deadline (1 s) still runs,
  // not the idle limit; the intake says so and closes.
  {
    RawClient c(lab_.port(), RawClient::context(lab_.ca_dir() + "/ca.pem", car_));
    ASSERT_EQ(c.connect(), "");
    const Bytes hello = wire::encode_json_frame(FrameType::kHello, wire::to_json(wire::Hello{{1}, "loris"}));
    std::thread drip([&] {
      for (size_t i = 0; i < 6; ++i) {
        if (!c.send(ByteView(hello).subspan(i, 1)).empty()) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(400));
      }
    });
    c.expect_refused("idle_timeout", std::chrono::seconds(2));
    drip.join();
  }
  // After HELLO, a frame header dribbled slower than the idle limit: the same, at that limit.
  {
    auto c = std::make_unique<RawClient>(lab_.port(), RawClient::context(lab_.ca_dir() + "/ca.pem", car_));
    ASSERT_EQ(c->connect(), "");
    c->hello();
    const auto header = wire::encode_frame_header(FrameType::kPing, 2);
    for (size_t i = 0; i < 3; ++i) {
      c->send(ByteView(header).subspan(i, 1));
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    c->expect_refused("idle_timeout", std::chrono::seconds(4));
  }
  size_t timeouts = 0;
  for (const auto& e : lab_.events("handshake_failed")) timeouts += e.value("reason", "") == "handshake timeout";
  EXPECT_GE(timeouts, 20u) << "the dribbling handshakes ended at the deadline";
  EXPECT_TRUE(lab_.server_running());
}

TEST_F(AnonymousTest, APreAuthenticationFloodDoesNotStopAConcurrentUpload) {
  lab_.start_server("", address_space_cap(uint64_t(2) << 30));
  const uint64_t base_kb = proc_status_kb(lab_.server_pid(), "VmRSS");
  std::vector<std::string> hosts;
  for (int i = 2; i < 10; ++i) hosts.push_back("127.0.0." + std::to_string(i));
  {
    TcpFlood silent({lab_.port(), hosts, 400, "", std::chrono::milliseconds(200), 32});
    TcpFlood garbage({lab_.port(), hosts, 300, "GET / HTTP/1.1\r\nHost: intake\r\n\r\n", std::chrono::milliseconds(50), 32});
    TcpFlood hello({lab_.port(), hosts, 300, client_hello_start(), std::chrono::milliseconds(100), 32});
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    expect_good_upload(3);
    expect_good_upload(4);
    std::printf("flood: %zu connections opened, %zu closed by the intake\n",
                silent.opened() + garbage.opened() + hello.opened(),
                silent.closed_by_intake() + garbage.closed_by_intake() + hello.closed_by_intake());
  }
  ASSERT_TRUE(lab_.server_running()) << read_file(lab_.log_path()).substr(0, 4000);
  const uint64_t peak_kb = proc_status_kb(lab_.server_pid(), "VmHWM");
  std::printf("intake RSS: %llu KiB before the flood, peak %llu KiB\n", (unsigned long long)base_kb,
              (unsigned long long)peak_kb);
  EXPECT_LT(peak_kb, base_kb + (256u << 10)) << "the flood holds bounded memory";
}

}  // namespace
}  // namespace mlfx::testing
