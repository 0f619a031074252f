#include "frontends/torch/module_walker.h"

#include <algorithm>
#include <cstdio>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

namespace mlfx::frontends::torch {

namespace {

constexpr size_t kMaxDepth = 256;
// Bytes one walk may build: the keys of one state_dict(), the JSON of one architecture().
constexpr uint64_t kMaxStateDictBytes = uint64_t{128} << 20, kMaxArchitectureBytes = uint64_t{128} << 20;
constexpr uint64_t kMaxAttributeBytes = 256 * 1024;  // plain attributes kept per module
constexpr size_t kMaxRefused = 8;                    // refused slots described per module
constexpr size_t kMaxProblems = 64;                  // problems described per walk
constexpr size_t kMaxCyclesListed = 64;

// Instance attributes every nn.Module has; the rest are the class's own state.
bool is_module_internal(std::string_view name) {
  static const std::set<std::string_view> kInternal = {
      "training", "_parameters", "_buffers", "_non_persistent_buffers_set", "_modules",
      "_backward_hooks", "_backward_pre_hooks", "_is_full_backward_hook", "_forward_hooks",
      "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
      "_forward_pre_hooks_with_kwargs", "_state_dict_hooks", "_state_dict_pre_hooks",
      "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"};
  return kInternal.count(name) > 0;
}

// What a JSON value costs in memory, roughly (nlohmann: 16 bytes a value, a node per member).
uint64_t json_bytes(const json::Json& j) {
  uint64_t n = 16;
  if (j.is_string()) n += 32 + j.get_ref<const std::string&>().size();
  if (j.is_array())
    for (const auto& v : j) n += json_bytes(v);
  if (j.is_object())
    for (const auto& [k, v] : j.items()) n += 64 + k.size() + json_bytes(v);
  return n;
}

std::string describe_module(uint64_t obj, std::string_view class_name) {
  return hex_address(obj) + "(" + std::string(class_name.substr(0, 200)) + ")";
}

}  // namespace

Result<bool> ModuleWalker::is_module_type(uint64_t type) {
  if (auto it = module_types_.find(type); it != module_types_.end()) return it->second;
  MLFX_ASSIGN(bool is_module, objects_.has_base(type, "torch.nn.modules.module", "Module"));
  module_types_[type] = is_module;
  return is_module;
}

// The slots of a _parameters/_buffers/_modules dict, read once per dict. A key that is not a
// str, is over the name cap or repeats an earlier one (a live dict cannot) is refused: the
// model it belongs to is then incomplete.
Result<std::shared_ptr<const Slots>> ModuleWalker::read_slots(uint64_t dict, std::string_view what) {
  if (auto it = slots_.find(dict); it != slots_.end()) return it->second;
  MLFX_ASSIGN(cpython::Items items, objects_.dict_items(dict));
  auto out = std::make_shared<Slots>();
  out->slots.reserve(items.size());
  std::unordered_set<std::string_view> seen;
  size_t refused = 0, repeated = 0;
  for (const auto& [key, value] : items) {
    auto name = objects_.str_view(key);
    if (!name) {
      if (budget_spent(name.error().message())) return fail(std::move(name).error());
      if (refused++ < kMaxRefused)
        out->refused.push_back(std::string(what) + " key at " + hex_address(key) + " refused: " + name.error().to_string());
      continue;
    }
    if (!seen.insert(*name).second) {
      ++repeated;
      continue;
    }
    out->slots.push_back({*name, objects_.is_none(value) ? std::nullopt : std::optional<uint64_t>(value)});
  }
  if (refused > kMaxRefused)
    out->refused.push_back(std::to_string(refused - kMaxRefused) + " more " + std::string(what) + " keys refused");
  if (repeated)
    out->refused.push_back(std::to_string(repeated) + " " + std::string(what) + " entries repeat an earlier key (a damaged dict)");
  out->bytes = 128 + 32 * out->slots.size();
  for (const auto& r : out->refused) out->bytes += 32 + r.size();
  if (!diag_.spend(out->bytes, "reading modules", diag_.reserve()))
    return fail(Errc::kUnsupported, std::string(kBudgetSpent) + diag_.exhausted());
  return slots_.emplace(dict, std::move(out)).first->second;
}

void ModuleWalker::read_attribute(ModuleInfo& m, std::string_view name, uint64_t value) const {
  auto v = objects_.plain_value(value);
  const uint64_t cost = v && *v ? 64 + name.size() + json_bytes(**v) : 0;
  if (!cost || m.kept_bytes + cost > kMaxAttributeBytes) {
    m.other_attributes.push_back(name);
    m.kept_bytes += 16;
    return;
  }
  // JSON has no tuple and no non-finite float: say which attributes were those.
  auto type = objects_.type_info_of(value);
  const std::string key(name);
  if (type && ((*type)->name == "tuple" || ((*type)->name == "float" && (**v).is_string())))
    m.attribute_types[key] = (*type)->name;
  m.attributes[key] = std::move(**v);
  m.kept_bytes += cost;
}

Result<ModuleInfo> ModuleWalker::read_module(uint64_t obj) {
  ModuleInfo m;
  m.object = obj;
  MLFX_ASSIGN(const cpython::TypeInfo* type, objects_.type_info_of(obj));
  m.class_name = type->full_name();
  MLFX_ASSIGN(auto attrs, objects_.instance_dict(obj));
  static const auto kNone = std::make_shared<const Slots>();
  m.parameters = m.buffers = m.children = kNone;
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
        auto s = objects_.str_view(item);
        if (s) m.non_persistent_buffers.insert(*s);
      }
    } else if (name == "training") {
      auto v = objects_.plain_value(value);
      if (v && *v && (*v)->is_boolean()) m.training = (*v)->get<bool>();
    } else if (!is_module_internal(name)) {
      read_attribute(m, name, value);
    }
  }
  if (!have_parameters)
    return fail(Errc::kBadFormat, "module " + describe_module(obj, m.class_name) +
                                      " has no _parameters (not initialised, or damaged)");
  for (const Slots* s : {m.parameters.get(), m.buffers.get(), m.children.get()})
    m.refused.insert(m.refused.end(), s->refused.begin(), s->refused.end());
  for (const auto& p : m.parameters->slots) m.own_tensors += p.object.has_value();
  for (const auto& b : m.buffers->slots) m.own_tensors += b.object && !m.non_persistent_buffers.count(b.name);
  m.kept_bytes += sizeof(ModuleInfo) + 128 + 64 * m.non_persistent_buffers.size();
  for (const auto& r : m.refused) m.kept_bytes += 32 + r.size();
  return m;
}

