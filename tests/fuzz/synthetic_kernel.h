// A small synthetic Linux kernel in a LiME image, for the seeds of the btf and kernel targets
// (make_corpus): a reduced BTF written here (only the structures the task walk reads, laid out
// like x86-64 6.x kernels, with the nesting real BTF has: anonymous structs and unions,
// typedef chains, qualifiers, type tags, bitfields, forward declarations, and one of each other
// kind), kallsyms text and a sparse physical image holding a KASLR'd kernel image
// (linux_banner, init_top_pgt, phys_base, init_task), its page tables (2 MiB image mapping,
// 1 GiB direct map; 4 or 5 levels), four tasks, and a python3 process with four VMAs (in a
// maple tree, or the mm->mmap list of older kernels), a file path through dentries and a
// mount, its own page tables (present, swapped, out-of-image and absent pages, a 2 MiB page
// of which the image holds two 4 KiB frames) and its argv.
//
// Everything is deterministic: the seeds are the same on every host (the host's own BTF is
// not used). The kernel's objects are laid out from the BTF written here (Btf::offset_of), so
// the image follows the BTF by construction, and the same scene can be laid out with another
// BTF (a host's vmlinux, as tests/analyzer/kernel_tasks_test.cc does). The unit test also damages
// the scene's objects (scene(), put64()) before the walk.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernel/btf.h"
#include "kernel/kernel_space.h"

namespace mlfx::fuzz {

// ---- BTF (Documentation/bpf/btf.rst) -----------------------------------------------------

class BtfBuilder {
 public:
  struct Member {
    std::string name;
    uint32_t type = 0;
    uint32_t byte_offset = 0;
    uint32_t bitfield_size = 0;  // a bitfield: bit_in_byte is added to the offset
    uint32_t bit_in_byte = 0;
  };
  static constexpr uint32_t kSigned = 1, kChar = 2;

  // The id the next type will get (for types that refer to themselves or to later ones).
  uint32_t next_id() const { return count_ + 1; }

  uint32_t integer(const std::string& name, uint32_t bytes, uint32_t encoding = 0) {
    return add(1, name, 0, false, bytes, u32(encoding << 24 | bytes * 8));
  }
  uint32_t pointer(uint32_t to) { return add(2, "", 0, false, to); }
  uint32_t array(uint32_t elem, uint32_t index, uint32_t n) { return add(3, "", 0, false, 0, u32(elem) + u32(index) + u32(n)); }
  uint32_t structure(const std::string& name, uint32_t size, const std::vector<Member>& ms) { return composite(4, name, size, ms); }
  uint32_t union_(const std::string& name, uint32_t size, const std::vector<Member>& ms) { return composite(5, name, size, ms); }
  uint32_t enumeration(const std::string& name, const std::vector<std::pair<std::string, int32_t>>& values) {
    std::string e;
    for (const auto& [n, v] : values) e += u32(str(n)) + u32(static_cast<uint32_t>(v));
    return add(6, name, static_cast<uint32_t>(values.size()), false, 4, e);
  }
  uint32_t forward(const std::string& name, bool is_union = false) { return add(7, name, 0, is_union, 0); }
  uint32_t typedef_(const std::string& name, uint32_t to) { return add(8, name, 0, false, to); }
  uint32_t volatile_(uint32_t to) { return add(9, "", 0, false, to); }
  uint32_t const_(uint32_t to) { return add(10, "", 0, false, to); }
  uint32_t restrict_(uint32_t to) { return add(11, "", 0, false, to); }
  uint32_t function(const std::string& name, uint32_t proto) { return add(12, name, 1 /* global */, false, proto); }
  uint32_t function_proto(uint32_t ret, const std::vector<std::pair<std::string, uint32_t>>& params) {
    std::string e;
    for (const auto& [n, t] : params) e += u32(str(n)) + u32(t);
    return add(13, "", static_cast<uint32_t>(params.size()), false, ret, e);
  }
  uint32_t variable(const std::string& name, uint32_t type) { return add(14, name, 0, false, type, u32(1)); }
  uint32_t datasec(const std::string& name, uint32_t size, const std::vector<std::array<uint32_t, 3>>& vars) {
    std::string e;
    for (const auto& v : vars) e += u32(v[0]) + u32(v[1]) + u32(v[2]);
    return add(15, name, static_cast<uint32_t>(vars.size()), false, size, e);
  }
  uint32_t floating(const std::string& name, uint32_t bytes) { return add(16, name, 0, false, bytes); }
  uint32_t decl_tag(const std::string& name, uint32_t type, int32_t component) {
    return add(17, name, 0, false, type, u32(static_cast<uint32_t>(component)));
  }
  uint32_t type_tag(const std::string& name, uint32_t to) { return add(18, name, 0, false, to); }
  uint32_t enum64(const std::string& name, const std::vector<std::pair<std::string, uint64_t>>& values) {
    std::string e;
    for (const auto& [n, v] : values) e += u32(str(n)) + u32(static_cast<uint32_t>(v)) + u32(static_cast<uint32_t>(v >> 32));
    return add(19, name, static_cast<uint32_t>(values.size()), false, 8, e);
  }

