// A standalone driver for the fuzz targets in builds without libFuzzer (gcc, MLFX_FUZZ=OFF).
//
//   <target>_replay [-rounds=N] [-seed=S] [-timeout=SECONDS] [-artifact=PATH] PATH...
//
// Runs LLVMFuzzerTestOneInput on every file in the given directories (and on given files),
// then on a deterministic set of mutations of each of them: bit flips at many positions,
// interesting bytes and integers, truncations at many lengths, insertions, deletions,
// duplications, splices of two seeds, and stacks of several of these. A seeded PRNG makes
// every run identical; -rounds=N runs the random parts N times with different streams.
//
// On a crash (signal, abort, sanitizer report) or an input that runs longer than -timeout,
// the input is written to -artifact (default ./replay-crash) and the mutation that made it
// is printed; then the process dies as it would have, and the test fails.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using Input = std::vector<uint8_t>;

// ---- crash and hang reporting -------------------------------------------------------------

// What the handlers need, kept in plain globals (async-signal-safe access only).
const uint8_t* g_current = nullptr;
size_t g_current_size = 0;
char g_what[512] = "";
char g_artifact[4096] = "replay-crash";
struct sigaction g_old[65];

void write_str(const char* s) { (void)!::write(2, s, std::strlen(s)); }

void dump_current(const char* why) {
  write_str("\n==replay== ");
  write_str(why);
  write_str(" while running: ");
  write_str(g_what);
  write_str("\n==replay== input written to ");
  write_str(g_artifact);
  write_str("\n");
  int fd = ::open(g_artifact, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  size_t done = 0;
  while (g_current && done < g_current_size) {
    ssize_t n = ::write(fd, g_current + done, g_current_size - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

void on_fatal_signal(int sig) {
  dump_current(sig == SIGABRT ? "abort" : "fatal signal");
  // Hand over to whoever was there before (a sanitizer, or the default action): for a fault
  // the instruction runs again, for abort() glibc raises again.
  sigaction(sig, &g_old[sig], nullptr);
  if (sig != SIGSEGV && sig != SIGBUS && sig != SIGFPE && sig != SIGILL) raise(sig);
}

void on_alarm(int) {
  dump_current("timeout");
  _exit(70);
}

void install_handlers() {
  static std::unique_ptr<char[]> alt(new char[1 << 16]);  // stack overflows need their own
  stack_t ss{};
  ss.ss_sp = alt.get();
  ss.ss_size = 1 << 16;
  sigaltstack(&ss, nullptr);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) {
    struct sigaction sa{};
    sa.sa_handler = on_fatal_signal;
    sa.sa_flags = SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, &g_old[sig]);
  }
  struct sigaction sa{};
  sa.sa_handler = on_alarm;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGALRM, &sa, nullptr);
}

// ---- inputs -------------------------------------------------------------------------------

struct Seed {
  std::string name;
  Input data;
};

bool read_file(const std::filesystem::path& p, Input& out) {
  std::ifstream f(p, std::ios::binary);
  if (!f) return false;
  out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

// splitmix64: small, fast, and the same everywhere (unlike std:: distributions).
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return n ? static_cast<size_t>(next() % n) : 0; }
  bool coin() { return next() & 1; }
};

