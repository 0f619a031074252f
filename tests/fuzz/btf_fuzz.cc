// Fuzzes the parsers of the kernel's captured type and symbol information: the input is parsed
// as BTF (Btf::parse, /sys/kernel/btf/vmlinux) and, the same bytes, as kallsyms text
// (Kallsyms::parse, /proc/kallsyms). Then every lookup the kernel walk makes (the structures
// and member paths of analyzer/kernel/tasks.cc, and the layout itself through KernelImage::open
// over an empty image) and a walk over the first types by id.
//
// Invariants beyond "no crash, leak or hang", from btf.h and kallsyms.h:
//  * ids past the last, and id 0, are void; every id a type, member or array gives is a type;
//  * resolve() ends on a type that is not a typedef or qualifier; array() only for arrays;
//  * find_struct(name) is a struct or union of that name, whose size_of() is its size;
//  * member(s, "a.b") is member(s, "a") then, in the type "a" resolves to, member "b": found
//    by both or neither, at the sum of the offsets; has_member() agrees with member();
//    offset_of() is the byte offset of a member that is not a bitfield, and only that;
//  * a struct's named members are found by name, the first of a repeated name;
//  * kallsyms: a parsed table finds each symbol of the kernel proper at the address of its
//    first line, never a module's symbol that the kernel does not also list.
#include <charconv>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_support.h"
#include "kernel/btf.h"
#include "kernel/kallsyms.h"
#include "kernel/tasks.h"
#include "mlfx/base/bytes.h"

