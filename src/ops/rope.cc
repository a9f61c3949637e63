#include "ops/rope.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace eigenkv::ops {

RopeTable::RopeTable(std::vector<float> inv_freq, int64_t max_positions, RopeLayout layout)
    : inv_freq_(std::move(inv_freq)), layout_(layout) {
  reserve(max_positions);
}

void RopeTable::reserve(int64_t n) const {
  const int64_t half = static_cast<int64_t>(inv_freq_.size());
  const int64_t blocks = std::min<int64_t>(kMaxBlocks, (n + kBlock - 1) / kBlock);
  std::lock_guard<std::mutex> lock(blocks_->grow);
  for (int64_t b = 0; b < blocks; ++b) {
    if (blocks_->data[b].load(std::memory_order_acquire)) continue;
    auto table = std::make_unique<float[]>(static_cast<size_t>(2 * kBlock * half));
    for (int64_t j = 0; j < kBlock; ++j) {
      for (int64_t i = 0; i < half; ++i) {
        // float32 angle as llama.cpp and PyTorch form it (pos * inv_freq in float), then cos/sin.
        const float angle = static_cast<float>(b * kBlock + j) * inv_freq_[i];
        table[j * half + i] = std::cos(angle);
        table[(kBlock + j) * half + i] = std::sin(angle);
      }
    }
    blocks_->data[b].store(table.get(), std::memory_order_release);
    blocks_->owned.push_back(std::move(table));
  }
}

void RopeTable::rotate_with_sign(float* x, int64_t n_heads, int64_t head_dim, int64_t pos,
                                 float sign) const {
  const int64_t half = static_cast<int64_t>(inv_freq_.size());
  const float* c;
  const float* s;
  float scratch[2 * 512];
  const int64_t b = pos / kBlock;
  const float* table = b < kMaxBlocks ? blocks_->data[b].load(std::memory_order_acquire) : nullptr;
  if (table) {
    c = table + (pos % kBlock) * half;
    s = table + (kBlock + pos % kBlock) * half;
  } else {
    EKV_CHECK(half <= 512, "RoPE over ", 2 * half, " dimensions is not supported");
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(pos) * inv_freq_[i];
      scratch[i] = std::cos(angle);
      scratch[half + i] = std::sin(angle);
    }
    c = scratch;
    s = scratch + half;
  }
  // Pair i is (2i, 2i + 1), or (i, i + half) in the halves layout.
  const int64_t step = layout_ == RopeLayout::kHalves ? 1 : 2;
  const int64_t other = layout_ == RopeLayout::kHalves ? half : 1;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      float* p = v + step * i;
      const float a = p[0];
      const float bb = p[other];
      const float si = sign * s[i];
      p[0] = a * c[i] - bb * si;
      p[other] = a * si + bb * c[i];
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
