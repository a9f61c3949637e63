// The weights of a decoder-only model in one canonical layout: matrices [out, in] with rows
// contiguous, and q/k rows of every head in the RoPE layout the config's ArchSpec names (GGUF's
// adjacent pairs for llama, which Hugging Face Llama rows are permuted into; halves for qwen2). The large
// matrices stay in their stored type where they lie in the mapped file (Weight); only small
// vectors (norms, bases, cache scales) are float32. Loaders for GGUF and Hugging Face directories
// fill it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/tensor_view.h"
#include "model/config.h"
#include "ops/matmul.h"

namespace eigenkv::model {

// A float32 matrix that eigenkv computes (bases, folded weights before they are stored).
struct Matrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> data;  // [rows, cols]

  const float* row(int64_t r) const { return data.data() + r * cols; }
  bool empty() const { return data.empty(); }
};

// out [n, u.cols] = x [n, u.rows] u (row-major, float32 accumulation): projects n rows onto a
// basis. Vectorised (Eigen); project_rows_reference is the plain loop beside it.
void project_rows(const float* x, int64_t n, const Matrix& u, float* out);
void project_rows_reference(const float* x, int64_t n, const Matrix& u, float* out);
// Each of n_tokens rows of `heads` heads [d_h] onto its basis: head h of a token uses
// bases[h / heads_per_basis] ([d_h, r]), so a GQA group's query heads share their KV head's basis
// and go through one product. in [n_tokens, heads, d_h] -> out [n_tokens, heads, r].
void project_heads(const float* in, int64_t n_tokens, int64_t heads, int64_t heads_per_basis,
                   const std::vector<Matrix>& bases, float* out);

// A weight matrix [rows, cols] in its stored type (F32, F16, BF16 or one of llama.cpp's block
// types), rows contiguous and each a whole number of blocks. The bytes are usually borrowed from
// the mapped model file, which `owner` keeps alive; copies share them. A weight that eigenkv
// made (folding) owns its bytes through the same pointer.
struct Weight {
  io::TensorType type = io::TensorType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* bytes = nullptr;
  std::shared_ptr<const void> owner;
  // True for a matrix eigenkv computed (a folded attention weight, F32): saving stores it in the
  // fold type; every other weight is saved as it is stored, byte for byte.
  bool computed = false;

  bool empty() const { return rows == 0; }
  size_t row_bytes() const;
  size_t nbytes() const { return row_bytes() * static_cast<size_t>(rows); }
  const uint8_t* row_data(int64_t r) const { return bytes + static_cast<size_t>(r) * row_bytes(); }
  ops::WeightView view() const { return {type, rows, cols, bytes, row_bytes()}; }
  // Dequantizes row r (cols numbers) into out.
  void row_to_float(int64_t r, float* out) const;
  // The whole matrix in float32 (for compression's float64 maths, one layer at a time).
  Matrix to_float() const;
  // Rows [begin, begin + n) as a weight sharing these bytes (a fused q/k/v matrix split).
  Weight row_range(int64_t begin, int64_t n) const;

  // An F32 weight owning m's numbers.
  static Weight from_float(Matrix m);
  // A weight of `type` owning `data` (rows * row bytes).
  static Weight from_bytes(io::TensorType type, int64_t rows, int64_t cols,
                           std::vector<uint8_t> data);
};

// How a layer's keys are stored and scored (DESIGN.md §2). kFull: d_h numbers per key, the
// uncompressed model. The low-rank modes cache r_K numbers per key:
//  kNoRope: U_K^T folded into W_q and W_k (models without RoPE); scores q'.k' in r_K dimensions.
//  kPre:    U_K^T folded into W_k (basis of pre-RoPE keys); each cached key is rebuilt as U_K k'
//           and rotated with its own position before scoring with the full rotated query.
//  kPost:   W_k full; the rotated key is projected, k' = U_K^T R_s k, and so is the rotated
//           query, q' = U_K^T R_t q; scores q'.k' in r_K dimensions.
enum class KeyMode { kFull, kNoRope, kPre, kPost };
const char* key_mode_name(KeyMode mode);
KeyMode key_mode_from_name(const std::string& name);  // throws Error for an unknown name

struct LayerWeights {
  std::vector<float> attn_norm;  // [d_model]
  Weight wq;  // [n_heads * q_width, d_model]; q_width = r_K in kNoRope mode, else d_h
  Weight wk;  // [n_kv_heads * k_width, d_model]; k_width = r_K in kPre/kNoRope mode, else d_h
  Weight wv;  // [n_kv_heads * r_V, d_model]   (r_V = d_h when uncompressed)
  Weight wo;  // [d_model, n_heads * r_V]      (U_V folded in)
  // Projection biases where the family has them (ArchSpec), else empty; as wide as the rows of
  // wq, wk, wv and wo (a compressed layer's are projected onto its bases like the weights).
  std::vector<float> bq, bk, bv, bo;
  std::vector<float> ffn_norm;  // [d_model]
  Weight w_gate;                // [d_ffn, d_model]; empty for an ungated FFN
  Weight w_up;                  // [d_ffn, d_model]
  Weight w_down;                // [d_model, d_ffn]
  // LayerNorm biases and FFN biases where the family has them (ArchSpec), else empty.
  std::vector<float> attn_norm_bias, ffn_norm_bias;  // [d_model]
  std::vector<float> b_up;                           // [d_ffn]
  std::vector<float> b_down;                         // [d_model]