  std::string blob() const {
    std::string h;
    h += static_cast<char>(0x9f), h += static_cast<char>(0xeb), h += '\1', h += '\0';  // magic 0xeB9F, version 1
    h += u32(24) + u32(0) + u32(static_cast<uint32_t>(types_.size())) + u32(static_cast<uint32_t>(types_.size())) +
         u32(static_cast<uint32_t>(strings_.size()));
    return h + types_ + strings_;
  }

 private:
  static std::string u32(uint32_t v) {
    std::string s(4, '\0');
    std::memcpy(s.data(), &v, 4);
    return s;
  }
  uint32_t str(const std::string& s) {
    if (s.empty()) return 0;
    auto it = offsets_.find(s);
    if (it != offsets_.end()) return it->second;
    const uint32_t off = static_cast<uint32_t>(strings_.size());
    strings_ += s + '\0';
    return offsets_[s] = off;
  }
  uint32_t add(uint32_t kind, const std::string& name, uint32_t vlen, bool kind_flag, uint32_t size_or_type,
               const std::string& extra = "") {
    types_ += u32(str(name)) + u32(kind << 24 | vlen | (kind_flag ? 1u << 31 : 0)) + u32(size_or_type) + extra;
    return ++count_;
  }
  uint32_t composite(uint32_t kind, const std::string& name, uint32_t size, const std::vector<Member>& ms) {
    bool bitfields = false;
    for (const Member& m : ms) bitfields |= m.bitfield_size != 0;
    std::string e;
    for (const Member& m : ms) {
      const uint32_t bits = m.byte_offset * 8 + m.bit_in_byte;
      e += u32(str(m.name)) + u32(m.type) + u32(bitfields ? m.bitfield_size << 24 | bits : bits);
    }
    return add(kind, name, static_cast<uint32_t>(ms.size()), bitfields, size, e);
  }

