#include "kv/kv_cache.h"

#include "util/error.h"

namespace eigenkv::kv {

KvCache::KvCache(std::vector<LayerShape> layers, int64_t capacity)
    : layers_(std::move(layers)), capacity_(capacity) {
  EKV_CHECK(capacity > 0, "KV cache capacity must be positive, found ", capacity);
  keys_.resize(layers_.size());
  values_.resize(layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerShape& s = layers_[l];
    EKV_CHECK(s.n_kv_heads > 0 && s.key_width > 0 && s.value_width > 0, "layer ", l,
              ": KV cache widths must be positive");
    keys_[l].assign(static_cast<size_t>(s.n_kv_heads * capacity * s.key_width), 0.0f);
    values_[l].assign(static_cast<size_t>(s.n_kv_heads * capacity * s.value_width), 0.0f);
  }
}

void KvCache::advance(int64_t n) {
  EKV_CHECK(n >= 0 && size_ + n <= capacity_, "KV cache overflow: ", size_, " + ", n,
            " tokens exceed the capacity of ", capacity_);
  size_ += n;
}

void KvCache::truncate(int64_t n) {
  EKV_CHECK(n >= 0 && n <= size_, "cannot truncate a KV cache of ", size_, " tokens to ", n);
  size_ = n;
}

int64_t KvCache::bytes_per_token() const {
  int64_t numbers = 0;
  for (const LayerShape& s : layers_) numbers += s.n_kv_heads * (s.key_width + s.value_width);
  return numbers * static_cast<int64_t>(sizeof(float));
}

}  // namespace eigenkv::kv
