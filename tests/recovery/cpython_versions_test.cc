// The CPython object model on every interpreter of this machine: pyenv's 3.6-3.13, Debian's
// python3, and the version matrix's Debian trixie (3.13) and sid (3.14) chroots
// (tests/matrix/chroots.py; built when missing, as the matrix tests do). Each runs tests/victims/object_graph.py (pure Python: every dict layout and plain
// value type), is captured by mlfx-agent, and the analyzer's frontend reads every probe back
// from the core: the same attributes in the same order, the same values, the same dict items,
// compared with the ground truth the victim wrote outside the capture. Interpreters older
// than 3.8 are refused by name as unsupported.
#include <gtest/gtest.h>

#include <algorithm>
#include <regex>

#include "frontends/cpython/python_objects.h"
#include "frontends/cpython/python_runtime.h"
#include "layers/elf_core_layer.h"
#include "layers/file_layer.h"
#include "mlfx/base/json.h"
#include "recovery/victim_process.h"
#include "test_util.h"

namespace mlfx {
namespace {

using namespace testing;
using frontends::cpython::ObjectReader;
using frontends::cpython::PythonRuntime;

struct Interpreter {
  std::string path;    // the python, or the chroot's suite
  unsigned major = 0, minor = 0;
  bool chroot = false;  // path is a suite of tests/matrix/chroots.py
  std::string label() const {
    return std::to_string(major) + "." + std::to_string(minor) + " " + path + (chroot ? " (chroot)" : "");
  }
  // The shell command that runs the victim writing its truth to `gt`.
  std::string victim(const std::string& gt) const {
    if (!chroot) return path + " " + kVictims + "/object_graph.py " + gt;
    const std::string err = gt + ".chroot-err";
    auto cmd = run("(python3 " + std::string(MLFX_SOURCE_DIR) + "/tests/matrix/chroots.py command " + path +
                   " --work " + gt + " -- /usr/bin/python3 /mnt/victims/object_graph.py /mnt/work 2>" + err + ")");
    if (cmd.exit_code != 0) return "cat " + err + " >&2; false";  // the victim fails saying why
    return cmd.output.substr(0, cmd.output.find_last_not_of('\n') + 1);
  }
};

// The chroots of the version matrix whose Python the machine has nowhere else.
constexpr std::pair<const char*, unsigned> kMatrixPythons[] = {{"trixie", 13}, {"sid", 14}};

// pyenv's CPython 3 builds ($PYENV_ROOT, default ~/.pyenv) and Debian's python3, oldest first.
std::vector<Interpreter> interpreters() {
  std::vector<Interpreter> out;
  const char* root_env = std::getenv("PYENV_ROOT");
  const char* home = std::getenv("HOME");
  const std::string root = root_env ? root_env : std::string(home ? home : "/root") + "/.pyenv";
  const std::regex version(R"((\d+)\.(\d+)\.\d+)");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root + "/versions", ec)) {
    std::smatch m;
    const std::string name = e.path().filename();
    if (!std::regex_match(name, m, version) || m[1] != "3") continue;
    const std::string py = e.path() / ("bin/python" + m[1].str() + "." + m[2].str());
    if (fs::exists(py)) out.push_back({py, 3, unsigned(std::stoul(m[2]))});
  }
  auto debian = run("/usr/bin/python3 -c 'import sys; print(sys.version_info[1])'");
  if (debian.exit_code == 0) out.push_back({"/usr/bin/python3", 3, unsigned(std::stoul(debian.output))});
  for (const auto& [suite, minor] : kMatrixPythons) out.push_back({suite, 3, minor, true});
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.minor < b.minor; });
  return out;
}

// What the analyzer reads, in the victim's JSON conventions (ObjectReader::plain_value).
json::Json plain(const ObjectReader& r, uint64_t obj) {
  auto v = r.plain_value(obj);
  if (!v) return "<error: " + v.error().to_string() + ">";
  if (!*v) return "<not plain>";
  return **v;
}

class CpythonVersions : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { kit_ = new CaptureKit; }
  static void TearDownTestSuite() { delete kit_; }

  // Starts the victim under `python`, captures it, and returns the core's path.
  std::string capture(const Interpreter& python, const std::string& gt) {
    fs::create_directories(gt);
    Victim v(python.victim(gt), gt);
    if (!wait_for(gt + "/ready", python.chroot ? 3000 : 60)) {  // a chroot may be built first
      ADD_FAILURE() << python.label() << ": victim did not start: " << v.stderr_text();
      return "";
    }
    const std::string bundle = gt + ".mlfx", core = gt + ".core";
    auto c = kit_->capture(v.pid(), bundle);
    write_file(gt + "/stop", "1");
    if (c.exit_code != 0) {
      ADD_FAILURE() << python.label() << ": capture failed: " << c.output;
      return "";
    }
    auto o = kit_->open_core(bundle, gt + ".opened", core);
    if (o.exit_code != 0) {
      ADD_FAILURE() << python.label() << ": " << o.output;
      return "";
    }
    return core;
  }

  static CaptureKit* kit_;
  TempDir dir;
};
CaptureKit* CpythonVersions::kit_ = nullptr;

