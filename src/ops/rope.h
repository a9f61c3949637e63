// Rotary position embedding in the adjacent-pair layout: dimensions (2i, 2i+1) of a head rotate by
// angle pos * inv_freq[i]. (GGUF "llama" stores q/k rows in this layout; the Hugging Face loader
// permutes its rotate-half rows into it, so one kernel serves both.)
#pragma once

#include <cstdint>
#include <vector>

namespace eigenkv::ops {

class RopeTable {
 public:
  RopeTable() = default;
  // inv_freq: rope_dims / 2 frequencies. Angles are computed per position on demand in double and
  // cached up to `max_positions`.
  RopeTable(std::vector<float> inv_freq, int64_t max_positions);

  int64_t rope_dims() const { return static_cast<int64_t>(inv_freq_.size()) * 2; }

  // Rotates n_heads vectors of width head_dim (contiguous) at position pos, in place.
  void rotate(float* x, int64_t n_heads, int64_t head_dim, int64_t pos) const;
  // The inverse rotation (by -pos).
  void rotate_inverse(float* x, int64_t n_heads, int64_t head_dim, int64_t pos) const;

 private:
  void rotate_with_sign(float* x, int64_t n_heads, int64_t head_dim, int64_t pos, float sign) const;
  void cos_sin(int64_t pos, const float** cos, const float** sin,
               std::vector<float>& scratch) const;

  std::vector<float> inv_freq_;
  int64_t cached_positions_ = 0;
  std::vector<float> cos_;  // [cached_positions, rope_dims / 2]
  std::vector<float> sin_;
};

}  // namespace eigenkv::ops