  std::string types_, strings_ = std::string(1, '\0');
  std::map<std::string, uint32_t> offsets_;
  uint32_t count_ = 0;
};

// Fails loudly when a type that others referred to by a precomputed id got another one.
inline uint32_t expect_id(uint32_t got, uint32_t want) {
  if (got != want) throw std::logic_error("synthetic BTF: type id " + std::to_string(got) + ", expected " + std::to_string(want));
  return got;
}

// The structures tasks.cc reads. maple_tree: mm_struct.mm_mt and the maple nodes (6.1+);
// otherwise mm_struct.mmap and vm_area_struct.vm_next (before 6.1).
inline std::string kernel_btf(bool maple_tree) {
  using M = BtfBuilder::Member;
  BtfBuilder b;
  const uint32_t u32 = b.integer("unsigned int", 4), i32 = b.integer("int", 4, BtfBuilder::kSigned);
  const uint32_t u64 = b.integer("long unsigned int", 8), chr = b.integer("char", 1, BtfBuilder::kChar);
  const uint32_t u8 = b.integer("unsigned char", 1);
  const uint32_t voidp = b.pointer(0);
  const uint32_t rcu_voidp = b.pointer(b.type_tag("rcu", 0));
  const uint32_t pid_t_ = b.typedef_("pid_t", b.typedef_("__kernel_pid_t", i32));
  const uint32_t atomic_t = b.typedef_("atomic_t", b.structure("", 4, {{"counter", i32, 0}}));
  const uint32_t vm_flags_t = b.typedef_("vm_flags_t", u64);
  const uint32_t sizes = b.integer("__ARRAY_SIZE_TYPE__", 4);

  const uint32_t list_head = b.next_id() + 1;
  const uint32_t list_ptr = b.pointer(list_head);
  expect_id(b.structure("list_head", 16, {{"next", list_ptr, 0}, {"prev", list_ptr, 8}}), list_head);
  const uint32_t hlist_node = b.next_id() + 2;
  const uint32_t hlist_ptr = b.pointer(hlist_node), hlist_pptr = b.pointer(hlist_ptr);
  expect_id(b.structure("hlist_node", 16, {{"next", hlist_ptr, 0}, {"pprev", hlist_pptr, 8}}), hlist_node);
  const uint32_t hlist_bl = b.next_id() + 2;
  const uint32_t bl_ptr = b.pointer(hlist_bl), bl_pptr = b.pointer(bl_ptr);
  expect_id(b.structure("hlist_bl_node", 16, {{"next", bl_ptr, 0}, {"pprev", bl_pptr, 8}}), hlist_bl);

  // struct cred: uid is kuid_t, a typedef of an anonymous struct { uid_t val; }.
  const uint32_t uid_t_ = b.typedef_("uid_t", b.typedef_("__kernel_uid32_t", u32));
  const uint32_t kuid_t = b.typedef_("kuid_t", b.structure("", 4, {{"val", uid_t_, 0}}));
  const uint32_t cred = b.structure("cred", 0x20, {{"usage", atomic_t, 0}, {"uid", kuid_t, 4}, {"gid", kuid_t, 8},
                                                   {"suid", kuid_t, 12}, {"euid", kuid_t, 20}});
  const uint32_t cred_ptr = b.pointer(b.const_(cred));
  const uint32_t signal = b.structure("signal_struct", 0x40, {{"sigcnt", atomic_t, 0}, {"live", atomic_t, 4},
                                                              {"nr_threads", i32, 8}, {"thread_head", list_head, 0x10}});
  const uint32_t mm_fwd = b.forward("mm_struct"), mm_ptr = b.pointer(mm_fwd);
  const uint32_t file_fwd = b.forward("file"), file_ptr = b.pointer(file_fwd);
  const uint32_t dentry_fwd = b.forward("dentry"), dentry_ptr = b.pointer(dentry_fwd);

  // task_struct: the walk's members in an anonymous struct (randomized_struct_fields), next to
  // bitfields (so every member is encoded with kind_flag set).
  const uint32_t signal_ptr = b.pointer(signal), state = b.volatile_(u32), comm = b.array(chr, sizes, 16);
  const uint32_t task = b.next_id() + 3;  // after the tag, the pointer and the anonymous struct
  const uint32_t task_rcu_ptr = b.pointer(b.type_tag("rcu", task));
  const uint32_t task_fields = b.structure(
      "", 0x180,
      {{"tasks", list_head, 0}, {"mm", mm_ptr, 0x10}, {"active_mm", mm_ptr, 0x18}, {"exit_state", i32, 0x20},
       {"pid", pid_t_, 0x30}, {"tgid", pid_t_, 0x34}, {"real_parent", task_rcu_ptr, 0x40}, {"parent", task_rcu_ptr, 0x48},
       {"children", list_head, 0x50}, {"real_cred", cred_ptr, 0x80}, {"cred", cred_ptr, 0x88}, {"comm", comm, 0x98},
       {"signal", signal_ptr, 0xc0}});
  expect_id(b.structure("task_struct", 0x200,
                        {{"__state", state, 0}, {"stack", voidp, 8}, {"usage", atomic_t, 0x10}, {"flags", u32, 0x2c},
                         M{"sched_reset_on_fork", u32, 0x30, 1, 0}, M{"sched_contributes_to_load", u32, 0x30, 1, 1},
                         {"", task_fields, 0x40}}),
            task);

  // Paths: dentry (d_name is a qstr whose len sits in an anonymous struct in an anonymous
  // union), file.f_path, struct mount around its vfsmount.
  const uint32_t hash_len = b.structure("", 8, {{"hash", u32, 0}, {"len", u32, 4}});
  const uint32_t qstr = b.structure(
      "qstr", 16, {{"", b.union_("", 8, {{"", hash_len, 0}, {"hash_len", u64, 0}}), 0}, {"name", b.pointer(b.const_(u8)), 8}});
  const uint32_t dentry = b.structure("dentry", 0xc0,
                                      {{"d_flags", u32, 0}, {"d_seq", u32, 4}, {"d_hash", hlist_bl, 8},
                                       {"d_parent", dentry_ptr, 0x18}, {"d_name", qstr, 0x20}, {"d_inode", voidp, 0x30},
                                       {"d_iname", b.array(u8, sizes, 32), 0x38}});
  const uint32_t vfsmount = b.structure("vfsmount", 0x20, {{"mnt_root", b.pointer(dentry), 0}, {"mnt_sb", voidp, 8},
                                                            {"mnt_flags", i32, 0x10}, {"mnt_idmap", voidp, 0x18}});
  const uint32_t mount = b.next_id() + 1;
  const uint32_t mount_ptr = b.pointer(mount);
  expect_id(b.structure("mount", 0x100, {{"mnt_hash", hlist_node, 0}, {"mnt_parent", mount_ptr, 0x10},
                                         {"mnt_mountpoint", dentry_ptr, 0x18}, {"mnt", vfsmount, 0x20},
                                         {"mnt_mounts", list_head, 0x40}}),
            mount);
  const uint32_t path = b.structure("path", 16, {{"mnt", b.pointer(vfsmount), 0}, {"dentry", dentry_ptr, 8}});
  b.structure("file", 0x100, {{"f_u", b.union_("", 16, {{"f_llist", voidp, 0}, {"f_rcuhead", list_head, 0}}), 0},
                              {"f_path", path, 0x10}, {"f_inode", voidp, 0x20}, {"f_op", voidp, 0x28}});

  // vm_area_struct: 6.x (start and end in an anonymous struct of an anonymous union, vm_flags
  // a const member of a union) or 5.x (flat, with vm_next).
  const uint32_t pgprot = b.typedef_("pgprot_t", b.structure("pgprot", 8, {{"pgprot", u64, 0}}));
  uint32_t vma;
  if (maple_tree) {
    const uint32_t range = b.structure("", 16, {{"vm_start", u64, 0}, {"vm_end", u64, 8}});
    const uint32_t head = b.union_("", 16, {{"", range, 0}, {"vm_rcu", list_head, 0}});
    const uint32_t flags = b.union_("", 8, {{"vm_flags", b.const_(vm_flags_t), 0}, {"__vm_flags", vm_flags_t, 0}});
    vma = b.structure("vm_area_struct", 0x98,
                      {{"", head, 0}, {"vm_mm", mm_ptr, 0x10}, {"vm_page_prot", pgprot, 0x18}, {"", flags, 0x20},
                       {"anon_vma", voidp, 0x48}, {"vm_ops", voidp, 0x50}, {"vm_pgoff", u64, 0x58},
                       {"vm_file", file_ptr, 0x60}, {"vm_private_data", voidp, 0x68}});
  } else {
    vma = b.next_id() + 2;
    const uint32_t vma_ptr = b.pointer(vma);
    const uint32_t rb_node = b.structure("rb_node", 24, {{"__rb_parent_color", u64, 0}, {"rb_right", voidp, 8}, {"rb_left", voidp, 16}});
    expect_id(b.structure("vm_area_struct", 0xc8,
                          {{"vm_start", u64, 0}, {"vm_end", u64, 8}, {"vm_next", vma_ptr, 0x10}, {"vm_prev", vma_ptr, 0x18},
                           {"vm_rb", rb_node, 0x20}, {"rb_subtree_gap", u64, 0x38}, {"vm_mm", mm_ptr, 0x40},
                           {"vm_page_prot", pgprot, 0x48}, {"vm_flags", u64, 0x50}, {"vm_pgoff", u64, 0x98},
                           {"vm_file", file_ptr, 0xa0}, {"vm_private_data", voidp, 0xa8}}),
              vma);
  }

  // mm_struct: everything in an anonymous struct, then a flexible array (as the kernel's).
  const uint32_t context = b.typedef_("mm_context_t", b.structure("", 0x20, {{"ctx_id", u64, 0}, {"tlb_gen", u64, 8},
                                                                              {"vdso", voidp, 0x10}, {"vdso_image", voidp, 0x18}}));
  const uint32_t pgd_t = b.typedef_("pgd_t", b.structure("", 8, {{"pgd", u64, 0}}));
  std::vector<M> mm_members;
  if (maple_tree) {
    const uint32_t spinlock = b.typedef_("spinlock_t", b.structure("spinlock", 4, {{"", b.union_("", 4, {{"rlock", u32, 0}}), 0}}));
    const uint32_t lock = b.union_("", 4, {{"ma_lock", spinlock, 0}, {"ma_external_lock", u32, 0}});
    const uint32_t mt = b.structure("maple_tree", 16, {{"", lock, 0}, {"ma_flags", u32, 4}, {"ma_root", rcu_voidp, 8}});
    mm_members.push_back({"mm_mt", mt, 0});
  } else {
    mm_members.push_back({"mmap", b.pointer(vma), 0});
    mm_members.push_back({"mm_rb", b.structure("rb_root", 8, {{"rb_node", voidp, 0}}), 8});
  }
  for (const M& m : std::vector<M>{{"get_unmapped_area", voidp, 0x10}, {"mmap_base", u64, 0x18}, {"task_size", u64, 0x28},
                                   {"pgd", b.pointer(pgd_t), 0x48}, {"mm_users", atomic_t, 0x50}, {"map_count", i32, 0x58},
                                   {"total_vm", u64, 0x80}, {"start_code", u64, 0x88}, {"end_code", u64, 0x90},
                                   {"start_brk", u64, 0xa0}, {"brk", u64, 0xa8}, {"start_stack", u64, 0xb0},
                                   {"arg_start", u64, 0xb8}, {"arg_end", u64, 0xc0}, {"env_start", u64, 0xc8},
                                   {"env_end", u64, 0xd0}, {"context", context, 0x100}})
    mm_members.push_back(m);
  b.structure("mm_struct", 0x140, {{"", b.structure("", 0x140, mm_members), 0}, {"cpu_bitmap", b.array(u64, sizes, 0), 0x140}});

  if (maple_tree) {  // include/linux/maple_tree.h, 64-bit
    const uint32_t meta = b.structure("maple_metadata", 2, {{"end", u8, 0}, {"gap", u8, 1}});
    const uint32_t parent = b.pointer(b.forward("maple_pnode"));
    const uint32_t slot_meta = b.structure("", 128, {{"pad", b.array(rcu_voidp, sizes, 15), 0}, {"meta", meta, 120}});
    const uint32_t range64 = b.structure(
        "maple_range_64", 256,
        {{"parent", parent, 0}, {"pivot", b.array(u64, sizes, 15), 8},
         {"", b.union_("", 128, {{"slot", b.array(rcu_voidp, sizes, 16), 0}, {"", slot_meta, 0}}), 128}});
    const uint32_t arange64 = b.structure("maple_arange_64", 256,
                                          {{"parent", parent, 0}, {"pivot", b.array(u64, sizes, 9), 8},
                                           {"slot", b.array(rcu_voidp, sizes, 10), 80}, {"gap", b.array(u64, sizes, 10), 160},
                                           {"meta", meta, 240}});
    const uint32_t dense = b.structure("", 256, {{"parent", parent, 0}, {"slot", b.array(rcu_voidp, sizes, 31), 8}});
    b.structure("maple_node", 256, {{"", b.union_("", 256, {{"", dense, 0}, {"mr64", range64, 0}, {"ma64", arange64, 0}}), 0}});
  }

  // One of each other kind, as a vmlinux has them.
  b.enumeration("pid_type", {{"PIDTYPE_PID", 0}, {"PIDTYPE_TGID", 1}, {"PIDTYPE_PGID", 2}, {"PIDTYPE_SID", 3}, {"PIDTYPE_MAX", 4}});
  b.enum64("blk_features", {{"BLK_FEAT_WRITE_CACHE", 1}, {"BLK_FEAT_ATOMIC", uint64_t{1} << 40}});
  const uint32_t proto = b.function_proto(0, {{"code", b.restrict_(b.pointer(i32))}});
  const uint32_t do_exit = b.function("do_exit", proto);
  b.decl_tag("user", do_exit, 0);
  const uint32_t init_task = b.variable("init_task", task);
  b.datasec(".data", 0x4000, {{init_task, 0x200, 0x200}});
  b.floating("double", 8);
  return b.blob();
}

// ---- physical memory and page tables -------------------------------------------------------

// Sparse physical memory: 4 KiB pages, zero until written; a LiME range per run of pages.
class SparsePhysical {
 public:
  void put(uint64_t pa, const void* data, size_t n) {
    const auto* p = static_cast<const char*>(data);
    for (size_t i = 0; i < n; ++i) page(pa + i)[(pa + i) & 4095] = p[i];
  }
  void put(uint64_t pa, const std::string& s) { put(pa, s.data(), s.size()); }
  void put64(uint64_t pa, uint64_t v) { put(pa, &v, 8); }
  void put32(uint64_t pa, uint32_t v) { put(pa, &v, 4); }
  void touch(uint64_t pa, uint64_t n) {
    for (uint64_t p = pa & ~4095ull; p < pa + n; p += 4096) page(p);
  }
  uint64_t get64(uint64_t pa) {
    uint64_t v;
    std::memcpy(&v, page(pa) + (pa & 4095), 8);
    return v;
  }
  std::string lime() const {
    std::string out;
    for (auto it = pages_.begin(); it != pages_.end();) {
      const uint64_t start = it->first;
      std::string bytes;
      uint64_t next = start;
      for (; it != pages_.end() && it->first == next; ++it, next += 4096) bytes += it->second;
      out += header(start, next - 1) + bytes;
    }
    return out;
  }

