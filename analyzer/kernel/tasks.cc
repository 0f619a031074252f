#include "kernel/tasks.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <unordered_set>

#include "layers/segmented_layer.h"
#include "mlfx/base/bytes.h"

namespace mlfx::kernel {
namespace {

uint64_t u64_at(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

constexpr uint64_t kVmRead = 0x1, kVmWrite = 0x2, kVmExec = 0x4, kVmMayShare = 0x80;
constexpr uint16_t kEmX86_64 = 62;

// Maple tree encodings (include/linux/maple_tree.h, lib/maple_tree.c).
constexpr uint64_t kMapleNodeMask = 255;
// uint8_t underneath: a hostile node pointer holds any of 16 types (a plain enum of 0-3 cannot).
enum MapleType : uint8_t { kMapleDense = 0, kMapleLeaf64 = 1, kMapleRange64 = 2, kMapleArange64 = 3 };
constexpr size_t kMapleNodeSize = 256;
constexpr int kMapleMaxHeight = 31;
// xa_is_node(): an internal entry (low bits 10) above 4096.
bool maple_is_node(uint64_t entry) { return (entry & 3) == 2 && entry > 4096; }
bool xa_is_internal(uint64_t entry) { return (entry & 3) == 2; }

// How many pages from the frame at `phys` on (at most max_pages) surely lie outside the image,
// given that `phys` itself does: up to the next range of a segmented image at once, so that
// a large page far outside the image is not looked at 4 KiB by 4 KiB (a 1 GiB page is
// 262,144 of them). One page for other layers.
uint64_t pages_before_image(const layers::Layer& physical, uint64_t phys, uint64_t max_pages) {
  const auto* image = dynamic_cast<const layers::SegmentedLayer*>(&physical);
  if (!image) return 1;
  const auto& segs = image->segments();
  auto next = std::upper_bound(segs.begin(), segs.end(), phys,
                               [](uint64_t a, const layers::Segment& s) { return a < s.start; });
  if (next == segs.end()) return max_pages;
  return std::clamp<uint64_t>((next->start - phys + kPageSize - 1) / kPageSize, 1, max_pages);
}

}  // namespace

struct KernelImage::Layout {
  uint64_t task_tasks = 0, task_pid = 0, task_tgid = 0, task_comm = 0, task_comm_size = 16, task_mm = 0,
           task_flags = 0;
  std::optional<uint64_t> task_real_parent, task_real_cred, cred_uid, task_signal, signal_nr_threads;
  uint64_t list_prev = 8;
  uint64_t mm_pgd = 0;
  std::optional<uint64_t> mm_mt_root, mm_mmap, vma_next;
  std::optional<uint64_t> mm_start_brk, mm_brk, mm_start_stack, mm_arg_start, mm_arg_end, mm_vdso;
  uint64_t vma_start = 0, vma_end = 0, vma_flags = 0, vma_pgoff = 0, vma_file = 0, vma_mm = 0;
  std::optional<uint64_t> file_dentry, file_mnt, dentry_parent, dentry_name_len, dentry_name_ptr, dentry_hash_pprev;
  std::optional<uint64_t> mount_mnt, mount_parent, mount_mountpoint, vfsmount_root;
  struct Maple {
    uint64_t pivots_at = 0, slots_at = 0, meta_end_at = 0;
    uint32_t pivots = 0, slots = 0;
  };
  std::array<Maple, 4> maple{};
  std::vector<std::string> notes;
};

namespace {

using Layout = KernelImage::Layout;

std::optional<uint64_t> optional_offset(const Btf& btf, std::string_view s, std::string_view path) {
  auto r = btf.offset_of(s, path);
  return r ? std::optional<uint64_t>(*r) : std::nullopt;
}

// The number of elements of an array member.
Result<uint32_t> elements(const Btf& btf, std::string_view s, std::string_view path) {
  MLFX_ASSIGN(MemberLocation m, btf.member(s, path));
  MLFX_ASSIGN(uint32_t id, btf.resolve(m.type));
  MLFX_ASSIGN(BtfArray a, btf.array(id));
  return a.nelems;
}

Status lay_out_maple(const Btf& btf, Layout& l) {
  MLFX_ASSIGN(uint64_t meta_end, btf.offset_of("maple_metadata", "end"));
  for (auto [type, name] : {std::pair{kMapleLeaf64, "maple_range_64"}, std::pair{kMapleArange64, "maple_arange_64"}}) {
    Layout::Maple& m = l.maple[type];
    MLFX_ASSIGN(m.pivots_at, btf.offset_of(name, "pivot"));
    MLFX_ASSIGN(m.slots_at, btf.offset_of(name, "slot"));
    MLFX_ASSIGN(m.pivots, elements(btf, name, "pivot"));
    MLFX_ASSIGN(m.slots, elements(btf, name, "slot"));
    MLFX_ASSIGN(uint64_t meta, btf.offset_of(name, "meta"));
    m.meta_end_at = meta + meta_end;
    if (m.slots_at + 8ull * m.slots > kMapleNodeSize || m.pivots_at + 8ull * m.pivots > kMapleNodeSize ||
        m.meta_end_at >= kMapleNodeSize || m.slots == 0 || m.pivots >= m.slots)
      return fail(Errc::kBadFormat, std::string("BTF: ") + name + " does not fit a 256-byte maple node");
  }
  l.maple[kMapleRange64] = l.maple[kMapleLeaf64];
  Layout::Maple& dense = l.maple[kMapleDense];
  MLFX_ASSIGN(dense.slots_at, btf.offset_of("maple_node", "slot"));
  MLFX_ASSIGN(dense.slots, elements(btf, "maple_node", "slot"));
  if (dense.slots_at + 8ull * dense.slots > kMapleNodeSize)
    return fail(Errc::kBadFormat, "BTF: maple_node does not fit 256 bytes");
  return {};
}

Result<Layout> lay_out(const Btf& btf) {
  Layout l;
  auto required = [&](std::string_view s, std::string_view path, uint64_t& out) -> Status {
    MLFX_ASSIGN(out, btf.offset_of(s, path));
    return {};
  };
  MLFX_TRY(required("task_struct", "tasks", l.task_tasks));
  MLFX_TRY(required("task_struct", "pid", l.task_pid));
  MLFX_TRY(required("task_struct", "tgid", l.task_tgid));
  MLFX_TRY(required("task_struct", "comm", l.task_comm));
  MLFX_TRY(required("task_struct", "mm", l.task_mm));
  MLFX_TRY(required("task_struct", "flags", l.task_flags));
  MLFX_TRY(required("list_head", "prev", l.list_prev));
  {
    MLFX_ASSIGN(MemberLocation comm, btf.member("task_struct", "comm"));
    MLFX_ASSIGN(l.task_comm_size, btf.size_of(comm.type));
    if (l.task_comm_size == 0 || l.task_comm_size > 64) return fail(Errc::kBadFormat, "BTF: task_struct.comm has an odd size");
  }
  l.task_real_parent = optional_offset(btf, "task_struct", "real_parent");
  l.task_real_cred = optional_offset(btf, "task_struct", "real_cred");
  l.cred_uid = optional_offset(btf, "cred", "uid.val");
  l.task_signal = optional_offset(btf, "task_struct", "signal");
  l.signal_nr_threads = optional_offset(btf, "signal_struct", "nr_threads");

  MLFX_TRY(required("mm_struct", "pgd", l.mm_pgd));
  if (auto mt = optional_offset(btf, "mm_struct", "mm_mt")) {
    MLFX_ASSIGN(uint64_t root, btf.offset_of("maple_tree", "ma_root"));
    l.mm_mt_root = *mt + root;
    MLFX_TRY(lay_out_maple(btf, l));
    l.notes.push_back("VMAs from the maple tree mm_struct.mm_mt (Linux 6.1 and later)");
  } else if (auto mmap = optional_offset(btf, "mm_struct", "mmap")) {
    l.mm_mmap = mmap;
    MLFX_ASSIGN(l.vma_next, btf.offset_of("vm_area_struct", "vm_next"));
    l.notes.push_back("VMAs from the list mm_struct.mmap (Linux before 6.1)");
  } else {
    return fail(Errc::kUnsupported, "BTF: mm_struct has neither mm_mt nor mmap: VMAs cannot be listed");
  }
  l.mm_start_brk = optional_offset(btf, "mm_struct", "start_brk");
  l.mm_brk = optional_offset(btf, "mm_struct", "brk");
  l.mm_start_stack = optional_offset(btf, "mm_struct", "start_stack");
  l.mm_arg_start = optional_offset(btf, "mm_struct", "arg_start");
  l.mm_arg_end = optional_offset(btf, "mm_struct", "arg_end");
  l.mm_vdso = optional_offset(btf, "mm_struct", "context.vdso");

  MLFX_TRY(required("vm_area_struct", "vm_start", l.vma_start));
  MLFX_TRY(required("vm_area_struct", "vm_end", l.vma_end));
  MLFX_TRY(required("vm_area_struct", "vm_flags", l.vma_flags));
  MLFX_TRY(required("vm_area_struct", "vm_pgoff", l.vma_pgoff));
  MLFX_TRY(required("vm_area_struct", "vm_file", l.vma_file));
  MLFX_TRY(required("vm_area_struct", "vm_mm", l.vma_mm));

  l.file_dentry = optional_offset(btf, "file", "f_path.dentry");
  l.file_mnt = optional_offset(btf, "file", "f_path.mnt");
  l.dentry_parent = optional_offset(btf, "dentry", "d_parent");
  l.dentry_name_len = optional_offset(btf, "dentry", "d_name.len");
  l.dentry_name_ptr = optional_offset(btf, "dentry", "d_name.name");
  l.dentry_hash_pprev = optional_offset(btf, "dentry", "d_hash.pprev");
  l.mount_mnt = optional_offset(btf, "mount", "mnt");
  l.mount_parent = optional_offset(btf, "mount", "mnt_parent");
  l.mount_mountpoint = optional_offset(btf, "mount", "mnt_mountpoint");
  l.vfsmount_root = optional_offset(btf, "vfsmount", "mnt_root");
  if (!l.file_dentry || !l.dentry_parent || !l.dentry_name_len || !l.dentry_name_ptr)
    l.notes.push_back("BTF lacks file/dentry members: file mappings are listed without their paths");
  else if (!l.file_mnt || !l.mount_mnt || !l.mount_parent || !l.mount_mountpoint || !l.vfsmount_root)
    l.notes.push_back("BTF lacks struct mount: paths are relative to their own mount");
  return l;
}

}  // namespace

PageCounts& PageCounts::operator+=(const PageCounts& o) {
  in_image += o.in_image, not_in_image += o.not_in_image, swapped += o.swapped, not_present += o.not_present,
      unknown += o.unknown;
  return *this;
}

std::string Vma::perms() const {
  std::string p = "----";
  if (flags & kVmRead) p[0] = 'r';
  if (flags & kVmWrite) p[1] = 'w';
  if (flags & kVmExec) p[2] = 'x';
  p[3] = (flags & kVmMayShare) ? 's' : 'p';  // as show_map_vma()
  return p;
}

Result<std::unique_ptr<KernelImage>> KernelImage::open(std::shared_ptr<const layers::SegmentedLayer> physical,
                                                       std::string_view kallsyms, std::string_view btf,
                                                       std::string_view banner) {
  std::unique_ptr<KernelImage> k(new KernelImage);
  auto syms = Kallsyms::parse(kallsyms);
  if (!syms) return fail(std::move(syms).error().context("reading the captured kallsyms"));
  k->symbols_ = std::move(*syms);
  auto types = Btf::parse(btf);
  if (!types) return fail(std::move(types).error().context("reading the captured BTF"));
  k->btf_ = std::move(*types);
  auto layout = lay_out(k->btf_);
  if (!layout) return fail(std::move(layout).error().context("laying out kernel structures from BTF"));
  k->layout_ = std::make_shared<const Layout>(std::move(*layout));
  auto space = KernelSpace::locate(std::move(physical), k->symbols_, banner);
  if (!space) return fail(std::move(space).error().context("finding the kernel in the image"));
  k->space_ = std::move(*space);
  MLFX_ASSIGN(k->init_task_, k->symbols_.require("init_task"));
  return k;
}

std::vector<std::string> KernelImage::notes() const {
  std::vector<std::string> n = space_.notes();
  n.insert(n.end(), layout_->notes.begin(), layout_->notes.end());
  return n;
}

Result<Task> KernelImage::read_task(uint64_t address) const {
  const Layout& l = *layout_;
  const layers::Layer& k = space_.kernel();
  Task t;
  t.address = address;
  MLFX_ASSIGN(t.pid, k.read_value<int32_t>(address + l.task_pid));
  MLFX_ASSIGN(t.tgid, k.read_value<int32_t>(address + l.task_tgid));
  MLFX_ASSIGN(t.flags, k.read_value<uint32_t>(address + l.task_flags));
  char comm[64] = {};
  MLFX_TRY(k.read(address + l.task_comm, comm, l.task_comm_size));
  t.comm.assign(comm, strnlen(comm, l.task_comm_size));
  MLFX_ASSIGN(t.mm, k.read_u64(address + l.task_mm));
  if (l.task_real_parent) {
    auto parent = k.read_u64(address + *l.task_real_parent);
    if (parent) {
      if (auto ppid = k.read_value<int32_t>(*parent + l.task_tgid)) t.ppid = *ppid;
    }
  }
  if (l.task_real_cred && l.cred_uid) {
    auto cred = k.read_u64(address + *l.task_real_cred);
    if (cred) {
      if (auto uid = k.read_value<uint32_t>(*cred + *l.cred_uid)) t.uid = *uid;
    }
  }
  if (l.task_signal && l.signal_nr_threads) {
    auto signal = k.read_u64(address + *l.task_signal);
    if (signal && *signal) {
      if (auto n = k.read_value<int32_t>(*signal + *l.signal_nr_threads)) t.threads = *n;
    }
  }
  if (t.mm) {
    MLFX_ASSIGN(t.pgd, k.read_u64(t.mm + l.mm_pgd));
    if (auto pa = space_.to_physical(t.pgd)) t.pgd_physical = *pa;
  }
  return t;
}

std::vector<Task> KernelImage::tasks(Diagnostics& diag) const {
  std::vector<Task> out;
  const Layout& l = *layout_;
  const layers::Layer& k = space_.kernel();
  auto first = read_task(init_task_);
  if (!first) {
    diag.warn("init_task at " + hex_address(init_task_) + " cannot be read: " + first.error().to_string());
    return out;
  }
  out.push_back(std::move(*first));
  const uint64_t head = init_task_ + l.task_tasks;
  std::unordered_set<uint64_t> seen{head};
  uint64_t prev = head;
  auto next = k.read_u64(head);
  while (next && *next != head) {
    const uint64_t node = *next;
    if (!diag.in_time("walking the task list")) break;
    if (!seen.insert(node).second) {
      diag.warn("the task list loops back to " + hex_address(node) + " without returning to init_task: walk stopped");
      return out;
    }
    if (out.size() >= kMaxTasks || !diag.spend(sizeof(Task) + 64, "walking the task list")) {
      diag.warn("task list longer than " + std::to_string(out.size()) + " entries: walk stopped");
      return out;
    }
    auto back = k.read_u64(node + l.list_prev);
    if (!back || *back != prev)
      diag.warn("task list entry " + hex_address(node) + " does not point back to the previous one (changing while "
                "captured?)");
    auto task = read_task(node - l.task_tasks);
    if (!task) {
      diag.warn("task at " + hex_address(node - l.task_tasks) + " cannot be read: " + task.error().to_string() +
                "; walk stopped");
      return out;
    }
    out.push_back(std::move(*task));
    prev = node;
    next = k.read_u64(node);
  }
  if (!next) diag.warn("the task list breaks after " + hex_address(prev) + ": " + next.error().to_string());
  return out;
}

Result<Vma> KernelImage::read_vma(uint64_t address, const Task& task) const {
  const Layout& l = *layout_;
  const layers::Layer& k = space_.kernel();
  Vma v;
  v.address = address;
  MLFX_ASSIGN(v.start, k.read_u64(address + l.vma_start));
  MLFX_ASSIGN(v.end, k.read_u64(address + l.vma_end));
  MLFX_ASSIGN(v.flags, k.read_u64(address + l.vma_flags));
  MLFX_ASSIGN(v.pgoff, k.read_u64(address + l.vma_pgoff));
  MLFX_ASSIGN(v.file, k.read_u64(address + l.vma_file));
  MLFX_ASSIGN(uint64_t mm, k.read_u64(address + l.vma_mm));
  if (mm != task.mm) return fail(Errc::kCorrupt, "vm_area_struct " + hex_address(address) + " belongs to mm " + hex_address(mm) + ", not " + hex_address(task.mm));
  if (v.start >= v.end || (v.start | v.end) % kPageSize != 0)
    return fail(Errc::kCorrupt, "vm_area_struct " + hex_address(address) + " has a bad range " + hex_address(v.start) + "-" + hex_address(v.end));
  if (v.file) {
    auto path = file_path(v.file);
    v.path = path ? *path : "(path unreadable: " + path.error().message() + ")";
  }
  return v;
}

Result<std::string> KernelImage::file_path(uint64_t file) const {
  const Layout& l = *layout_;
  if (!l.file_dentry || !l.dentry_parent || !l.dentry_name_len || !l.dentry_name_ptr)
    return fail(Errc::kUnsupported, "BTF lacks the dentry layout");
  const layers::Layer& k = space_.kernel();
  MLFX_ASSIGN(uint64_t dentry, k.read_u64(file + *l.file_dentry));
  const bool mounts = l.file_mnt && l.mount_mnt && l.mount_parent && l.mount_mountpoint && l.vfsmount_root;
  uint64_t mount = 0;
  if (mounts) {
    MLFX_ASSIGN(uint64_t vfsmount, k.read_u64(file + *l.file_mnt));
    mount = vfsmount - *l.mount_mnt;  // container_of(vfsmount, struct mount, mnt)
  }
  std::string deleted;
  if (l.dentry_hash_pprev) {
    auto pprev = k.read_u64(dentry + *l.dentry_hash_pprev);
    if (pprev && *pprev == 0) deleted = " (deleted)";
  }
  std::vector<std::string> parts;
  size_t bytes = 0;
  for (size_t step = 0; step < 2 * kMaxPathComponents; ++step) {
    MLFX_ASSIGN(uint64_t parent, k.read_u64(dentry + *l.dentry_parent));
    if (mounts) {
      MLFX_ASSIGN(uint64_t mnt_root, k.read_u64(mount + *l.mount_mnt + *l.vfsmount_root));
      if (dentry == mnt_root || dentry == parent) {
        MLFX_ASSIGN(uint64_t parent_mount, k.read_u64(mount + *l.mount_parent));
        if (parent_mount == mount || parent_mount == 0) break;  // the namespace's root mount
        MLFX_ASSIGN(dentry, k.read_u64(mount + *l.mount_mountpoint));
        mount = parent_mount;
        continue;
      }
    } else if (dentry == parent) {
      break;
    }
    MLFX_ASSIGN(uint32_t len, k.read_value<uint32_t>(dentry + *l.dentry_name_len));
    MLFX_ASSIGN(uint64_t name_ptr, k.read_u64(dentry + *l.dentry_name_ptr));
    if (len == 0 || len > 255) return fail(Errc::kCorrupt, "dentry " + hex_address(dentry) + " has a name of " + std::to_string(len) + " bytes");
    std::string name(len, '\0');
    MLFX_TRY(k.read(name_ptr, name.data(), len));
    bytes += len + 1;
    if (parts.size() >= kMaxPathComponents || bytes > kMaxPathBytes)
      return fail(Errc::kCorrupt, "path longer than " + std::to_string(kMaxPathBytes) + " bytes (a dentry loop?)");
    parts.push_back(std::move(name));
    dentry = parent;
  }
  std::string path;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) path += "/" + *it;
  return (path.empty() ? "/" : path) + deleted;
}

struct MapleWalk {
  const Task& task;
  Diagnostics& diag;
  std::unordered_set<uint64_t> nodes;
  struct Entry {
    uint64_t min, max, value;
  };
  std::vector<Entry> entries;
  bool stop = false;
};

void KernelImage::maple_walk(uint64_t enode, uint64_t min, uint64_t max, int depth, MapleWalk& w) const {
  if (w.stop) return;
  const uint64_t node = enode & ~kMapleNodeMask;
  const auto type = static_cast<MapleType>((enode >> 3) & 0xf);
  const std::string where = "maple node " + hex_address(node) + " of pid " + std::to_string(w.task.pid);
  if (depth > kMapleMaxHeight || type > kMapleArange64) {
    w.diag.warn(where + ": " + (depth > kMapleMaxHeight ? "tree deeper than the kernel allows" : "unknown node type") + "; skipped");
    return;
  }
  if (!w.nodes.insert(node).second || w.nodes.size() > kMaxMapleNodes || !w.diag.in_time("walking a maple tree")) {
    w.diag.warn(where + ": visited twice or too many nodes; walk stopped");
    w.stop = true;
    return;
  }
  std::array<uint8_t, kMapleNodeSize> buf;
  if (auto st = space_.kernel().read(node, buf.data(), buf.size()); !st) {
    w.diag.warn(where + " cannot be read: " + st.error().to_string());
    return;
  }
  if ((u64_at(buf.data()) & ~kMapleNodeMask) == node) {  // ma_dead_node(): parent points at itself
    w.diag.warn(where + " is dead (freed while captured); skipped");
    return;
  }
  const Layout::Maple& m = layout_->maple[type];
  auto pivot = [&](uint32_t i) { return u64_at(buf.data() + m.pivots_at + 8 * i); };
  auto slot = [&](uint32_t i) { return u64_at(buf.data() + m.slots_at + 8 * i); };
  // ma_data_end(): the last slot in use.
  uint32_t end;
  if (type == kMapleDense) end = m.slots - 1;
  else if (type == kMapleArange64 || pivot(m.pivots - 1) == 0) end = buf[m.meta_end_at];
  else end = pivot(m.pivots - 1) == max ? m.pivots - 1 : m.pivots;
  if (end >= m.slots) {
    w.diag.warn(where + ": metadata says " + std::to_string(end + 1) + " slots of " + std::to_string(m.slots) + "; clamped");
    end = m.slots - 1;
  }
  const bool leaf = type == kMapleDense || type == kMapleLeaf64;
  uint64_t lo = min;
  for (uint32_t i = 0; i <= end; ++i) {
    const uint64_t hi = type == kMapleDense ? lo : i < m.pivots ? pivot(i) : max;
    if (hi < lo || hi > max) {
      w.diag.warn(where + ": pivot " + std::to_string(i) + " (" + hex_address(hi) + ") outside " + hex_address(lo) + "-" + hex_address(max) + "; rest of node skipped");
      return;
    }
    const uint64_t s = slot(i);
    if (s != 0) {
      if (!leaf) {
        maple_walk(s, lo, hi, depth + 1, w);
      } else if (!xa_is_internal(s)) {  // XA_ZERO_ENTRY and other reserved values are not VMAs
        if (w.entries.size() >= kMaxVmas) {
          w.diag.warn("pid " + std::to_string(w.task.pid) + ": more than " + std::to_string(kMaxVmas) + " VMAs; walk stopped");
          w.stop = true;
          return;
        }
        w.entries.push_back({lo, hi, s});
      }
    }
    if (hi == max) break;
    lo = hi + 1;
  }
}

std::vector<Vma> KernelImage::vmas_from_maple_tree(const Task& task, Diagnostics& diag) const {
  std::vector<Vma> out;
  auto root = space_.kernel().read_u64(task.mm + *layout_->mm_mt_root);
  if (!root) {
    diag.warn("pid " + std::to_string(task.pid) + ": the maple tree root cannot be read: " + root.error().to_string());
    return out;
  }
  MapleWalk w{task, diag, {}, {}, false};
  if (maple_is_node(*root)) maple_walk(*root, 0, ~0ull, 0, w);
  else if (*root != 0) w.entries.push_back({0, 0, *root});  // a lone entry at index 0
  for (const auto& e : w.entries) {
    auto v = read_vma(e.value, task);
    if (!v) {
      diag.warn("pid " + std::to_string(task.pid) + ": maple tree entry " + hex_address(e.value) + ": " + v.error().to_string());
      continue;
    }
    if (v->start != e.min || v->end - 1 != e.max) {
      diag.warn("pid " + std::to_string(task.pid) + ": VMA " + hex_address(e.value) + " (" + hex_address(v->start) + "-" + hex_address(v->end) +
                ") is not the range its maple slot holds (" + hex_address(e.min) + "-" + hex_address(e.max) + "); skipped");
      continue;
    }
    out.push_back(std::move(*v));
  }
  return out;
}

std::vector<Vma> KernelImage::vmas_from_list(const Task& task, Diagnostics& diag) const {
  std::vector<Vma> out;
  std::unordered_set<uint64_t> seen;
  auto vma = space_.kernel().read_u64(task.mm + *layout_->mm_mmap);
  while (vma && *vma) {
    if (!seen.insert(*vma).second || out.size() >= kMaxVmas || !diag.in_time("walking a VMA list")) {
      diag.warn("pid " + std::to_string(task.pid) + ": the VMA list loops or is too long; walk stopped");
      return out;
    }
    auto v = read_vma(*vma, task);
    if (!v) {
      diag.warn("pid " + std::to_string(task.pid) + ": " + v.error().to_string() + "; walk stopped");
      return out;
    }
    out.push_back(std::move(*v));
    vma = space_.kernel().read_u64(*vma + *layout_->vma_next);
  }
  if (!vma) diag.warn("pid " + std::to_string(task.pid) + ": the VMA list breaks: " + vma.error().to_string());
  return out;
}

void KernelImage::label_anonymous(const Task& task, std::vector<Vma>& vmas) const {
  const Layout& l = *layout_;
  const layers::Layer& k = space_.kernel();
  auto field = [&](const std::optional<uint64_t>& off) -> std::optional<uint64_t> {
    if (!off) return std::nullopt;
    auto v = k.read_u64(task.mm + *off);
    return v ? std::optional<uint64_t>(*v) : std::nullopt;
  };
  const auto start_brk = field(l.mm_start_brk), brk = field(l.mm_brk), stack = field(l.mm_start_stack),
             vdso = field(l.mm_vdso);
  for (Vma& v : vmas) {
    if (v.file) continue;
    // As show_map_vma(): the heap touches [start_brk, brk]; the stack holds start_stack.
    if (start_brk && brk && v.start <= *brk && v.end >= *start_brk) v.path = "[heap]";
    else if (stack && v.start <= *stack && v.end >= *stack) v.path = "[stack]";
    else if (vdso && v.start == *vdso) v.path = "[vdso]";
    else if (vdso && v.end == *vdso) v.path = "[vvar]";  // x86-64 places vvar right below the vdso
  }
}

std::vector<Vma> KernelImage::vmas(const Task& task, Diagnostics& diag) const {
  if (task.mm == 0) return {};
  std::vector<Vma> out = layout_->mm_mt_root ? vmas_from_maple_tree(task, diag) : vmas_from_list(task, diag);
  std::sort(out.begin(), out.end(), [](const Vma& a, const Vma& b) { return a.start < b.start; });
  for (size_t i = 1; i < out.size(); ++i)
    if (out[i].start < out[i - 1].end)
      diag.warn("pid " + std::to_string(task.pid) + ": VMAs at " + hex_address(out[i - 1].start) + " and " + hex_address(out[i].start) + " overlap");
  label_anonymous(task, out);
  return out;
}

Result<std::shared_ptr<const PageTableLayer>> KernelImage::user_space(const Task& task) const {
  if (task.mm == 0) return fail(Errc::kInvalidArgument, "pid " + std::to_string(task.pid) + " is a kernel thread: it has no user address space");
  if (task.pgd_physical == 0)
    return fail(Errc::kInvalidAddress, "pid " + std::to_string(task.pid) + ": its page-table root mm->pgd (" + hex_address(task.pgd) +
                                           ") is not mapped in the kernel's address space");
  MLFX_ASSIGN(auto layer, PageTableLayer::create("pid " + std::to_string(task.pid), space_.physical(), task.pgd_physical,
                                                 space_.levels(), PageTableLayer::user_top(space_.levels())));
  return std::shared_ptr<const PageTableLayer>(std::move(layer));
}

PageCounts KernelImage::count_pages(const PageTableLayer& space, uint64_t start, uint64_t end, Diagnostics& diag,
                                    std::vector<layers::AddressRange>* declared) {
  PageCounts c;
  uint64_t v = start & ~(kPageSize - 1);
  while (v < end) {
    if (!diag.in_time("counting pages")) break;
    auto t = space.translate(v);
    if (!t) {  // non-canonical: nothing can map it
      c.not_present += (end - v + kPageSize - 1) / kPageSize;
      break;
    }
    // Where the translation ends (it may end the address space: vstart + size wraps to 0).
    const uint64_t stop = end - t->vstart <= t->size ? end : t->vstart + t->size;
    const uint64_t pages = (stop - v + kPageSize - 1) / kPageSize;
    if (declared && t->state != PageState::kNotPresent) layers::append_range(*declared, v, stop);
    switch (t->state) {
      case PageState::kNotPresent: c.not_present += pages; break;
      case PageState::kSwapped: c.swapped += pages; break;
      case PageState::kTableNotInImage: c.unknown += pages; break;
      case PageState::kPresent:
        for (uint64_t p = v; p < stop; p += kPageSize) {
          const uint64_t run = space.physical().mapped_run(t->physical_of(p), stop - p);
          if (run == 0) {
            const uint64_t left = (stop - p + kPageSize - 1) / kPageSize;
            const uint64_t outside = pages_before_image(space.physical(), t->physical_of(p), left);
            c.not_in_image += outside;
            p += (outside - 1) * kPageSize;
            continue;
          }
          const uint64_t whole = (run + kPageSize - 1) / kPageSize;
          c.in_image += whole;
          p += (whole - 1) * kPageSize;
        }
        break;
    }
    v = stop;
  }
  return c;
}

Result<layers::ProcessImage> KernelImage::process_image(const Task& task, Diagnostics& diag) const {
  MLFX_ASSIGN(auto memory, user_space(task));
  layers::ProcessImage p;
  p.kind = "physical image (kernel page tables)";
  const std::vector<Vma> vmas = this->vmas(task, diag);
  PageCounts pages;
  for (const Vma& v : vmas) {
    pages += count_pages(*memory, v.start, v.end, diag, &p.declared);
    if (v.file) p.mapped_files.push_back({v.start, v.end, v.pgoff * kPageSize, v.path});
    if (layers::declared_whole(v.perms())) p.declared.push_back({v.start, v.end});
  }
  p.declared = layers::normalized(std::move(p.declared));
  p.facts.pid = task.tgid;
  p.facts.command = task.comm;
  p.facts.threads = task.threads > 0 ? static_cast<size_t>(task.threads) : 1;
  p.facts.elf_machine = kEmX86_64;
  p.facts.segments = vmas.size();
  p.facts.image_bytes = pages.in_image * kPageSize;
  const Layout& l = *layout_;
  if (l.mm_arg_start && l.mm_arg_end) {
    auto a = space_.kernel().read_u64(task.mm + *l.mm_arg_start), b = space_.kernel().read_u64(task.mm + *l.mm_arg_end);
    if (a && b && *b > *a && *b - *a <= kMaxPathBytes) {
      std::string args(*b - *a, '\0');
      if (memory->read(*a, args.data(), args.size())) {
        while (!args.empty() && args.back() == '\0') args.pop_back();
        std::replace(args.begin(), args.end(), '\0', ' ');
        p.facts.args = std::move(args);
      } else {
        p.warnings.push_back("the command line's page is not in the image");
      }
    }
  }
  if (pages.swapped) p.warnings.push_back(std::to_string(pages.swapped) + " page(s) swapped out: not in the image");
  if (pages.not_in_image)
    p.warnings.push_back(std::to_string(pages.not_in_image) + " present page(s) whose frames lie outside the image");
  if (pages.unknown) p.warnings.push_back(std::to_string(pages.unknown) + " page(s) behind page tables outside the image");
  p.memory = std::move(memory);
  return p;
}

}  // namespace mlfx::kernel
