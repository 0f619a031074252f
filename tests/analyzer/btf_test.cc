// The BTF parser on this host's real /sys/kernel/btf/vmlinux (offsets checked against
// bpftool's raw dump when bpftool is installed, and against layouts fixed by the kernel's own
// design either way), on small blobs written here from Documentation/bpf/btf.rst, and on
// hostile ones; and the kallsyms parser.
#include "kernel/btf.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <regex>

#include "kernel/kallsyms.h"
#include "test_util.h"

namespace mlfx::kernel {
namespace {

constexpr const char* kHostBtf = "/sys/kernel/btf/vmlinux";

// Writes BTF from the format's documentation: header, type section, string section.
class BtfWriter {
 public:
  uint32_t str(const std::string& s) {
    if (s.empty()) return 0;
    const uint32_t off = static_cast<uint32_t>(strings_.size());
    strings_ += s;
    strings_.push_back('\0');
    return off;
  }
  uint32_t add(const std::string& name, uint32_t kind, uint32_t vlen, bool kind_flag, uint32_t size_or_type,
               const std::string& extra = "") {
    put(types_, str(name));
    put(types_, (kind << 24) | vlen | (kind_flag ? 1u << 31 : 0));
    put(types_, size_or_type);
    types_ += extra;
    return ++count_;
  }
  uint32_t integer(const std::string& name, uint32_t size) {
    std::string e;
    put(e, size * 8);
    return add(name, 1, 0, false, size, e);
  }
  uint32_t pointer(uint32_t to) { return add("", 2, 0, false, to); }
  uint32_t array(uint32_t elem, uint32_t index, uint32_t n) {
    std::string e;
    put(e, elem), put(e, index), put(e, n);
    return add("", 3, 0, false, 0, e);
  }
  struct Member {
    std::string name;
    uint32_t type, bit_offset, bitfield_size = 0;
  };
  uint32_t composite(const std::string& name, uint32_t size, const std::vector<Member>& ms, bool is_union = false) {
    bool kf = false;
    for (const auto& m : ms) kf |= m.bitfield_size != 0;
    std::string e;
    for (const auto& m : ms) put(e, str(m.name)), put(e, m.type), put(e, kf ? (m.bitfield_size << 24) | m.bit_offset : m.bit_offset);
    return add(name, is_union ? 5 : 4, static_cast<uint32_t>(ms.size()), kf, size, e);
  }
  uint32_t typedef_(const std::string& name, uint32_t to) { return add(name, 8, 0, false, to); }
  uint32_t reserve_id() { return count_ + 1; }

  std::string blob(uint16_t magic = 0xeB9F) const {
    std::string h;
    put16(h, magic);
    h.push_back(1), h.push_back(0);
    put(h, 24), put(h, 0), put(h, static_cast<uint32_t>(types_.size())), put(h, static_cast<uint32_t>(types_.size())),
        put(h, static_cast<uint32_t>(strings_.size()));
    return h + types_ + strings_;
  }
  static void put(std::string& s, uint32_t v) {
    for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
  }
  static void put16(std::string& s, uint16_t v) { s.push_back(static_cast<char>(v)), s.push_back(static_cast<char>(v >> 8)); }