 private:
  char* page(uint64_t pa) {
    std::string& p = pages_[pa & ~4095ull];
    if (p.empty()) p.assign(4096, '\0');
    return p.data();
  }
  static std::string header(uint64_t start, uint64_t end) {
    std::string h(32, '\0');
    const uint32_t magic = 0x4C694D45, version = 1;
    std::memcpy(&h[0], &magic, 4), std::memcpy(&h[4], &version, 4), std::memcpy(&h[8], &start, 8), std::memcpy(&h[16], &end, 8);
    return h;
  }
  std::map<uint64_t, std::string> pages_;
};

inline constexpr uint64_t kPtePresentRw = 0x3, kPteUser = 0x4, kPteHuge = 0x80;

// x86-64 page tables in SparsePhysical, tables taken from a bump allocator.
class SyntheticPageTables {
 public:
  SyntheticPageTables(SparsePhysical& m, int levels, uint64_t root, uint64_t& next_table)
      : m_(m), levels_(levels), root_(root), next_(next_table) {
    m_.touch(root, 4096);
  }
  uint64_t root() const { return root_; }
  void map(uint64_t va, uint64_t pa, uint64_t size = 4096, uint64_t flags = kPtePresentRw | kPteUser) {
    const int leaf = size == 4096 ? 1 : size == (2u << 20) ? 2 : 3;
    m_.put64(entry(va, leaf), pa | flags | (leaf > 1 ? kPteHuge : 0));
  }
  void set(uint64_t va, int level, uint64_t raw) { m_.put64(entry(va, level), raw); }

