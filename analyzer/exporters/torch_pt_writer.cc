#include "exporters/torch_pt_writer.h"

#include <algorithm>
#include <set>
#include <unordered_map>

#include "exporters/pickle_writer.h"
#include "exporters/zip_writer.h"

namespace mlfx::exporters {
namespace {

// Python's pickler batches SETITEMS by 1000 pairs; we do the same.
constexpr size_t kSetItemsBatch = 1000;

bool valid_device(std::string_view d) {
  if (d.empty() || d.size() > 64) return false;
  for (char c : d)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == ':')) return false;
  return true;
}

bool can_require_grad(const DtypeInfo& dt) {
  return dt.torch_name.starts_with("float") || dt.torch_name.starts_with("bfloat") ||
         dt.torch_name.starts_with("complex");
}

struct StorageSlot {
  const TensorRecord* first;  // the tensor that introduced it
  uint64_t numel;             // whole elements of its dtype
  int64_t memo = -1;          // memo index of the loaded storage once pickled
};

}  // namespace

Result<TorchPickle> torch_state_dict_pickle(std::span<const TensorRecord> tensors) {
  std::set<std::string_view> keys;
  std::unordered_map<uint64_t, size_t> slot_of;  // storage id -> index into slots
  std::vector<StorageSlot> slots;
  for (const TensorRecord& t : tensors) {
    MLFX_TRY(validate(t));
    const DtypeInfo& dt = *find_dtype(t.scalar_type);
    const std::string what = "tensor '" + t.key + "'";
    if (dt.storage_class.empty())
      return fail(Errc::kUnsupported, what + ": torch has no typed storage for dtype " +
                                          std::string(dt.c10_name) + " (not exportable to .pt)");
    if (dt.quantized)
      return fail(Errc::kUnsupported, what + ": quantized dtype " + std::string(dt.c10_name) +
                                          " needs quantizer parameters, not exportable to .pt");
    if (t.key.size() > UINT32_MAX) return fail(Errc::kInvalidArgument, what + ": key too long");
    if (!keys.insert(t.key).second)
      return fail(Errc::kInvalidArgument, "duplicate tensor key '" + t.key + "'");
    if (!valid_device(t.storage.device))
      return fail(Errc::kInvalidArgument, what + ": bad device '" + t.storage.device + "'");
    if (t.requires_grad && !can_require_grad(dt))
      return fail(Errc::kInvalidArgument,
                  what + ": requires_grad on dtype " + std::string(dt.c10_name) +
                      " (torch allows it for floating point and complex only)");

    auto [it, fresh] = slot_of.emplace(t.storage.id, slots.size());
    if (fresh) {
      slots.push_back({&t, t.storage.size_bytes / dt.item_size});
    } else {
      const TensorRecord& f = *slots[it->second].first;
      // Two copies of the same bytes are fine; different bytes under one identity are not.
      const bool same_bytes =
          f.storage.size_bytes == t.storage.size_bytes &&
          (f.storage.data.data() == t.storage.data.data() ||
           std::equal(f.storage.data.begin(), f.storage.data.end(), t.storage.data.begin()));
      if (!same_bytes || f.storage.device != t.storage.device)
        return fail(Errc::kInvalidArgument, what + " and tensor '" + f.key +
                                                "' name one storage but describe different bytes");
      if (f.scalar_type != t.scalar_type)
        return fail(Errc::kUnsupported, what + " and tensor '" + f.key +
                                            "' view one storage as two dtypes (torch.save refuses "
                                            "this too)");
    }
    // A typed storage holds whole elements: every tensor must fit in those.
    if (t.storage.size_bytes % dt.item_size != 0) {
      TensorRecord trimmed = t;
      trimmed.storage.size_bytes = slots[it->second].numel * dt.item_size;
      trimmed.storage.data = t.storage.data.first(trimmed.storage.size_bytes);
      MLFX_TRY(validate(trimmed));
    }
  }

  PickleWriter p;
  p.global("collections", "OrderedDict");
  p.small_tuple(0);
  p.reduce();
  p.put();
  for (size_t begin = 0; begin < tensors.size(); begin += kSetItemsBatch) {
    const size_t end = std::min(tensors.size(), begin + kSetItemsBatch);
    p.mark();
    for (size_t i = begin; i < end; ++i) {
      const TensorRecord& t = tensors[i];
      const DtypeInfo& dt = *find_dtype(t.scalar_type);
      p.unicode(t.key);
      p.global("torch._utils", "_rebuild_tensor_v2");
      p.mark();
      StorageSlot& slot = slots[slot_of.at(t.storage.id)];
      if (slot.memo >= 0) {
        p.get(static_cast<uint32_t>(slot.memo));
      } else {
        p.mark();
        p.unicode("storage");
        p.global("torch", dt.storage_class);
        p.unicode(std::to_string(slot_of.at(t.storage.id)));
        p.unicode(t.storage.device);
        p.integer(static_cast<int64_t>(slot.numel));
        p.tuple_from_mark();
        p.binpersid();
        slot.memo = p.put();
      }
      p.integer(t.storage_offset);
      p.int_tuple(t.shape);
      p.int_tuple(t.strides);
      p.boolean(t.requires_grad);
      p.global("collections", "OrderedDict");  // backward hooks: always empty
      p.small_tuple(0);
      p.reduce();
      p.tuple_from_mark();
      p.reduce();
    }
    p.setitems();
  }
  p.stop();

  TorchPickle out{p.data(), {}};
  for (const StorageSlot& s : slots) {
    const uint64_t item = find_dtype(s.first->scalar_type)->item_size;
    const StorageRef& storage = s.first->storage;
    out.storages.push_back(SourceBytes(storage.data, storage.place).subspan(0, s.numel * item));
  }
  return out;
}

namespace {

Status write_pt(const std::string& path, std::span<const TensorRecord> tensors) {
  MLFX_ASSIGN(TorchPickle tp, torch_state_dict_pickle(tensors));
  const std::string top = std::string(kTorchArchiveName) + "/";
  MLFX_ASSIGN(ZipWriter zip, ZipWriter::create(path));
  MLFX_TRY(zip.add(top + "data.pkl", as_bytes(tp.pickle)));
  MLFX_TRY(zip.add(top + "byteorder", as_bytes("little")));
  for (size_t i = 0; i < tp.storages.size(); ++i)
    MLFX_TRY(zip.add(top + "data/" + std::to_string(i), tp.storages[i]));
  MLFX_TRY(zip.add(top + "version", as_bytes("3\n")));
  return zip.finish();
}

}  // namespace

Status write_torch_state_dict(const std::string& path, std::span<const TensorRecord> tensors) {
  if (auto st = write_pt(path, tensors); !st)
    return fail(std::move(st).error().context("writing torch state_dict " + path));
  return {};
}

}  // namespace mlfx::exporters