 private:
  std::string types_, strings_ = std::string(1, '\0');
  uint32_t count_ = 0;
};

// A small kernel-like type graph: list_head, an anonymous union of an anonymous struct, a
// bitfield, an array, and a typedef chain.
std::string small_blob(BtfWriter& w) {
  const uint32_t lng = w.integer("long", 8);        // 1
  const uint32_t u32 = w.integer("unsigned int", 4);  // 2
  const uint32_t lh_ptr = w.reserve_id() + 1;         // the pointer after list_head
  const uint32_t lh = w.composite("list_head", 16, {{"next", lh_ptr, 0}, {"prev", lh_ptr, 64}});  // 3
  w.pointer(lh);                                                                                  // 4
  const uint32_t anon_s = w.composite("", 8, {{"hash", u32, 0}, {"len", u32, 32}});               // 5
  const uint32_t anon_u = w.composite("", 8, {{"", anon_s, 0}, {"hash_len", lng, 0}}, true);      // 6
  const uint32_t qstr = w.composite("qstr", 16, {{"", anon_u, 0}, {"name", lng, 64}});            // 7
  const uint32_t cq = w.add("", 10, 0, false, qstr);                                              // 8: const qstr
  const uint32_t arr = w.array(lng, u32, 4);                                                      // 9
  const uint32_t td = w.typedef_("list_t", lh);                                                   // 10
  w.composite("outer", 96,
              {{"d_name", cq, 0}, {"tasks", td, 128}, {"flag", u32, 384, 3}, {"vals", arr, 512}});  // 11
  return w.blob();
}

TEST(Btf, SmallBlobMembersByPathThroughAnonymousMembersTypedefsAndQualifiers) {
  BtfWriter w;
  auto btf = Btf::parse(small_blob(w));
  ASSERT_TRUE(btf) << btf.error().to_string();
  EXPECT_EQ(btf->type_count(), 12u);
  EXPECT_EQ(*btf->offset_of("outer", "tasks.prev"), 24u);
  EXPECT_EQ(*btf->offset_of("outer", "d_name.len"), 4u);  // in an anonymous struct in an anonymous union
  EXPECT_EQ(*btf->offset_of("outer", "d_name.name"), 8u);
  EXPECT_EQ(*btf->offset_of("qstr", "hash_len"), 0u);
  EXPECT_EQ(*btf->size_of("outer"), 96u);
  auto vals = btf->member("outer", "vals");
  ASSERT_TRUE(vals);
  EXPECT_EQ(*btf->size_of(vals->type), 32u);
  auto flag = btf->member("outer", "flag");
  ASSERT_TRUE(flag);
  EXPECT_EQ(flag->bitfield_size, 3u);
  EXPECT_EQ(flag->bit_offset, 384u);
  EXPECT_FALSE(btf->offset_of("outer", "flag"));  // a bitfield has no byte offset
  EXPECT_EQ(btf->offset_of("outer", "tasks.next.prev").error().code(), Errc::kInvalidArgument);  // through a pointer
  EXPECT_EQ(btf->offset_of("outer", "nothing").error().code(), Errc::kNotFound);
  EXPECT_EQ(btf->find_struct("task_struct").error().code(), Errc::kNotFound);
}

TEST(Btf, HostileBlobsAreRefused) {
  BtfWriter good;
  const std::string blob = small_blob(good);
  // Every truncation fails cleanly (or, at the section boundaries, parses less).
  for (size_t n = 0; n < blob.size(); ++n) {
    auto r = Btf::parse(blob.substr(0, n));
    EXPECT_FALSE(r) << "truncated to " << n;
  }
  auto patched = [&](size_t at, uint32_t v) {
    std::string b = blob;
    for (int i = 0; i < 4; ++i) b[at + i] = static_cast<char>(v >> (8 * i));
    return Btf::parse(b);
  };
  EXPECT_FALSE(Btf::parse(BtfWriter().blob(0x1234)));
  EXPECT_EQ(Btf::parse(BtfWriter().blob(0x9FEB)).error().code(), Errc::kUnsupported);
  EXPECT_FALSE(patched(12, 0xfffffff0));  // type_len huge
  EXPECT_FALSE(patched(20, 0xfffffff0));  // str_len huge
  EXPECT_FALSE(patched(4, 0x10000000));   // hdr_len past the end
  EXPECT_FALSE(patched(24, 0x7fffffff));  // the first type's name offset outside the strings
  EXPECT_FALSE(patched(24 + 4, (4u << 24) | 0xffff));  // an INT turned into a struct of 65535 members
  EXPECT_FALSE(patched(24 + 4, 31u << 24));            // unknown kind
  // A member naming a type id past the last.
  {
    BtfWriter w;
    w.integer("int", 4);
    w.composite("s", 8, {{"a", 99, 0}});
    auto r = Btf::parse(w.blob());
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("type id 99"), std::string::npos) << r.error().to_string();
  }
  // A self-referential typedef, and a typedef loop of two: errors, not hangs.
  {
    BtfWriter w;
    const uint32_t self = w.typedef_("self", 1);
    w.typedef_("a", 3);
    w.typedef_("b", 2);
    w.composite("s", 8, {{"x", self, 0}, {"y", 2, 32}});
    auto btf = Btf::parse(w.blob());
    ASSERT_TRUE(btf) << btf.error().to_string();
    EXPECT_FALSE(btf->resolve(self));
    EXPECT_FALSE(btf->size_of(2));
    EXPECT_FALSE(btf->offset_of("s", "x.z"));
    EXPECT_EQ(*btf->offset_of("s", "y"), 4u);
  }
  // A struct that embeds itself through an anonymous member: bounded.
  {
    BtfWriter w;
    w.composite("", 8, {{"", 1, 0}});
    w.composite("s", 8, {{"", 1, 0}});
    auto btf = Btf::parse(w.blob());
    ASSERT_TRUE(btf);
    EXPECT_FALSE(btf->offset_of("s", "missing"));
  }
}

// bits_offset of `member` in struct `name` per bpftool's raw dump (-1: not listed).
long bpftool_offset(const std::string& dump, const std::string& name, const std::string& member) {
  const std::string head = "] STRUCT '" + name + "' size=";
  size_t at = dump.find(head);
  if (at == std::string::npos) return -1;
  at = dump.find('\n', at);
  const std::regex line("^\\t'([^']*)' type_id=\\d+ bits_offset=(\\d+)");
  while (at != std::string::npos && at + 1 < dump.size() && dump[at + 1] == '\t') {
    const size_t end = dump.find('\n', at + 1);
    const std::string l = dump.substr(at + 1, end - at - 1);
    std::smatch m;
    if (std::regex_search(l, m, line) && m[1] == member) return std::stol(m[2]);
    at = end;
  }
  return -1;
}

std::string run_bpftool() {
  for (const char* bin : {"/usr/sbin/bpftool", "/usr/bin/bpftool", "/sbin/bpftool"}) {
    if (access(bin, X_OK) != 0) continue;
    std::string cmd = std::string(bin) + " btf dump file " + kHostBtf + " format raw 2>/dev/null";
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) return "";
    std::string out;
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    pclose(p);
    return out;
  }
  return "";
}

