// Test tensors for the exporters: owned storages, TensorRecords pointing into them, a naive
// reference for logical contents (independent of the library's run-merging walk) and the
// ground-truth JSON the Python checker reads.
#pragma once

#include <gtest/gtest.h>

#include <deque>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "exporters/safetensors_writer.h"
#include "exporters/tensor_record.h"
#include "mlfx/base/bytes.h"
#include "test_util.h"

namespace mlfx::exporters::testing {

inline std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> s(shape.size());
  int64_t acc = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    s[i] = acc;
    acc *= shape[i] > 0 ? shape[i] : 1;
  }
  return s;
}

// Element by element, straight from the definition: offset + sum(index_i * stride_i).
inline Bytes reference_bytes(const TensorRecord& t) {
  const size_t item = find_dtype(t.scalar_type)->item_size;
  uint64_t n = 1;
  for (int64_t s : t.shape) n *= static_cast<uint64_t>(s);
  Bytes out;
  std::vector<int64_t> idx(t.shape.size(), 0);
  for (uint64_t e = 0; e < n; ++e) {
    uint64_t rest = e;
    int64_t pos = t.storage_offset;
    for (size_t d = t.shape.size(); d-- > 0;) {
      idx[d] = static_cast<int64_t>(rest % static_cast<uint64_t>(t.shape[d]));
      rest /= static_cast<uint64_t>(t.shape[d]);
      pos += idx[d] * t.strides[d];
    }
    const uint8_t* p = t.storage.data.data() + pos * static_cast<int64_t>(item);
    out.insert(out.end(), p, p + item);
  }
  return out;
}

inline Bytes random_bytes(size_t n, uint64_t seed) {
  std::string s = mlfx::testing::random_string(n, seed);
  return Bytes(s.begin(), s.end());
}

class Sample {
 public:
  // Adds an owned storage; returns its index (its id is index + 1000).
  size_t add_storage(Bytes bytes) {
    storages_.push_back(std::move(bytes));
    return storages_.size() - 1;
  }
  size_t add_random_storage(size_t nbytes) { return add_storage(random_bytes(nbytes, 7 + storages_.size())); }

  TensorRecord& add(std::string key, int scalar_type, std::vector<int64_t> shape,
                    std::vector<int64_t> strides, int64_t offset, size_t storage) {
    TensorRecord t;
    t.key = std::move(key);
    t.scalar_type = scalar_type;
    t.shape = std::move(shape);
    t.strides = std::move(strides);
    t.storage_offset = offset;
    t.storage.id = 1000 + storage;
    t.storage.data = storages_[storage];
    t.storage.size_bytes = storages_[storage].size();
    tensors_.push_back(std::move(t));
    storage_of_.push_back(storage);
    return tensors_.back();
  }
  // A contiguous tensor with its own random storage.
  TensorRecord& add_own(std::string key, int scalar_type, std::vector<int64_t> shape) {
    uint64_t n = 1;
    for (int64_t s : shape) n *= static_cast<uint64_t>(s);
    size_t s = add_random_storage(n * find_dtype(scalar_type)->item_size);
    auto strides = contiguous_strides(shape);
    return add(std::move(key), scalar_type, std::move(shape), std::move(strides), 0, s);
  }

  const std::vector<TensorRecord>& tensors() const { return tensors_; }
  std::vector<TensorRecord>& tensors() { return tensors_; }
  const Bytes& storage(size_t i) const { return storages_[i]; }
  size_t storage_count() const { return storages_.size(); }

  // Tensors whose dtype safetensors can name, in order.
  std::vector<TensorRecord> safetensors_subset() const {
    std::vector<TensorRecord> out;
    for (const auto& t : tensors_)
      if (!find_dtype(t.scalar_type)->safetensors_name.empty()) out.push_back(t);
    return out;
  }

