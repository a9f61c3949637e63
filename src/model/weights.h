// The weights of a Llama-family model in float32, whatever their stored type, in one canonical
// layout: matrices [out, in] with rows contiguous, and q/k rows of every head in the adjacent-pair
// RoPE layout (GGUF's). Loaders for GGUF and Hugging Face directories fill it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/tensor_view.h"
#include "model/config.h"

namespace eigenkv::model {

struct Matrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> data;  // [rows, cols]

  const float* row(int64_t r) const { return data.data() + r * cols; }
  bool empty() const { return data.empty(); }
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
  Matrix wq;  // [n_heads * q_width, d_model]; q_width = r_K in kNoRope mode, else d_h
  Matrix wk;  // [n_kv_heads * k_width, d_model]; k_width = r_K in kPre/kNoRope mode, else d_h
  Matrix wv;  // [n_kv_heads * r_V, d_model]   (r_V = d_h when uncompressed)
  Matrix wo;  // [d_model, n_heads * r_V]      (U_V folded in)
  std::vector<float> ffn_norm;  // [d_model]
  Matrix w_gate;                // [d_ffn, d_model]
  Matrix w_up;                  // [d_ffn, d_model]
  Matrix w_down;                // [d_model, d_ffn]

  KeyMode key_mode = KeyMode::kFull;
  int64_t key_rank = 0;    // r_K: numbers cached per KV head and token for keys
  int64_t value_rank = 0;  // r_V: numbers cached per KV head and token for values
  // kPre and kPost: per KV head, U_K as [d_h, r_K] (orthonormal columns).
  std::vector<Matrix> key_basis;
  // A water-filled quantized cache (eigenkv quantize-cache): per KV head and cached direction its
  // spread sigma, [n_kv_heads * r_K] and [n_kv_heads * r_V], and how many leading directions get
  // 8 bits (the rest get 4). Empty sigma: no allotment stored.
  std::vector<float> key_sigma;
  std::vector<float> value_sigma;
  int64_t key_n8 = 0;
  int64_t value_n8 = 0;

  // Width of one head's query as W_q produces it, and of one KV head's key as W_k produces it.
  int64_t query_width(int64_t head_dim) const {
    return key_mode == KeyMode::kNoRope ? key_rank : head_dim;
  }
  int64_t key_proj_width(int64_t head_dim) const {
    return key_mode == KeyMode::kPre || key_mode == KeyMode::kNoRope ? key_rank : head_dim;
  }
};

struct ModelWeights {
  Matrix token_embedding;  // [n_vocab, d_model]
  std::vector<LayerWeights> layers;
  std::vector<float> output_norm;        // [d_model]
  Matrix output;                         // [n_vocab, d_model]; a copy of token_embedding when tied
  std::vector<float> rope_freq_factors;  // GGUF rope_freqs: divides the RoPE frequencies, or empty

  // Bytes of weights one decode step reads (every matrix once; embeddings: one row).
  int64_t decode_bytes_read() const;
};

// A per-layer tensor name: the "{}" in `pattern` replaced by the layer number.
std::string layer_name(const std::string& pattern, int64_t layer);

// GGUF name of a compressed layer's key bases: [n_kv_heads * d_h, r_K], U_K of each KV head.
inline constexpr const char* kGgufKeyBasisName = "blk.{}.attn_k_basis.weight";

// A water-filled model's per-direction cache scales: [n_kv_heads * r_K] and [n_kv_heads * r_V].
inline constexpr const char* kGgufKeySigmaName = "blk.{}.attn_k_cache_sigma";
inline constexpr const char* kGgufValueSigmaName = "blk.{}.attn_v_cache_sigma";

// Where tensors come from: a name lookup over a GGUF file or a safetensors directory.
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual const io::TensorView* find(const std::string& name) const = 0;
  virtual std::string label() const = 0;
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

// Converts a stored tensor to float32, checking its shape (outer dimension first).
Matrix load_matrix(const TensorSource& source, const std::string& name, int64_t rows, int64_t cols);
std::vector<float> load_vector(const TensorSource& source, const std::string& name, int64_t n);

}  // namespace eigenkv::model
