// Finds torch.nn.Module instances among the interpreter's tracked objects (by their type's
// MRO, never by class-name lists), reads their state, and finds the root models.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "frontends/cpython/python_objects.h"
#include "recovery/diagnostics.h"

namespace mlfx::frontends::torch {

struct NamedSlot {
  std::string name;
  std::optional<uint64_t> object;  // nullopt when the slot holds None
};

struct ModuleInfo {
  uint64_t object = 0;
  std::string class_name;  // module.qualname, e.g. torch.nn.modules.linear.Linear
  bool training = true;
  std::vector<NamedSlot> parameters, buffers, children;
  std::set<std::string> non_persistent_buffers;
  json::Json attributes = json::Json::object();  // plain hyperparameters (ints, floats, str...)
  std::map<std::string, std::string> attribute_types;  // "tuple" or "float" (non-finite) by name
  std::vector<std::string> other_attributes;    // names of attributes that are not plain
};

struct StateEntry {
  std::string key;      // dotted state_dict key
  uint64_t tensor = 0;  // the Python tensor object
  bool is_buffer = false;
  bool persistent = true;  // false: a buffer registered with persistent=False
};

class ModuleWalker {
 public:
  ModuleWalker(const cpython::ObjectReader& objects, Diagnostics& diag) : objects_(objects), diag_(diag) {}

  // Reads every module among `objects` (others are skipped cheaply by type).
  void scan(const std::vector<uint64_t>& objects);
  // Modules that no other module holds in its _modules, largest first.
  std::vector<uint64_t> roots() const;
  const ModuleInfo* module(uint64_t obj) const;
  const std::map<uint64_t, ModuleInfo>& modules() const { return modules_; }
  // The entries of root.state_dict(), in its order: own parameters, own persistent buffers,
  // then each child's, recursively. Cycles in a damaged image are cut with a diagnostic.
  // With `with_non_persistent`, non-persistent buffers too (in their place in that order).
  std::vector<StateEntry> state_dict(uint64_t root, bool with_non_persistent = false) const;
  // The module tree as JSON (path, class, attributes, tensors by key) for architecture.json.
  json::Json architecture(uint64_t root) const;
  size_t tensor_count(uint64_t root) const { return state_dict(root).size(); }

 private:
  Result<bool> is_module_type(uint64_t type);
  Result<ModuleInfo> read_module(uint64_t obj);
  Result<std::vector<NamedSlot>> read_slots(uint64_t dict, const std::string& what) const;
  size_t visit_budget() const;
  void collect(uint64_t obj, const std::string& prefix, std::set<uint64_t>& path,
               std::vector<StateEntry>& out, size_t& budget, bool with_non_persistent) const;
  json::Json describe(uint64_t obj, const std::string& path, std::set<uint64_t>& seen, size_t& budget) const;

  const cpython::ObjectReader& objects_;
  Diagnostics& diag_;
  std::map<uint64_t, bool> module_types_;  // type address -> is a Module subclass
  std::map<uint64_t, ModuleInfo> modules_;
};

}  // namespace mlfx::frontends::torch
