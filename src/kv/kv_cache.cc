#include "kv/kv_cache.h"

#include <cstring>

#include "util/error.h"

namespace eigenkv::kv {

namespace {

ops::RowFormat row_format(ops::KvType type, int64_t width, int64_t n8, bool has_sigma,
                          int64_t layer, const char* kind) {
  if (type != ops::KvType::kMixed) return ops::RowFormat::uniform(type, width);
  EKV_CHECK(has_sigma, "layer ", layer, ": a mixed-precision ", kind,
            " cache needs a water-filled model (eigenkv quantize-cache)");
  return ops::RowFormat::mixed(width, n8);
}

ops::RowFormat key_format_of(const LayerShape& s, const CacheTypes& types, int64_t layer) {
  return row_format(types.key, s.key_width, s.key_n8, !s.key_sigma.empty(), layer, "key");
}

ops::RowFormat value_format_of(const LayerShape& s, const CacheTypes& types, int64_t layer) {
  return row_format(types.value, s.value_width, s.value_n8, !s.value_sigma.empty(), layer,
                    "value");
}

}  // namespace

std::string CacheTypes::describe() const {
  if (key == value) return ops::kv_type_name(key);
  return std::string(ops::kv_type_name(key)) + "/" + ops::kv_type_name(value);
}

KvCache::KvCache(std::vector<LayerShape> layers, int64_t capacity, CacheTypes types)
    : layers_(std::move(layers)), types_(types), capacity_(capacity) {
  EKV_CHECK(capacity > 0, "KV cache capacity must be positive, found ", capacity);
  keys_.resize(layers_.size());
  values_.resize(layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerShape& s = layers_[l];
    EKV_CHECK(s.n_kv_heads > 0 && s.key_width > 0 && s.value_width > 0, "layer ", l,
              ": KV cache widths must be positive");
    EKV_CHECK(s.key_sigma.empty() ||
                  static_cast<int64_t>(s.key_sigma.size()) == s.n_kv_heads * s.key_width,
              "layer ", l, ": key scales do not match the key width");
    EKV_CHECK(s.value_sigma.empty() ||
                  static_cast<int64_t>(s.value_sigma.size()) == s.n_kv_heads * s.value_width,
              "layer ", l, ": value scales do not match the value width");
    key_formats_.push_back(key_format_of(s, types, static_cast<int64_t>(l)));
    value_formats_.push_back(value_format_of(s, types, static_cast<int64_t>(l)));
    keys_[l].assign(
        static_cast<size_t>(s.n_kv_heads * capacity * key_formats_[l].bytes() + ops::kKvRowSlack),
        0);
    values_[l].assign(static_cast<size_t>(s.n_kv_heads * capacity * value_formats_[l].bytes() +
                                          ops::kKvRowSlack),
                      0);
  }
}

void KvCache::write_key(int64_t l, int64_t j, int64_t pos, const float* x) {
  const ops::KvRows rows = key_rows(l, j);
  ops::encode_row(rows.format, x, rows.sigma,
                  keys_[l].data() + (j * capacity_ + pos) * rows.format.bytes());
}

void KvCache::write_value(int64_t l, int64_t j, int64_t pos, const float* x) {
  const ops::KvRows rows = value_rows(l, j);
  ops::encode_row(rows.format, x, rows.sigma,
                  values_[l].data() + (j * capacity_ + pos) * rows.format.bytes());
}

ops::KvRows KvCache::key_rows(int64_t l, int64_t j) const {
  const ops::RowFormat& f = key_formats_[l];
  const LayerShape& s = layers_[l];
  const bool scaled = f.type == ops::KvType::kMixed;
  return ops::KvRows{keys_[l].data() + j * capacity_ * f.bytes(), f,
                     scaled ? s.key_sigma.data() + j * s.key_width : nullptr};
}

ops::KvRows KvCache::value_rows(int64_t l, int64_t j) const {
  const ops::RowFormat& f = value_formats_[l];
  const LayerShape& s = layers_[l];
  const bool scaled = f.type == ops::KvType::kMixed;
  return ops::KvRows{values_[l].data() + j * capacity_ * f.bytes(), f,
                     scaled ? s.value_sigma.data() + j * s.value_width : nullptr};
}

void KvCache::advance(int64_t n) {
  EKV_CHECK(n >= 0 && size_ + n <= capacity_, "KV cache overflow: ", size_, " + ", n,
            " tokens exceed the capacity of ", capacity_);
  size_ += n;
}

void KvCache::copy_prefix_from(const KvCache& other, int64_t n) {
  EKV_CHECK(n >= 0 && n <= other.size_ && n <= capacity_, "cannot copy ", n,
            " positions of a KV cache of ", other.size_, " into one of capacity ", capacity_);
  EKV_CHECK(other.layers_.size() == layers_.size() && other.types_.key == types_.key &&
                other.types_.value == types_.value,
            "the two KV caches differ in layers or types");
  for (size_t l = 0; l < layers_.size(); ++l) {
    EKV_CHECK(other.layers_[l].n_kv_heads == layers_[l].n_kv_heads &&
                  other.key_formats_[l].bytes() == key_formats_[l].bytes() &&
                  other.value_formats_[l].bytes() == value_formats_[l].bytes(),
              "layer ", l, " of the two KV caches differs");
    const int64_t key_row = key_formats_[l].bytes(), value_row = value_formats_[l].bytes();
    for (int64_t j = 0; j < layers_[l].n_kv_heads; ++j) {
      std::memcpy(keys_[l].data() + j * capacity_ * key_row,
                  other.keys_[l].data() + j * other.capacity_ * key_row, n * key_row);
      std::memcpy(values_[l].data() + j * capacity_ * value_row,
                  other.values_[l].data() + j * other.capacity_ * value_row, n * value_row);
    }
  }
  size_ = n;
}

void KvCache::truncate(int64_t n) {
  EKV_CHECK(n >= 0 && n <= size_, "cannot truncate a KV cache of ", size_, " tokens to ", n);
  size_ = n;
}

int64_t KvCache::bytes_per_token() const {
  int64_t bytes = 0;
  for (size_t l = 0; l < layers_.size(); ++l)
    bytes += layers_[l].n_kv_heads * (key_formats_[l].bytes() + value_formats_[l].bytes());
  return bytes;
}

int64_t cache_bytes_per_token(const std::vector<LayerShape>& layers, const CacheTypes& types) {
  int64_t bytes = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    const LayerShape& s = layers[l];
    bytes += s.n_kv_heads * (key_format_of(s, types, static_cast<int64_t>(l)).bytes() +
                             value_format_of(s, types, static_cast<int64_t>(l)).bytes());
  }
  return bytes;
}

}  // namespace eigenkv::kv
