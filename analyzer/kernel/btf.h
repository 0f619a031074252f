// BTF, the kernel's compact type format (Documentation/bpf/btf.rst), as captured raw from
// /sys/kernel/btf/vmlinux: enough to lay out the kernel structures a task walk reads
// (task_struct, mm_struct, vm_area_struct, maple nodes, dentries) without a symbol table.
//
// The blob is hostile input. parse() checks everything once: the header's offsets and lengths
// lie inside the blob, every type record and its trailing data fit the type section, every
// name offset points at a NUL-terminated string of the string section, and every type id a
// record refers to exists. Accessors then only follow checked ids; chains of typedefs and
// qualifiers, arrays of arrays and anonymous members are followed to a bounded depth, so a
// self-referential typedef is an error, not a hang.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mlfx/base/result.h"

namespace mlfx::kernel {

inline constexpr uint16_t kBtfMagic = 0xeB9F;
// Far more than a kernel has (6.18's vmlinux: about 150,000 types in 5.5 MB).
inline constexpr uint32_t kBtfMaxTypes = 1u << 22;
inline constexpr uint32_t kBtfMaxVlen = 0xffff;  // vlen is 16 bits
inline constexpr int kBtfMaxDepth = 32;           // typedef chains, nested anonymous members
// Members one lookup may look at, across the anonymous structs and unions it searches: a
// kernel's lookups look at a few hundred (at most 272, for any member of any struct of a
// 6.18 vmlinux); a hostile BTF that nests anonymous members widely (16 of the next struct in each
// of 8) would otherwise take 16^8 steps.
inline constexpr uint64_t kBtfMaxMemberVisits = uint64_t{1} << 14;

enum class BtfKind : uint8_t {
  kVoid = 0, kInt = 1, kPtr = 2, kArray = 3, kStruct = 4, kUnion = 5, kEnum = 6, kFwd = 7, kTypedef = 8,
  kVolatile = 9, kConst = 10, kRestrict = 11, kFunc = 12, kFuncProto = 13, kVar = 14, kDatasec = 15,
  kFloat = 16, kDeclTag = 17, kTypeTag = 18, kEnum64 = 19,
};
const char* btf_kind_name(BtfKind k);

struct BtfType {
  BtfKind kind = BtfKind::kVoid;
  bool kind_flag = false;
  uint16_t vlen = 0;
  std::string_view name;     // empty for anonymous types
  uint32_t size_or_type = 0; // size (INT, STRUCT, UNION, ENUM*, FLOAT, DATASEC) or a type id
  uint32_t extra = 0;        // offset of the kind's trailing data in the type section
};

struct BtfMember {
  std::string_view name;
  uint32_t type = 0;
  uint32_t bit_offset = 0;
  uint32_t bitfield_size = 0;  // 0: not a bitfield
};

struct BtfArray {
  uint32_t elem_type = 0, index_type = 0, nelems = 0;
};

// Where a member lies in its outermost struct: byte offset (bits when it is a bitfield).
struct MemberLocation {
  uint64_t bit_offset = 0;
  uint32_t bitfield_size = 0;
  uint32_t type = 0;  // the member's declared type id
  uint64_t byte_offset() const { return bit_offset / 8; }
};

class Btf {
 public:
  // Copies the blob; checks it as described above.
  static Result<Btf> parse(std::string_view blob);

  uint32_t type_count() const { return static_cast<uint32_t>(types_.size()); }  // ids 0..count-1; 0 is void
  // The type with that id; id 0 and ids past the end give void.
  const BtfType& type(uint32_t id) const;
  // Members of a STRUCT or UNION (empty for other kinds).
  std::vector<BtfMember> members(uint32_t id) const;
  Result<BtfArray> array(uint32_t id) const;

  // Skips typedefs and qualifiers (const, volatile, restrict, type tags), bounded.
  Result<uint32_t> resolve(uint32_t id) const;
  // The STRUCT (or UNION) of that name with a body; an error naming it when there is none.
  Result<uint32_t> find_struct(std::string_view name) const;
  // The size in bytes of an object of that type (pointers are 8 bytes: x86-64 and arm64).
  Result<uint64_t> size_of(uint32_t id) const;
  Result<uint64_t> size_of(std::string_view struct_name) const;

  // A member by dotted path through embedded structs and unions, e.g. "tasks.next" in
  // task_struct or "d_name.len" in dentry; members of anonymous structs and unions are found
  // as the kernel's C sees them. A pointer on the path is an error (read it, then look up the
  // rest in its own struct).
  Result<MemberLocation> member(uint32_t struct_id, std::string_view path) const;
  Result<MemberLocation> member(std::string_view struct_name, std::string_view path) const;
  // The byte offset of a member that is not a bitfield.
  Result<uint64_t> offset_of(std::string_view struct_name, std::string_view path) const;
  bool has_member(std::string_view struct_name, std::string_view path) const;

 private:
  Result<MemberLocation> find_member(uint32_t struct_id, std::string_view name, int depth, uint64_t& visits) const;
  Result<uint64_t> size_of(uint32_t id, int depth) const;
  std::string describe(uint32_t id) const;

  std::vector<char> blob_;  // the whole blob; names and types point into it (a move keeps its buffer)
  std::string_view types_section_, strings_;
  std::vector<BtfType> types_;
  std::unordered_map<std::string_view, uint32_t> structs_;  // first STRUCT/UNION with a body per name
};

}  // namespace mlfx::kernel