// Every probe's attributes and dicts, read from the core, against the victim's truth.
void check_probes(const Interpreter& python, const std::string& core_path, const json::Json& truth) {
  SCOPED_TRACE(python.label());
  auto file = layers::FileLayer::open(core_path);
  ASSERT_TRUE(file) << file.error().to_string();
  auto core = layers::ElfCoreLayer::open(std::shared_ptr<const layers::Layer>(std::move(*file)));
  ASSERT_TRUE(core) << core.error().to_string();
  const layers::ProcessImage image = layers::ElfCoreLayer::process_image(std::move(*core));
  Diagnostics diag;
  auto rt = PythonRuntime::locate(*image.memory, image.mapped_files, diag);
  ASSERT_TRUE(rt) << rt.error().to_string();
  EXPECT_EQ(rt->version_hex(), truth["hexversion"].get<uint32_t>()) << rt->version();
  EXPECT_EQ(std::string(rt->layout().name), std::to_string(python.major) + "." + std::to_string(python.minor));
  ObjectReader reader(*image.memory, rt->layout(), diag);
  const std::vector<uint64_t> objects = rt->tracked_objects(diag);
  EXPECT_GT(objects.size(), 1000u);

  std::set<std::string> seen;
  size_t probes = 0;
  for (uint64_t obj : objects) {
    auto type = reader.type_info_of(obj);
    if (!type || (*type)->qualname != "Probe" || (*type)->module != "__main__") continue;
    auto attrs = reader.instance_dict(obj);
    ASSERT_TRUE(attrs) << attrs.error().to_string();
    std::string name;
    for (const auto& [k, v] : *attrs)
      if (k == "name") name = plain(reader, v).get<std::string>();
    // The truth is of a second set of probes made the same way: each name appears twice.
    if (!truth["probes"].contains(name)) {
      ADD_FAILURE() << "a Probe named '" << name << "' is not in the truth";
      continue;
    }
    SCOPED_TRACE("probe " + name);
    const json::Json& want = truth["probes"][name];
    json::Json order = json::Json::array();
    for (const auto& [k, v] : *attrs) {
      order.push_back(std::string(k));
      if (want["dicts"].contains(std::string(k))) {
        auto items = reader.dict_items(v);
        ASSERT_TRUE(items) << k << ": " << items.error().to_string();
        json::Json got = json::Json::array();
        for (const auto& [a, b] : *items) got.push_back({plain(reader, a), plain(reader, b)});
        EXPECT_EQ(got, want["dicts"][std::string(k)]) << "dict " << k;
      } else {
        EXPECT_EQ(plain(reader, v), want["attributes"][std::string(k)]) << "attribute " << k;
      }
    }
    EXPECT_EQ(order, want["order"]);
    seen.insert(name);
    ++probes;
  }
  for (const auto& [name, _] : truth["probes"].items()) EXPECT_TRUE(seen.count(name)) << "probe " << name << " not found";
  std::string how;
  for (const auto& c : rt->calibration()) how += "; " + c;
  std::printf("%s: CPython %s, %zu tracked objects, %zu probes read%s\n", python.path.c_str(), rt->version().c_str(),
              objects.size(), probes, how.c_str());
  for (const auto& w : diag.warnings()) ADD_FAILURE() << "warning: " << w;
}

TEST_F(CpythonVersions, EveryInterpreterOnThisMachine) {
  const auto all = interpreters();
  ASSERT_FALSE(all.empty()) << "no CPython 3 on this machine";
  size_t supported = 0;
  for (const auto& python : all) {
    const std::string gt = dir / ("py" + std::to_string(python.minor) + "-" + std::to_string(supported + 100));
    const std::string core = capture(python, gt);
    if (core.empty()) continue;
    if (python.minor < 8) {  // refused by name, with the reason
      auto file = layers::FileLayer::open(core);
      ASSERT_TRUE(file);
      auto elf = layers::ElfCoreLayer::open(std::shared_ptr<const layers::Layer>(std::move(*file)));
      ASSERT_TRUE(elf);
      const layers::ProcessImage image = layers::ElfCoreLayer::process_image(std::move(*elf));
      Diagnostics diag;
      auto rt = PythonRuntime::locate(*image.memory, image.mapped_files, diag);
      ASSERT_FALSE(rt) << python.label();
      EXPECT_EQ(rt.error().code(), Errc::kUnsupported) << rt.error().to_string();
      const std::string minor = "CPython 3." + std::to_string(python.minor);
      EXPECT_NE(rt.error().to_string().find("unsupported: " + minor), std::string::npos) << rt.error().to_string();
      EXPECT_NE(rt.error().to_string().find("supported: 3.8-"), std::string::npos) << rt.error().to_string();
    } else {
      auto truth = json::parse(read_file(gt + "/truth.json"), "truth");
      ASSERT_TRUE(truth);
      check_probes(python, core, *truth);
      ++supported;
    }
    fs::remove_all(gt + ".opened");
    fs::remove(gt + ".mlfx");
    fs::remove(core);
  }
  std::string found;
  for (const auto& p : all) found += " " + p.label();
  RecordProperty("interpreters", found);
  std::printf("interpreters:%s\n", found.c_str());
  EXPECT_GE(supported, 1u);
}

}  // namespace
}  // namespace mlfx