 private:
  uint64_t entry(uint64_t va, int level) {
    uint64_t table = root_;
    for (int l = levels_; l > level; --l) {
      const uint64_t e = table + ((va >> (12 + 9 * (l - 1))) & 511) * 8;
      uint64_t v = m_.get64(e);
      if (!(v & 1)) {
        v = next_ | kPtePresentRw | kPteUser;
        m_.touch(next_, 4096);
        next_ += 4096;
        m_.put64(e, v);
      }
      table = v & 0x000ffffffffff000ull;
    }
    return table + ((va >> (12 + 9 * (level - 1))) & 511) * 8;
  }
  SparsePhysical& m_;
  int levels_;
  uint64_t root_;
  uint64_t& next_;
};

// ---- the kernel ----------------------------------------------------------------------------

struct KernelSeed {
  std::string lime, kallsyms, btf, banner;
};

inline constexpr const char* kSeedBanner =
    "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12) #1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 "
    "(2025-11-09)\n";
inline constexpr int32_t kSeedPid = 4242;
inline constexpr uint64_t kSeedOutOfImageFrame = 0x4000000;  // mapped by the process, not in the image
inline constexpr uint64_t kSeedHugeVma = 0x40000000, kSeedHugeFrame = 0x600000;  // a 2 MiB page, mostly not in the image

class SyntheticKernel {
 public:
  static constexpr uint64_t kTextVa = 0xffffffff9a000000ull;  // a KASLR'd _text
  static constexpr uint64_t kTextPa = 0x1000000;              // 16 MiB: phys_base "wraps below zero"