TEST(Btf, HostVmlinuxLaysOutTheStructuresTheTaskWalkReads) {
  if (access(kHostBtf, R_OK) != 0) GTEST_SKIP() << kHostBtf << " is not readable here";
  const std::string blob = testing::read_file(kHostBtf);
  auto btf = Btf::parse(blob);
  ASSERT_TRUE(btf) << btf.error().to_string();
  EXPECT_GT(btf->type_count(), 10000u);
  // Layouts fixed by the kernel's design.
  EXPECT_EQ(*btf->offset_of("list_head", "next"), 0u);
  EXPECT_EQ(*btf->offset_of("list_head", "prev"), 8u);
  EXPECT_EQ(*btf->size_of("list_head"), 16u);
  EXPECT_EQ(*btf->size_of("maple_node"), 256u);
  EXPECT_EQ(*btf->size_of("qstr"), 16u);
  auto comm = btf->member("task_struct", "comm");
  ASSERT_TRUE(comm);
  EXPECT_EQ(*btf->size_of(comm->type), 16u);  // TASK_COMM_LEN
  auto nelems = [&](const char* s, const char* m) {
    auto loc = btf->member(s, m);
    return loc ? btf->array(*btf->resolve(loc->type))->nelems : 0u;
  };
  EXPECT_EQ(nelems("maple_range_64", "pivot"), 15u);
  EXPECT_EQ(nelems("maple_range_64", "slot"), 16u);
  EXPECT_EQ(nelems("maple_arange_64", "pivot"), 9u);
  EXPECT_EQ(nelems("maple_arange_64", "slot"), 10u);
  EXPECT_EQ(*btf->offset_of("maple_range_64", "pivot"), 8u);
  EXPECT_EQ(*btf->offset_of("maple_range_64", "slot"), 128u);
  EXPECT_EQ(*btf->offset_of("maple_range_64", "meta"), 248u);  // in slot 15's place
  EXPECT_EQ(*btf->offset_of("dentry", "d_name.len"), *btf->offset_of("dentry", "d_name") + 4);  // little-endian hash_len
  for (const char* path : {"mm_struct.pgd", "mm_struct.mm_mt", "vm_area_struct.vm_start", "vm_area_struct.vm_flags",
                           "file.f_path.dentry", "mount.mnt_parent", "cred.uid.val", "mm_struct.context.vdso"}) {
    std::string p = path;
    const size_t dot = p.find('.');
    EXPECT_TRUE(btf->has_member(p.substr(0, dot), p.substr(dot + 1))) << path;
  }
  const std::string dump = run_bpftool();
  if (dump.empty()) GTEST_SKIP() << "bpftool not installed: offsets not compared with its dump";
  const std::vector<std::pair<std::string, std::string>> members = {
      {"task_struct", "tasks"}, {"task_struct", "pid"},        {"task_struct", "tgid"},
      {"task_struct", "comm"},  {"task_struct", "mm"},         {"task_struct", "real_parent"},
      {"task_struct", "flags"}, {"task_struct", "real_cred"},  {"vm_area_struct", "vm_mm"},
      {"vm_area_struct", "vm_pgoff"}, {"vm_area_struct", "vm_file"}, {"dentry", "d_parent"},
      {"maple_tree", "ma_root"}, {"maple_arange_64", "meta"}, {"mount", "mnt_mountpoint"}};
  for (const auto& [s, m] : members) {
    const long bits = bpftool_offset(dump, s, m);
    ASSERT_GE(bits, 0) << s << "." << m << " not in bpftool's dump";
    auto loc = btf->member(s, m);
    ASSERT_TRUE(loc) << loc.error().to_string();
    EXPECT_EQ(loc->bit_offset, static_cast<uint64_t>(bits)) << s << "." << m;
  }
}

