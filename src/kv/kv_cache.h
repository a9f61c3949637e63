// The per-sequence K/V cache. Each layer stores, per KV head and token, one key row of
// `key_width` numbers and one value row of `value_width` numbers: d_h for an uncompressed model,
// the ranks r_K and r_V for an Eigen/Stief-compressed one (nothing of size d_h is stored for a
// compressed layer). Rows are stored as float32, float16, int8 or int4 (ops/kv_format.h), chosen
// separately for keys and values; a water-filled model stores its own per-direction allotment.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ops/attention_kernel.h"
#include "ops/kv_format.h"

namespace eigenkv::kv {

struct LayerShape {
  LayerShape() = default;
  LayerShape(int64_t kv_heads, int64_t key_numbers, int64_t value_numbers)
      : n_kv_heads(kv_heads), key_width(key_numbers), value_width(value_numbers) {}

  int64_t n_kv_heads = 0;
  int64_t key_width = 0;    // numbers per KV head and token: d_h, or r_K
  int64_t value_width = 0;  // d_h, or r_V
  // A water-filled allotment (used by KvType::kMixed): leading directions at 8 bits, and the
  // per-direction scales, [n_kv_heads, width] (empty: none stored).
  int64_t key_n8 = 0;
  int64_t value_n8 = 0;
  std::vector<float> key_sigma;
  std::vector<float> value_sigma;
};

// Element types of the cached keys and values.
struct CacheTypes {
  ops::KvType key = ops::KvType::kF32;
  ops::KvType value = ops::KvType::kF32;
  std::string describe() const;  // "f16" or "int8/int4" (keys/values)
};

class KvCache {
 public:
  KvCache() = default;
  // Allocates room for `capacity` tokens. kMixed needs the layers' allotment.
  KvCache(std::vector<LayerShape> layers, int64_t capacity, CacheTypes types = {});

  int64_t size() const { return size_; }
  int64_t capacity() const { return capacity_; }
  int64_t n_layers() const { return static_cast<int64_t>(layers_.size()); }
  const LayerShape& layer(int64_t l) const { return layers_[l]; }
  const CacheTypes& types() const { return types_; }
  const ops::RowFormat& key_format(int64_t l) const { return key_formats_[l]; }
  const ops::RowFormat& value_format(int64_t l) const { return value_formats_[l]; }

  // Stores the key / value x (key_width / value_width numbers) of KV head j of layer l at
  // position pos (< capacity), converting it to the cache's element type.
  void write_key(int64_t l, int64_t j, int64_t pos, const float* x);
  void write_value(int64_t l, int64_t j, int64_t pos, const float* x);
  // KV head j's rows of layer l as the attention kernels read them.
  ops::KvRows key_rows(int64_t l, int64_t j) const;
  ops::KvRows value_rows(int64_t l, int64_t j) const;

  // Marks n more positions as filled (after the model wrote them at size()..size()+n-1).
  void advance(int64_t n);
  // Forgets positions from n on (keeps a shared prefix).
  void truncate(int64_t n);
  // Holds the first n positions of `other` (same layers and types, n <= other.size() and
  // capacity()), as if they had been written here: the choices of one prompt share its prefill.
  void copy_prefix_from(const KvCache& other, int64_t n);
  void clear() { size_ = 0; }

  // Bytes one token takes across all layers, in the cache's element types (scales included).
  int64_t bytes_per_token() const;
  int64_t bytes_in_use() const { return bytes_per_token() * size_; }
  int64_t bytes_allocated() const { return bytes_per_token() * capacity_; }

 private:
  std::vector<LayerShape> layers_;
  CacheTypes types_;
  int64_t capacity_ = 0;
  int64_t size_ = 0;
  std::vector<ops::RowFormat> key_formats_;
  std::vector<ops::RowFormat> value_formats_;
  std::vector<std::vector<uint8_t>> keys_;    // per layer: [n_kv_heads, capacity, key row bytes]
  std::vector<std::vector<uint8_t>> values_;  // per layer: [n_kv_heads, capacity, value row bytes]
};

// Bytes per token of a cache of these layers and types, without allocating one.
int64_t cache_bytes_per_token(const std::vector<LayerShape>& layers, const CacheTypes& types);

}  // namespace eigenkv::kv
