// Self-calibration of the layouts: a tensor laid out as each torch release lays it out reads
// through that release's table; one no table describes is read through a layout derived from
// its invariants and named so; one whose invariants fail is refused as unsupported, never read
// wrong. A free-threaded CPython is refused by what its _Py_DebugOffsets says.
#include <gtest/gtest.h>

#include "frontends/cpython/python_runtime.h"
#include "frontends/torch/tensor_reader.h"
#include "layers/elf_core_layer.h"
#include "layers/file_layer.h"
#include "layers/segmented_layer.h"
#include "synthetic_image.h"
#include "test_util.h"

namespace mlfx {
namespace {

using frontends::cpython::layout_for;
using frontends::cpython::ObjectReader;
using frontends::torch::TensorReader;
using frontends::torch::TorchLayout;
using fuzz::Blob;
using fuzz::PyHeap;

class TorchCalibration : public ::testing::Test {
 protected:
  TorchCalibration() : py(blob) {
    const uint64_t base = py.type("torch._C.TensorBase", 0);
    tensor_type = py.heap_type("torch", "Tensor", 0, {base});
  }
  // The image as built so far, and a fresh reader over it.
  TensorReader& reader() {
    blob.bytes.resize((blob.bytes.size() + 15) / 16 * 16);
    auto flat = std::make_shared<fuzz::MemoryLayer>(blob.bytes);
    auto seg = layers::SegmentedLayer::create("image", flat, {{blob.base, blob.bytes.size(), 0}});
    EXPECT_TRUE(seg);
    mem = std::move(*seg);
    objects = std::make_unique<ObjectReader>(*mem, *layout_for(0x030B0200), diag);
    tensors = std::make_unique<TensorReader>(*objects);
    return *tensors;
  }

