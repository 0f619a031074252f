// Unit tests of the rehost and scan building blocks: the safetensors reader on good and
// hostile files, the recovered-model loader (strides, shared storages), the TorchScript
// builder against direct ATen calls (bit for bit) and its refusals, the MAD outlier test,
// and PNG encoding.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "exporters/safetensors_reader.h"
#include "exporters/safetensors_writer.h"
#include "investigate/neural_cleanse.h"
#include "investigate/png_image.h"
#include "rehost/recovered_model.h"
#include "rehost/torchscript_builder.h"

namespace mlfx {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> file_of(const std::string& header_json, const std::string& data) {
  std::string h = header_json;
  while (h.size() % 8) h += ' ';
  std::vector<uint8_t> out(8);
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

TEST(SafetensorsReader, ReadsWhatTheWriterWrites) {
  float a[6] = {1, 2, 3, 4, 5, 6};
  int64_t b[2] = {-7, 9};
  exporters::TensorRecord ta, tb;
  ta.key = "layer.weight";
  ta.scalar_type = exporters::kFloat;
  ta.shape = {2, 3};
  ta.strides = {3, 1};
  ta.storage = {1, ByteView(reinterpret_cast<uint8_t*>(a), sizeof a), sizeof a, "cpu"};
  tb.key = "steps";
  tb.scalar_type = exporters::kLong;
  tb.shape = {2};
  tb.strides = {1};
  tb.storage = {2, ByteView(reinterpret_cast<uint8_t*>(b), sizeof b), sizeof b, "cpu"};
  const std::string path = ::testing::TempDir() + "/st_roundtrip.safetensors";
  fs::remove(path);
  ASSERT_TRUE(exporters::write_safetensors(path, std::vector{ta, tb}, {{"format", "pt"}}));
  auto f = exporters::SafetensorsFile::read(path);
  ASSERT_TRUE(f) << f.error().to_string();
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->tensors()[0].name, "layer.weight");
  EXPECT_EQ(f->tensors()[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f->metadata().at("format"), "pt");
  ByteView d = f->data(*f->find("steps"));
  ASSERT_EQ(d.size(), sizeof b);
  EXPECT_EQ(std::memcmp(d.data(), b, sizeof b), 0);
}

TEST(SafetensorsReader, RefusesHostileFiles) {
  const std::string eight(8, 'x');
  struct Case {
    std::vector<uint8_t> bytes;
    const char* why;
  } cases[] = {
      {{1, 2, 3}, "shorter than"},
      {{255, 255, 255, 255, 255, 255, 255, 255}, "exceeds the file"},
      {file_of("[1,2]", ""), "not a JSON object"},
      {file_of(R"({"t":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}})", "abcd"), "unknown dtype"},
      {file_of(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,4]}})", "abcd"), "do not match"},
      {file_of(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,99]}})", "abcd"), "outside the data"},
      {file_of(R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "abcd"), "bad dimension"},
      {file_of(R"({"t":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}})", "abcd"), "larger than the file"},
      {file_of(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight), "overlap"},
      {file_of(R"({"t":{"dtype":"F32","shape":[1]}})", "abcd"), "lacks"},
      {file_of(R"({"__metadata__":{"k":1}})", ""), "not a string"},
  };
  for (const auto& c : cases) {
    auto f = exporters::SafetensorsFile::parse(c.bytes, "case");
    ASSERT_FALSE(f) << c.why;
    EXPECT_NE(f.error().to_string().find(c.why), std::string::npos) << f.error().to_string();
  }
}

// A model directory as `mlfx recover` writes it, from the tensors given.
void write_model_dir(const std::string& dir, const json::Json& tree, const std::vector<exporters::TensorRecord>& tensors,
                     const json::Json& tensor_meta) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  ASSERT_TRUE(exporters::write_safetensors(dir + "/state_dict.safetensors", tensors, {}));
  json::Json arch = tree;
  arch["tensors"] = tensor_meta;
  std::ofstream(dir + "/architecture.json") << arch.dump();
}

exporters::TensorRecord record(const std::string& key, const at::Tensor& t) {
  exporters::TensorRecord r;
  r.key = key;
  r.scalar_type = static_cast<int>(t.scalar_type());
  r.shape = t.sizes().vec();
  r.strides = t.strides().vec();
  r.storage_offset = t.storage_offset();
  r.storage = {reinterpret_cast<uint64_t>(t.storage().data()),
               ByteView(static_cast<const uint8_t*>(t.storage().data()), t.storage().nbytes()), t.storage().nbytes(), "cpu"};
  return r;
}

