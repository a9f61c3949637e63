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

struct LayerWeights {
  std::vector<float> attn_norm;  // [d_model]
  Matrix wq;                     // [n_heads * head_dim, d_model]
  Matrix wk;                     // [n_kv_heads * head_dim, d_model]
  Matrix wv;                     // [n_kv_heads * head_dim, d_model]
  Matrix wo;                     // [d_model, n_heads * head_dim]
  std::vector<float> ffn_norm;   // [d_model]
  Matrix w_gate;                 // [d_ffn, d_model]
  Matrix w_up;                   // [d_ffn, d_model]
  Matrix w_down;                 // [d_model, d_ffn]
};

struct ModelWeights {
  Matrix token_embedding;  // [n_vocab, d_model]
  std::vector<LayerWeights> layers;
  std::vector<float> output_norm;  // [d_model]
  Matrix output;                   // [n_vocab, d_model]; a copy of token_embedding when tied
  std::vector<float> rope_freq_factors;  // GGUF rope_freqs: divides the RoPE frequencies, or empty

  // Bytes of weights one decode step reads (every matrix once; embeddings: one row).
  int64_t decode_bytes_read() const;
};

// Where tensors come from: a name lookup over a GGUF file or a safetensors directory.
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual const io::TensorView* find(const std::string& name) const = 0;
  virtual std::string label() const = 0;
};

ModelWeights load_gguf_weights(const TensorSource& source, const ModelConfig& config);
ModelWeights load_hf_weights(const TensorSource& source, const ModelConfig& config);

// Converts a stored tensor to float32, checking its shape (outer dimension first).
Matrix load_matrix(const TensorSource& source, const std::string& name, int64_t rows, int64_t cols);
std::vector<float> load_vector(const TensorSource& source, const std::string& name, int64_t n);

}  // namespace eigenkv::model
