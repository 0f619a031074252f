// A soak of the intake: well over 100 bundles from three devices shipped by `mlfx-agent ship`
// to `mlfx serve` through a fault-injecting TCP proxy, while the agents and the server are
// killed with SIGKILL at random moments and restarted. The proxy cuts connections after a
// random number of bytes in either direction (with a reset or a plain close), stalls them
// longer than the agent's --timeout and the server's --idle-timeout, and now and then flips a
// byte inside the TLS stream (the connection must die, nothing of it be stored). At the end:
// zero lost (every bundle's receipt in its device's spool, every queue empty, nothing
// rejected) and zero corrupted (every object byte-identical to its bundle, with custody log
// and receipt; no partial upload left).
//
// MLFX_SOAK_SEED=N replays the random choices of a run (the timing of the processes differs).
#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <random>
#include <set>

#include "intake/intake_lab.h"

namespace mlfx::testing {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// ---- A TCP proxy on loopback that injects faults, one plan per connection ----

class FaultProxy {
 public:
  enum class Fault { kClean, kCutUp, kCutDown, kStall, kFlip };
  struct Plan {
    Fault fault = Fault::kClean;
    uint64_t after = 0;  // bytes forwarded in the faulty direction before the fault strikes
    bool reset = false;  // close with a TCP reset (SO_LINGER 0) rather than a FIN
    milliseconds stall{0};
  };
  struct Counts {
    std::atomic<int> connections{0}, clean{0}, cut_up{0}, cut_down{0}, stall{0}, flip{0}, resets{0};
    std::atomic<int> struck{0};      // faults that did strike (the connection lived long enough)
    std::atomic<int> no_upstream{0}; // the intake was down: the device's connection is reset
  };

  FaultProxy(int target_port, uint64_t seed) : target_port_(target_port), rng_(seed) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(listen_fd_, 64) != 0)
      ADD_FAILURE() << "proxy: cannot listen: " << strerror(errno);
    socklen_t len = sizeof a;
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~FaultProxy() { stop(); }

  int port() const { return port_; }
  const Counts& counts() const { return counts_; }

  void stop() {
    if (stopping_.exchange(true)) return;
    acceptor_.join();
    close(listen_fd_);
    std::lock_guard lock(mu_);
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

 private:
  Plan choose() {
    Plan p;
    auto uniform = [&](double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng_); };
    auto log_uniform = [&](double lo, double hi) {
      return static_cast<uint64_t>(std::exp(uniform(std::log(lo), std::log(hi))));
    };
    const double r = uniform(0, 1);
    p.reset = uniform(0, 1) < 0.5;
    if (r < 0.40) {
      p.fault = Fault::kClean;
    } else if (r < 0.62) {
      p.fault = Fault::kCutUp;  // anywhere from the ClientHello to a few bundles in
      p.after = log_uniform(64, 4 << 20);
    } else if (r < 0.77) {
      p.fault = Fault::kCutDown;  // the handshake, WELCOME, STATUS or a RECEIPT
      p.after = log_uniform(16, 24 << 10);
    } else if (r < 0.92) {
      p.fault = Fault::kStall;  // longer than the agent's --timeout 1 (and often the intake's 2)
      p.after = log_uniform(64, 4 << 20);
      p.stall = milliseconds(static_cast<int>(uniform(1200, 3000)));
    } else {
      p.fault = Fault::kFlip;  // one bit inside the TLS stream, past the handshake
      p.after = log_uniform(8 << 10, 2 << 20);
    }
    return p;
  }