json::Json layout(const at::Tensor& t) {
  return {{"storage", std::to_string(reinterpret_cast<uint64_t>(t.storage().data()))},
          {"shape", t.sizes().vec()}, {"stride", t.strides().vec()}, {"storage_offset", t.storage_offset()},
          {"storage_bytes", t.storage().nbytes()}, {"dtype", "float32"}};
}

json::Json module(const std::string& path, const std::string& cls, json::Json attrs,
                  std::vector<std::string> params = {}, json::Json children = json::Json::array()) {
  json::Json p = json::Json::array();
  for (const auto& n : params) p.push_back({{"name", n}, {"none", false}});
  return {{"path", path}, {"class", "torch.nn.modules." + cls}, {"training", false}, {"attributes", attrs},
          {"parameters", p}, {"buffers", json::Json::array()}, {"children", children}, {"address", "0x" + path}};
}

TEST(RecoveredModel, KeepsStridesAndSharedStorages) {
  at::manual_seed(3);
  at::Tensor base = at::randn({6, 4});
  at::Tensor transposed = base.t();              // strides (1, 4)
  at::Tensor slice = base.slice(0, 2, 5);        // offset 8 in the same storage
  const std::string dir = ::testing::TempDir() + "/rm_layout";
  json::Json tree = module("", "container.Sequential", json::Json::object());
  write_model_dir(dir, tree, {record("a", transposed), record("b", slice)}, {{"a", layout(transposed)}, {"b", layout(slice)}});
  auto m = rehost::load_recovered_model(dir);
  ASSERT_TRUE(m) << m.error().to_string();
  EXPECT_TRUE(m->exact_layout);
  const at::Tensor& a = m->state.at("a");
  const at::Tensor& b = m->state.at("b");
  EXPECT_EQ(a.strides().vec(), (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(b.storage_offset(), 8);
  EXPECT_EQ(a.storage().data(), b.storage().data()) << "shared storage not rebuilt";
  EXPECT_TRUE(rehost::same_bits(a, transposed));
  EXPECT_TRUE(rehost::same_bits(b, slice));
}

TEST(RecoveredModel, RefusesALayoutOutsideItsStorage) {
  at::Tensor t = at::randn({4});
  const std::string dir = ::testing::TempDir() + "/rm_bad";
  json::Json meta = layout(t);
  meta["storage_offset"] = 3;  // 3 + 4 elements > a 16-byte storage
  write_model_dir(dir, module("", "container.Sequential", json::Json::object()), {record("a", t)}, {{"a", meta}});
  auto m = rehost::load_recovered_model(dir);
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().to_string().find("does not fit"), std::string::npos) << m.error().to_string();
}

// Sequential(Conv2d(3, 4, 3, padding=1, reflect), BatchNorm2d(4), ReLU6, MaxPool2d(2), Flatten, Linear(64, 5)):
// the built module must compute exactly what the same ATen calls compute.
TEST(TorchScriptBuilder, MatchesATenBitForBit) {
  at::manual_seed(5);
  at::Tensor cw = at::randn({4, 3, 3, 3}), cb = at::randn({4});
  at::Tensor bw = at::rand({4}), bb = at::randn({4}), mean = at::randn({4}), var = at::rand({4}) + 0.5;
  at::Tensor lw = at::randn({5, 64}), lb = at::randn({5});
  json::Json conv = module("0", "conv.Conv2d",
                           {{"stride", {1, 1}}, {"padding", {1, 1}}, {"dilation", {1, 1}}, {"groups", 1},
                            {"padding_mode", "reflect"}, {"_reversed_padding_repeated_twice", {1, 1, 1, 1}},
                            {"output_padding", {0, 0}}, {"transposed", false}},
                           {"weight", "bias"});
  json::Json bn = module("1", "batchnorm.BatchNorm2d", {{"eps", 1e-5}, {"momentum", 0.1}, {"track_running_stats", true}},
                         {"weight", "bias"});
  bn["buffers"] = {{{"name", "running_mean"}, {"none", false}}, {{"name", "running_var"}, {"none", false}}};
  json::Json children = {conv, bn, module("2", "activation.ReLU6", json::Json::object()),
                         module("3", "pooling.MaxPool2d", {{"kernel_size", 2}, {"stride", 2}, {"padding", 0}, {"dilation", 1},
                                                           {"ceil_mode", false}, {"return_indices", false}}),
                         module("4", "flatten.Flatten", {{"start_dim", 1}, {"end_dim", -1}}),
                         module("5", "linear.Linear", json::Json::object(), {"weight", "bias"})};
  rehost::RecoveredModel m;
  m.architecture = module("", "container.Sequential", json::Json::object(), {}, children);
  m.state = {{"0.weight", cw}, {"0.bias", cb}, {"1.weight", bw}, {"1.bias", bb}, {"1.running_mean", mean},
             {"1.running_var", var}, {"5.weight", lw}, {"5.bias", lb}};
  auto built = rehost::build_torchscript(m);
  ASSERT_TRUE(built.module) << (built.unsupported.empty() ? "" : built.unsupported[0].reason);
  at::Tensor x = at::rand({2, 3, 8, 8});
  torch::NoGradGuard no_grad;
  at::Tensor got = built.module->forward({x}).toTensor();
  at::Tensor y = at::conv2d(at::pad(x, {1, 1, 1, 1}, "reflect"), cw, cb, at::IntArrayRef{1, 1}, at::IntArrayRef{0, 0}, at::IntArrayRef{1, 1}, 1);
  y = at::batch_norm(y, bw, bb, mean, var, false, 0.1, 1e-5, true);
  y = at::relu6(y);
  y = at::max_pool2d(y, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false).flatten(1);
  y = at::linear(y, lw, lb);
  EXPECT_TRUE(rehost::same_bits(got, y));
  EXPECT_EQ(built.classes.at("torch.nn.modules.conv.Conv2d"), 1);
}

TEST(TorchScriptBuilder, SaysWhatItCannotBuild) {
  json::Json children = {module("0", "linear.Linear", json::Json::object(), {"weight"}),
                         module("1", "pooling.MaxPool2d", {{"kernel_size", 2}}),  // stride, padding... missing
                         {{"path", "2"}, {"class", "__main__.Custom"}, {"training", false}, {"attributes", json::Json::object()},
                          {"parameters", json::Json::array()}, {"buffers", json::Json::array()}, {"children", json::Json::array()}}};
  rehost::RecoveredModel m;
  m.architecture = module("", "container.Sequential", json::Json::object(), {}, children);
  m.state = {{"0.weight", at::randn({2, 2})}};
  auto built = rehost::build_torchscript(m);
  EXPECT_FALSE(built.module);
  ASSERT_EQ(built.unsupported.size(), 2u);
  EXPECT_EQ(built.unsupported[0].module, "1");
  EXPECT_NE(built.unsupported[0].reason.find("ceil_mode"), std::string::npos) << built.unsupported[0].reason;
  EXPECT_EQ(built.unsupported[1].cls, "__main__.Custom");
  EXPECT_NE(built.unsupported[1].reason.find("not a torch.nn class"), std::string::npos);
}

TEST(MadAnomaly, FlagsTheSmallOutlierOnly) {
  // The Neural Cleanse README's shape: one class far below the rest.
  std::vector<double> l1 = {64, 61, 70, 66, 16.1, 59, 72, 63, 68, 90};
  auto a = investigate::mad_anomaly(l1, 2.0);
  EXPECT_DOUBLE_EQ(a.median, 65);
  EXPECT_NEAR(a.mad, 1.4826 * 4.5, 1e-12);
  for (size_t i = 0; i < l1.size(); ++i) EXPECT_EQ(a.flagged[i], i == 4) << i;  // 90 is high: never flagged
  EXPECT_NEAR(a.index[4], (65 - 16.1) / (1.4826 * 4.5), 1e-12);
  auto flat = investigate::mad_anomaly({3, 3, 3}, 2.0);  // MAD 0: no index, nothing flagged
  EXPECT_EQ(flat.flagged, (std::vector<bool>{false, false, false}));
}

TEST(Png, EncodesGrayAndColour) {
  investigate::Image g{3, 2, 1, {0, 64, 128, 192, 255, 7}};
  auto png = investigate::encode_png(g);
  ASSERT_TRUE(png);
  ASSERT_GT(png->size(), 33u);
  EXPECT_EQ(png->substr(1, 3), "PNG");
  EXPECT_EQ(static_cast<uint8_t>((*png)[19]), 3);  // IHDR width
  EXPECT_EQ(static_cast<uint8_t>((*png)[23]), 2);  // IHDR height
  investigate::Image big = investigate::enlarge(investigate::Image{1, 1, 3, {1, 2, 3}}, 4);
  EXPECT_EQ(big.width, 4u);
  EXPECT_EQ(big.pixels.size(), 48u);
  EXPECT_FALSE(investigate::encode_png(investigate::Image{2, 2, 3, {1}}));
}

}  // namespace
}  // namespace mlfx