  SyntheticKernel(int levels, bool maple_tree) : SyntheticKernel(levels, kernel_btf(maple_tree)) {}
  // The scene laid out with another BTF (a host's vmlinux): VMAs in a maple tree when its
  // mm_struct has one, else on the mm->mmap list.
  SyntheticKernel(int levels, std::string btf_blob) : levels_(levels), btf_blob_(std::move(btf_blob)) {
    auto parsed = kernel::Btf::parse(btf_blob_);
    if (!parsed) throw std::logic_error("synthetic BTF: " + parsed.error().to_string());
    btf_ = std::move(*parsed);
    maple_ = btf_.has_member("mm_struct", "mm_mt");
    dm_ = levels == 5 ? 0xff11000000000000ull : 0xffff888000000000ull;
    SyntheticPageTables kernel(mem_, levels, kTextPa + 0x2000, next_table_);  // init_top_pgt
    kernel.map(kTextVa, kTextPa, 2 << 20, kPtePresentRw);
    kernel.map(dm_, 0, 1ull << 30, kPtePresentRw);  // the direct map: RAM below 1 GiB
    mem_.put(pa_of(sym("linux_banner")), std::string(kSeedBanner) + '\0');
    mem_.put64(pa_of(sym("phys_base")), phys_base());
    mem_.put64(pa_of(sym("page_offset_base")), dm_);
    if (levels == 5) mem_.put32(pa_of(sym("__pgtable_l5_enabled")), 1);
    build();
  }

  KernelSeed seed() const { return {mem_.lime(), kallsyms(), btf_blob_, kSeedBanner}; }

  // The scene's objects (kernel virtual addresses unless said otherwise).
  struct Scene {
    uint64_t init = 0, systemd = 0, kthreadd = 0, python = 0, mm = 0;
    uint64_t text = 0, heap = 0, huge = 0, stack = 0;  // python3's VMAs, in address order
    uint64_t leaf2 = 0;                                 // the maple leaf of heap, huge and stack (encoded)
    uint64_t user_pgd_physical = 0;                     // python3's page tables
  };
  const Scene& scene() const { return scene_; }
  bool maple_tree() const { return maple_; }
  uint64_t phys_base() const { return kTextPa - (kTextVa - kernel::kStartKernelMap); }
  // The offset of a member (a dotted path) in the BTF the scene is laid out with.
  uint64_t off(const char* s, const char* path) const {
    auto o = btf_.offset_of(s, path);
    if (!o) throw std::logic_error("synthetic BTF: " + o.error().to_string());
    return *o;
  }
  // Writes into the kernel's memory at a kernel virtual address (image or direct map).
  void put64(uint64_t va, uint64_t v) { mem_.put64(pa_of(va), v); }

  uint64_t sym(const std::string& name) const {
    static const std::map<std::string, uint64_t> at = {{"linux_banner", 0x1000}, {"init_top_pgt", 0x2000},
                                                       {"phys_base", 0x3000},    {"page_offset_base", 0x3008},
                                                       {"__pgtable_l5_enabled", 0x3010}, {"init_task", 0x3200}};
    return kTextVa + at.at(name);
  }

 private:
  std::string kallsyms() const {
    std::string s = line(kTextVa, 'T', "_text") + line(kTextVa + 0x100, 't', "startup_64");
    for (const char* n : {"linux_banner", "init_top_pgt", "phys_base", "page_offset_base", "__pgtable_l5_enabled", "init_task"})
      if (levels_ == 5 || std::string(n) != "__pgtable_l5_enabled") s += line(sym(n), 'D', n);
    return s + line(0xffffffffc0a00000ull, 't', "ext4_fill_super\t[ext4]") + line(0xffffffffc0a01000ull, 'd', "init_task\t[evil]");
  }
  static std::string line(uint64_t a, char type, const char* n) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%016llx %c %s\n", static_cast<unsigned long long>(a), type, n);
    return buf;
  }
  uint64_t pa_of(uint64_t va) const { return va >= kernel::kStartKernelMap ? va - kTextVa + kTextPa : va - dm_; }
  uint64_t size(const char* s) const {
    auto n = btf_.size_of(std::string_view(s));
    if (!n) throw std::logic_error("synthetic BTF: " + n.error().to_string());
    return *n;
  }
  // A zeroed kernel object in the direct map.
  uint64_t kalloc(uint64_t n, uint64_t align = 64) {
    heap_ = (heap_ + align - 1) & ~(align - 1);
    const uint64_t pa = heap_;
    heap_ += n;
    mem_.touch(pa, n);
    return dm_ + pa;
  }
  void put32(uint64_t va, uint32_t v) { mem_.put32(pa_of(va), v); }
  void put(uint64_t va, const std::string& s) { mem_.put(pa_of(va), s); }
  uint64_t string(const std::string& s) {
    const uint64_t va = kalloc(s.size() + 1, 8);
    put(va, s);
    return va;
  }