bool ModuleWalker::keep(uint64_t obj, ModuleInfo m) {
  if (!diag_.spend(m.kept_bytes, "reading modules", diag_.reserve())) return false;
  modules_.emplace(obj, std::move(m));
  return true;
}

void ModuleWalker::scan(const std::vector<uint64_t>& objects) {
  bool stopped = false;
  for (uint64_t obj : objects) {
    if (!diag_.in_time("scanning the tracked objects for modules")) {
      stopped = true;
      break;
    }
    auto type = objects_.type_of(obj);
    if (!type) continue;
    auto is_module = is_module_type(*type);
    if (!is_module || !*is_module) continue;
    auto m = read_module(obj);
    if (!m) {
      if (budget_spent(m.error().message())) {
        stopped = true;
        break;
      }
      diag_.warn("skipped module at " + hex_address(obj) + ": " + m.error().to_string());
      continue;
    }
    if (!keep(obj, std::move(*m))) {
      stopped = true;
      break;
    }
  }
  // Children that the GC lists missed (untracked, or in a broken list) are read directly.
  std::vector<uint64_t> pending;
  std::set<uint64_t> tried;
  for (const auto& [obj, m] : modules_)
    for (const auto& c : m.children->slots)
      if (c.object && !modules_.count(*c.object)) pending.push_back(*c.object);
  while (!pending.empty() && !stopped) {
    uint64_t obj = pending.back();
    pending.pop_back();
    if (modules_.count(obj) || !tried.insert(obj).second) continue;
    auto m = read_module(obj);
    if (!m) {
      if (budget_spent(m.error().message())) break;
      diag_.warn("skipped child module at " + hex_address(obj) + ": " + m.error().to_string());
      continue;
    }
    for (const auto& c : m->children->slots)
      if (c.object && !modules_.count(*c.object)) pending.push_back(*c.object);
    if (!keep(obj, std::move(*m))) break;
  }
  find_roots();
}

const ModuleInfo* ModuleWalker::module(uint64_t obj) const {
  auto it = modules_.find(obj);
  return it == modules_.end() ? nullptr : &it->second;
}

