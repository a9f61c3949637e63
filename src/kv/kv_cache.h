// The per-sequence K/V cache. Each layer stores, per KV head and token, `key_width` numbers of
// key and `value_width` numbers of value: d_h for an uncompressed model, the ranks r_K and r_V
// for an Eigen/Stief-compressed one. Nothing of size d_h is stored for a compressed layer.
#pragma once

#include <cstdint>
#include <vector>

namespace eigenkv::kv {

struct LayerShape {
  int64_t n_kv_heads = 0;
  int64_t key_width = 0;    // numbers per KV head and token: d_h, or r_K
  int64_t value_width = 0;  // d_h, or r_V
};

class KvCache {
 public:
  KvCache() = default;
  // Allocates room for `capacity` tokens (float32).
  KvCache(std::vector<LayerShape> layers, int64_t capacity);

  int64_t size() const { return size_; }
  int64_t capacity() const { return capacity_; }
  int64_t n_layers() const { return static_cast<int64_t>(layers_.size()); }
  const LayerShape& layer(int64_t l) const { return layers_[l]; }

  // keys(l, j): [capacity, key_width] for KV head j of layer l; row s is the key of position s.
  float* keys(int64_t l, int64_t j) {
    return keys_[l].data() + j * capacity_ * layers_[l].key_width;
  }
  const float* keys(int64_t l, int64_t j) const {
    return keys_[l].data() + j * capacity_ * layers_[l].key_width;
  }
  // values(l, j): [capacity, value_width].
  float* values(int64_t l, int64_t j) {
    return values_[l].data() + j * capacity_ * layers_[l].value_width;
  }
  const float* values(int64_t l, int64_t j) const {
    return values_[l].data() + j * capacity_ * layers_[l].value_width;
  }

  // Marks n more positions as filled (after the model wrote them at size()..size()+n-1).
  void advance(int64_t n);
  // Forgets positions from n on (keeps a shared prefix).
  void truncate(int64_t n);
  void clear() { size_ = 0; }

  // Bytes one token takes across all layers (float32 storage).
  int64_t bytes_per_token() const;
  int64_t bytes_in_use() const { return bytes_per_token() * size_; }
  int64_t bytes_allocated() const { return bytes_per_token() * capacity_; }

 private:
  std::vector<LayerShape> layers_;
  int64_t capacity_ = 0;
  int64_t size_ = 0;
  std::vector<std::vector<float>> keys_;    // per layer: [n_kv_heads, capacity, key_width]
  std::vector<std::vector<float>> values_;  // per layer: [n_kv_heads, capacity, value_width]
};

}  // namespace eigenkv::kv