uint64_t hash_name(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// ---- the runner ---------------------------------------------------------------------------

class Runner {
 public:
  explicit Runner(unsigned timeout) : timeout_(timeout) {}

  void run(const Input& in, const std::string& what) {
    std::snprintf(g_what, sizeof g_what, "%s (%zu bytes)", what.c_str(), in.size());
    // An exactly-sized heap copy, so that sanitizers see any read past the end.
    std::unique_ptr<uint8_t[]> copy(new uint8_t[in.size() ? in.size() : 1]);
    if (!in.empty()) std::memcpy(copy.get(), in.data(), in.size());
    g_current = copy.get();
    g_current_size = in.size();
    if (timeout_) alarm(timeout_);
    LLVMFuzzerTestOneInput(copy.get(), in.size());
    if (timeout_) alarm(0);
    g_current = nullptr;
    ++executions_;
  }
  uint64_t executions() const { return executions_; }

 private:
  unsigned timeout_;
  uint64_t executions_ = 0;
};

constexpr uint8_t kInterestingBytes[] = {0x00, 0x01, 0x7f, 0x80, 0xff, '"', '\\', '{', '}',
                                         '[',  ']',  ',',  ':',  '\n', '0', '9', '-',  'e',
                                         ' ',  '.',  '=',  'A',  '/',  '+'};
constexpr uint64_t kInterestingInts[] = {0,          1,           2,          16,
                                         32,         48,          64,         0x7f,
                                         0xff,       0x1000,      0x1010,     0x7fff,
                                         0xffff,     0x7fffffff,  0x80000000, 0xffffffff,
                                         1ull << 32, 1ull << 63, ~0ull,      ~0ull - 31};

// One random edit of `in`, using `other` (another seed) for splices. Returns its name.
const char* mutate_once(Input& in, const Input& other, Rng& rng) {
  switch (rng.below(8)) {
    case 0:
      if (in.empty()) break;
      in[rng.below(in.size())] ^= uint8_t(1u << rng.below(8));
      return "bit flip";
    case 1:
      if (in.empty()) break;
      in[rng.below(in.size())] = kInterestingBytes[rng.below(sizeof kInterestingBytes)];
      return "interesting byte";
    case 2: {
      if (in.size() < 8) break;
      uint64_t v = kInterestingInts[rng.below(std::size(kInterestingInts))];
      size_t width = size_t(1) << rng.below(4), pos = rng.below(in.size() - width + 1);
      for (size_t i = 0; i < width; ++i) in[pos + i] = uint8_t(v >> (8 * i));
      return "interesting integer";
    }
    case 3:
      in.resize(rng.below(in.size() + 1));
      return "truncation";
    case 4: {
      size_t pos = rng.below(in.size() + 1), n = 1 + rng.below(32);
      Input ins(n);
      for (auto& b : ins) b = uint8_t(rng.next());
      in.insert(in.begin() + pos, ins.begin(), ins.end());
      return "random insertion";
    }
    case 5: {
      if (in.empty()) break;
      size_t pos = rng.below(in.size()), n = 1 + rng.below(std::min<size_t>(in.size() - pos, 64));
      in.erase(in.begin() + pos, in.begin() + pos + n);
      return "deletion";
    }
    case 6: {
      if (in.empty()) break;
      size_t pos = rng.below(in.size()), n = 1 + rng.below(std::min<size_t>(in.size() - pos, 256));
      Input dup(in.begin() + pos, in.begin() + pos + n);
      in.insert(in.begin() + rng.below(in.size() + 1), dup.begin(), dup.end());
      return "duplication";
    }
    case 7: {
      if (other.empty()) break;
      size_t pos = rng.below(other.size()), n = 1 + rng.below(other.size() - pos);
      in.insert(in.begin() + rng.below(in.size() + 1), other.begin() + pos, other.begin() + pos + n);
      return "insertion from another seed";
    }
  }
  in.push_back(uint8_t(rng.next()));
  return "append";
}

void mutate_seed(Runner& r, const std::vector<Seed>& seeds, size_t k, uint64_t seed, int round) {
  const Input& s = seeds[k].data;
  const size_t n = s.size();
  const std::string name = seeds[k].name;
  Rng rng{seed ^ hash_name(name) ^ (uint64_t(round) * 0x2545f4914f6cdd1dull)};
  auto run = [&](const Input& in, const std::string& what) { r.run(in, name + ": " + what); };

  if (round == 0) {
    // Bit flips: every byte of small seeds, else both ends (headers, trailers) and an even
    // spread over the middle.
    std::vector<size_t> positions;
    if (n <= 256) {
      for (size_t i = 0; i < n; ++i) positions.push_back(i);
    } else {
      for (size_t i = 0; i < 128; ++i) positions.push_back(i), positions.push_back(n - 1 - i);
      for (size_t i = 0; i < 256; ++i) positions.push_back(128 + i * (n - 256) / 256);
    }
    for (size_t p : positions) {
      Input m = s;
      m[p] ^= uint8_t(1u << (p % 8));
      run(m, "bit " + std::to_string(p % 8) + " of byte " + std::to_string(p) + " flipped");
    }
    // Truncations: all short prefixes, an even spread, and all of the last 32 lengths.
    std::vector<size_t> lengths;
    for (size_t l = 0; l < std::min<size_t>(n, 64); ++l) lengths.push_back(l);
    for (size_t i = 0; i < 64; ++i) lengths.push_back(i * n / 64);
    for (size_t l = n > 32 ? n - 32 : 0; l < n; ++l) lengths.push_back(l);
    std::sort(lengths.begin(), lengths.end());
    lengths.erase(std::unique(lengths.begin(), lengths.end()), lengths.end());
    for (size_t l : lengths) run(Input(s.begin(), s.begin() + l), "truncated to " + std::to_string(l));
    // Splices: head of this seed, tail of each other one, at several cut points.
    for (size_t o = 0; o < seeds.size(); ++o) {
      const Input& t = seeds[o].data;
      for (int c = 0; c < 8; ++c) {
        size_t a = n * c / 8, b = t.size() * c / 8;
        Input m(s.begin(), s.begin() + a);
        m.insert(m.end(), t.begin() + b, t.end());
        run(m, "spliced at " + std::to_string(a) + " with " + seeds[o].name + " from " + std::to_string(b));
      }
    }
  }

  // Random single edits of each kind, then stacks of 2..8 edits.
  for (int i = 0; i < 96; ++i) {
    if (n == 0) break;
    Input m = s;
    size_t p = rng.below(n);
    m[p] ^= uint8_t(1u << rng.below(8));
    run(m, "random bit flip at " + std::to_string(p));
  }
  for (int i = 0; i < 512; ++i) {
    Input m = s;
    const Input& other = seeds[rng.below(seeds.size())].data;
    const int edits = i < 256 ? 1 : 2 + int(rng.below(7));
    std::string what;
    for (int e = 0; e < edits; ++e) what += std::string(e ? " + " : "") + mutate_once(m, other, rng);
    run(m, "random " + what + " (round " + std::to_string(round) + ", #" + std::to_string(i) + ")");
  }
}

int usage() {
  std::fprintf(stderr,
               "usage: replay [-rounds=N] [-seed=S] [-timeout=SECONDS] [-artifact=PATH] "
               "DIR_OR_FILE...\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 1;
  uint64_t seed = 0x6d6c6678;  // "mlfx"
  unsigned timeout = 30;
  std::vector<std::filesystem::path> paths;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("-rounds=", 0) == 0) {
      rounds = std::max(1, std::atoi(a.c_str() + 8));
    } else if (a.rfind("-seed=", 0) == 0) {
      seed = std::strtoull(a.c_str() + 6, nullptr, 0);
    } else if (a.rfind("-timeout=", 0) == 0) {
      timeout = static_cast<unsigned>(std::atoi(a.c_str() + 9));
    } else if (a.rfind("-artifact=", 0) == 0) {
      std::snprintf(g_artifact, sizeof g_artifact, "%s", a.c_str() + 10);
    } else if (!a.empty() && a[0] == '-') {
      return usage();
    } else {
      paths.emplace_back(a);
    }
  }
  if (paths.empty()) return usage();

  std::vector<Seed> seeds;
  for (const auto& p : paths) {
    std::error_code ec;
    if (std::filesystem::is_directory(p, ec)) {
      std::vector<std::filesystem::path> files;
      for (const auto& e : std::filesystem::directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
      std::sort(files.begin(), files.end());
      for (const auto& f : files) {
        Seed s{f.filename().string(), {}};
        if (!read_file(f, s.data)) return std::fprintf(stderr, "cannot read %s\n", f.c_str()), 1;
        seeds.push_back(std::move(s));
      }
    } else {
      Seed s{p.filename().string(), {}};
      if (!read_file(p, s.data)) return std::fprintf(stderr, "cannot read %s\n", p.c_str()), 1;
      seeds.push_back(std::move(s));
    }
  }
  if (seeds.empty()) return std::fprintf(stderr, "replay: no inputs found\n"), 1;

  install_handlers();
  Runner runner(timeout);
  const auto start = std::chrono::steady_clock::now();
  runner.run({}, "empty input");
  for (const Seed& s : seeds) runner.run(s.data, s.name + ": as is");
  const uint64_t plain = runner.executions();
  for (int round = 0; round < rounds; ++round)
    for (size_t k = 0; k < seeds.size(); ++k) mutate_seed(runner, seeds, k, seed, round);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("replay: %zu seeds, %llu executions (%llu unmutated), %.1f s, no crash\n",
              seeds.size(), static_cast<unsigned long long>(runner.executions()),
              static_cast<unsigned long long>(plain), secs);
  return 0;
}
