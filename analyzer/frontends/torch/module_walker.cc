#include "frontends/torch/module_walker.h"

#include <algorithm>
#include <cstdio>

namespace mlfx::frontends::torch {

namespace {

constexpr size_t kMaxDepth = 256;

// Instance attributes every nn.Module has; the rest are the class's own state.
bool is_module_internal(const std::string& name) {
  static const std::set<std::string> kInternal = {
      "training", "_parameters", "_buffers", "_non_persistent_buffers_set", "_modules",
      "_backward_hooks", "_backward_pre_hooks", "_is_full_backward_hook", "_forward_hooks",
      "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
      "_forward_pre_hooks_with_kwargs", "_state_dict_hooks", "_state_dict_pre_hooks",
      "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"};
  return kInternal.count(name) > 0;
}

}  // namespace

Result<bool> ModuleWalker::is_module_type(uint64_t type) {
  if (auto it = module_types_.find(type); it != module_types_.end()) return it->second;
  MLFX_ASSIGN(bool is_module, objects_.has_base(type, "torch.nn.modules.module", "Module"));
  module_types_[type] = is_module;
  return is_module;
}

Result<std::vector<NamedSlot>> ModuleWalker::read_slots(uint64_t dict, const std::string& what) const {
  MLFX_ASSIGN(auto items, objects_.str_dict(dict));
  std::vector<NamedSlot> out;
  for (auto& [name, value] : items) {
    NamedSlot slot{name, std::nullopt};
    if (!objects_.is_none(value)) slot.object = value;
    out.push_back(std::move(slot));
  }
  (void)what;
  return out;
}

Result<ModuleInfo> ModuleWalker::read_module(uint64_t obj) {
  ModuleInfo m;
  m.object = obj;
  MLFX_ASSIGN(const cpython::TypeInfo* type, objects_.type_info_of(obj));
  m.class_name = type->full_name();
  MLFX_ASSIGN(auto attrs, objects_.instance_dict(obj));
  bool have_parameters = false;
  for (const auto& [name, value] : attrs) {
    if (name == "_parameters") {
      MLFX_ASSIGN(m.parameters, read_slots(value, "_parameters"));
      have_parameters = true;
    } else if (name == "_buffers") {
      MLFX_ASSIGN(m.buffers, read_slots(value, "_buffers"));
    } else if (name == "_modules") {
      MLFX_ASSIGN(m.children, read_slots(value, "_modules"));
    } else if (name == "_non_persistent_buffers_set") {
      MLFX_ASSIGN(auto items, objects_.set_items(value));
      for (uint64_t item : items) {
        auto s = objects_.str(item);
        if (s) m.non_persistent_buffers.insert(*s);
      }
    } else if (name == "training") {
      auto v = objects_.plain_value(value);
      if (v && *v && (*v)->is_boolean()) m.training = (*v)->get<bool>();
    } else if (!is_module_internal(name)) {
      auto v = objects_.plain_value(value);
      if (v && *v) {
        // JSON has no tuple and no non-finite float: say which attributes were those.
        auto type = objects_.type_info_of(value);
        if (type && ((*type)->name == "tuple" || ((*type)->name == "float" && (**v).is_string())))
          m.attribute_types[name] = (*type)->name;
        m.attributes[name] = std::move(**v);
      } else {
        m.other_attributes.push_back(name);
      }
    }
  }
  if (!have_parameters)
    return fail(Errc::kBadFormat, "module " + m.class_name + " at " + hex_address(obj) +
                                      " has no _parameters (not initialised, or damaged)");
  return m;
}

void ModuleWalker::scan(const std::vector<uint64_t>& objects) {
  for (uint64_t obj : objects) {
    auto type = objects_.type_of(obj);
    if (!type) continue;
    auto is_module = is_module_type(*type);
    if (!is_module || !*is_module) continue;
    auto m = read_module(obj);
    if (!m) {
      diag_.warn("skipped module at " + hex_address(obj) + ": " + m.error().to_string());
      continue;
    }
    modules_.emplace(obj, std::move(*m));
  }
  // Children that the GC lists missed (untracked, or in a broken list) are read directly.
  std::vector<uint64_t> pending;
  for (const auto& [obj, m] : modules_)
    for (const auto& c : m.children)
      if (c.object && !modules_.count(*c.object)) pending.push_back(*c.object);
  while (!pending.empty()) {
    uint64_t obj = pending.back();
    pending.pop_back();
    if (modules_.count(obj)) continue;
    auto m = read_module(obj);
    if (!m) {
      diag_.warn("skipped child module at " + hex_address(obj) + ": " + m.error().to_string());
      continue;
    }
    for (const auto& c : m->children)
      if (c.object && !modules_.count(*c.object)) pending.push_back(*c.object);
    modules_.emplace(obj, std::move(*m));
  }
}

const ModuleInfo* ModuleWalker::module(uint64_t obj) const {
  auto it = modules_.find(obj);
  return it == modules_.end() ? nullptr : &it->second;
}

std::vector<uint64_t> ModuleWalker::roots() const {
  std::set<uint64_t> owned;
  for (const auto& [obj, m] : modules_)
    for (const auto& c : m.children)
      if (c.object && *c.object != obj) owned.insert(*c.object);
  std::vector<std::pair<size_t, uint64_t>> found;
  for (const auto& [obj, m] : modules_)
    if (!owned.count(obj)) found.emplace_back(tensor_count(obj), obj);
  std::stable_sort(found.begin(), found.end(), [](auto& a, auto& b) { return a.first > b.first; });
  std::vector<uint64_t> out;
  for (const auto& f : found) out.push_back(f.second);
  return out;
}

// Visits allowed in one state_dict()/architecture() walk. Without a cycle, a module reached
// along k paths is walked k times (as torch does); a damaged image whose modules each hold the
// next one several times would make that exponential. A tree visits each module once.
size_t ModuleWalker::visit_budget() const { return 4 * modules_.size() + 1024; }

void ModuleWalker::collect(uint64_t obj, const std::string& prefix, std::set<uint64_t>& path,
                           std::vector<StateEntry>& out, size_t& budget, bool with_non_persistent) const {
  const ModuleInfo* m = module(obj);
  if (!m) return;
  if (budget == 0) {
    diag_.warn("state_dict: too many module visits at " + prefix + " (" + hex_address(obj) + "; shared submodules?); cut");
    return;
  }
  --budget;
  if (path.size() > kMaxDepth || !path.insert(obj).second) {
    diag_.warn("module cycle at " + prefix + " (" + hex_address(obj) + "); not followed");
    return;
  }
  for (const auto& p : m->parameters)
    if (p.object) out.push_back({prefix + p.name, *p.object, false});
  for (const auto& b : m->buffers) {
    const bool persistent = !m->non_persistent_buffers.count(b.name);
    if (b.object && (persistent || with_non_persistent))
      out.push_back({prefix + b.name, *b.object, true, persistent});
  }
  for (const auto& c : m->children)
    if (c.object) collect(*c.object, prefix + c.name + ".", path, out, budget, with_non_persistent);
  path.erase(obj);
}

std::vector<StateEntry> ModuleWalker::state_dict(uint64_t root, bool with_non_persistent) const {
  std::vector<StateEntry> out;
  std::set<uint64_t> path;
  size_t budget = visit_budget();
  collect(root, "", path, out, budget, with_non_persistent);
  return out;
}

json::Json ModuleWalker::describe(uint64_t obj, const std::string& path, std::set<uint64_t>& seen,
                                  size_t& budget) const {
  const ModuleInfo* m = module(obj);
  json::Json j = {{"path", path}, {"address", hex_address(obj)}};
  if (m && budget == 0) {
    j["class"] = m->class_name;
    j["error"] = "not described: too many module visits (shared submodules?)";
    return j;
  }
  if (m) --budget;
  if (!m) {
    j["class"] = nullptr;
    j["error"] = "not a readable module";
    return j;
  }
  j["class"] = m->class_name;
  j["training"] = m->training;
  j["attributes"] = m->attributes;
  j["attribute_types"] = m->attribute_types;
  j["other_attributes"] = m->other_attributes;
  auto slots = [&](const std::vector<NamedSlot>& v) {
    json::Json a = json::Json::array();
    for (const auto& s : v) a.push_back({{"name", s.name}, {"none", !s.object.has_value()}});
    return a;
  };
  j["parameters"] = slots(m->parameters);
  j["buffers"] = slots(m->buffers);
  j["non_persistent_buffers"] = m->non_persistent_buffers;
  json::Json children = json::Json::array();
  if (seen.size() <= kMaxDepth && seen.insert(obj).second) {
    for (const auto& c : m->children) {
      std::string child_path = path.empty() ? c.name : path + "." + c.name;
      if (c.object) children.push_back(describe(*c.object, child_path, seen, budget));
      else children.push_back({{"path", child_path}, {"class", nullptr}, {"none", true}});
    }
    seen.erase(obj);
  }
  j["children"] = std::move(children);
  return j;
}

json::Json ModuleWalker::architecture(uint64_t root) const {
  std::set<uint64_t> seen;
  size_t budget = visit_budget();
  return describe(root, "", seen, budget);
}

}  // namespace mlfx::frontends::torch