// Tarjan's strongly connected components of "module -> child module", without recursion (a
// chain of a million modules is one deep path). A component that no other component owns
// gives one root; components with a cycle are kept as findings.
void ModuleWalker::find_roots() {
  const size_t n = modules_.size();
  std::vector<uint64_t> addr;
  std::unordered_map<uint64_t, size_t> index_of;
  addr.reserve(n);
  for (const auto& [obj, m] : modules_) index_of.emplace(obj, addr.size()), addr.push_back(obj);
  std::vector<std::vector<std::pair<size_t, std::string_view>>> edges(n);  // (child, slot name)
  std::vector<uint64_t> owners(n, 0);  // slots in modules that hold it
  std::vector<bool> self_loop(n, false);
  for (size_t v = 0; v < n; ++v)
    for (const auto& c : modules_.at(addr[v]).children->slots)
      if (auto it = c.object ? index_of.find(*c.object) : index_of.end(); it != index_of.end()) {
        edges[v].emplace_back(it->second, c.name);
        ++owners[it->second];
        if (it->second == v) self_loop[v] = true;
      }

  constexpr size_t kNone = SIZE_MAX;
  std::vector<size_t> index(n, kNone), low(n, 0), comp(n, kNone);
  std::vector<bool> on_stack(n, false);
  std::vector<size_t> stack;
  std::vector<std::vector<size_t>> members;
  std::vector<std::pair<size_t, size_t>> calls;  // (module, next edge)
  size_t counter = 0;
  for (size_t start = 0; start < n; ++start) {
    if (index[start] != kNone) continue;
    auto open = [&](size_t v) {
      index[v] = low[v] = counter++;
      stack.push_back(v);
      on_stack[v] = true;
      calls.emplace_back(v, 0);
    };
    open(start);
    while (!calls.empty()) {
      auto& [v, next] = calls.back();
      if (next < edges[v].size()) {
        const size_t w = edges[v][next++].first;
        if (index[w] == kNone) open(w);
        else if (on_stack[w]) low[v] = std::min(low[v], index[w]);
        continue;
      }
      const size_t done = v;
      calls.pop_back();
      if (low[done] == index[done]) {
        members.emplace_back();
        size_t w;
        do {
          w = stack.back();
          stack.pop_back();
          on_stack[w] = false;
          comp[w] = members.size() - 1;
          members.back().push_back(w);
        } while (w != done);
      }
      if (!calls.empty()) low[calls.back().first] = std::min(low[calls.back().first], low[done]);
    }
  }

  std::vector<bool> owned(members.size(), false);
  for (size_t v = 0; v < n; ++v)
    for (const auto& e : edges[v])
      if (comp[e.first] != comp[v]) owned[comp[e.first]] = true;
  // The rest of the process's references: the refcount less the module slots holding it.
  auto outside_refs = [&](size_t v) {
    auto refcnt = objects_.memory().read_u64(addr[v]);
    return refcnt && *refcnt > owners[v] ? *refcnt - owners[v] : 0;
  };
  // Ranking counts tensors from many modules: all those walks share one visit budget.
  size_t visits = 16 * n + (size_t{1} << 20);
  auto tensors = [&](size_t v) {
    const size_t before = visits;
    const size_t count = count_tensors(addr[v], visits);
    if (visits == 0 && before > 0) diag_.warn("roots: too many module visits to rank every root by size");
    return count;
  };
  std::vector<std::pair<size_t, uint64_t>> found;  // (tensors, root)
  size_t cycles = 0;
  for (size_t c = 0; c < members.size(); ++c) {
    auto& group = members[c];
    std::sort(group.begin(), group.end());  // by address: a deterministic order
    const bool cyclic = group.size() > 1 || self_loop[group[0]];
    size_t root = group[0];
    if (group.size() > 1) {
      auto rank = [&](size_t v) { return std::make_tuple(outside_refs(v), tensors(v)); };
      for (size_t v : group)
        if (rank(v) > rank(root)) root = v;
    }
    if (!owned[c]) found.emplace_back(tensors(root), addr[root]);
    if (!cyclic || cycles++ >= kMaxCyclesListed) continue;
    ModuleCycle cycle;
    cycle.size = group.size();
    cycle.root = owned[c] ? 0 : addr[root];
    std::vector<std::tuple<size_t, std::string_view, size_t>> inside;  // (from, slot, to)
    for (size_t v : group) {
      if (cycle.modules.size() < ModuleCycle::kMaxListed) cycle.modules.push_back(addr[v]);
      for (const auto& [w, name] : edges[v])
        if (comp[w] == c) inside.emplace_back(v, name, w);
    }
    // The slots that lead back to the root first: those are the ones the walks cut.
    std::stable_partition(inside.begin(), inside.end(), [&](const auto& e) { return std::get<2>(e) == root; });
    cycle.edge_count = inside.size();
    for (size_t i = 0; i < inside.size() && i < ModuleCycle::kMaxListed; ++i) {
      const auto& [v, name, w] = inside[i];
      cycle.edges.push_back(describe_module(addr[v], modules_.at(addr[v]).class_name) + "._modules['" +
                            std::string(name.substr(0, 200)) + "'] -> " +
                            describe_module(addr[w], modules_.at(addr[w]).class_name));
    }
    cycles_.push_back(std::move(cycle));
  }
  if (cycles > kMaxCyclesListed)
    diag_.warn(std::to_string(cycles - kMaxCyclesListed) + " more module ownership cycles not listed");
  std::stable_sort(found.begin(), found.end(), [](auto& a, auto& b) { return a.first > b.first; });
  for (const auto& f : found) roots_.push_back(f.second);
}