  Blob blob{0x10000};
  PyHeap py;
  uint64_t tensor_type = 0;
  Diagnostics diag;
  std::unique_ptr<layers::Layer> mem;
  std::unique_ptr<ObjectReader> objects;
  std::unique_ptr<TensorReader> tensors;
};

TEST_F(TorchCalibration, EachReleaseReadsThroughItsOwnTable) {
  for (const TorchLayout* l : frontends::torch::kTorchLayouts) {
    SCOPED_TRACE(l->name);
    const uint64_t t = fuzz::make_tensor(py, tensor_type, {3, 4}, false, *l);
    TensorReader& r = reader();
    auto info = r.read(t);
    ASSERT_TRUE(info) << info.error().to_string();
    EXPECT_EQ(r.layout_name(), l->name);
    EXPECT_EQ(info->sizes, (std::vector<int64_t>{3, 4}));
    EXPECT_EQ(info->strides, (std::vector<int64_t>{4, 1}));
    EXPECT_EQ(info->numel, 12);
    EXPECT_EQ(info->storage_bytes, 48u);
    EXPECT_EQ(info->scalar_type, 6);
  }
}

TEST_F(TorchCalibration, ATensorWhoseDataTheImageLacksStillHasItsLayout) {
  // Its data in a file mapping the evidence did not capture (or swapped out).
  const auto& L = frontends::torch::kTorch23To29;
  const uint64_t t = fuzz::make_tensor(py, tensor_type, {4, 4}, false, L);
  const uint64_t impl = *reinterpret_cast<uint64_t*>(blob.at(t + L.thp_impl));
  const uint64_t storage = *reinterpret_cast<uint64_t*>(blob.at(impl + L.impl_storage));
  blob.put64(storage + L.storage_data, 0x7fff00000000);
  TensorReader& r = reader();
  auto info = r.read(t);
  ASSERT_TRUE(info) << info.error().to_string();
  EXPECT_EQ(r.layout_name(), L.name);
  EXPECT_EQ(info->data, 0x7fff00000000u);
}

TEST_F(TorchCalibration, AnUnknownReleaseIsReadThroughALayoutDerivedFromItsInvariants) {
  // A PyObject slot 16 bytes further than any table has it (a release with a bigger slot).
  TorchLayout moved = frontends::torch::kTorch23To29;
  moved.impl_pyobj += 16;
  moved.impl_sizes_and_strides += 16;
  moved.impl_storage_offset += 16;
  moved.impl_numel += 16;
  moved.impl_dtype += 16;
  const uint64_t t = fuzz::make_tensor(py, tensor_type, {2, 1, 5}, false, moved);
  TensorReader& r = reader();
  auto info = r.read(t);
  ASSERT_TRUE(info) << info.error().to_string();
  EXPECT_EQ(r.layout_name().rfind("derived from invariants (no table fits): TensorImpl* at THPVariable+24, "
                                  "PyObject slot at TensorImpl+72",
                                  0),
            0u)
      << r.layout_name();
  EXPECT_EQ(info->sizes, (std::vector<int64_t>{2, 1, 5}));
  EXPECT_EQ(info->numel, 10);
  EXPECT_EQ(info->storage_bytes, 40u);
}

TEST_F(TorchCalibration, ATensorWhoseInvariantsFailIsRefusedNotRead) {
  // Its TensorImpl does not point back to it.
  const uint64_t t = fuzz::make_tensor(py, tensor_type, {3}, false, frontends::torch::kTorch210);
  const uint64_t impl = *reinterpret_cast<uint64_t*>(blob.at(t + 16));
  blob.put64(impl + 48, t + 8);
  TensorReader& refused = reader();
  auto info = refused.read(t);
  ASSERT_FALSE(info);
  EXPECT_EQ(refused.layout(), nullptr);
  EXPECT_EQ(refused.unsupported().rfind("unsupported: no torch layout table fits", 0), 0u) << refused.unsupported();
  EXPECT_EQ(info.error().code(), Errc::kUnsupported);
  EXPECT_NE(info.error().to_string().find("unsupported: no torch layout table fits"), std::string::npos)
      << info.error().to_string();

  // Its numel is not the product of its sizes, under every table.
  const uint64_t u = fuzz::make_tensor(py, tensor_type, {3, 2});
  const uint64_t uimpl = *reinterpret_cast<uint64_t*>(blob.at(u + 24));
  blob.put64(uimpl + frontends::torch::kTorchUpTo22.impl_numel, 7);
  TensorReader& r = reader();
  EXPECT_FALSE(r.read(u));
  EXPECT_EQ(r.layout(), nullptr);
}

// The interpreter in the core of a synthetic process (with what locate() warned of in `diag`).
Result<frontends::cpython::PythonRuntime> locate_in(fuzz::PythonProcess& proc, Diagnostics& diag) {
  proc.track({});
  testing::TempDir dir;
  const std::string path = dir / "core";
  testing::write_file(path, proc.core());
  MLFX_ASSIGN(auto file, layers::FileLayer::open(path));
  MLFX_ASSIGN(auto core, layers::ElfCoreLayer::open(std::shared_ptr<const layers::Layer>(std::move(file))));
  // The runtime reads through the core while it is used: keep the core alive with the test.
  static std::vector<std::shared_ptr<const layers::ElfCoreLayer>> kept;
  kept.emplace_back(std::move(core));
  return frontends::cpython::PythonRuntime::locate(*kept.back(), kept.back()->info().files, diag);
}

// A core of a CPython that publishes _Py_DebugOffsets with free_threaded set.
TEST(CpythonCalibration, AFreeThreadedBuildIsRefusedAsUnsupported) {
  fuzz::PythonProcess proc;
  proc.publish_debug_offsets(0x030D03F0, true);
  Diagnostics diag;
  auto rt = locate_in(proc, diag);
  ASSERT_FALSE(rt);
  EXPECT_EQ(rt.error().code(), Errc::kUnsupported);
  EXPECT_NE(rt.error().to_string().find("unsupported: CPython 3.13 "), std::string::npos) << rt.error().to_string();
  EXPECT_NE(rt.error().to_string().find("free-threaded build"), std::string::npos) << rt.error().to_string();
}

// The same image without the flag is read, and says how it was calibrated.
TEST(CpythonCalibration, ThePlainBuildOfTheSameImageIsRead) {
  fuzz::PythonProcess proc;
  Diagnostics diag;
  auto rt = locate_in(proc, diag);
  ASSERT_TRUE(rt) << rt.error().to_string();
  EXPECT_EQ(rt->version(), "3.11.2");
  EXPECT_EQ(rt->calibration(), (std::vector<std::string>{"version from Py_Version", "sys.hexversion agrees"}));
  EXPECT_TRUE(diag.warnings().empty());
}

}  // namespace
}  // namespace mlfx
