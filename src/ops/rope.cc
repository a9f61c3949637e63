#include "ops/rope.h"

#include <cmath>

namespace eigenkv::ops {

RopeTable::RopeTable(std::vector<float> inv_freq, int64_t max_positions)
    : inv_freq_(std::move(inv_freq)), cached_positions_(max_positions) {
  const int64_t half = static_cast<int64_t>(inv_freq_.size());
  cos_.resize(cached_positions_ * half);
  sin_.resize(cached_positions_ * half);
  for (int64_t p = 0; p < cached_positions_; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      // float32 angle as llama.cpp and PyTorch form it (pos * inv_freq in float), then cos/sin.
      const float angle = static_cast<float>(p) * inv_freq_[i];
      cos_[p * half + i] = std::cos(angle);
      sin_[p * half + i] = std::sin(angle);
    }
  }
}

void RopeTable::cos_sin(int64_t pos, const float** cos, const float** sin,
                        std::vector<float>& scratch) const {
  const int64_t half = static_cast<int64_t>(inv_freq_.size());
  if (pos < cached_positions_) {
    *cos = cos_.data() + pos * half;
    *sin = sin_.data() + pos * half;
    return;
  }
  scratch.resize(2 * half);
  for (int64_t i = 0; i < half; ++i) {
    const float angle = static_cast<float>(pos) * inv_freq_[i];
    scratch[i] = std::cos(angle);
    scratch[half + i] = std::sin(angle);
  }
  *cos = scratch.data();
  *sin = scratch.data() + half;
}

void RopeTable::rotate_with_sign(float* x, int64_t n_heads, int64_t head_dim, int64_t pos,
                                 float sign) const {
  const float* c;
  const float* s;
  std::vector<float> scratch;
  cos_sin(pos, &c, &s, scratch);
  const int64_t half = static_cast<int64_t>(inv_freq_.size());
  for (int64_t h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float a = v[2 * i];
      const float b = v[2 * i + 1];
      const float si = sign * s[i];
      v[2 * i] = a * c[i] - b * si;
      v[2 * i + 1] = a * si + b * c[i];
    }
  }
}

void RopeTable::rotate(float* x, int64_t n_heads, int64_t head_dim, int64_t pos) const {
  rotate_with_sign(x, n_heads, head_dim, pos, 1.0f);
}

void RopeTable::rotate_inverse(float* x, int64_t n_heads, int64_t head_dim, int64_t pos) const {
  rotate_with_sign(x, n_heads, head_dim, pos, -1.0f);
}

}  // namespace eigenkv::ops