// Visits allowed in one state_dict()/architecture() walk. Without a cycle, a module reached
// along k paths is walked k times (as torch does); a damaged image whose modules each hold the
// next one several times would make that exponential. A tree visits each module once.
size_t ModuleWalker::visit_budget() const { return 4 * modules_.size() + 1024; }

struct ModuleWalker::Walk {
  bool with_non_persistent = false, count_only = false;
  std::string prefix;  // "a.b." while in module a.b: one buffer, never copied per visit
  std::set<uint64_t> path;
  size_t visits_left = 0, count = 0;
  uint64_t bytes_left = kMaxStateDictBytes;
  StateDict out;

  std::string where() const {
    return prefix.empty() ? std::string("the root") : "'" + prefix.substr(0, std::min<size_t>(prefix.size() - 1, 200)) + "'";
  }
  void problem(std::string p) {
    if (out.problems.size() < kMaxProblems) out.problems.push_back(std::move(p));
    else if (out.problems.size() == kMaxProblems) out.problems.push_back("... more problems not listed");
  }
  void add(std::string_view name, uint64_t tensor, bool is_buffer, bool persistent) {
    const uint64_t cost = sizeof(StateEntry) + prefix.size() + name.size();
    if (prefix.size() + name.size() > kMaxPathBytes) {
      problem("a key under " + where() + " is " + std::to_string(prefix.size() + name.size()) +
              " bytes long, over the cap of " + std::to_string(kMaxPathBytes));
    } else if (cost > bytes_left) {
      problem("state_dict cut at " + where() + ": its keys exceed " + std::to_string(kMaxStateDictBytes >> 20) + " MiB");
    } else {
      bytes_left -= cost;
      out.entries.push_back({prefix + std::string(name), tensor, is_buffer, persistent});
    }
  }
};

void ModuleWalker::collect(uint64_t obj, Walk& w) const {
  const ModuleInfo* m = module(obj);
  if (!m) {
    w.problem("module " + w.where() + " at " + hex_address(obj) + " is not a readable module");
    return;
  }
  if (w.visits_left == 0 || !diag_.in_time("walking a state_dict")) {
    w.problem("state_dict cut at " + w.where() + ": too many module visits (shared submodules?) or out of time");
    return;
  }
  --w.visits_left;
  if (w.path.size() > kMaxDepth) {
    w.problem("modules nest deeper than " + std::to_string(kMaxDepth) + " at " + w.where() + "; not followed");
    return;
  }
  if (!w.path.insert(obj).second) {
    if (!w.count_only) diag_.warn("module cycle at " + w.where() + " (" + hex_address(obj) + "): not followed");
    return;
  }
  for (const auto& r : m->refused) w.problem(w.where() + ": " + r);
  if (w.count_only) {
    w.count += m->own_tensors;
  } else {
    for (const auto& p : m->parameters->slots)
      if (p.object) w.add(p.name, *p.object, false, true);
    for (const auto& b : m->buffers->slots) {
      const bool persistent = !m->non_persistent_buffers.count(b.name);
      if (b.object && (persistent || w.with_non_persistent)) w.add(b.name, *b.object, true, persistent);
    }
  }
  for (const auto& c : m->children->slots) {
    if (!c.object) continue;
    const size_t n = w.prefix.size();
    if (n + c.name.size() + 1 > kMaxPathBytes) {
      w.problem("child of " + w.where() + " not followed: its path would be over " + std::to_string(kMaxPathBytes) +
                " bytes");
      continue;
    }
    w.prefix.append(c.name).push_back('.');
    collect(*c.object, w);
    w.prefix.resize(n);
  }
  w.path.erase(obj);
}

