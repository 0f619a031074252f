// The built libmlfx_cupti.so: it exports InitializeInjection (default visibility, what the
// driver looks up) and nothing else of ours; it dlopen()s on a machine without a driver, and
// InitializeInjection returns 1 without crashing and logs why it could not subscribe. Run in a
// child process: libcupti is loaded there, not into the test runner.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "test_util.h"

namespace {

#ifdef MLFX_CUPTI_LIBRARY
constexpr const char* kLibrary = MLFX_CUPTI_LIBRARY;
#else
constexpr const char* kLibrary = nullptr;
#endif

#define SKIP_WITHOUT_LIBRARY()                                                          \
  if (!kLibrary)                                                                        \
  GTEST_SKIP() << "libmlfx_cupti.so was not built: no CUDA toolkit with CUPTI headers " \
                  "at configure time (see agent/cupti/CMakeLists.txt)"

TEST(CuptiLibrary, ExportsOnlyInitializeInjection) {
  SKIP_WITHOUT_LIBRARY();
  const auto nm = mlfx::testing::run(std::string("nm -D --defined-only ") + kLibrary);
  if (nm.exit_code == 127) GTEST_SKIP() << "nm is not installed";
  ASSERT_EQ(nm.exit_code, 0) << nm.output;
  std::istringstream lines(nm.output);
  std::string line;
  std::vector<std::string> symbols;
  while (std::getline(lines, line))
    if (!line.empty()) symbols.push_back(line.substr(line.rfind(' ') + 1));
  EXPECT_EQ(symbols, std::vector<std::string>{"InitializeInjection"}) << nm.output;
  const auto readelf = mlfx::testing::run(std::string("readelf -W --dyn-syms ") + kLibrary);
  if (readelf.exit_code == 0) {
    EXPECT_NE(readelf.output.find("FUNC    GLOBAL DEFAULT"), std::string::npos) << readelf.output;
    EXPECT_EQ(readelf.output.find("libcupti"), std::string::npos);  // dlopen()ed, not needed
  }
}

// In a child: dlopen, find InitializeInjection, call it; exit 0 when it returned 1.
int run_injection(const std::string& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setenv("MLFX_CUPTI_LOG", log.c_str(), 1);
    ::setenv("MLFX_ANOMALY_SOCKET", "", 1);
    void* lib = ::dlopen(kLibrary, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      std::fprintf(stderr, "dlopen: %s\n", ::dlerror());
      ::_exit(10);
    }
    using Init = int (*)();
    auto init = reinterpret_cast<Init>(::dlsym(lib, "InitializeInjection"));
    if (!init) ::_exit(11);
    Dl_info info{};
    if (!::dladdr(reinterpret_cast<void*>(init), &info) ||
        std::string(info.dli_fname).find("libmlfx_cupti") == std::string::npos)
      ::_exit(12);
    if (init() != 1) ::_exit(13);
    if (init() != 1) ::_exit(14);  // a second call is harmless
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(CuptiLibrary, LoadsWithoutADriverAndSaysWhy) {
  SKIP_WITHOUT_LIBRARY();
  mlfx::testing::TempDir dir;
  const std::string log = dir / "events.jsonl";
  ASSERT_EQ(run_injection(log), 0);

  std::istringstream lines(mlfx::testing::read_file(log));
  std::string line;
  std::vector<nlohmann::json> events;
  while (std::getline(lines, line)) events.push_back(nlohmann::json::parse(line));
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events[0]["event"], "start");
  EXPECT_EQ(events[0]["settings"]["log"], log);
  // Exactly one start: the second call did nothing.
  size_t starts = 0;
  std::string outcome;
  for (const auto& e : events) {
    starts += e["event"] == "start";
    if (e["event"] == "notice" && outcome.empty())
      outcome = e["what"].get<std::string>() + ": " + e["detail"].get<std::string>();
  }
  EXPECT_EQ(starts, 1u);
  const bool driver =
      ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD) || ::access("/dev/nvidiactl", F_OK) == 0;
  if (!driver) {  // no driver here: it must say why it is not recording
    EXPECT_TRUE(outcome.rfind("no-subscription: ", 0) == 0 || outcome.rfind("no-cupti: ", 0) == 0)
        << outcome;
  }
  std::printf("the library said: %s\n", outcome.c_str());
}

}  // namespace