  void accept_loop() {
    while (!stopping_) {
      pollfd pfd{listen_fd_, POLLIN, 0};
      if (poll(&pfd, 1, 50) <= 0) continue;
      int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) continue;
      ++counts_.connections;
      Plan plan = choose();
      std::lock_guard lock(mu_);
      workers_.emplace_back([this, client, plan] { relay(client, plan); });
    }
  }

  static void set_reset(int fd) {
    linger l{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }

  static bool write_all(int fd, const char* p, size_t n) {
    while (n > 0) {
      ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }

  void relay(int client, Plan plan) {
    int server = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(target_port_));
    if (connect(server, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ++counts_.no_upstream;
      set_reset(client);
      close(client);
      close(server);
      return;
    }
    switch (plan.fault) {
      case Fault::kClean: ++counts_.clean; break;
      case Fault::kCutUp: ++counts_.cut_up; break;
      case Fault::kCutDown: ++counts_.cut_down; break;
      case Fault::kStall: ++counts_.stall; break;
      case Fault::kFlip: ++counts_.flip; break;
    }
    timeval tv{5, 0};  // a write that cannot go on for this long ends the connection
    for (int fd : {client, server}) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    int fds[2] = {client, server};  // direction 0: device -> intake ("up"), 1: intake -> device
    uint64_t moved[2] = {0, 0};
    bool eof[2] = {false, false};
    bool flipped = false, reset = plan.reset;
    const int faulty = plan.fault == Fault::kCutDown ? 1 : 0;
    std::vector<char> buf(64 << 10);
    const auto give_up = Clock::now() + std::chrono::seconds(60);
    auto strike_stall = [&] {
      ++counts_.struck;
      const auto end = Clock::now() + plan.stall;
      while (!stopping_ && Clock::now() < end) std::this_thread::sleep_for(milliseconds(20));
    };
    bool done = false;
    while (!done && !stopping_ && !(eof[0] && eof[1]) && Clock::now() < give_up) {
      pollfd p[2] = {{client, static_cast<short>(eof[0] ? 0 : POLLIN), 0},
                     {server, static_cast<short>(eof[1] ? 0 : POLLIN), 0}};
      if (poll(p, 2, 50) <= 0) continue;
      for (int dir = 0; dir < 2 && !done; ++dir) {
        if (!(p[dir].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t n = recv(fds[dir], buf.data(), buf.size(), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {  // a reset from one side: pass it on
          reset = true;
          done = true;
          break;
        }
        if (n == 0) {
          eof[dir] = true;
          shutdown(fds[1 - dir], SHUT_WR);
          continue;
        }
        size_t len = static_cast<size_t>(n);
        const bool here = dir == faulty && plan.fault != Fault::kClean && !flipped;
        if (here && moved[dir] + len >= plan.after) {
          const size_t before = static_cast<size_t>(plan.after - moved[dir]);
          if (plan.fault == Fault::kFlip) {
            if (before < len) {
              buf[before] ^= 0x10;
              flipped = true;
              ++counts_.struck;
            }
          } else {
            write_all(fds[1 - dir], buf.data(), before);
            if (plan.fault == Fault::kStall) strike_stall();
            else ++counts_.struck;
            done = true;
            break;
          }
        }
        if (!write_all(fds[1 - dir], buf.data(), len)) {
          done = true;
          break;
        }
        moved[dir] += len;
      }
    }
    if (reset) {
      ++counts_.resets;
      set_reset(client);
      set_reset(server);
    }
    close(client);
    close(server);
  }

  int target_port_;
  std::mt19937_64 rng_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  Counts counts_;
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> workers_;
};

// ---- The soak ----

struct Shipped {
  size_t device = 0;
  std::string path, digest;  // the bundle digest that names it in the store
};


// A temporary file of replace_file() (".NAME.tmp.XXXXXX"), left when a process is killed while
// it writes one: debris, not evidence; what it was being written for is written again.
bool is_debris(const std::string& name) { return name[0] == '.' && name.find(".tmp.") != std::string::npos; }

size_t queued(const std::string& spool) {
  size_t n = 0;
  for (const auto& name : list_dir(spool + "/queue"))
    if (name.size() > 5 && name.substr(name.size() - 5) == ".mlfx") ++n;
  return n;
}

TEST(SoakTest, HundredsOfUploadsUnderRandomFaultsLoseAndCorruptNothing) {
  uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("MLFX_SOAK_SEED")) seed = std::strtoull(s, nullptr, 10);
  std::printf("soak: seed %llu (MLFX_SOAK_SEED=%llu to replay the random choices)\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  auto uniform = [&](double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); };
  auto ms = [&](double lo, double hi) { return milliseconds(static_cast<int>(uniform(lo, hi))); };

  IntakeLab lab;
  const std::string serve_args = "--idle-timeout 2 --handshake-timeout 2";
  std::vector<Device> devices = {lab.add_device("car-1"), lab.add_device("van-2"), lab.add_device("edge-3")};
  ASSERT_FALSE(HasFatalFailure());

  // 150 small bundles, 16 KiB .. 1 MiB (log-uniform), chunks of 4096 .. 65536 bytes.
  const size_t kBundles = 150;
  const auto seal_start = Clock::now();
  std::vector<Shipped> bundles;
  for (size_t i = 0; i < kBundles; ++i) {
    const size_t dev = i % devices.size();
    const auto bytes = static_cast<size_t>(std::exp(uniform(std::log(16 << 10), std::log(1 << 20))));
    const auto chunk = static_cast<uint32_t>(uniform(4096, 65536));
    bundles.push_back({dev, lab.seal(devices[dev], bytes, chunk, seed % 1000000 * 1000 + i), ""});
    ASSERT_FALSE(HasFatalFailure());
  }
  {
    std::set<std::string> distinct;
    for (auto& b : bundles) {
      b.digest = IntakeLab::digest_of(b.path);
      ASSERT_EQ(b.digest.size(), 64u) << b.path;
      distinct.insert(b.digest);
    }
    ASSERT_EQ(distinct.size(), kBundles) << "the bundles are distinct";
  }
  const double seal_s = std::chrono::duration<double>(Clock::now() - seal_start).count();
  std::shuffle(bundles.begin(), bundles.end(), rng);

  // Half are queued before shipping starts; the rest trickle in while the agents run.
  const size_t initial = kBundles / 2;
  for (size_t i = 0; i < initial; ++i) lab.queue(devices[bundles[i].device], bundles[i].path);
  ASSERT_FALSE(HasFatalFailure());

  lab.start_server(serve_args);
  ASSERT_FALSE(HasFatalFailure());
  FaultProxy proxy(lab.port(), seed ^ 0x9e3779b97f4a7c15ull);

  std::mutex feed_mu;
  std::vector<std::string> feed_errors;
  std::atomic<bool> feeding{true};
  std::atomic<int> queued_while_shipping{0};
  std::thread feeder([&, feed_seed = rng()] {
    std::mt19937_64 frng(feed_seed);
    for (size_t i = initial; i < bundles.size(); ++i) {
      std::this_thread::sleep_for(milliseconds(std::uniform_int_distribution<int>(20, 300)(frng)));
      const Shipped& b = bundles[i];
      auto r = IntakeLab::agent("spool add --spool " + lab.spool(devices[b.device]) + " " + b.path);
      if (r.exit_code != 0) {
        std::lock_guard lock(feed_mu);
        feed_errors.push_back(r.output);
      }
      ++queued_while_shipping;
    }
    feeding = false;
  });
  struct Join {
    std::thread& t;
    ~Join() {
      if (t.joinable()) t.join();
    }
  } join_feeder{feeder};

  struct Agent {
    std::unique_ptr<Background> proc;
    std::string log;
    Clock::time_point next_kill, restart_at;
    int runs = 0, kills = 0;
    std::vector<int> exit_codes;  // of runs that ended by themselves
  };
  std::vector<Agent> agents(devices.size());
  for (size_t i = 0; i < devices.size(); ++i) agents[i].log = lab.dir() / ("agent-" + devices[i].id + ".log");
  auto ship_command = [&](size_t i) {
    const Device& d = devices[i];
    return agent_bin() + " ship --spool " + lab.spool(d) + " --server 127.0.0.1:" + std::to_string(proxy.port()) +
           " --ca " + lab.ca_dir() + "/ca.pem --cert " + d.cert + " --key " + d.key +
           " --until-empty --backoff-min 0.05 --backoff-max 0.5 --timeout 1 --poll 0.2 >>" + agents[i].log + " 2>&1";
  };

  const auto start = Clock::now();
  const auto deadline = start + std::chrono::seconds(150);
  auto next_server_kill = start + ms(2000, 4000);
  int server_kills = 0;
  const int kMaxServerKills = 8;
  bool all_done = false;
  while (Clock::now() < deadline) {
    const auto now = Clock::now();
    bool busy = feeding;
    for (size_t i = 0; i < agents.size(); ++i) {
      Agent& a = agents[i];
      if (a.proc && !a.proc->running()) {
        a.exit_codes.push_back(a.proc->wait(milliseconds(0)));
        a.proc.reset();
      }
      const bool work = queued(lab.spool(devices[i])) > 0;
      if (!a.proc && work && now >= a.restart_at) {
        a.proc = std::make_unique<Background>(ship_command(i));
        ++a.runs;
        a.next_kill = now + ms(200, 2500);
      } else if (a.proc && now >= a.next_kill) {
        a.proc->kill(SIGKILL);  // anywhere: handshake, metadata, records, receipt, spool update
        a.proc.reset();
        ++a.kills;
        a.restart_at = now + ms(0, 300);
      }
      busy |= work || a.proc != nullptr;
    }
    if (!busy) {
      all_done = true;
      break;
    }
    if (now >= next_server_kill && server_kills < kMaxServerKills) {
      lab.stop_server(SIGKILL);
      ++server_kills;
      std::this_thread::sleep_for(ms(50, 600));
      lab.start_server(serve_args);
      ASSERT_FALSE(HasFatalFailure());
      next_server_kill = Clock::now() + ms(2000, 5000);
    }
    std::this_thread::sleep_for(milliseconds(25));
  }
  const double soak_s = std::chrono::duration<double>(Clock::now() - start).count();
  feeder.join();
  for (auto& a : agents)
    if (a.proc) a.proc->kill(SIGKILL);
  proxy.stop();
  lab.stop_server();  // SIGTERM: the log is complete

  // ---- What happened ----
  const auto& c = proxy.counts();
  int agent_runs = 0, agent_kills = 0, retries = 0, failed = 0, stored = 0, duplicate = 0;
  for (size_t i = 0; i < agents.size(); ++i) {
    agent_runs += agents[i].runs;
    agent_kills += agents[i].kills;
    std::istringstream in(read_file(agents[i].log));
    for (std::string line; std::getline(in, line);) {
      if (line.find("mlfx-agent: ship: retrying in") == 0) ++retries;
      if (line.rfind("failed ", 0) == 0) ++failed;
      if (line.rfind("stored ", 0) == 0) ++stored;
      if (line.rfind("duplicate ", 0) == 0) ++duplicate;
    }
  }
  std::map<std::string, int> server_results;
  int resumed = 0;
  for (const auto& e : lab.events("upload")) {
    ++server_results[e.value("result", "?")];
    if (e.value("result", "") == "stored" && e["received_bytes"].get<uint64_t>() < e["file_size"].get<uint64_t>())
      ++resumed;
  }
  std::string results, events;
  for (const auto& [k, v] : server_results) results += " " + k + "=" + std::to_string(v);
  {
    std::map<std::string, int> by_event;
    std::istringstream in(read_file(lab.log_path()));
    for (std::string line; std::getline(in, line);) {
      auto j = json::parse(line, nullptr, false);
      ++by_event[j.is_object() ? j.value("event", "?") : "(not JSON) " + line.substr(0, 80)];
    }
    for (const auto& [k, v] : by_event) events += " " + k + "=" + std::to_string(v);
  }
  std::printf(
      "soak: %zu bundles from %zu devices (%d queued while shipping), sealed in %.1f s, shipped in %.1f s\n"
      "soak: proxy: %d connections: %d clean, %d cut device->intake, %d cut intake->device, %d stalled "
      "(1.2-3 s), %d with a flipped byte; %d of these faults struck; %d closed with a reset; %d refused "
      "while the intake was down\n"
      "soak: process faults: %d agent kills (SIGKILL) over %d agent runs, %d intake kills (SIGKILL) and restarts\n"
      "soak: agent: %d retries after a failed pass, %d failed upload attempts, %d stored, %d duplicates "
      "(receipt lost by a kill or a cut, fetched again)\n"
      "soak: intake: %d uploads stored after resuming a partial; upload log results:%s; log events:%s\n",
      bundles.size(), devices.size(), queued_while_shipping.load(), seal_s, soak_s, c.connections.load(),
      c.clean.load(), c.cut_up.load(), c.cut_down.load(), c.stall.load(), c.flip.load(), c.struck.load(),
      c.resets.load(), c.no_upstream.load(), agent_kills, agent_runs, server_kills, retries, failed, stored,
      duplicate, resumed, results.c_str(), events.c_str());
  std::fflush(stdout);

  ASSERT_TRUE(all_done) << "the spools did not empty within the deadline";
  for (const auto& e : feed_errors) ADD_FAILURE() << "spool add failed: " << e;
  for (size_t i = 0; i < agents.size(); ++i)
    for (int code : agents[i].exit_codes)
      EXPECT_EQ(code, 0) << devices[i].id << ": an agent run that was not killed failed:\n" << read_file(agents[i].log);
  // The faults really were injected.
  EXPECT_GT(c.struck.load(), 20);
  EXPECT_GT(c.cut_up.load() + c.cut_down.load(), 10);
  EXPECT_GT(c.stall.load(), 3);
  EXPECT_GT(agent_kills, 5);
  EXPECT_GE(server_kills, 2);

  // ---- Zero lost ----
  int debris = 0;
  for (size_t i = 0; i < devices.size(); ++i) {
    const Device& d = devices[i];
    json st = lab.status(d);
    EXPECT_TRUE(st["queue"].empty()) << st.dump(2);
    EXPECT_TRUE(st["rejected"].empty()) << st.dump(2);
    std::set<std::string> expected, receipted;
    for (const auto& b : bundles)
      if (b.device == i) expected.insert(b.digest);
    std::vector<std::string> names;
    for (const auto& name : list_dir(lab.spool(d) + "/receipts")) {
      if (is_debris(name)) {
        ++debris;
        continue;
      }
      EXPECT_TRUE(name.ends_with(".receipt.json")) << "receipts/" << name;
      names.push_back(name);
      const json r = json::parse(read_file(lab.spool(d) + "/receipts/" + name), nullptr, false);
      ASSERT_FALSE(r.is_discarded()) << name;
      receipted.insert(r["receipt"]["bundle_digest"].get<std::string>());
    }
    EXPECT_EQ(names.size(), expected.size()) << d.id << ": one receipt per bundle";
    EXPECT_EQ(receipted, expected) << d.id << ": a receipt for every bundle";
  }

  // ---- Zero corrupted ----
  size_t checked = 0;
  for (const auto& b : bundles) {
    const std::string stem = lab.store() + "/objects/" + b.digest;
    ASSERT_TRUE(fs::exists(stem + ".mlfx")) << "lost: " << b.path;
    EXPECT_TRUE(read_file(stem + ".mlfx") == read_file(b.path)) << "corrupted: " << stem << ".mlfx";
    const json receipt = json::parse(read_file(stem + ".receipt.json"), nullptr, false);
    ASSERT_FALSE(receipt.is_discarded()) << stem << ".receipt.json";
    EXPECT_EQ(receipt["receipt"]["bundle_digest"], b.digest);
    std::istringstream custody(read_file(stem + ".custody.jsonl"));
    std::vector<json> events;
    for (std::string line; std::getline(custody, line);) events.push_back(json::parse(line, nullptr, false));
    ASSERT_EQ(events.size(), 3u) << stem << ".custody.jsonl";
    EXPECT_EQ(events[2]["type"], "received");
    EXPECT_EQ(events[2]["details"]["device_id"], devices[b.device].id);
    if (++checked % 8 == 1) {  // a sample: the full verification of the stored object
      auto verify = IntakeLab::mlfx("bundle verify -q --trusted-devices " + lab.trusted() + " " + stem + ".mlfx");
      EXPECT_EQ(verify.exit_code, 0) << verify.output;
    }
  }
  size_t objects = 0;
  for (const auto& name : lab.objects()) {
    if (is_debris(name)) {
      ++debris;
      continue;
    }
    ++objects;
    const std::string sha = name.substr(0, name.find('.'));
    EXPECT_TRUE(std::any_of(bundles.begin(), bundles.end(), [&](const Shipped& b) { return b.digest == sha; }))
        << "objects/" << name << " is none of the bundles";
  }
  EXPECT_EQ(objects, 3 * kBundles) << "each object, its custody log and receipt; nothing else";
  for (const auto& dev : list_dir(lab.store() + "/partial"))
    for (const auto& name : list_dir(lab.store() + "/partial/" + dev)) {
      if (is_debris(name)) ++debris;
      else ADD_FAILURE() << "a partial upload is left: partial/" << dev << "/" << name;
    }
  std::printf("soak: %d temporary file(s) of interrupted atomic writes left in the spools and the store\n", debris);
}

}  // namespace
}  // namespace mlfx::testing