  std::string truth_json(const SafetensorsMetadata& metadata) const {
    nlohmann::ordered_json j;
    j["tensors"] = nlohmann::ordered_json::array();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const TensorRecord& t = tensors_[i];
      const DtypeInfo& dt = *find_dtype(t.scalar_type);
      j["tensors"].push_back({{"key", t.key},
                              {"dtype", std::string(dt.torch_name)},
                              {"safetensors_dtype", std::string(dt.safetensors_name)},
                              {"itemsize", dt.item_size},
                              {"shape", t.shape},
                              {"stride", t.strides},
                              {"storage_offset", t.storage_offset},
                              {"requires_grad", t.requires_grad},
                              {"storage", storage_of_[i]}});
    }
    j["storages"] = nlohmann::ordered_json::array();
    for (const Bytes& b : storages_) j["storages"].push_back(to_base64(b));
    j["metadata"] = metadata;
    return j.dump();
  }

 private:
  std::deque<Bytes> storages_;  // deque: addresses stay put as storages are added
  std::vector<TensorRecord> tensors_;
  std::vector<size_t> storage_of_;
};

// Every case the exporters must get right, storages numbered in first-use order (as the .pt
// writer numbers them).
inline Sample make_full_sample() {
  Sample s;
  s.add_own("f32", kFloat, {2, 3});
  s.add_own("f16", kHalf, {4});
  s.add_own("bf16", kBFloat16, {2, 2});
  s.add_own("f64", kDouble, {3});
  s.add_own("i64", kLong, {2});
  s.add_own("i32", kInt, {3});
  s.add_own("i16", kShort, {2, 2});
  s.add_own("i8", kChar, {5});
  s.add_own("u8", kByte, {7});
  {
    size_t b = s.add_storage({1, 0, 1});
    s.add("bool", kBool, {3}, {1}, 0, b);
  }
  s.add_own("c64", kComplexFloat, {2});
  s.add_own("c128", kComplexDouble, {2});  // no safetensors name: .pt only
  s.add_own("conv.weight", kFloat, {2, 1, 3, 2, 2}).requires_grad = true;  // rank 5
  s.add_own("gewicht.\xc3\xa4\xe2\x82\xac", kFloat, {2});                   // UTF-8 key
  // A transposed view: logical [3,2] over a row-major [2,3] storage.
  {
    size_t st = s.add_random_storage(6 * 4);
    s.add("transposed", kFloat, {3, 2}, {1, 3}, 0, st);
  }
  // A [2,2] block at offset 5 of a [4,4] storage (non-contiguous rows).
  {
    size_t st = s.add_random_storage(16 * 8);
    s.add("offset_view", kDouble, {2, 2}, {4, 1}, 5, st);
  }
  // Tied weights: two keys, one storage; plus a strided view into the same storage.
  {
    size_t st = s.add_random_storage(12 * 4);
    s.add("tied.a", kFloat, {4, 3}, {3, 1}, 0, st);
    s.add("tied.b", kFloat, {4, 3}, {3, 1}, 0, st);
    s.add("tied.column", kFloat, {4}, {3}, 2, st);
  }
  // A 0-d scalar (like BatchNorm's num_batches_tracked) at an offset.
  {
    Bytes b(3 * 8, 0);
    store_le<uint64_t>(b.data() + 8, 12345);
    size_t st = s.add_storage(b);
    s.add("bn.num_batches_tracked", kLong, {}, {}, 1, st);
  }
  // Empty tensors: no storage bytes, and one with an offset beyond 2^31 (legal when empty).
  {
    size_t st = s.add_storage({});
    s.add("empty", kFloat, {0, 3}, {3, 1}, 0, st);
    size_t st2 = s.add_storage({});
    s.add("empty_far", kFloat, {0}, {1}, int64_t(1) << 33, st2);
  }
  // A zero-stride (expanded) view.
  {
    size_t st = s.add_random_storage(4 * 4);
    s.add("expanded", kFloat, {3, 4}, {0, 1}, 0, st);
  }
  return s;
}

}  // namespace mlfx::exporters::testing