  KeyMode key_mode = KeyMode::kFull;
  int64_t key_rank = 0;    // r_K: numbers cached per KV head and token for keys
  int64_t value_rank = 0;  // r_V: numbers cached per KV head and token for values
  // kPre and kPost: per KV head, U_K as [d_h, r_K] (orthonormal columns); and in every mode of a
  // layer whose bases apply after the clamp.
  std::vector<Matrix> key_basis;
  // clip_qkv (MPT) clamps q, k and v between W x + b and the bases, so U_K^T and U_V^T cannot fold
  // into W_q, W_k and W_v: those stay full, and after the clamp the queries and keys are
  // projected onto `key_basis` and the values onto `value_basis` (two products each; W_o still
  // takes U_V). Only for kNoRope layers.
  bool bases_after_clamp = false;
  std::vector<Matrix> value_basis;  // per KV head, U_V as [d_h, r_V]; bases_after_clamp only
  // A water-filled quantized cache (eigenkv quantize-cache): per KV head and cached direction its
  // spread sigma, [n_kv_heads * r_K] and [n_kv_heads * r_V], and how many leading directions get
  // 8 bits (the rest get 4). Empty sigma: no allotment stored.
  std::vector<float> key_sigma;
  std::vector<float> value_sigma;
  int64_t key_n8 = 0;
  int64_t value_n8 = 0;

  // Width of one head's query and of one KV head's key as the projections hand them to attention
  // (after the bases where those apply after the clamp).
  int64_t query_width(int64_t head_dim) const {
    return key_mode == KeyMode::kNoRope ? key_rank : head_dim;
  }
  int64_t key_proj_width(int64_t head_dim) const {
    return key_mode == KeyMode::kPre || key_mode == KeyMode::kNoRope ? key_rank : head_dim;
  }
  // Rows per head of the stored W_q, W_k and W_v (and of their biases).
  int64_t stored_query_width(int64_t head_dim) const {
    return bases_after_clamp ? head_dim : query_width(head_dim);
  }
  int64_t stored_key_width(int64_t head_dim) const {
    return bases_after_clamp ? head_dim : key_proj_width(head_dim);
  }
  int64_t stored_value_width(int64_t head_dim) const {
    return bases_after_clamp ? head_dim : value_rank;
  }
};

struct ModelWeights {
  Weight token_embedding;  // [n_vocab, embed_dim]
  // OPT's word_embed_proj_dim: [d_model, embed_dim] after the embedding lookup and
  // [embed_dim, d_model] before the output head; both empty when embed_dim == d_model.
  Weight project_in, project_out;
  std::vector<LayerWeights> layers;
  std::vector<float> output_norm;        // [d_model]; empty when the family has no final norm
  std::vector<float> output_norm_bias;   // [d_model] or empty
  Weight position_embedding;  // learned positions: [n_ctx_train + offset, d_model], else empty
  Weight output;  // [n_vocab, embed_dim]; when tied, the same bytes as token_embedding
  std::vector<float> rope_freq_factors;  // GGUF rope_freqs: divides the RoPE frequencies, or empty

  // Bytes of weights one decode step reads, as stored (every matrix once; embeddings: one row).
  int64_t decode_bytes_read() const;
  // Bytes of every weight held, each shared buffer counted once.
  int64_t stored_bytes() const;
};

// A per-layer tensor name: the "{}" in `pattern` replaced by the layer number.
std::string layer_name(const std::string& pattern, int64_t layer);

// GGUF name of a compressed layer's key bases: [n_kv_heads * d_h, r_K], U_K of each KV head.
inline constexpr const char* kGgufKeyBasisName = "blk.{}.attn_k_basis.weight";
// A clamped layer's U_V per KV head, stacked: [n_kv_heads * d_h, r_V] (float32).
inline constexpr const char* kGgufValueBasisName = "blk.{}.attn_v_basis.weight";

// A water-filled model's per-direction cache scales: [n_kv_heads * r_K] and [n_kv_heads * r_V].
inline constexpr const char* kGgufKeySigmaName = "blk.{}.attn_k_cache_sigma";
inline constexpr const char* kGgufValueSigmaName = "blk.{}.attn_v_cache_sigma";

// Where tensors come from: a name lookup over a GGUF file or a safetensors directory.
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual const io::TensorView* find(const std::string& name) const = 0;
  virtual std::string label() const = 0;
  // What keeps the tensors' bytes alive (the mapped files); weights hold it.
  virtual std::shared_ptr<const void> owner() const = 0;
};

// The attention shape of one layer of a compressed model, as its file records it.
struct LayerSpec {
  KeyMode key_mode = KeyMode::kFull;
  int64_t key_rank = 0;
  int64_t value_rank = 0;
};

// `layers`: empty for an uncompressed model, else one spec per layer (eigenkv.* metadata);
// tensor shapes are checked against it and the key bases are loaded.
ModelWeights load_gguf_weights(const TensorSource& source, const ModelConfig& config,
                               const std::vector<LayerSpec>& layers = {});
ModelWeights load_hf_weights(const TensorSource& source, const ModelConfig& config);

// A stored matrix as it lies in the source, checking its shape (outer dimension first) and that
// eigenkv can multiply by its type.
Weight load_weight(const TensorSource& source, const std::string& name, int64_t rows, int64_t cols);
// Converts a stored tensor to float32, checking its shape (outer dimension first).
Matrix load_matrix(const TensorSource& source, const std::string& name, int64_t rows, int64_t cols);
std::vector<float> load_vector(const TensorSource& source, const std::string& name, int64_t n);

}  // namespace eigenkv::model
