#include "rehost/recovered_model.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "exporters/safetensors_reader.h"
#include "mlfx/base/file.h"

namespace mlfx::rehost {

namespace {

constexpr size_t kMaxArchitectureJson = size_t{256} << 20;

std::vector<int64_t> int_list(const json::Json& j) {
  std::vector<int64_t> v;
  if (j.is_array())
    for (const auto& x : j)
      if (x.is_number_integer()) v.push_back(x.get<int64_t>());
  return v;
}

// Whether a (shape, stride, offset) view of `item` bytes per element stays inside a storage of
// `storage_bytes`: at::Tensor::set_ would silently grow the storage instead.
bool fits(const std::vector<int64_t>& shape, const std::vector<int64_t>& stride, int64_t offset, size_t item,
          uint64_t storage_bytes) {
  if (shape.size() != stride.size() || offset < 0) return false;
  __int128 last = offset;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0 || stride[i] < 0) return false;
    if (shape[i] == 0) return true;  // no element
    last += static_cast<__int128>(shape[i] - 1) * stride[i];
  }
  return (last + 1) * static_cast<__int128>(item) <= static_cast<__int128>(storage_bytes);
}

}  // namespace

at::Tensor to_tensor(const exporters::SafetensorsFile& file, const exporters::SafetensorsTensor& t) {
  auto type = static_cast<at::ScalarType>(t.dtype->scalar_type);
  at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(type));
  ByteView bytes = file.data(t);
  if (!bytes.empty()) std::memcpy(out.data_ptr(), bytes.data(), bytes.size());
  return out;
}

Result<torch::jit::Module> load_torchscript(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return fail(Errc::kNotFound, path + ": " + std::strerror(errno));
  std::string file = path;
  if (S_ISDIR(st.st_mode)) {
    MLFX_ASSIGN(std::string text, read_small_file(path + "/rehost.json", 64 << 20));
    auto r = json::Json::parse(text, nullptr, false);
    if (!r.is_object() || !r.contains("torchscript") || !r["torchscript"].is_string())
      return fail(Errc::kNotFound, path + " is not a `mlfx rehost` directory with a TorchScript model");
    file = path + "/" + r["torchscript"].get<std::string>();
  }
  try {
    return torch::jit::load(file);
  } catch (const std::exception& e) {
    std::string what = torch_error(e);
    return fail(Errc::kBadFormat, file + " is not a loadable TorchScript model: " + what.substr(0, what.find('\n')));
  }
}

std::string torch_error(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) {
    std::string w = c->what_without_backtrace();
    return w.substr(0, w.find('\n'));
  }
  std::string w = e.what();
  size_t end = w.find_last_not_of("\n ");
  if (end == std::string::npos) return w;
  w.erase(end + 1);
  const size_t line = w.rfind('\n');
  return line == std::string::npos ? w : w.substr(line + 1);
}

std::optional<at::ScalarType> scalar_type_named(const std::string& name) {
  for (const auto& d : exporters::dtype_table())
    if (d.torch_name == name || d.c10_name == name) return static_cast<at::ScalarType>(d.scalar_type);
  return std::nullopt;
}

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  at::Tensor x = a.contiguous().cpu(), y = b.contiguous().cpu();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

Result<RecoveredModel> load_recovered_model(const std::string& dir) {
  RecoveredModel m;
  m.dir = dir;
  MLFX_ASSIGN(std::string text, read_small_file(dir + "/architecture.json", kMaxArchitectureJson));
  m.architecture = json::Json::parse(text, nullptr, false);
  if (!m.architecture.is_object() || !m.architecture.contains("class"))
    return fail(Errc::kBadFormat, dir + "/architecture.json is not a module tree written by `mlfx recover`");
  MLFX_ASSIGN(auto state, exporters::SafetensorsFile::read(dir + "/state_dict.safetensors"));
  std::vector<std::pair<const exporters::SafetensorsFile*, bool>> files = {{&state, true}};
  std::optional<exporters::SafetensorsFile> extra;
  if (access((dir + "/non_persistent.safetensors").c_str(), F_OK) == 0) {
    MLFX_ASSIGN(extra, exporters::SafetensorsFile::read(dir + "/non_persistent.safetensors"));
    files.push_back({&*extra, false});
  }
  const json::Json meta = m.architecture.value("tensors", json::Json::object());
  m.exact_layout = !meta.empty();
  std::map<std::string, at::Tensor> storages;  // by the storage's address in the evidence
  try {
    for (const auto& [file, persistent] : files) {
      for (const auto& t : file->tensors()) {
        at::Tensor contiguous = to_tensor(*file, t);
        if (persistent) m.state_keys.push_back(t.name);
        const json::Json layout = meta.value(t.name, json::Json::object());
        if (!layout.contains("stride") || !layout.contains("storage_bytes")) {
          m.exact_layout = false;
          m.state[t.name] = contiguous;
          continue;
        }
        const std::string storage_id = layout.value("storage", "");
        const uint64_t storage_bytes = layout.value("storage_bytes", uint64_t{0});
        at::Tensor& storage = storages[storage_id];
        // A view may use a part of a bigger storage, but a damaged or hostile layout must
        // not make us allocate without bound.
        if (storage_bytes > 8 * file->data_bytes() + (uint64_t{64} << 20))
          return fail(Errc::kBadFormat, dir + ": " + t.name + ": storage of " + std::to_string(storage_bytes) +
                                            " bytes is implausibly large for this model");
        if (!storage.defined())
          storage = at::zeros({static_cast<int64_t>(storage_bytes)}, at::kByte);
        else if (static_cast<uint64_t>(storage.numel()) != storage_bytes)
          return fail(Errc::kBadFormat, dir + ": tensors of storage " + storage_id + " disagree on its size");
        const auto shape = int_list(layout["shape"]), stride = int_list(layout["stride"]);
        const int64_t offset = layout.value("storage_offset", int64_t{0});
        if (!fits(shape, stride, offset, contiguous.element_size(), storage_bytes))
          return fail(Errc::kBadFormat, dir + ": " + t.name + ": a tensor layout in architecture.json does not fit "
                                                              "its storage of " + std::to_string(storage_bytes) + " bytes");
        at::Tensor view = at::empty({0}, contiguous.options());
        view.set_(storage.storage(), offset, shape, stride);
        if (view.sizes() != contiguous.sizes())
          return fail(Errc::kBadFormat, dir + ": " + t.name + ": the shape in architecture.json differs from the safetensors file");
        view.copy_(contiguous);
        m.state[t.name] = view;
      }
    }
  } catch (const std::exception& e) {
    return fail(Errc::kBadFormat, dir + ": a tensor layout in architecture.json does not fit its storage: " +
                                      torch_error(e));
  }
  return m;
}

}  // namespace mlfx::rehost
