// Builders for synthetic process images, used by make_corpus to write the seeds of the
// elf_core and python_objects targets and by the hostile-memory tests: a flat memory blob at
// a base address holding CPython 3.11 objects (types, str, int, float, tuple, list, set,
// dicts, a torch-like module tree with tensors), and an ELF core around such a blob
// (PythonProcess: PT_LOADs, a PT_NOTE with NT_PRSTATUS, NT_PRPSINFO, NT_AUXV and NT_FILE, a
// loaded "libpython" with a dynamic symbol table).
//
// Offsets follow analyzer/frontends/cpython/layout.cc (3.11) and torch/torch_layout.h.
#pragma once

#include <elf.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "frontends/torch/torch_layout.h"
#include "layers/layer.h"

namespace mlfx::fuzz {

// A Layer over a byte vector: address = offset (what a SegmentedLayer maps a blob through).
class MemoryLayer : public layers::Layer {
 public:
  explicit MemoryLayer(std::vector<uint8_t> bytes) : bytes_(std::move(bytes)) {}
  const std::string& name() const override { return name_; }
  const uint8_t* view(uint64_t addr, uint64_t len) const override {
    if (addr > bytes_.size() || len > bytes_.size() - addr) return nullptr;
    return bytes_.data() + addr;
  }
  uint64_t mapped_run(uint64_t addr, uint64_t max) const override {
    if (addr >= bytes_.size()) return 0;
    return std::min<uint64_t>(max, bytes_.size() - addr);
  }

 private:
  std::string name_ = "memory blob";
  std::vector<uint8_t> bytes_;
};

// Little-endian memory at a fixed base address, grown by bump allocation.
struct Blob {
  uint64_t base = 0;
  std::vector<uint8_t> bytes;

  explicit Blob(uint64_t b) : base(b) {}
  uint64_t end() const { return base + bytes.size(); }
  uint64_t alloc(size_t n, size_t align = 16) {
    size_t off = (bytes.size() + align - 1) / align * align;
    bytes.resize(off + n, 0);
    return base + off;
  }
  uint8_t* at(uint64_t addr) { return bytes.data() + (addr - base); }
  void put8(uint64_t addr, uint8_t v) { *at(addr) = v; }
  void put16(uint64_t addr, uint16_t v) { std::memcpy(at(addr), &v, 2); }
  void put32(uint64_t addr, uint32_t v) { std::memcpy(at(addr), &v, 4); }
  void put64(uint64_t addr, uint64_t v) { std::memcpy(at(addr), &v, 8); }
  uint64_t get64(uint64_t addr) {
    uint64_t v;
    std::memcpy(&v, at(addr), 8);
    return v;
  }
  uint64_t cstring(const std::string& s) {
    uint64_t a = alloc(s.size() + 1, 1);
    std::memcpy(at(a), s.data(), s.size());
    return a;
  }
};

// CPython 3.11 objects in a Blob.
class PyHeap {
 public:
  static constexpr uint64_t kHeapType = 1ull << 9, kManagedDict = 1ull << 4, kLong = 1ull << 24,
                            kList = 1ull << 25, kTuple = 1ull << 26, kUnicode = 1ull << 28,
                            kDict = 1ull << 29, kTypeSub = 1ull << 31;

  explicit PyHeap(Blob& b) : b_(b) {
    type_type = raw_type("type", kTypeSub);
    b_.put64(type_type + 8, type_type);
    object_type = type("object", 0);
    set_mro(type_type, {});  // (type, object), which the runtime's layout check reads
    str_type = type("str", kUnicode);
    int_type = type("int", kLong);
    bool_type = type("bool", kLong);
    float_type = type("float", 0);
    tuple_type = type("tuple", kTuple);
    list_type = type("list", kList);
    set_type = type("set", 0);
    dict_type = type("dict", kDict);
    none_type = type("NoneType", 0);
    odict_type = type("collections.OrderedDict", kDict);
    none = object(none_type, 16);
  }

  Blob& blob() { return b_; }

