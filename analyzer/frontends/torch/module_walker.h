// Finds torch.nn.Module instances among the interpreter's tracked objects (by their type's
// MRO, never by class-name lists), reads their state, and finds the root models.
//
// Hostile memory: names are views of the reader's string cache (never copied per module),
// every walk has a visit and a byte budget and checks the analysis deadline, dotted paths
// longer than kMaxPathBytes are refused with a diagnostic, and ownership cycles
// (m[0]._modules['owner'] = m) neither hide a model nor loop: roots are chosen per strongly
// connected component of the ownership graph, and each cycle is kept as a finding.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "frontends/cpython/python_objects.h"
#include "base/diagnostics.h"

namespace mlfx::frontends::torch {

// A state_dict key or module path longer than this is refused (documented in the README).
inline constexpr size_t kMaxPathBytes = 16 * 1024;

struct NamedSlot {
  std::string_view name;           // views the reader's string cache
  std::optional<uint64_t> object;  // nullopt when the slot holds None
};

// The slots of one _parameters/_buffers/_modules dict, read once per dict: a dict that many
// modules share (live torch never does) costs its slots once.
struct Slots {
  std::vector<NamedSlot> slots;
  std::vector<std::string> refused;  // keys not read (not a str, over the cap, repeated)
  uint64_t bytes = 0;                // what it costs, charged once
};

struct ModuleInfo {
  uint64_t object = 0;
  std::string_view class_name;  // module.qualname, e.g. torch.nn.modules.linear.Linear (type cache)
  bool training = true;
  std::shared_ptr<const Slots> parameters, buffers, children;  // never null
  std::set<std::string_view> non_persistent_buffers;
  json::Json attributes = json::Json::object();  // plain hyperparameters (ints, floats, str...)
  std::map<std::string, std::string> attribute_types;  // "tuple" or "float" (non-finite) by name
  std::vector<std::string_view> other_attributes;      // names of attributes that are not plain
  std::vector<std::string> refused;  // slots not read (name over the cap...), as "what: why"
  size_t own_tensors = 0;            // its parameters and persistent buffers that are not None
  uint64_t kept_bytes = 0;           // what this record costs (its slot lists aside), charged to the budget
};

struct StateEntry {
  std::string key;      // dotted state_dict key
  uint64_t tensor = 0;  // the Python tensor object
  bool is_buffer = false;
  bool persistent = true;  // false: a buffer registered with persistent=False
};

// root.state_dict(), and what it could not contain (refused names, unreadable child modules,
// walks cut by a budget): a model with problems is incomplete.
struct StateDict {
  std::vector<StateEntry> entries;
  std::vector<std::string> problems;
};

// A strongly connected component of the ownership graph with more than one module, or a
// module that holds itself: live torch cannot even state_dict() it (RecursionError).
struct ModuleCycle {
  std::vector<uint64_t> modules;  // by address, at most kMaxListed
  size_t size = 0;                // modules in the component
  std::vector<std::string> edges;  // "0x..(Class)._modules['name'] -> 0x..(Class)", at most kMaxListed
  size_t edge_count = 0;
  // The module chosen as a model root when nothing outside the cycle owns it (0 otherwise):
  // the one the rest of the process references most (refcount less module slots), then the
  // one with the most tensors, then the lowest address.
  uint64_t root = 0;
  static constexpr size_t kMaxListed = 16;
};

class ModuleWalker {
 public:
  ModuleWalker(const cpython::ObjectReader& objects, Diagnostics& diag) : objects_(objects), diag_(diag) {}

  // Reads every module among `objects` (others are skipped cheaply by type), then finds the
  // roots and the cycles.
  void scan(const std::vector<uint64_t>& objects);
  // One module per ownership component that no other module holds in its _modules, largest first.
  const std::vector<uint64_t>& roots() const { return roots_; }
  const std::vector<ModuleCycle>& cycles() const { return cycles_; }
  const ModuleInfo* module(uint64_t obj) const;
  const std::map<uint64_t, ModuleInfo>& modules() const { return modules_; }
  // The entries of root.state_dict(), in its order: own parameters, own persistent buffers,
  // then each child's, recursively. A module met again on its own path (a cycle) is not
  // followed, as the live model's state_dict() before the cycle was made.
  // With `with_non_persistent`, non-persistent buffers too (in their place in that order).
  StateDict state_dict(uint64_t root, bool with_non_persistent = false) const;
  // The module tree as JSON (path, class, attributes, tensors by key) for architecture.json;
  // modules past max_bytes (at most 128 MiB) are named, not described.
  json::Json architecture(uint64_t root, uint64_t max_bytes = UINT64_MAX) const;
  size_t tensor_count(uint64_t root) const;
  // Whether instances of the Python type at `type` are torch.nn.Modules (remembered per type).
  Result<bool> is_module_type(uint64_t type);

 private:
  struct Walk;
  Result<ModuleInfo> read_module(uint64_t obj);
  Result<std::shared_ptr<const Slots>> read_slots(uint64_t dict, std::string_view what);
  void read_attribute(ModuleInfo& m, std::string_view name, uint64_t value) const;
  bool keep(uint64_t obj, ModuleInfo m);
  void find_roots();
  size_t visit_budget() const;
  size_t count_tensors(uint64_t root, size_t& visits) const;  // spends from `visits`
  void collect(uint64_t obj, Walk& w) const;
  json::Json describe(uint64_t obj, const std::string& path, std::map<uint64_t, std::string>& on_path,
                      size_t& budget, uint64_t& bytes) const;

  const cpython::ObjectReader& objects_;
  Diagnostics& diag_;
  std::map<uint64_t, bool> module_types_;  // type address -> is a Module subclass
  std::map<uint64_t, ModuleInfo> modules_;
  std::map<uint64_t, std::shared_ptr<const Slots>> slots_;  // by dict address
  std::vector<uint64_t> roots_;
  std::vector<ModuleCycle> cycles_;
};

}  // namespace mlfx::frontends::torch