  uint64_t task(uint64_t at, int32_t pid, const std::string& comm, uint64_t mm) {
    mem_.touch(pa_of(at), size("task_struct"));
    put32(at + off("task_struct", "pid"), pid);
    put32(at + off("task_struct", "tgid"), pid);
    put(at + off("task_struct", "comm"), comm.substr(0, 15));
    put64(at + off("task_struct", "mm"), mm);
    put64(at + off("task_struct", "real_parent"), sym("init_task"));
    const uint64_t cred = kalloc(size("cred"));
    put32(cred + off("cred", "uid.val"), pid == kSeedPid ? 1000 : 0);
    put64(at + off("task_struct", "real_cred"), cred);
    const uint64_t signal = kalloc(size("signal_struct"));
    put32(signal + off("signal_struct", "nr_threads"), pid == kSeedPid ? 3 : 1);
    put64(at + off("task_struct", "signal"), signal);
    return at;
  }
  void link(const std::vector<uint64_t>& tasks) {
    const uint64_t t = off("task_struct", "tasks");
    for (size_t i = 0; i < tasks.size(); ++i) {
      put64(tasks[i] + t, tasks[(i + 1) % tasks.size()] + t);
      put64(tasks[i] + t + 8, tasks[(i + tasks.size() - 1) % tasks.size()] + t);
    }
  }
  uint64_t dentry(const std::string& name, uint64_t parent) {
    const uint64_t d = kalloc(size("dentry"));
    put64(d + off("dentry", "d_parent"), parent ? parent : d);
    put32(d + off("dentry", "d_name.len"), static_cast<uint32_t>(name.size()));
    put64(d + off("dentry", "d_name.name"), string(name));
    put64(d + off("dentry", "d_hash.pprev"), d);  // hashed: any non-null
    return d;
  }
  // /usr/bin/python3 under one root mount.
  uint64_t file() {
    const uint64_t root = dentry("/", 0);
    const uint64_t mount = kalloc(size("mount"));
    put64(mount + off("mount", "mnt.mnt_root"), root);
    put64(mount + off("mount", "mnt_parent"), mount);
    put64(mount + off("mount", "mnt_mountpoint"), root);
    const uint64_t python = dentry("python3", dentry("bin", dentry("usr", root)));
    const uint64_t f = kalloc(size("file"));
    put64(f + off("file", "f_path.dentry"), python);
    put64(f + off("file", "f_path.mnt"), mount + off("mount", "mnt"));
    return f;
  }
  uint64_t vma(uint64_t mm, uint64_t start, uint64_t end, uint64_t flags, uint64_t file = 0, uint64_t pgoff = 0) {
    const uint64_t v = kalloc(size("vm_area_struct"));
    put64(v + off("vm_area_struct", "vm_start"), start);
    put64(v + off("vm_area_struct", "vm_end"), end);
    put64(v + off("vm_area_struct", "vm_flags"), flags);
    put64(v + off("vm_area_struct", "vm_pgoff"), pgoff);
    put64(v + off("vm_area_struct", "vm_file"), file);
    put64(v + off("vm_area_struct", "vm_mm"), mm);
    return v;
  }
  // A maple node: type 1 (leaf_64) or 3 (arange_64), pivots, slots and the metadata's end.
  uint64_t maple_node(int type, uint64_t parent, const std::vector<uint64_t>& pivots, const std::vector<uint64_t>& slots,
                      uint8_t end) {
    const char* s = type == 3 ? "maple_arange_64" : "maple_range_64";
    const uint64_t n = kalloc(256, 256);
    put64(n, parent);
    for (size_t i = 0; i < pivots.size(); ++i) put64(n + off(s, "pivot") + 8 * i, pivots[i]);
    for (size_t i = 0; i < slots.size(); ++i) put64(n + off(s, "slot") + 8 * i, slots[i]);
    put(n + off(s, "meta.end"), std::string(1, static_cast<char>(end)));
    return n | (uint64_t(type) << 3) | 4;  // an encoded node (mt_mk_node)
  }

