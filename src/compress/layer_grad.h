// One decoder layer in float64 with its keys and values projected onto orthonormal bases, and the
// hand-written gradient of its squared output error with respect to those bases (StiefAttention,
// DESIGN.md §3). Only the bases are free: every weight of the layer stays fixed, so everything up
// to q, k and v (norm, projections, biases, clip_qkv) is computed once per calibration window
// (`WindowInputs`) and each step runs only what depends on the bases: projection, (RoPE), causal
// softmax attention with GQA (scaled, plus ALiBi's distance bias), W_o and its bias, residual,
// norm, FFN (SwiGLU, ReLU or exact GELU, with biases), residual, in the family's norm placement:
// pre-norm x + attn(norm(x)), then + ffn(norm(.)); post-norm (OPT's do_layer_norm_before =
// false) h1 = norm(x + attn(x)), y = norm(h1 + ffn(h1)). Norms are RMSNorm or LayerNorm (with or
// without bias), exactly as model/forward.cc applies them.
#pragma once

#include <Eigen/Dense>
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace eigenkv::compress {

// The fixed parts of one layer in float64 (and the RoPE angles of positions 0..ctx-1).
struct LayerConstants {
  int64_t n_heads = 0, n_kv = 0, head_dim = 0, d_model = 0, d_ffn = 0;
  double norm_eps = 1e-5;
  model::KeyMode key_mode = model::KeyMode::kPre;
  bool rope = true;
  model::NormKind norm = model::NormKind::kRms;
  model::FfnKind ffn = model::FfnKind::kSwiGlu;
  bool post_norm = false;              // norms after each residual add (OPT post-LN)
  double score_scale = 0;              // scores are scale * q.k (query_scale or 1/sqrt(d_h))
  double clip_qkv = 0;                 // q, k, v clamped to [-clip, clip] after projection; 0: none
  Eigen::VectorXd alibi;               // per query head: ALiBi slope, or empty
  Eigen::MatrixXd wq, wk, wv;          // [n_heads * d_h | n_kv * d_h, d_model]
  Eigen::MatrixXd wo;                  // [d_model, n_heads * d_h]
  Eigen::RowVectorXd bq, bk, bv, bo;   // the projections' biases, or empty
  bool rope_halves = false;            // RoPE pairs (i, i + half) instead of (2i, 2i + 1)
  Eigen::MatrixXd w_gate, w_up;        // [d_ffn, d_model]; w_gate empty for an ungated FFN
  Eigen::MatrixXd w_down;              // [d_model, d_ffn]
  Eigen::RowVectorXd b_up, b_down;     // FFN biases [d_ffn], [d_model], or empty
  Eigen::RowVectorXd attn_norm;        // [d_model]
  Eigen::RowVectorXd ffn_norm;         // [d_model]
  Eigen::RowVectorXd attn_norm_bias, ffn_norm_bias;  // LayerNorm biases, or empty
  Eigen::MatrixXd rope_cos, rope_sin;  // [ctx, rope_dims / 2]
};

// `layer` must be uncompressed; key_mode kPre or kPost for RoPE models, kNoRope otherwise
// (learned positions, ALiBi, none). `inv_freq` are the model's RoPE inverse frequencies (empty
// without RoPE). Throws Error naming what the float64 layer does not cover (sliding windows,
// attention softcaps).
LayerConstants layer_constants(const model::ModelConfig& config, const model::LayerWeights& layer,
                               model::KeyMode key_mode, const std::vector<float>& inv_freq,
                               int64_t ctx);

// One calibration window of one layer: what does not depend on the bases.
struct WindowInputs {
  Eigen::MatrixXd x;               // [T, d_model] layer input (residual stream)
  Eigen::MatrixXd target;          // [T, d_model] the uncompressed layer's output
  double target_sq = 0;            // ||target||_F^2
  // After the projection, its bias and clip_qkv (all before any basis):
  std::vector<Eigen::MatrixXd> q;  // per query head [T, d_h], rotated when the model has RoPE
  std::vector<Eigen::MatrixXd> k;  // per KV head [T, d_h]: pre-RoPE in kPre, rotated in kPost
  std::vector<Eigen::MatrixXd> v;  // per KV head [T, d_h]
};

// x, target: [T, d_model] row-major float32 (a LayerSamples window), T <= the constants' ctx.
WindowInputs window_inputs(const LayerConstants& c, const float* x, const float* target,
                           int64_t n_tokens);

// The bases of one layer: per KV head, [d_h, d_h] (the first r columns are used at rank r).
struct LayerBases {
  std::vector<Eigen::MatrixXd> key;
  std::vector<Eigen::MatrixXd> value;
};

// The layer's output [T, d_model] with keys projected onto the first `key_rank` columns of each
// key basis and values onto the first `value_rank` columns of each value basis.
Eigen::MatrixXd projected_layer_output(const LayerConstants& c, const WindowInputs& w,
                                       const LayerBases& bases, int64_t key_rank,
                                       int64_t value_rank);

// D = ||Y^ - Y||_F^2 over the window, and when `grad` is given, dD/dU added into it (same shapes
// as `bases`; the bases are treated as free matrices, so this is the Euclidean gradient).
double window_squared_error(const LayerConstants& c, const WindowInputs& w, const LayerBases& bases,
                            int64_t key_rank, int64_t value_rank, LayerBases* grad);

}  // namespace eigenkv::compress
