// End to end: every common dtype, strided, offset, shared, 0-d, empty and expanded tensors are
// exported to .pt and .safetensors, then checked by check_exports.py against a ground truth
// written here: torch.load (Debian's python3-torch) for the .pt, a json+struct reader with
// numpy for the safetensors. Optionally repeated in Debian chroots with other torch versions.
#include <gtest/gtest.h>

#include <cstdlib>
#include <sstream>

#include "exporters/safetensors_writer.h"
#include "exporters/torch_pt_writer.h"
#include "python_util.h"
#include "sample_tensors.h"

namespace mlfx::exporters {
namespace {

using mlfx::testing::TempDir;
using testing::kSystemPython;

struct Exported {
  std::string truth, pt, safetensors;
};

Exported export_sample(const TempDir& dir, const testing::Sample& s) {
  const SafetensorsMetadata metadata = {{"format", "pt"}, {"source", "mlfx test"}};
  Exported e{dir / "truth.json", dir / "state_dict.pt", dir / "state_dict.safetensors"};
  mlfx::testing::write_file(e.truth, s.truth_json(metadata));
  auto pt = write_torch_state_dict(e.pt, s.tensors());
  EXPECT_TRUE(pt) << pt.error().to_string();
  auto st = write_safetensors(e.safetensors, s.safetensors_subset(), metadata);
  EXPECT_TRUE(st) << st.error().to_string();
  return e;
}

TEST(ExportersEndToEnd, TorchLoadAndIndependentSafetensorsReader) {
  if (!testing::python_has("numpy"))
    GTEST_SKIP() << kSystemPython << " with numpy is not available (install python3-numpy)";
  TempDir dir;
  testing::Sample s = testing::make_full_sample();
  Exported e = export_sample(dir, s);
  const std::string base = std::string(kSystemPython) + " " + testing::check_script() +
                           " --truth " + e.truth + " --safetensors " + e.safetensors;
  if (!testing::python_has("torch")) {
    auto r = mlfx::testing::run(base + " --pt " + e.pt + " --zip-only");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    GTEST_SKIP() << "safetensors and ZIP checked, but " << kSystemPython
                 << " cannot import torch (install python3-torch) so torch.load was not tried";
  }
  auto r = mlfx::testing::run(base + " --pt " + e.pt);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("OK pt: torch"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ALL OK"), std::string::npos) << r.output;
  std::cout << r.output;
}

// Debian chroots with python3-torch and numpy: MLFX_TORCH_CHROOTS (colon-separated), else the
// version matrix's trixie (torch 2.6, which loads with weights_only=True by default) and sid
// (torch 2.14) chroots (tests/matrix/chroots.py; skipped until they are built). Needs root for chroot(8).
TEST(ExportersEndToEnd, OtherTorchVersionsInChroots) {
  if (geteuid() != 0) GTEST_SKIP() << "chroot(8) needs root";
  const char* set = std::getenv("MLFX_TORCH_CHROOTS");
  std::string env = set ? set : "";
  if (env.empty()) {
    const std::string chroots = std::string(MLFX_EXPORTERS_TEST_DIR) + "/../matrix/chroots.py";
    // Built by the matrix tests (minutes each): not here, where a sanitizer stage may run first.
    auto missing = mlfx::testing::run("python3 " + chroots + " missing trixie sid");
    if (missing.exit_code == 0)
      GTEST_SKIP() << "the version matrix's chroots are not built yet (ctest -L matrix builds them): " << missing.output;
    for (const char* suite : {"trixie", "sid"}) {
      auto path = mlfx::testing::run("(python3 " + chroots + " path " + suite + " 2>/dev/null)");
      ASSERT_EQ(path.exit_code, 0) << "the " << suite << " chroot cannot be built: run " << chroots << " build "
                                   << suite;
      env += (env.empty() ? "" : ":") + path.output.substr(0, path.output.find('\n'));
    }
  }
  testing::Sample s = testing::make_full_sample();
  std::stringstream roots(env);
  std::string root;
  while (std::getline(roots, root, ':')) {
    SCOPED_TRACE(root);
    // The files must be inside the chroot to be seen from it.
    const std::string inside = "/tmp/mlfx-exporters-check-" + std::to_string(getpid());
    std::filesystem::create_directories(root + inside);
    struct Cleanup {
      std::string path;
      ~Cleanup() { std::filesystem::remove_all(path); }
    } cleanup{root + inside};
    TempDir dir;
    Exported e = export_sample(dir, s);
    for (const auto& [from, name] : {std::pair{e.truth, "truth.json"},
                                     std::pair{e.pt, "state_dict.pt"},
                                     std::pair{e.safetensors, "state_dict.safetensors"},
                                     std::pair{testing::check_script(), "check_exports.py"}})
      std::filesystem::copy_file(from, root + inside + "/" + name);
    auto r = mlfx::testing::run("chroot " + root + " /usr/bin/python3 " + inside +
                                "/check_exports.py --truth " + inside + "/truth.json --pt " +
                                inside + "/state_dict.pt --safetensors " + inside +
                                "/state_dict.safetensors");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::cout << root << ": " << r.output;
  }
}

}  // namespace
}  // namespace mlfx::exporters