TEST(Kallsyms, ParsesAddressesAndPrefersTheKernelOverModules) {
  auto k = Kallsyms::parse("ffffffff81000000 T _text\n"
                           "ffffffff82a00000 D linux_banner\n"
                           "ffffffffc0001000 t init_task\t[evil]\n"
                           "ffffffff82c15940 D init_task\n");
  ASSERT_TRUE(k) << k.error().to_string();
  EXPECT_EQ(*k->find("linux_banner"), 0xffffffff82a00000u);
  EXPECT_EQ(*k->find("init_task"), 0xffffffff82c15940u);  // the module's symbol of that name is ignored
  EXPECT_FALSE(k->find("nothing"));
  EXPECT_EQ(k->require("init_top_pgt").error().code(), Errc::kNotFound);
}

TEST(Kallsyms, HostileTextIsRefused) {
  EXPECT_FALSE(Kallsyms::parse(""));
  EXPECT_FALSE(Kallsyms::parse("0000000000000000 T _text\n0000000000000000 D init_task\n"));  // no privilege
  EXPECT_FALSE(Kallsyms::parse("zzzz T _text\n"));
  EXPECT_FALSE(Kallsyms::parse("ffffffff81000000T_text\n"));
  EXPECT_FALSE(Kallsyms::parse("ffffffff81000000 T \x01\x02\n"));
  EXPECT_FALSE(Kallsyms::parse("ffffffff810000000000 T _text\n"));  // more than 64 bits
  EXPECT_FALSE(Kallsyms::parse("ffffffff81000000 T " + std::string(5000, 'a') + "\n"));
  if (access("/proc/kallsyms", R_OK) == 0) {
    auto host = Kallsyms::parse(testing::read_file("/proc/kallsyms"));
    if (host) {
      EXPECT_GT(host->size(), 1000u);  // as root; others read zeros and are refused
    }
  }
}

}  // namespace
}  // namespace mlfx::kernel