  // A static (non-heap) type: module and qualname come from the dotted tp_name.
  uint64_t type(const std::string& name, uint64_t flags, std::vector<uint64_t> bases = {}) {
    uint64_t t = raw_type(name, flags);
    b_.put64(t + 8, type_type);
    set_mro(t, bases);
    return t;
  }
  // A heap type with __module__ in its tp_dict.
  uint64_t heap_type(const std::string& module, const std::string& name, uint64_t flags,
                     std::vector<uint64_t> bases) {
    uint64_t t = raw_type(name, flags | kHeapType);
    b_.put64(t + 8, type_type);
    b_.put64(t + 864, str(name));  // ht_qualname
    b_.put64(t + 264, dict({{str("__module__"), str(module)}}));
    set_mro(t, bases);
    return t;
  }

  uint64_t object(uint64_t type, size_t size) {
    uint64_t o = b_.alloc(size);
    b_.put64(o + 8, type);
    b_.put64(o, 1);  // refcount
    return o;
  }
  uint64_t str(const std::string& s) {  // compact ASCII
    uint64_t o = b_.alloc(48 + s.size() + 1);
    b_.put64(o, 1);
    b_.put64(o + 8, str_type);
    b_.put64(o + 16, s.size());
    b_.put32(o + 32, (1u << 2) | (1u << 5) | (1u << 6));
    std::memcpy(b_.at(o + 48), s.data(), s.size());
    return o;
  }
  uint64_t ustr(const std::u16string& s) {  // compact, 2-byte kind
    uint64_t o = b_.alloc(72 + 2 * (s.size() + 1));
    b_.put64(o + 8, str_type);
    b_.put64(o + 16, s.size());
    b_.put32(o + 32, (2u << 2) | (1u << 5));
    for (size_t i = 0; i < s.size(); ++i) b_.put16(o + 72 + 2 * i, s[i]);
    return o;
  }
  uint64_t integer(int64_t v, uint64_t type = 0) {
    uint64_t mag = v < 0 ? uint64_t(-v) : uint64_t(v);
    std::vector<uint32_t> digits;
    while (mag) digits.push_back(mag & 0x3fffffff), mag >>= 30;
    uint64_t o = b_.alloc(24 + 4 * std::max<size_t>(digits.size(), 1));
    b_.put64(o + 8, type ? type : int_type);
    b_.put64(o + 16, v < 0 ? uint64_t(-int64_t(digits.size())) : digits.size());
    for (size_t i = 0; i < digits.size(); ++i) b_.put32(o + 24 + 4 * i, digits[i]);
    return o;
  }
  uint64_t big_integer(size_t ndigits) {
    uint64_t o = b_.alloc(24 + 4 * ndigits);
    b_.put64(o + 8, int_type);
    b_.put64(o + 16, ndigits);
    for (size_t i = 0; i < ndigits; ++i) b_.put32(o + 24 + 4 * i, uint32_t(0x2345678 + i * 77777) & 0x3fffffff);
    return o;
  }
  uint64_t boolean(bool v) { return integer(v ? 1 : 0, bool_type); }
  uint64_t real(double d) {
    uint64_t o = object(float_type, 24);
    std::memcpy(b_.at(o + 16), &d, 8);
    return o;
  }
  uint64_t tuple(const std::vector<uint64_t>& items) {
    uint64_t o = b_.alloc(24 + 8 * items.size());
    b_.put64(o + 8, tuple_type);
    b_.put64(o + 16, items.size());
    for (size_t i = 0; i < items.size(); ++i) b_.put64(o + 24 + 8 * i, items[i]);
    return o;
  }
  uint64_t list(const std::vector<uint64_t>& items) {
    uint64_t o = object(list_type, 40);
    b_.put64(o + 16, items.size());
    uint64_t arr = b_.alloc(8 * std::max<size_t>(items.size(), 1));
    for (size_t i = 0; i < items.size(); ++i) b_.put64(arr + 8 * i, items[i]);
    b_.put64(o + 24, arr);
    return o;
  }
  uint64_t set(const std::vector<uint64_t>& items) {
    uint64_t mask = 7;
    while (mask + 1 < items.size() * 2) mask = mask * 2 + 1;
    uint64_t o = object(set_type, 200);
    uint64_t table = b_.alloc(16 * (mask + 1));
    for (size_t i = 0; i < items.size(); ++i) {
      b_.put64(table + 16 * ((i * 5 + 1) & mask), items[i]);
      b_.put64(table + 16 * ((i * 5 + 1) & mask) + 8, 1234 + i);
    }
    b_.put64(o + 16, items.size());
    b_.put64(o + 32, mask);
    b_.put64(o + 40, table);
    return o;
  }
  // 3.11 keys object; kind 1 (unicode: {key, value}) or 0 (general: {hash, key, value}).
  uint64_t keys(const std::vector<std::pair<uint64_t, uint64_t>>& items, int kind = 1) {
    uint8_t log2 = 3;
    while ((1u << log2) * 2 < items.size() * 3) ++log2;
    const uint64_t esize = kind == 0 ? 24 : 16;
    // Entries past nentries are never read: only those are allocated (big dicts stay small).
    uint64_t k = b_.alloc(32 + (1u << log2) + esize * std::max<size_t>(items.size(), 1));
    b_.put64(k, 1);
    b_.put8(k + 8, log2);
    b_.put8(k + 9, log2);  // 1-byte indices
    b_.put8(k + 10, uint8_t(kind));
    b_.put64(k + 16, (1u << log2) * 2 / 3 - items.size());  // usable
    b_.put64(k + 24, items.size());
    for (size_t i = 0; i < (1u << log2); ++i) b_.put8(k + 32 + i, 0xff);
    uint64_t e = k + 32 + (1u << log2);
    for (size_t i = 0; i < items.size(); ++i) {
      b_.put8(k + 32 + i, uint8_t(i));
      if (kind == 0) {
        b_.put64(e + 24 * i, 0x5555 + i);
        b_.put64(e + 24 * i + 8, items[i].first);
        b_.put64(e + 24 * i + 16, items[i].second);
      } else {
        b_.put64(e + 16 * i, items[i].first);
        b_.put64(e + 16 * i + 8, items[i].second);
      }
    }
    return k;
  }
  uint64_t dict(const std::vector<std::pair<uint64_t, uint64_t>>& items, int kind = 1, uint64_t type = 0) {
    uint64_t o = object(type ? type : dict_type, 64);
    b_.put64(o + 16, items.size());
    b_.put64(o + 32, keys(items, kind));
    return o;
  }
  // Split values for `keys` (as from keys()): the insertion-order bytes lie before them.
  uint64_t split_values(const std::vector<uint64_t>& values, const std::vector<uint8_t>& order) {
    uint64_t prefix = (order.size() + 2 + 7) / 8 * 8;
    uint64_t v = b_.alloc(prefix + 8 * values.size()) + prefix;
    b_.put8(v - 1, uint8_t(prefix));
    b_.put8(v - 2, uint8_t(order.size()));
    for (size_t i = 0; i < order.size(); ++i) b_.put8(v - 3 - i, order[i]);
    for (size_t i = 0; i < values.size(); ++i) b_.put64(v + 8 * i, values[i]);
    return v;
  }
  uint64_t split_dict(const std::vector<std::pair<uint64_t, uint64_t>>& items) {
    std::vector<std::pair<uint64_t, uint64_t>> names;
    std::vector<uint64_t> values;
    std::vector<uint8_t> order;
    for (size_t i = 0; i < items.size(); ++i) {
      names.emplace_back(items[i].first, 0);
      values.push_back(items[i].second);
      order.push_back(uint8_t(items.size() - 1 - i));
    }
    uint64_t o = object(dict_type, 64);
    b_.put64(o + 16, items.size());
    b_.put64(o + 32, keys(names));
    b_.put64(o + 40, split_values(values, order));
    return o;
  }
  uint64_t ordered_dict(const std::vector<std::pair<uint64_t, uint64_t>>& items) {
    uint64_t o = dict(items, 1, odict_type);
    uint64_t prev = 0, first = 0;
    for (size_t i = items.size(); i-- > 0;) {  // node order: reversed insertion order
      uint64_t n = b_.alloc(32);
      b_.put64(n, items[i].first);
      b_.put64(n + 8, 99);
      if (prev) b_.put64(prev + 16, n), b_.put64(n + 24, prev);
      else first = n;
      prev = n;
    }
    b_.put64(o + 48, first);
    return o;
  }

