#include "kernel/btf.h"

#include <cstring>

namespace mlfx::kernel {
namespace {

constexpr size_t kHeaderMin = 24;  // magic, version, flags, hdr_len, type/str offsets and lengths
constexpr size_t kTypeRecord = 12;  // name_off, info, size/type

uint32_t u32_at(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

Error bad(std::string what, std::optional<uint64_t> offset = std::nullopt) {
  return Error(Errc::kBadFormat, "BTF: " + std::move(what)).at({"btf", std::nullopt, offset});
}

// Bytes of kind-specific data after the 12-byte record (btf.rst, "Type Encoding").
Result<uint64_t> trailing_bytes(BtfKind kind, uint16_t vlen) {
  switch (kind) {
    case BtfKind::kInt: return 4;
    case BtfKind::kArray: return 12;
    case BtfKind::kStruct: case BtfKind::kUnion: return uint64_t{12} * vlen;
    case BtfKind::kEnum: return uint64_t{8} * vlen;
    case BtfKind::kFuncProto: return uint64_t{8} * vlen;
    case BtfKind::kVar: return 4;
    case BtfKind::kDatasec: return uint64_t{12} * vlen;
    case BtfKind::kDeclTag: return 4;
    case BtfKind::kEnum64: return uint64_t{12} * vlen;
    case BtfKind::kPtr: case BtfKind::kFwd: case BtfKind::kTypedef: case BtfKind::kVolatile:
    case BtfKind::kConst: case BtfKind::kRestrict: case BtfKind::kFunc: case BtfKind::kFloat:
    case BtfKind::kTypeTag: return 0;
    case BtfKind::kVoid: break;
  }
  return fail(Errc::kBadFormat, "unknown kind");
}

// Kinds whose size_or_type field is a type id.
bool refers_to_type(BtfKind k) {
  switch (k) {
    case BtfKind::kPtr: case BtfKind::kTypedef: case BtfKind::kVolatile: case BtfKind::kConst:
    case BtfKind::kRestrict: case BtfKind::kFunc: case BtfKind::kVar: case BtfKind::kDeclTag:
    case BtfKind::kTypeTag: case BtfKind::kFuncProto:  // FUNC_PROTO: the return type
      return true;
    default: return false;
  }
}

bool is_qualifier(BtfKind k) {
  return k == BtfKind::kTypedef || k == BtfKind::kConst || k == BtfKind::kVolatile || k == BtfKind::kRestrict ||
         k == BtfKind::kTypeTag;
}

bool is_composite(BtfKind k) { return k == BtfKind::kStruct || k == BtfKind::kUnion; }

}  // namespace

const char* btf_kind_name(BtfKind k) {
  static const char* const names[] = {"void",    "int",     "ptr",       "array", "struct",  "union",    "enum",
                                      "fwd",     "typedef", "volatile",  "const", "restrict", "func",
                                      "func_proto", "var",  "datasec",   "float", "decl_tag", "type_tag", "enum64"};
  auto i = static_cast<size_t>(k);
  return i < sizeof(names) / sizeof(names[0]) ? names[i] : "unknown";
}

Result<Btf> Btf::parse(std::string_view input) {
  if (input.size() < kHeaderMin)
    return fail(bad("blob of " + std::to_string(input.size()) + " bytes is shorter than the 24-byte header"));
  Btf btf;
  btf.blob_.assign(input.begin(), input.end());
  const char* b = btf.blob_.data();
  const uint64_t size = btf.blob_.size();
  uint16_t magic;
  std::memcpy(&magic, b, 2);
  if (magic == 0x9FEB) return fail(Error(Errc::kUnsupported, "BTF: big-endian BTF is not supported"));
  if (magic != kBtfMagic) return fail(bad("bad magic (not /sys/kernel/btf/vmlinux?)", 0));
  if (static_cast<uint8_t>(b[2]) != 1)
    return fail(bad("unsupported version " + std::to_string(static_cast<uint8_t>(b[2])), 2));
  const uint64_t hdr_len = u32_at(b + 4), type_off = u32_at(b + 8), type_len = u32_at(b + 12),
                 str_off = u32_at(b + 16), str_len = u32_at(b + 20);
  if (hdr_len < kHeaderMin || hdr_len > size) return fail(bad("header length " + std::to_string(hdr_len) + " out of range", 4));
  if (hdr_len + type_off + type_len > size || type_off % 4 != 0)
    return fail(bad("type section (offset " + std::to_string(type_off) + ", " + std::to_string(type_len) +
                        " bytes) lies outside the blob or is misaligned (truncated?)", 8));
  if (hdr_len + str_off + str_len > size)
    return fail(bad("string section (offset " + std::to_string(str_off) + ", " + std::to_string(str_len) +
                        " bytes) lies outside the blob (truncated?)", 16));
  if (str_len == 0 || b[hdr_len + str_off] != '\0' || b[hdr_len + str_off + str_len - 1] != '\0')
    return fail(bad("string section must start and end with a NUL", hdr_len + str_off));
  btf.types_section_ = std::string_view(b + hdr_len + type_off, type_len);
  btf.strings_ = std::string_view(b + hdr_len + str_off, str_len);
  const uint64_t types_at = hdr_len + type_off;  // file offset of the type section, for errors

  auto name_at = [&](uint32_t off, uint64_t where) -> Result<std::string_view> {
    if (off >= btf.strings_.size())
      return fail(bad("name offset " + std::to_string(off) + " lies outside the string section", where));
    const char* s = btf.strings_.data() + off;
    return std::string_view(s, std::strlen(s));  // terminated: the section ends with a NUL
  };

  btf.types_.push_back(BtfType{});  // id 0: void
  const std::string_view ts = btf.types_section_;
  uint64_t pos = 0;
  while (pos < ts.size()) {
    const uint64_t at = types_at + pos;
    const std::string id = std::to_string(btf.types_.size());
    if (btf.types_.size() > kBtfMaxTypes) return fail(bad("more than " + std::to_string(kBtfMaxTypes) + " types", at));
    if (ts.size() - pos < kTypeRecord) return fail(bad("type " + id + " is truncated", at));
    const uint32_t name_off = u32_at(ts.data() + pos), info = u32_at(ts.data() + pos + 4),
                   size_type = u32_at(ts.data() + pos + 8);
    BtfType t;
    const uint32_t kind = (info >> 24) & 0x1f;
    if (kind == 0 || kind > static_cast<uint32_t>(BtfKind::kEnum64))
      return fail(bad("type " + id + " has unknown kind " + std::to_string(kind), at));
    t.kind = static_cast<BtfKind>(kind);
    t.kind_flag = (info >> 31) != 0;
    t.vlen = static_cast<uint16_t>(info & 0xffff);
    t.size_or_type = size_type;
    MLFX_ASSIGN(t.name, name_at(name_off, at));
    MLFX_ASSIGN(uint64_t extra, trailing_bytes(t.kind, t.vlen));
    t.extra = static_cast<uint32_t>(pos + kTypeRecord);
    if (ts.size() - pos - kTypeRecord < extra)
      return fail(bad("type " + id + " (" + btf_kind_name(t.kind) + ", " + std::to_string(t.vlen) +
                          " entries) runs past the end of the type section", at));
    pos += kTypeRecord + extra;
    btf.types_.push_back(t);
  }

  // Every reference to a type id, and every name of a member or enumerator, must be valid.
  const uint32_t count = static_cast<uint32_t>(btf.types_.size());
  for (uint32_t id = 1; id < count; ++id) {
    const BtfType& t = btf.types_[id];
    const uint64_t at = types_at + t.extra - kTypeRecord;
    auto check_id = [&](uint32_t ref) -> Status {
      if (ref >= count)
        return fail(bad("type " + std::to_string(id) + " (" + btf_kind_name(t.kind) + ") refers to type id " +
                            std::to_string(ref) + ", past the last (" + std::to_string(count - 1) + ")",
                        at));
      return {};
    };
    const char* e = ts.data() + t.extra;
    if (refers_to_type(t.kind)) MLFX_TRY(check_id(t.size_or_type));
    switch (t.kind) {
      case BtfKind::kArray:
        MLFX_TRY(check_id(u32_at(e)));
        MLFX_TRY(check_id(u32_at(e + 4)));
        break;
      case BtfKind::kStruct: case BtfKind::kUnion:
        for (uint32_t i = 0; i < t.vlen; ++i) {
          MLFX_TRY(name_at(u32_at(e + 12 * i), at));
          MLFX_TRY(check_id(u32_at(e + 12 * i + 4)));
        }
        break;
      case BtfKind::kEnum: case BtfKind::kEnum64:
        for (uint32_t i = 0; i < t.vlen; ++i) MLFX_TRY(name_at(u32_at(e + (t.kind == BtfKind::kEnum ? 8 : 12) * i), at));
        break;
      case BtfKind::kFuncProto:
        for (uint32_t i = 0; i < t.vlen; ++i) {
          MLFX_TRY(name_at(u32_at(e + 8 * i), at));
          MLFX_TRY(check_id(u32_at(e + 8 * i + 4)));
        }
        break;
      case BtfKind::kDatasec:
        for (uint32_t i = 0; i < t.vlen; ++i) MLFX_TRY(check_id(u32_at(e + 12 * i)));
        break;
      default: break;
    }
    if (is_composite(t.kind) && !t.name.empty()) btf.structs_.emplace(t.name, id);
  }
  return btf;
}

const BtfType& Btf::type(uint32_t id) const {
  static const BtfType kVoidType{};
  return id < types_.size() ? types_[id] : kVoidType;
}

std::vector<BtfMember> Btf::members(uint32_t id) const {
  std::vector<BtfMember> out;
  const BtfType& t = type(id);
  if (!is_composite(t.kind)) return out;
  const char* e = types_section_.data() + t.extra;
  out.reserve(t.vlen);
  for (uint32_t i = 0; i < t.vlen; ++i) {
    BtfMember m;
    m.name = std::string_view(strings_.data() + u32_at(e + 12 * i));  // checked at parse: terminated
    m.type = u32_at(e + 12 * i + 4);
    const uint32_t off = u32_at(e + 12 * i + 8);
    m.bit_offset = t.kind_flag ? off & 0xffffff : off;
    m.bitfield_size = t.kind_flag ? off >> 24 : 0;
    out.push_back(m);
  }
  return out;
}

Result<BtfArray> Btf::array(uint32_t id) const {
  const BtfType& t = type(id);
  if (t.kind != BtfKind::kArray) return fail(Errc::kInvalidArgument, "BTF: " + describe(id) + " is not an array");
  const char* e = types_section_.data() + t.extra;
  return BtfArray{u32_at(e), u32_at(e + 4), u32_at(e + 8)};
}

std::string Btf::describe(uint32_t id) const {
  const BtfType& t = type(id);
  return std::string("type ") + std::to_string(id) + " (" + btf_kind_name(t.kind) +
         (t.name.empty() ? "" : " '" + std::string(t.name) + "'") + ")";
}

Result<uint32_t> Btf::resolve(uint32_t id) const {
  for (int hops = 0; hops < kBtfMaxDepth; ++hops) {
    if (!is_qualifier(type(id).kind)) return id;
    id = type(id).size_or_type;
  }
  return fail(bad("chain of typedefs and qualifiers longer than " + std::to_string(kBtfMaxDepth) +
                  " (a cycle?) at " + describe(id)));
}

Result<uint32_t> Btf::find_struct(std::string_view name) const {
  auto it = structs_.find(name);
  if (it == structs_.end())
    return fail(Errc::kNotFound, "BTF has no struct '" + std::string(name) + "' (a kernel this analyzer does not know?)");
  return it->second;
}

Result<uint64_t> Btf::size_of(uint32_t id) const { return size_of(id, 0); }

Result<uint64_t> Btf::size_of(std::string_view struct_name) const {
  MLFX_ASSIGN(uint32_t id, find_struct(struct_name));
  return size_of(id, 0);
}

Result<uint64_t> Btf::size_of(uint32_t id, int depth) const {
  if (depth > kBtfMaxDepth) return fail(bad("type nesting deeper than " + std::to_string(kBtfMaxDepth) + " (a cycle?)"));
  const BtfType& t = type(id);
  switch (t.kind) {
    case BtfKind::kInt: case BtfKind::kEnum: case BtfKind::kEnum64: case BtfKind::kFloat:
    case BtfKind::kStruct: case BtfKind::kUnion: case BtfKind::kDatasec:
      return uint64_t{t.size_or_type};
    case BtfKind::kPtr: return 8;
    case BtfKind::kTypedef: case BtfKind::kConst: case BtfKind::kVolatile: case BtfKind::kRestrict:
    case BtfKind::kTypeTag: case BtfKind::kVar:
      return size_of(t.size_or_type, depth + 1);
    case BtfKind::kArray: {
      MLFX_ASSIGN(BtfArray a, array(id));
      MLFX_ASSIGN(uint64_t elem, size_of(a.elem_type, depth + 1));
      if (elem != 0 && a.nelems > (uint64_t{1} << 40) / elem) return fail(bad(describe(id) + " is absurdly large"));
      return elem * a.nelems;
    }
    default: break;
  }
  return fail(Errc::kInvalidArgument, "BTF: " + describe(id) + " has no size");
}

Result<MemberLocation> Btf::find_member(uint32_t struct_id, std::string_view name, int depth, uint64_t& visits) const {
  if (depth > kBtfMaxDepth) return fail(bad("anonymous members nested deeper than " + std::to_string(kBtfMaxDepth)));
  visits += type(struct_id).vlen;
  if (visits > kBtfMaxMemberVisits)
    return fail(bad("looking up '" + std::string(name) + "' visits more than " + std::to_string(kBtfMaxMemberVisits) +
                    " members of anonymous structs and unions (a hostile BTF?)"));
  const std::vector<BtfMember> ms = members(struct_id);
  for (const BtfMember& m : ms)
    if (m.name == name) return MemberLocation{m.bit_offset, m.bitfield_size, m.type};
  for (const BtfMember& m : ms) {
    if (!m.name.empty()) continue;
    MLFX_ASSIGN(uint32_t inner, resolve(m.type));
    if (!is_composite(type(inner).kind)) continue;
    auto found = find_member(inner, name, depth + 1, visits);
    if (found) {
      found->bit_offset += m.bit_offset;
      return found;
    }
    if (found.error().code() != Errc::kNotFound) return found;
  }
  if (depth > 0) return fail(Errc::kNotFound, "BTF: not in this anonymous member");  // the caller searches on
  return fail(Errc::kNotFound, "BTF: " + describe(struct_id) + " has no member '" + std::string(name) + "'");
}

Result<MemberLocation> Btf::member(uint32_t struct_id, std::string_view path) const {
  MLFX_ASSIGN(uint32_t cur, resolve(struct_id));
  MemberLocation total;
  std::string_view rest = path;
  while (true) {
    if (!is_composite(type(cur).kind))
      return fail(Errc::kInvalidArgument, "BTF: looking up '" + std::string(path) + "': " + describe(cur) +
                                              " is not a struct or union" +
                                              (type(cur).kind == BtfKind::kPtr ? " (a pointer: read it first)" : ""));
    const size_t dot = rest.find('.');
    const std::string_view name = rest.substr(0, dot);
    uint64_t visits = 0;
    MLFX_ASSIGN(MemberLocation m, find_member(cur, name, 0, visits));
    total.bit_offset += m.bit_offset;
    total.bitfield_size = m.bitfield_size;
    total.type = m.type;
    if (dot == std::string_view::npos) return total;
    rest = rest.substr(dot + 1);
    MLFX_ASSIGN(cur, resolve(m.type));
  }
}

Result<MemberLocation> Btf::member(std::string_view struct_name, std::string_view path) const {
  MLFX_ASSIGN(uint32_t id, find_struct(struct_name));
  auto m = member(id, path);
  if (!m) return fail(std::move(m).error().context("struct " + std::string(struct_name)));
  return m;
}

Result<uint64_t> Btf::offset_of(std::string_view struct_name, std::string_view path) const {
  MLFX_ASSIGN(MemberLocation m, member(struct_name, path));
  if (m.bitfield_size != 0 || m.bit_offset % 8 != 0)
    return fail(Errc::kInvalidArgument, "BTF: " + std::string(struct_name) + "." + std::string(path) +
                                            " is a bitfield, not at a byte offset");
  return m.byte_offset();
}

bool Btf::has_member(std::string_view struct_name, std::string_view path) const {
  return static_cast<bool>(member(struct_name, path));
}

}  // namespace mlfx::kernel