namespace {

using namespace mlfx;
using namespace mlfx::kernel;

// What tasks.cc (lay_out, lay_out_maple) and the synthetic kernel of make_corpus look up.
const std::vector<std::pair<std::string_view, std::vector<std::string_view>>>& lookups() {
  static const std::vector<std::pair<std::string_view, std::vector<std::string_view>>> l = {
      {"task_struct", {"tasks", "pid", "tgid", "comm", "mm", "flags", "real_parent", "real_cred", "signal", "tasks.next",
                       "tasks.prev", "comm.x", "", ".", "tasks..next"}},
      {"list_head", {"next", "prev"}},
      {"cred", {"uid.val", "uid"}},
      {"signal_struct", {"nr_threads"}},
      {"mm_struct", {"pgd", "mm_mt", "mm_mt.ma_root", "mmap", "start_brk", "brk", "start_stack", "arg_start", "arg_end",
                     "context.vdso", "context"}},
      {"maple_tree", {"ma_root"}},
      {"maple_metadata", {"end"}},
      {"maple_range_64", {"pivot", "slot", "meta", "meta.end"}},
      {"maple_arange_64", {"pivot", "slot", "meta", "meta.end"}},
      {"maple_node", {"slot", "mr64", "ma64", "mr64.pivot", "ma64.meta.end"}},
      {"vm_area_struct", {"vm_start", "vm_end", "vm_flags", "vm_pgoff", "vm_file", "vm_mm", "vm_next"}},
      {"file", {"f_path.dentry", "f_path.mnt", "f_path"}},
      {"dentry", {"d_parent", "d_name.len", "d_name.name", "d_hash.pprev", "d_name"}},
      {"mount", {"mnt", "mnt_parent", "mnt_mountpoint", "mnt.mnt_root"}},
      {"vfsmount", {"mnt_root"}},
  };
  return l;
}

bool is_qualifier(BtfKind k) {
  return k == BtfKind::kTypedef || k == BtfKind::kConst || k == BtfKind::kVolatile || k == BtfKind::kRestrict ||
         k == BtfKind::kTypeTag;
}
bool is_composite(BtfKind k) { return k == BtfKind::kStruct || k == BtfKind::kUnion; }

std::string where(std::string_view s, std::string_view path) { return std::string(s) + "." + std::string(path); }

void check_type_id(const Btf& btf, uint32_t id, const std::string& what) {
  if (id >= btf.type_count()) fuzz::invariant_failed("type ids refer to types", what + ": " + std::to_string(id));
}

// member(), has_member(), offset_of() and the composition of a dotted path, for one lookup.
void check_member(const Btf& btf, std::string_view s, uint32_t sid, std::string_view path) {
  const auto m = btf.member(s, path);
  if (btf.has_member(s, path) != m.has_value()) fuzz::invariant_failed("has_member agrees with member", where(s, path));
  const auto off = btf.offset_of(s, path);
  if (m) {
    check_type_id(btf, m->type, where(s, path));
    const bool whole = m->bitfield_size == 0 && m->bit_offset % 8 == 0;
    if (off.has_value() != whole || (off && *off != m->byte_offset()))
      fuzz::invariant_failed("offset_of is the byte offset of a member that is not a bitfield", where(s, path));
  } else if (off) {
    fuzz::invariant_failed("offset_of finds only what member finds", where(s, path));
  }
  const size_t dot = path.find('.');
  if (dot == std::string_view::npos) return;
  const auto head = btf.member(sid, path.substr(0, dot));
  if (!head) {
    if (m) fuzz::invariant_failed("a path's first member is found when the path is", where(s, path));
    return;
  }
  const auto inner = btf.resolve(head->type);
  if (!inner) {
    if (m) fuzz::invariant_failed("a path's first member resolves when the path is found", where(s, path));
    return;
  }
  const auto tail = btf.member(*inner, path.substr(dot + 1));
  if (tail.has_value() != m.has_value())
    fuzz::invariant_failed("a dotted path is found when its head and tail are", where(s, path));
  if (m && (m->bit_offset != head->bit_offset + tail->bit_offset || m->type != tail->type ||
            m->bitfield_size != tail->bitfield_size))
    fuzz::invariant_failed("a dotted path lies at the sum of its members' offsets", where(s, path));
}

void check_struct(const Btf& btf, std::string_view s, const std::vector<std::string_view>& paths) {
  const auto id = btf.find_struct(s);
  if (!id) {
    if (btf.has_member(s, paths.front())) fuzz::invariant_failed("no member of a missing struct", std::string(s));
    return;
  }
  check_type_id(btf, *id, std::string(s));
  const BtfType& t = btf.type(*id);
  if (!is_composite(t.kind) || t.name != s) fuzz::invariant_failed("find_struct finds a struct of that name", std::string(s));
  const auto size = btf.size_of(s);
  if (!size || *size != t.size_or_type) fuzz::invariant_failed("size_of a struct is its size", std::string(s));
  for (std::string_view p : paths) check_member(btf, s, *id, p);
  // Its named members by name (a name with a dot would be read as a path): the first wins.
  std::set<std::string_view> seen;
  const std::vector<BtfMember> members = btf.members(*id);
  for (size_t i = 0; i < members.size() && i < 64; ++i) {
    const BtfMember& bm = members[i];
    if (bm.name.empty() || bm.name.find('.') != std::string_view::npos || !seen.insert(bm.name).second) continue;
    const auto m = btf.member(*id, bm.name);
    if (!m || m->bit_offset != bm.bit_offset || m->type != bm.type || m->bitfield_size != bm.bitfield_size)
      fuzz::invariant_failed("a struct's member is found by its name", where(s, bm.name));
  }
}

// The first types by id: accessors follow only checked ids and bounded chains.
void check_types(const Btf& btf) {
  if (btf.type_count() == 0 || btf.type(0).kind != BtfKind::kVoid || btf.type(btf.type_count()).kind != BtfKind::kVoid ||
      btf.type(~0u).kind != BtfKind::kVoid)
    fuzz::invariant_failed("id 0 and ids past the last are void", std::to_string(btf.type_count()));
  const uint32_t n = std::min<uint32_t>(btf.type_count(), 2048);
  for (uint32_t id = 0; id < n; ++id) {
    const BtfType& t = btf.type(id);
    const std::string what = "type " + std::to_string(id);
    if (auto r = btf.resolve(id)) {
      check_type_id(btf, *r, what);
      if (is_qualifier(btf.type(*r).kind)) fuzz::invariant_failed("resolve ends on a type that is no qualifier", what);
    }
    (void)btf.size_of(id);
    const auto a = btf.array(id);
    if (a.has_value() != (t.kind == BtfKind::kArray)) fuzz::invariant_failed("array() is for arrays", what);
    if (a) check_type_id(btf, a->elem_type, what), check_type_id(btf, a->index_type, what);
    const std::vector<BtfMember> ms = btf.members(id);
    if (ms.size() != (is_composite(t.kind) ? t.vlen : 0u)) fuzz::invariant_failed("members() gives vlen members", what);
    for (const BtfMember& m : ms) check_type_id(btf, m.type, what + " member");
    if (is_composite(t.kind) && !t.name.empty()) {
      const auto found = btf.find_struct(t.name);
      if (!found || btf.type(*found).name != t.name || *found > id)
        fuzz::invariant_failed("find_struct finds the first struct of a name", what);
    }
  }
}

void check_btf(std::string_view input) {
  const auto btf = Btf::parse(input);
  if (!btf) return;
  check_types(*btf);
  for (const auto& [s, paths] : lookups()) check_struct(*btf, s, paths);
  // The layout tasks.cc makes from it (an empty image: open stops at finding the kernel).
  static const std::shared_ptr<const layers::SegmentedLayer> empty = [] {
    auto l = layers::SegmentedLayer::create("empty", nullptr, {});
    if (!l) fuzz::invariant_failed("an empty segmented layer", l.error().to_string());
    return std::shared_ptr<const layers::SegmentedLayer>(std::move(*l));
  }();
  if (KernelImage::open(empty, "ffffffff81000000 T _text\n", input, "Linux version 6.1.0"))
    fuzz::invariant_failed("an empty image holds no kernel", "");
}

void check_kallsyms(std::string_view text) {
  const auto k = Kallsyms::parse(text);
  if (!k) return;
  // Parsed: every line is "ADDRESS TYPE NAME[\tMODULE]". The kernel's symbols, first line wins.
  std::set<std::string_view> kernel_names, checked;
  std::vector<std::pair<std::string_view, uint64_t>> lines;
  size_t count = 0;
  for (std::string_view rest = text; !rest.empty();) {
    const size_t nl = rest.find('\n');
    const std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    if (line.empty()) continue;
    ++count;
    const size_t sp = line.find(' ');
    uint64_t addr = 0;
    std::from_chars(line.data(), line.data() + sp, addr, 16);
    std::string_view name = line.substr(sp + 3);
    const size_t tab = name.find('\t');
    if (tab == std::string_view::npos) {
      kernel_names.insert(name);
      lines.emplace_back(name, addr);
    } else {
      lines.emplace_back(name.substr(0, tab), ~0ull);  // a module's
    }
  }
  if (k->size() != kernel_names.size() || k->size() > count)
    fuzz::invariant_failed("kallsyms keeps one entry per name of the kernel proper",
                           std::to_string(k->size()) + " vs " + std::to_string(kernel_names.size()));
  for (size_t i = 0; i < lines.size() && i < 256; ++i) {
    const auto& [name, addr] = lines[i];
    const auto found = k->find(name);
    if (!kernel_names.count(name)) {
      if (found || k->require(name)) fuzz::invariant_failed("a module's symbol is not the kernel's", std::string(name));
      continue;
    }
    if (addr == ~0ull || !checked.insert(name).second) continue;  // a module's line, or a repeat
    if (!found || *found != addr) fuzz::invariant_failed("a symbol is at its first line's address", std::string(name));
    if (auto r = k->require(name); !r || *r != addr) fuzz::invariant_failed("require agrees with find", std::string(name));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  check_btf(input);
  check_kallsyms(input);
  return 0;
}
