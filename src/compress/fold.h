// Folding orthonormal bases into a layer's attention weights (DESIGN.md §2, "Folding"), so that
// the compressed layer caches r_K and r_V numbers per KV head and token and never rebuilds a
// value: U_V^T goes into W_v, U_V into W_o; U_K^T into W_k (pre, no-RoPE) and W_q (no-RoPE), or
// is kept to project rotated queries and keys (post). With clip_qkv (MPT) the clamp sits between
// W x + b and the bases, so nothing folds into W_q, W_k, W_v: the layer keeps them and both bases
// (LayerWeights::bases_after_clamp); U_V still folds into W_o.
#pragma once

#include <Eigen/Dense>
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace eigenkv::compress {

// key_bases, value_bases: per KV head, [d_h, >= rank] with orthonormal columns, strongest first;
// the first key_rank / value_rank columns are used. `full` must be an uncompressed layer.
// Throws Error for ranks outside [1, d_h] or bases of the wrong shape.
model::LayerWeights fold_layer(const model::LayerWeights& full, const model::ModelConfig& config,
                               model::KeyMode key_mode,
                               const std::vector<Eigen::MatrixXd>& key_bases,
                               const std::vector<Eigen::MatrixXd>& value_bases, int64_t key_rank,
                               int64_t value_rank);

}  // namespace eigenkv::compress
