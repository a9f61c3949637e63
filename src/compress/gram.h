// Streaming Gram matrices of keys, queries and values (DESIGN.md §2, "Calibration"): while one
// uncompressed decoder layer runs over calibration text (a LayerStream), G += X^T X accumulates
// in float64 per KV head and kind, so memory is O(n_kv * d_h^2) whatever the number of tokens,
// and Gram matrices of separate runs add up.
#pragma once

#include <Eigen/Dense>
#include <cstdint>
#include <vector>

#include "model/model.h"

namespace eigenkv::compress {

// Which vectors the key Gram matrix stacks, by key mode:
//   kPre:    pre-RoPE keys;  kPost: post-RoPE keys and the group's post-RoPE queries;
//   kNoRope: keys and the group's queries (no rotation exists).
struct LayerGrams {
  std::vector<Eigen::MatrixXd> key;    // per KV head, [d_h, d_h]
  std::vector<Eigen::MatrixXd> value;  // per KV head, [d_h, d_h]
};

// Collects the Gram matrices of the one layer whose attention it sees.
class GramCollector : public model::ForwardTap {
 public:
  GramCollector(const model::ModelConfig& config, model::KeyMode key_mode);

  void on_attention(int64_t layer, int64_t n_tokens, int64_t pos0, const float* q_pre,
                    const float* k_pre, const float* q_post, const float* k_post,
                    const float* v) override;

  const LayerGrams& grams() const { return grams_; }

 private:
  model::ModelConfig config_;
  model::KeyMode key_mode_;
  LayerGrams grams_;
  int64_t layer_ = -1;  // the layer seen; another one is a caller's error
};

// G += X^T X for X the rows x[t * stride + offset .. + width), t < n (float32 in, float64 sums).
void add_gram(Eigen::MatrixXd& gram, const float* x, int64_t n, int64_t stride, int64_t offset,
              int64_t width);

}  // namespace eigenkv::compress