  // init_task, pid 1 (an mm without VMAs), kthreadd, and python3 with its mappings.
  void build() {
    Scene& s = scene_;
    s.init = task(sym("init_task"), 0, "swapper/0", 0);
    const uint64_t empty_mm = kalloc(size("mm_struct"));
    s.systemd = task(kalloc(size("task_struct")), 1, "systemd", empty_mm);
    s.kthreadd = task(kalloc(size("task_struct")), 2, "kthreadd", 0);
    const uint64_t mm = s.mm = kalloc(size("mm_struct"));
    s.python = task(kalloc(size("task_struct")), kSeedPid, "python3", mm);
    link({s.init, s.systemd, s.kthreadd, s.python});

    // The process's page tables, reached through mm->pgd (a direct-map address).
    const uint64_t root = s.user_pgd_physical = next_table_;
    next_table_ += 4096;
    SyntheticPageTables user(mem_, levels_, root, next_table_);
    put64(mm + off("mm_struct", "pgd"), dm_ + root);
    put64(empty_mm + off("mm_struct", "pgd"), dm_ + root);
    const uint64_t frames = 0x300000;
    user.map(0x400000, frames);  // text: first page present, second never touched
    mem_.put(frames, "\x7f" "ELF\x02\x01\x01");
    user.map(0x600000, frames + 0x1000);  // heap: present, swapped, present, outside the image
    mem_.put(frames + 0x1000, std::string(64, 'h'));
    user.set(0x601000, 1, kernel::make_swap_entry(0, 0x4321));
    user.map(0x602000, frames + 0x2000);
    mem_.put(frames + 0x2000, std::string(64, 'H'));
    user.map(0x603000, kSeedOutOfImageFrame);
    user.map(kSeedHugeVma, kSeedHugeFrame, 2 << 20);  // a 2 MiB page: its first and last 4 KiB in the image
    mem_.put(kSeedHugeFrame, "first 4 KiB of a huge page");
    mem_.put(kSeedHugeFrame + (2 << 20) - 4096, "last 4 KiB of a huge page");
    user.map(0x7ffd1000, frames + 0x3000);  // stack: its upper page, holding argv
    mem_.put(frames + 0x3f00, std::string("python3\0victim.py\0", 18));
    put64(mm + off("mm_struct", "arg_start"), 0x7ffd1f00);
    put64(mm + off("mm_struct", "arg_end"), 0x7ffd1f00 + 18);
    put64(mm + off("mm_struct", "start_brk"), 0x600000);
    put64(mm + off("mm_struct", "brk"), 0x604000);
    put64(mm + off("mm_struct", "start_stack"), 0x7ffd1f00);

    const uint64_t text = s.text = vma(mm, 0x400000, 0x402000, 0x5 | 0x70, file());
    const uint64_t heap = s.heap = vma(mm, 0x600000, 0x604000, 0x3 | 0x70);
    const uint64_t huge = s.huge = vma(mm, kSeedHugeVma, kSeedHugeVma + (2 << 20), 0x3 | 0x70);
    const uint64_t stack = s.stack = vma(mm, 0x7ffd0000, 0x7ffd2000, 0x3 | 0x70);
    if (maple_) {
      const uint64_t stale = vma(mm, 0x900000, 0x901000, 0x3);  // beyond the leaf's end: not a VMA
      const uint64_t leaf1 = maple_node(1, 0, {0x3fffff, 0x401fff, 0x5fffff}, {0, text, 0}, 2);
      const uint64_t huge_last = kSeedHugeVma + (2 << 20) - 1;
      const uint64_t leaf2 = s.leaf2 =
          maple_node(1, 0, {0x603fff, kSeedHugeVma - 1, huge_last, 0x7ffcffff, 0x7ffd1fff, ~0ull},
                     {heap, 0, huge, 0, stack, 0, stale}, 5);
      const uint64_t top = maple_node(3, mm | 1, {0x5fffff, ~0ull}, {leaf1, leaf2}, 1);
      put64(mm + off("mm_struct", "mm_mt.ma_root"), top | 2);  // mt_mk_root
    } else {
      put64(mm + off("mm_struct", "mmap"), text);
      put64(text + off("vm_area_struct", "vm_next"), heap);
      put64(heap + off("vm_area_struct", "vm_next"), huge);
      put64(huge + off("vm_area_struct", "vm_next"), stack);
    }
  }

  int levels_;
  bool maple_ = true;
  std::string btf_blob_;
  Scene scene_;
  kernel::Btf btf_;
  SparsePhysical mem_;
  uint64_t dm_ = 0, next_table_ = 0x200000, heap_ = 0x280000;
};

// The kernel target's input: u32-length-prefixed LiME image, kallsyms and BTF, then the banner.
inline std::string kernel_input(const KernelSeed& k) {
  std::string s;
  for (const std::string* part : {&k.lime, &k.kallsyms, &k.btf}) {
    const uint32_t n = static_cast<uint32_t>(part->size());
    s.append(reinterpret_cast<const char*>(&n), 4);
    s += *part;
  }
  return s + k.banner;
}

}  // namespace mlfx::fuzz