StateDict ModuleWalker::state_dict(uint64_t root, bool with_non_persistent) const {
  Walk w;
  w.with_non_persistent = with_non_persistent;
  w.visits_left = visit_budget();
  collect(root, w);
  return std::move(w.out);
}

size_t ModuleWalker::tensor_count(uint64_t root) const {
  size_t visits = visit_budget();
  return count_tensors(root, visits);
}

size_t ModuleWalker::count_tensors(uint64_t root, size_t& visits) const {
  Walk w;
  w.count_only = true;
  w.visits_left = std::min(visits, visit_budget());
  collect(root, w);
  visits -= std::min(visits, visit_budget()) - w.visits_left;
  return w.count;
}

json::Json ModuleWalker::describe(uint64_t obj, const std::string& path, std::map<uint64_t, std::string>& on_path,
                                  size_t& budget, uint64_t& bytes) const {
  const ModuleInfo* m = module(obj);
  json::Json j = {{"path", path}, {"address", hex_address(obj)}};
  if (!m) {
    j["class"] = nullptr;
    j["error"] = "not a readable module";
    return j;
  }
  j["class"] = std::string(m->class_name);
  // The module on this path again: the slot points back at it (a rehost reuses that object).
  if (auto it = on_path.find(obj); it != on_path.end()) {
    j["cycle"] = it->second;
    return j;
  }
  const uint64_t cost = 2 * (m->kept_bytes + m->parameters->bytes + m->buffers->bytes + m->children->bytes) +
                        2 * path.size() + 256;
  if (budget == 0 || cost > bytes || !diag_.in_time("describing a model")) {
    j["error"] = "not described: too many module visits (shared submodules?), over its byte budget (at most " +
                 std::to_string(kMaxArchitectureBytes >> 20) + " MiB), or out of time";
    return j;
  }
  --budget;
  bytes -= cost;
  j["training"] = m->training;
  j["attributes"] = m->attributes;
  j["attribute_types"] = m->attribute_types;
  auto names = [](const auto& v) {
    json::Json a = json::Json::array();
    for (std::string_view s : v) a.push_back(std::string(s));
    return a;
  };
  j["other_attributes"] = names(m->other_attributes);
  auto slots = [&](const std::vector<NamedSlot>& v) {
    json::Json a = json::Json::array();
    for (const auto& s : v) a.push_back({{"name", std::string(s.name)}, {"none", !s.object.has_value()}});
    return a;
  };
  j["parameters"] = slots(m->parameters->slots);
  j["buffers"] = slots(m->buffers->slots);
  j["non_persistent_buffers"] = names(m->non_persistent_buffers);
  if (!m->refused.empty()) j["refused"] = m->refused;
  json::Json children = json::Json::array();
  if (on_path.size() <= kMaxDepth) {
    on_path.emplace(obj, path);
    for (const auto& c : m->children->slots) {
      if (path.size() + c.name.size() + 1 > kMaxPathBytes) {
        children.push_back({{"path", nullptr}, {"error", "path over " + std::to_string(kMaxPathBytes) + " bytes"}});
        continue;
      }
      std::string child_path = path.empty() ? std::string(c.name) : path + "." + std::string(c.name);
      if (c.object) children.push_back(describe(*c.object, child_path, on_path, budget, bytes));
      else children.push_back({{"path", child_path}, {"class", nullptr}, {"none", true}});
    }
    on_path.erase(obj);
  }
  j["children"] = std::move(children);
  return j;
}

json::Json ModuleWalker::architecture(uint64_t root, uint64_t max_bytes) const {
  std::map<uint64_t, std::string> on_path;
  size_t budget = visit_budget();
  uint64_t bytes = std::min(max_bytes, kMaxArchitectureBytes);
  return describe(root, "", on_path, budget, bytes);
}

}  // namespace mlfx::frontends::torch