  // An instance whose type has Py_TPFLAGS_MANAGED_DICT: the 3.11 pre-header holds
  // [values @-32][dict @-24][PyGC_Head @-16]. Returns the object address.
  uint64_t managed_instance(uint64_t type, size_t size) {
    uint64_t pre = b_.alloc(32 + size);
    uint64_t o = pre + 32;
    b_.put64(o, 1);
    b_.put64(o + 8, type);
    return o;
  }

  uint64_t type_type = 0, object_type = 0, str_type = 0, int_type = 0, bool_type = 0, float_type = 0,
           tuple_type = 0, list_type = 0, set_type = 0, dict_type = 0, none_type = 0, odict_type = 0,
           none = 0;

 private:
  uint64_t raw_type(const std::string& name, uint64_t flags) {
    uint64_t t = b_.alloc(880);
    b_.put64(t, 1);
    b_.put64(t + 24, b_.cstring(name));
    b_.put64(t + 32, 64);
    b_.put64(t + 168, flags);
    return t;
  }
  void set_mro(uint64_t t, std::vector<uint64_t> bases) {
    bases.insert(bases.begin(), t);
    if (object_type && t != object_type) bases.push_back(object_type);
    uint64_t mro = b_.alloc(24 + 8 * bases.size());
    b_.put64(mro + 8, tuple_type ? tuple_type : t);  // (the tuple type's own MRO comes first)
    b_.put64(mro + 16, bases.size());
    for (size_t i = 0; i < bases.size(); ++i) b_.put64(mro + 24 + 8 * i, bases[i]);
    b_.put64(t + 344, mro);
  }
  Blob& b_;
};

// A torch-like model: Sequential-ish root module holding a Linear child (managed dict with a
// split values array and the type's cached keys), a Parameter and a buffer, with TensorImpls
// and StorageImpls laid out per torch_layout.h.
struct TorchModel {
  uint64_t root = 0, child = 0;
  std::vector<uint64_t> tensors;
  std::vector<uint64_t> all_objects;  // what a GC walk lists (managed instances only)
};

// A float32 tensor laid out per `L` (the storage's data zero-filled, CPU).
inline uint64_t make_tensor(PyHeap& py, uint64_t tensor_type, std::vector<int64_t> sizes, bool many_dims = false,
                            const frontends::torch::TorchLayout& L = frontends::torch::kTorchUpTo22) {
  Blob& b = py.blob();
  uint64_t obj = py.object(tensor_type, 48);
  uint64_t impl = b.alloc(L.impl_dtype + 16);
  uint64_t storage = b.alloc(std::max<uint32_t>(64, L.storage_size_bytes + 16));
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  uint64_t data = b.alloc(4 * numel);
  const uint64_t dims = impl + L.impl_sizes_and_strides;
  b.put64(obj + L.thp_impl, impl);
  b.put64(impl + L.impl_storage, storage);
  b.put64(impl + L.impl_pyobj, obj);
  b.put64(dims, sizes.size());
  std::vector<int64_t> strides(sizes.size(), 1);
  for (size_t i = sizes.size(); i-- > 1;) strides[i - 1] = strides[i] * sizes[i];
  if (many_dims || sizes.size() > 5) {
    uint64_t arr = b.alloc(16 * sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) {
      b.put64(arr + 8 * i, sizes[i]);
      b.put64(arr + 8 * (sizes.size() + i), strides[i]);
    }
    b.put64(dims + 8, arr);
  } else {
    for (size_t i = 0; i < sizes.size(); ++i) {
      b.put64(dims + 8 + 8 * i, sizes[i]);
      b.put64(dims + 8 + 40 + 8 * i, strides[i]);
    }
  }
  b.put64(impl + L.impl_storage_offset, 0);
  b.put64(impl + L.impl_numel, numel);
  b.put16(impl + L.impl_dtype, 6);  // float32
  b.put64(storage + L.storage_data, data);
  b.put8(storage + L.storage_device, 0);
  b.put8(storage + L.storage_device + 1, 0xff);
  b.put64(storage + L.storage_size_bytes, 4 * numel);
  return obj;
}

inline TorchModel make_torch_model(PyHeap& py) {
  TorchModel m;
  uint64_t module_type = py.type("torch.nn.modules.module.Module", 0);
  uint64_t tensor_base = py.type("torch._C._TensorBase", 0);
  uint64_t tensor_type = py.heap_type("torch", "Tensor", 0, {tensor_base});
  uint64_t param_type = py.heap_type("torch.nn.parameter", "Parameter", 0, {tensor_type, tensor_base});
  uint64_t linear_type =
      py.heap_type("torch.nn.modules.linear", "Linear", PyHeap::kManagedDict, {module_type});
  uint64_t seq_type = py.heap_type("__main__", "Net", PyHeap::kManagedDict, {module_type});

  uint64_t weight = make_tensor(py, param_type, {3, 4});
  uint64_t bias = make_tensor(py, param_type, {3});
  uint64_t running = make_tensor(py, tensor_type, {1, 1, 1, 1, 1, 2});
  uint64_t scratch = make_tensor(py, tensor_type, {});
  m.tensors = {weight, bias, running, scratch};

  auto s = [&](const char* n) { return py.str(n); };
  // Child: Linear, its __dict__ in split values keyed by the type's cached keys.
  m.child = py.managed_instance(linear_type, 16);
  std::vector<std::pair<uint64_t, uint64_t>> child_attrs = {
      {s("training"), py.boolean(true)},
      {s("_parameters"), py.dict({{s("weight"), weight}, {s("bias"), bias}})},
      {s("_buffers"), py.dict({})},
      {s("_non_persistent_buffers_set"), py.set({})},
      {s("_modules"), py.dict({})},
      {s("in_features"), py.integer(4)},
      {s("out_features"), py.integer(3)},
  };
  std::vector<std::pair<uint64_t, uint64_t>> names;
  std::vector<uint64_t> values;
  std::vector<uint8_t> order;
  for (size_t i = 0; i < child_attrs.size(); ++i) {
    names.emplace_back(child_attrs[i].first, 0);
    values.push_back(child_attrs[i].second);
    order.push_back(uint8_t(i));
  }
  py.blob().put64(linear_type + 872, py.keys(names));
  py.blob().put64(m.child - 32, py.split_values(values, order));

  // Root: Net, its __dict__ a real dict at -24.
  m.root = py.managed_instance(seq_type, 16);
  uint64_t root_dict = py.dict({
      {s("training"), py.boolean(false)},
      {s("_parameters"), py.ordered_dict({{s("scale"), scratch}, {s("unused"), py.none}})},
      {s("_buffers"), py.ordered_dict({{s("running"), running}, {s("tmp"), scratch}})},
      {s("_non_persistent_buffers_set"), py.set({s("tmp")})},
      {s("_modules"), py.ordered_dict({{s("fc"), m.child}, {s("drop"), py.none}})},
      {s("name"), py.ustr(u"n\u00e9t\u4e2d")},
      {s("ratio"), py.real(0.25)},
      {s("dims"), py.tuple({py.integer(-7), py.big_integer(5), py.list({py.boolean(true), py.none})})},
  });
  py.blob().put64(m.root - 24, root_dict);
  m.all_objects = {m.root, m.child};  // the GC-tracked ones, with room for a PyGC_Head
  return m;
}


// ---- a whole process --------------------------------------------------------------------

inline uint32_t gnu_hash(const char* s) {
  uint32_t h = 5381;
  for (; *s; ++s) h = h * 33 + static_cast<unsigned char>(*s);
  return h;
}

inline void put_note(std::string& out, uint32_t type, std::string_view desc) {
  auto u32 = [&](uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  u32(5), u32(uint32_t(desc.size())), u32(type);
  out.append("CORE\0\0\0\0", 8);
  out.append(desc);
  out.append((4 - desc.size() % 4) % 4, '\0');
}

// A Python process as an ELF core: libpython mapped at kLibBase (its ELF header and a
// dynamic symbol table with _PyRuntime, Py_Version and PyType_Type, hashed SysV or GNU), the
// CPython 3.11 heap after it in the same mapping, an interpreter whose generation-0 GC list
// holds the objects given to core(), and a small stack mapping. Notes: NT_PRSTATUS,
// NT_PRPSINFO, NT_AUXV (optional) and NT_FILE.
class PythonProcess {
 public:
  static constexpr uint64_t kLibBase = 0x7f0000400000, kStack = 0x7ffd00000000;
  static constexpr const char* kLibPath = "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0";

  explicit PythonProcess(bool gnu_hash = false) : gnu_(gnu_hash), h_(reserve(b_, gnu_hash)), py_(b_) {
    version_ = b_.alloc(8);
    b_.put32(version_, 0x030B02F0);
    // _PyRuntime: interpreters.head @40; the interpreter's GC state @648 (generation0 @+96
    // points at generations[0] @+24); sys.modules @888, sys.__dict__ @904.
    runtime_ = b_.alloc(64);
    interp_ = b_.alloc(1024);
    b_.put64(runtime_ + 40, interp_);
    gc_ = interp_ + 648;
    b_.put64(gc_ + 96, gc_ + 24);
    // sys.__dict__ @904 with sys.hexversion, which must agree with Py_Version.
    b_.put64(interp_ + 904, py_.dict({{py_.str("hexversion"), py_.integer(0x030B02F0)}}));
  }

  Blob& blob() { return b_; }
  PyHeap& py() { return py_; }
  uint64_t gc_state() const { return gc_; }
  // _Py_DebugOffsets' head at _PyRuntime (cookie, version, free_threaded), and Py_Version.
  void publish_debug_offsets(uint32_t hex, bool free_threaded) {
    std::memcpy(b_.at(runtime_), "xdebugpy", 8);
    b_.put64(runtime_ + 8, hex);
    b_.put64(runtime_ + 16, free_threaded);
    b_.put32(version_, hex);
  }

  // sys.modules holding torch.version with __version__ (recover reads it).
  void import_torch(const std::string& version = "1.13.1") {
    uint64_t attrs = py_.dict({{py_.str("__version__"), py_.str(version)}});
    uint64_t version_mod = py_.object(py_.type("module", 0), 48);
    b_.put64(version_mod + 16, attrs);
    b_.put64(interp_ + 888, py_.dict({{py_.str("torch.version"), version_mod}, {py_.str("sys"), py_.none}}));
  }

  // Generation 0 lists `tracked` (each with a 16-byte PyGC_Head before it: managed instances
  // have one); the other generations and the permanent one are empty.
  void track(const std::vector<uint64_t>& tracked) {
    uint64_t head = gc_ + 24, prev = head;
    for (uint64_t o : tracked) b_.put64(prev, o - 16), b_.put64(o - 16 + 8, prev), prev = o - 16;
    b_.put64(prev, head);
    for (uint64_t h : {gc_ + 48, gc_ + 72, gc_ + 104}) b_.put64(h, h), b_.put64(h + 8, h);
  }

  // The ELF core; call once, after track().
  std::string core(bool thread_notes = true) {
    finish_elf();
    return core_file(thread_notes);
  }

 private:
  struct Header {
    uint64_t eh, ph, dyn, symtab, strs, hash;
    std::string strtab;
    std::vector<uint32_t> name_off;
  };
  static constexpr const char* kNames[3] = {"_PyRuntime", "Py_Version", "PyType_Type"};

  static Header reserve(Blob& b, bool gnu) {
    Header h;
    h.eh = b.alloc(sizeof(Elf64_Ehdr));
    h.ph = b.alloc(2 * sizeof(Elf64_Phdr));
    h.dyn = b.alloc(6 * sizeof(Elf64_Dyn));
    h.symtab = b.alloc(4 * sizeof(Elf64_Sym));
    h.strtab.assign(1, '\0');
    for (const char* n : kNames) h.name_off.push_back(uint32_t(h.strtab.size())), h.strtab += n, h.strtab += '\0';
    h.strs = b.alloc(h.strtab.size(), 1);
    std::memcpy(b.at(h.strs), h.strtab.data(), h.strtab.size());
    if (gnu) {  // 1 bucket, symoffset 1, 1 bloom word (all ones), chain of 3
      h.hash = b.alloc(16 + 8 + 4 + 12);
      b.put32(h.hash, 1), b.put32(h.hash + 4, 1), b.put32(h.hash + 8, 1), b.put32(h.hash + 12, 6);
      b.put64(h.hash + 16, ~uint64_t(0));
      b.put32(h.hash + 24, 1);
      for (int i = 0; i < 3; ++i) b.put32(h.hash + 28 + 4 * i, (gnu_hash(kNames[i]) & ~1u) | (i == 2 ? 1u : 0u));
    } else {  // nbucket 1, nchain 4: bucket -> 1 -> 2 -> 3 -> 0
      h.hash = b.alloc(8 + 4 + 16);
      b.put32(h.hash, 1), b.put32(h.hash + 4, 4), b.put32(h.hash + 8, 1);
      b.put32(h.hash + 12, 0), b.put32(h.hash + 16, 2), b.put32(h.hash + 20, 3), b.put32(h.hash + 24, 0);
    }
    return h;
  }

  void finish_elf() {
    const uint64_t sym_values[] = {runtime_, version_, py_.type_type};
    for (int i = 0; i < 3; ++i) {
      Elf64_Sym s{};
      s.st_name = h_.name_off[i];
      s.st_info = ELF64_ST_INFO(STB_GLOBAL, STT_OBJECT);
      s.st_shndx = 20;
      s.st_value = sym_values[i] - kLibBase;
      s.st_size = 8;
      std::memcpy(b_.at(h_.symtab + sizeof(Elf64_Sym) * (i + 1)), &s, sizeof s);
    }
    const std::pair<int64_t, uint64_t> dyns[] = {{DT_SYMTAB, h_.symtab - kLibBase},
                                                 {DT_STRTAB, h_.strs - kLibBase},
                                                 {DT_STRSZ, h_.strtab.size()},
                                                 {gnu_ ? DT_GNU_HASH : DT_HASH, h_.hash - kLibBase},
                                                 {DT_SONAME, 1},
                                                 {DT_NULL, 0}};
    for (size_t i = 0; i < 6; ++i) {
      Elf64_Dyn d{};
      d.d_tag = dyns[i].first;
      d.d_un.d_val = dyns[i].second;
      std::memcpy(b_.at(h_.dyn + sizeof d * i), &d, sizeof d);
    }
    Elf64_Ehdr e{};
    std::memcpy(e.e_ident, ELFMAG, SELFMAG);
    e.e_ident[EI_CLASS] = ELFCLASS64, e.e_ident[EI_DATA] = ELFDATA2LSB, e.e_ident[EI_VERSION] = EV_CURRENT;
    e.e_type = ET_DYN, e.e_machine = EM_X86_64, e.e_version = EV_CURRENT;
    e.e_phoff = h_.ph - kLibBase, e.e_phentsize = sizeof(Elf64_Phdr), e.e_phnum = 2, e.e_ehsize = sizeof e;
    std::memcpy(b_.at(h_.eh), &e, sizeof e);
    Elf64_Phdr p[2]{};
    p[0].p_type = PT_LOAD, p[0].p_flags = PF_R | PF_W, p[0].p_vaddr = 0, p[0].p_align = 0x1000;
    p[0].p_filesz = p[0].p_memsz = 0x10000;
    p[1].p_type = PT_DYNAMIC, p[1].p_flags = PF_R, p[1].p_vaddr = h_.dyn - kLibBase;
    p[1].p_filesz = p[1].p_memsz = 6 * sizeof(Elf64_Dyn);
    std::memcpy(b_.at(h_.ph), p, sizeof p);
    b_.bytes.resize((b_.bytes.size() + 15) / 16 * 16);
  }

  std::string core_file(bool thread_notes) const {
    std::string stack(256, '\0');
    for (size_t i = 0; i < stack.size(); ++i) stack[i] = char(i * 7);
    std::string notes;
    if (thread_notes) {
      std::string prstatus(336, '\0');
      int32_t tid = 4242;
      std::memcpy(&prstatus[32], &tid, 4);
      put_note(notes, NT_PRSTATUS, prstatus);
      std::string prpsinfo(136, '\0');
      std::memcpy(&prpsinfo[24], &tid, 4);
      std::memcpy(&prpsinfo[40], "python3", 7);
      std::memcpy(&prpsinfo[56], "python3 train.py --epochs 3", 27);
      put_note(notes, NT_PRPSINFO, prpsinfo);
      std::string auxv;
      for (uint64_t v : {uint64_t(AT_PAGESZ), uint64_t(4096), uint64_t(AT_BASE), kLibBase, uint64_t(AT_NULL), uint64_t(0)})
        auxv.append(reinterpret_cast<const char*>(&v), 8);
      put_note(notes, NT_AUXV, auxv);
    }
    {  // NT_FILE: libpython at offset 0, its second page again at page 1, and the python binary
      const std::pair<uint64_t, uint64_t> ranges[] = {
          {kLibBase, kLibBase + 0x10000}, {kLibBase + 0x10000, kLibBase + 0x11000}, {kStack, kStack + 0x100}};
      const uint64_t pgoff[] = {0, 0x10, 0};
      const char* paths[] = {kLibPath, kLibPath, "/usr/bin/python3.11"};
      std::string d;
      auto u64 = [&](uint64_t v) { d.append(reinterpret_cast<const char*>(&v), 8); };
      u64(3), u64(4096);
      for (int i = 0; i < 3; ++i) u64(ranges[i].first), u64(ranges[i].second), u64(pgoff[i]);
      for (const char* p : paths) d.append(p), d.push_back('\0');
      put_note(notes, 0x46494c45, d);
    }
    // Layout: header, 4 program headers (note, lib, stack, an absent segment), notes, data.
    const size_t nph = 4, ph_off = sizeof(Elf64_Ehdr), notes_off = ph_off + nph * sizeof(Elf64_Phdr);
    const size_t lib_off = (notes_off + notes.size() + 15) / 16 * 16, stack_off = lib_off + b_.bytes.size();
    const uint64_t lib_memsz = (b_.bytes.size() + 0xfff) & ~uint64_t(0xfff);
    std::string out(stack_off + stack.size(), '\0');
    Elf64_Ehdr e{};
    std::memcpy(e.e_ident, ELFMAG, SELFMAG);
    e.e_ident[EI_CLASS] = ELFCLASS64, e.e_ident[EI_DATA] = ELFDATA2LSB, e.e_ident[EI_VERSION] = EV_CURRENT;
    e.e_type = ET_CORE, e.e_machine = EM_X86_64, e.e_version = EV_CURRENT;
    e.e_phoff = ph_off, e.e_phentsize = sizeof(Elf64_Phdr), e.e_phnum = nph, e.e_ehsize = sizeof e;
    std::memcpy(&out[0], &e, sizeof e);
    Elf64_Phdr p[nph]{};
    p[0].p_type = PT_NOTE, p[0].p_offset = notes_off, p[0].p_filesz = notes.size();
    p[1].p_type = PT_LOAD, p[1].p_flags = PF_R | PF_W, p[1].p_offset = lib_off, p[1].p_vaddr = kLibBase;
    p[1].p_filesz = b_.bytes.size(), p[1].p_memsz = lib_memsz, p[1].p_align = 0x1000;
    p[2].p_type = PT_LOAD, p[2].p_flags = PF_R | PF_W, p[2].p_offset = stack_off, p[2].p_vaddr = kStack;
    p[2].p_filesz = stack.size(), p[2].p_memsz = stack.size(), p[2].p_align = 0x1000;
    p[3].p_type = PT_LOAD, p[3].p_flags = PF_R, p[3].p_offset = out.size(), p[3].p_vaddr = kLibBase + lib_memsz;
    p[3].p_filesz = 0, p[3].p_memsz = 0x1000, p[3].p_align = 0x1000;
    std::memcpy(&out[ph_off], p, sizeof p);
    std::memcpy(&out[notes_off], notes.data(), notes.size());
    std::memcpy(&out[lib_off], b_.bytes.data(), b_.bytes.size());
    std::memcpy(&out[stack_off], stack.data(), stack.size());
    return out;
  }

  Blob b_{kLibBase};
  bool gnu_;
  Header h_;
  PyHeap py_;
  uint64_t version_ = 0, runtime_ = 0, interp_ = 0, gc_ = 0;
};

}  // namespace mlfx::fuzz
