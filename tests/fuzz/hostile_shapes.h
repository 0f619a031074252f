// Hostile process images (issue 11): the shapes of memory an attacker who controls a process
// can give `mlfx recover`, each built at any size into a whole ELF core (PythonProcess). Used
// for the fuzz seeds (small), the hostile-memory tests and the benchmark (~16 MB).
//
// Each shape names what recover must say about it after the fix (`expect`, a substring of
// report.json), so that a test can tell a bounded answer from a lucky one.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "synthetic_image.h"

namespace mlfx::fuzz {

// The torch types of make_torch_model, and nn.Module instances of them (GC-tracked: managed
// dict pre-header) over given dicts. Attribute names and the empty _buffers are made once:
// thousands of modules stay small.
struct Torch {
  PyHeap& py;
  uint64_t module = 0, tensor = 0, param = 0, net = 0;
  uint64_t training = 0, params = 0, buffers = 0, mods = 0, no = 0, empty = 0;

  explicit Torch(PyHeap& heap) : py(heap) {
    module = py.type("torch.nn.modules.module.Module", 0);
    const uint64_t base = py.type("torch._C._TensorBase", 0);
    tensor = py.heap_type("torch", "Tensor", 0, {base});
    param = py.heap_type("torch.nn.parameter", "Parameter", 0, {tensor, base});
    net = module_type("__main__", "Net");
    training = py.str("training"), params = py.str("_parameters"), buffers = py.str("_buffers");
    mods = py.str("_modules"), no = py.boolean(false), empty = py.dict({});
  }
  uint64_t module_type(const std::string& module_name, const std::string& name) {
    return py.heap_type(module_name, name, PyHeap::kManagedDict, {module});
  }
  uint64_t make(uint64_t type, uint64_t parameters, uint64_t modules) {
    const uint64_t o = py.managed_instance(type, 16);
    py.blob().put64(o - 24, py.dict({{training, no}, {params, parameters}, {buffers, empty}, {mods, modules}}));
    return o;
  }
  uint64_t leaf(uint64_t parameters) { return make(net, parameters, empty); }
};

// TensorImpl fields of make_tensor's layout (torch_layout.h).
inline uint64_t tensor_impl(Blob& b, uint64_t tensor) {
  uint64_t impl;
  std::memcpy(&impl, b.at(tensor + 24), 8);
  return impl;
}

struct HostileShape {
  std::string name, what;
  std::string expect;  // found in report.json after the fix
  // Builds the objects into the process for an image of about `bytes`; returns the GC-tracked ones.
  std::function<std::vector<uint64_t>(PyHeap&, uint64_t bytes)> build;
};

inline std::string hostile_core(const HostileShape& shape, uint64_t bytes) {
  PythonProcess proc;
  std::vector<uint64_t> tracked = shape.build(proc.py(), bytes);
  proc.import_torch();
  proc.track(tracked);
  return proc.core();
}

// The same objects as an input of the python_objects fuzz target: a 64-byte header (the first
// seven tracked objects, no flags), then the blob mapped at 0x10000.
inline std::string hostile_objects_input(const HostileShape& shape, uint64_t bytes) {
  Blob b(0x10000);
  PyHeap py(b);
  std::vector<uint64_t> addrs = shape.build(py, bytes);
  addrs.resize(7, 0);
  b.bytes.resize((b.bytes.size() + 15) / 16 * 16);
  std::string header(64, '\0');
  std::memcpy(&header[0], addrs.data(), 56);
  return header + std::string(b.bytes.begin(), b.bytes.end());
}

// The reference: an honest model whose one parameter fills about `bytes`.
inline std::string benign_core(uint64_t bytes) {
  PythonProcess proc;
  PyHeap& py = proc.py();
  Torch t(py);
  const uint64_t w = make_tensor(py, t.param, {int64_t(bytes / 4 / 1024), 1024});
  std::vector<uint64_t> tracked = make_torch_model(py).all_objects;
  tracked.push_back(t.leaf(py.dict({{py.str("weight"), w}})));
  proc.import_torch();
  proc.track(tracked);
  return proc.core();
}

inline std::vector<HostileShape> hostile_shapes() {
  std::vector<HostileShape> shapes;
  // One long str that a dict's keys all alias: copied per key, it was N x its size.
  shapes.push_back({"aliased-keys", "a _parameters dict whose keys all alias one long str", "over the cap of 4096",
                    [](PyHeap& py, uint64_t bytes) {
                      Torch t(py);
                      const uint64_t key = py.str(std::string(bytes * 3 / 4, 'k'));
                      const uint64_t w = make_tensor(py, t.param, {2});
                      std::vector<std::pair<uint64_t, uint64_t>> items(std::max<uint64_t>(bytes / 4 / 40, 4), {key, w});
                      items.push_back({py.str("weight"), w});
                      return std::vector<uint64_t>{t.make(t.net, py.dict(items), t.empty)};
                    }});
  // A chain of 32 modules, each child slot named by the same long str: keys grew by copying.
  shapes.push_back({"long-name-chain", "32 nested modules whose child names alias one long str",
                    "over the cap of 4096", [](PyHeap& py, uint64_t bytes) {
                      Torch t(py);
                      const uint64_t name = py.str(std::string(std::min<uint64_t>(bytes / 2, 4 << 20), 'n'));
                      std::vector<uint64_t> chain;
                      uint64_t child = t.make(t.net, py.dict({{py.str("w"), make_tensor(py, t.param, {4})}}), t.empty);
                      chain.push_back(child);
                      for (int i = 0; i < 31; ++i) {
                        child = t.make(t.net, py.dict({{py.str("w"), make_tensor(py, t.param, {4})}}),
                                            py.dict({{name, child}}));
                        chain.push_back(child);
                      }
                      return chain;
                    }});
  // Names just under the cap, nested deep with many parameters: keys of a megabyte each.
  shapes.push_back({"deep-long-paths", "256 nested modules with 4000-byte names and 32 parameters each",
                    "bytes long, over the cap of 16384", [](PyHeap& py, uint64_t bytes) {
                      Torch t(py);
                      const uint64_t name = py.str(std::string(4000, 'p')), w = make_tensor(py, t.param, {1});
                      std::vector<std::pair<uint64_t, uint64_t>> params;
                      for (int i = 0; i < (bytes >= (1 << 20) ? 32 : 2); ++i) params.push_back({py.str(std::string(3990, 'a') + std::to_string(1000 + i)), w});
                      const uint64_t shared_params = py.dict(params);
                      const int depth = bytes >= (1 << 20) ? 256 : 8;
                      std::vector<uint64_t> chain;
                      uint64_t child = t.make(t.net, shared_params, t.empty);
                      chain.push_back(child);
                      for (int i = 1; i < depth; ++i) chain.push_back(child = t.make(t.net, shared_params, py.dict({{name, child}})));
                      return chain;
                    }});
  // Many modules sharing one huge _parameters dict: each read kept a copy of every slot.
  shapes.push_back({"shared-huge-dict", "256 modules sharing one _parameters dict of 100k names",
                    "the export budget (twice the image + 256 MiB) is spent", [](PyHeap& py, uint64_t bytes) {
                      Torch t(py);
                      const uint64_t w = make_tensor(py, t.param, {1});
                      std::vector<std::pair<uint64_t, uint64_t>> items;
                      for (uint64_t i = 0; i < std::min<uint64_t>(bytes / 160, (1u << 20) - 1); ++i)
                        items.push_back({py.str("p" + std::to_string(i)), w});
                      const uint64_t params = py.dict(items);
                      std::vector<uint64_t> mods;
                      for (int i = 0; i < 256; ++i) mods.push_back(t.make(t.net, params, t.empty));
                      return mods;
                    }});
  // A dict whose entries all repeat one key, shared by many modules.
  shapes.push_back({"repeated-keys", "64 modules sharing a dict of 800k entries that all repeat one key",
                    "repeat an earlier key", [](PyHeap& py, uint64_t bytes) {
                      Torch t(py);
                      const uint64_t key = py.str("w"), w = make_tensor(py, t.param, {1});
                      const uint64_t n = std::min<uint64_t>(bytes / 20, (1u << 20) - 1);
                      const uint64_t params = py.dict(std::vector<std::pair<uint64_t, uint64_t>>(n, {key, w}));
                      std::vector<uint64_t> mods;
                      for (int i = 0; i < 64; ++i) mods.push_back(t.make(t.net, params, t.empty));
                      return mods;
                    }});
  // A parameter that expands one float to 2^40 (zero strides), and sizes whose product overflows.
  shapes.push_back({"expanded-tensor", "zero-stride views claiming 4 TiB, and sizes whose product overflows",
                    "would exceed the export budget", [](PyHeap& py, uint64_t) {
                      Torch t(py);
                      Blob& b = py.blob();
                      const uint64_t big = make_tensor(py, t.param, {1, 1}), overflow = make_tensor(py, t.param, {1, 1});
                      const uint64_t impl = tensor_impl(b, big), impl2 = tensor_impl(b, overflow);
                      b.put64(impl + 80, 1u << 20), b.put64(impl + 88, 1u << 20);  // sizes
                      b.put64(impl + 120, 0), b.put64(impl + 128, 0);              // strides
                      b.put64(impl + 168, uint64_t(1) << 40);                      // numel
                      b.put64(impl2 + 80, uint64_t(1) << 40), b.put64(impl2 + 88, uint64_t(1) << 40);
                      b.put64(impl2 + 168, 0);
                      return std::vector<uint64_t>{t.make(t.net, py.dict({{py.str("expanded"), big}, {py.str("overflow"), overflow}}), t.empty)};
                    }});
  // Many storages over the same bytes: each was written whole, twice.
  shapes.push_back({"overlapping-storages", "256 parameters, each its own storage over the same bytes",
                    "would exceed the export budget", [](PyHeap& py, uint64_t bytes) {
                      Torch t(py);
                      Blob& b = py.blob();
                      const int64_t numel = int64_t(bytes / 2 / 4);
                      const uint64_t first = make_tensor(py, t.param, {numel});
                      uint64_t data;
                      std::memcpy(&data, b.at(tensor_impl(b, first) + 24), 8);  // its storage
                      std::memcpy(&data, b.at(data + 24), 8);                   // the storage's data
                      std::vector<std::pair<uint64_t, uint64_t>> params;
                      for (int i = 0; i < (bytes >= (1 << 20) ? 256 : 8); ++i) {
                        const uint64_t w = make_tensor(py, t.param, {1});
                        const uint64_t impl = tensor_impl(b, w);
                        uint64_t storage;
                        std::memcpy(&storage, b.at(impl + 24), 8);
                        b.put64(impl + 80, numel), b.put64(impl + 168, numel);
                        b.put64(storage + 24, data), b.put64(storage + 56, 4 * numel);
                        params.push_back({py.str("w" + std::to_string(i)), w});
                      }
                      return std::vector<uint64_t>{t.make(t.net, py.dict(params), t.empty)};
                    }});
  // A storage that claims a petabyte: it was allocated before being read.
  shapes.push_back({"huge-storage-claim", "a storage claiming 2^50 bytes", "is not all in the image",
                    [](PyHeap& py, uint64_t) {
                      Torch t(py);
                      Blob& b = py.blob();
                      const uint64_t w = make_tensor(py, t.param, {4});
                      uint64_t storage;
                      std::memcpy(&storage, b.at(tensor_impl(b, w) + 24), 8);
                      b.put64(storage + 56, uint64_t(1) << 50);
                      return std::vector<uint64_t>{t.make(t.net, py.dict({{py.str("w"), w}}), t.empty)};
                    }});
  // A class whose __qualname__ is huge, and many modules of it: the name was copied per module.
  shapes.push_back({"huge-type-name", "thousands of modules of a class with a multi-megabyte __qualname__",
                    "qualname refused", [](PyHeap& py, uint64_t bytes) {
                      Torch t(py);
                      const uint64_t type = t.module_type("__main__", "Huge");
                      py.blob().put64(type + 864, py.str(std::string(bytes / 2, 'Q')));
                      std::vector<uint64_t> mods;
                      for (uint64_t i = 0; i < std::max<uint64_t>(bytes / 2 / 2048, 2); ++i)
                        mods.push_back(t.make(type, t.empty, t.empty));
                      return mods;
                    }});
  // Tens of thousands of unowned modules: each became a model directory.
  shapes.push_back({"many-roots", "every module a root with a parameter", "more root modules",
                    [](PyHeap& py, uint64_t bytes) {
                      Torch t(py);
                      const uint64_t params = py.dict({{py.str("w"), make_tensor(py, t.param, {2})}});
                      std::vector<uint64_t> mods;
                      for (uint64_t i = 0; i < std::max<uint64_t>(bytes / 400, 8); ++i) mods.push_back(t.leaf(params));
                      return mods;
                    }});
  // Modules owning each other in a ring, nothing outside: no root, "no model found".
  shapes.push_back({"module-ring", "a ring of modules, each owning the next", "module ownership cycle",
                    [](PyHeap& py, uint64_t bytes) {
                      Torch t(py);
                      const uint64_t n = std::min<uint64_t>(std::max<uint64_t>(bytes / 4096, 3), 4096);
                      std::vector<uint64_t> mods, modules_dicts;
                      for (uint64_t i = 0; i < n; ++i) {
                        const uint64_t children = py.dict({{py.str("next"), py.none}});
                        modules_dicts.push_back(children);
                        mods.push_back(t.make(t.net, py.dict({{py.str("w"), make_tensor(py, t.param, {3})}}), children));
                      }
                      for (uint64_t i = 0; i < n; ++i) {  // the single value of each _modules dict
                        uint64_t keys;
                        std::memcpy(&keys, py.blob().at(modules_dicts[i] + 32), 8);
                        py.blob().put64(keys + 32 + 8 + 8, mods[(i + 1) % n]);  // log2 3: 8 index bytes
                      }
                      return mods;
                    }});
  // A chain deeper than any model: recursion and paths must stay bounded.
  shapes.push_back({"deep-chain", "a chain of thousands of nested modules", "nest deeper than 256",
                    [](PyHeap& py, uint64_t bytes) {
                      Torch t(py);
                      const uint64_t params = py.dict({{py.str("w"), make_tensor(py, t.param, {1})}}), name = py.str("c");
                      std::vector<uint64_t> chain;
                      uint64_t child = t.make(t.net, params, t.empty);
                      chain.push_back(child);
                      for (uint64_t i = 1; i < std::max<uint64_t>(bytes / 1024, 16); ++i)
                        chain.push_back(child = t.make(t.net, params, py.dict({{name, child}})));
                      return chain;
                    }});
  // Hundreds of thousands of tracked objects that are not modules, and a model among them.
  shapes.push_back({"gc-flood", "hundreds of thousands of tracked objects", "\"gc_objects\"",
                    [](PyHeap& py, uint64_t bytes) {
                      std::vector<uint64_t> objs = make_torch_model(py).all_objects;
                      const uint64_t type = py.type("Junk", 0);
                      for (uint64_t i = 0; i < std::max<uint64_t>(bytes / 48, 64); ++i) {
                        const uint64_t o = py.blob().alloc(32) + 16;
                        py.blob().put64(o + 8, type);
                        objs.push_back(o);
                      }
                      return objs;
                    }});
  return shapes;
}

}  // namespace mlfx::fuzz
