// Rotary position embedding: pair i of a head's first rope_dims dimensions rotates by angle
// pos * inv_freq[i]. The pairs are (2i, 2i+1) in the adjacent layout (GGUF "llama" stores q/k rows
// so, and the Hugging Face Llama loader permutes its rows into it) or (i, i + rope_dims/2) in the
// halves layout (Hugging Face's rotate_half; GGUF's NeoX-style families such as qwen2).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace eigenkv::ops {

enum class RopeLayout { kAdjacentPairs, kHalves };

// Dimension indices (first, second) of rotation pair i of a head in `layout`.
inline int64_t rope_pair_first(RopeLayout layout, int64_t i, int64_t rope_dims) {
  return layout == RopeLayout::kHalves ? i : 2 * i;
}
inline int64_t rope_pair_second(RopeLayout layout, int64_t i, int64_t rope_dims) {
  return layout == RopeLayout::kHalves ? i + rope_dims / 2 : 2 * i + 1;
}

class RopeTable {
 public:
  RopeTable() = default;
  // inv_freq: rope_dims / 2 frequencies. Angles are computed (pos * inv_freq in float32, then
  // cos/sin) and kept for positions below `max_positions`; others are computed per call.
  RopeTable(std::vector<float> inv_freq, int64_t max_positions,
            RopeLayout layout = RopeLayout::kAdjacentPairs);

  int64_t rope_dims() const { return static_cast<int64_t>(inv_freq_.size()) * 2; }
  RopeLayout layout() const { return layout_; }

  // Keeps the angles of positions below n too (a cache that long is about to be used). Safe
  // while other threads rotate: positions are kept in blocks that never move once made.
  void reserve(int64_t n) const;

  // Rotates n_heads vectors of width head_dim (contiguous) at position pos, in place.
  void rotate(float* x, int64_t n_heads, int64_t head_dim, int64_t pos) const;
  // The inverse rotation (by -pos).
  void rotate_inverse(float* x, int64_t n_heads, int64_t head_dim, int64_t pos) const;

 private:
  static constexpr int64_t kBlock = 4096;     // positions per block
  static constexpr int64_t kMaxBlocks = 256;  // up to 2^20 positions kept
  struct Blocks {
    std::mutex grow;
    std::array<std::atomic<const float*>, kMaxBlocks> data{};  // [kBlock, half] cos then sin
    std::vector<std::unique_ptr<float[]>> owned;
  };
  void rotate_with_sign(float* x, int64_t n_heads, int64_t head_dim, int64_t pos, float sign) const;

  std::vector<float> inv_freq_;
  RopeLayout layout_ = RopeLayout::kAdjacentPairs;
  std::shared_ptr<Blocks> blocks_ = std::make_shared<Blocks>();
};

}  // namespace eigenkv::ops
