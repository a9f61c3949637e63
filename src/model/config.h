// ModelConfig: the shapes and numeric constants of a decoder-only transformer and its family's
// ArchSpec, filled from GGUF metadata or a Hugging Face config.json. The forward pass branches on
// the spec's fields, never on model names.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "model/arch.h"

namespace eigenkv::io {
class GgufFile;
}

namespace eigenkv::model {


// Llama-3 style frequency scaling of RoPE; kind kNone leaves the frequencies alone.
struct RopeScaling {
  enum class Kind { kNone, kLinear, kLlama3 } kind = Kind::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_context = 8192;
};

struct ModelConfig {
  ArchSpec arch;  // the family: norms, activation, positions, biases
  std::string name;
  int64_t n_vocab = 0;
  int64_t d_model = 0;
  // Width of the token embeddings and of the output head's input when it differs from d_model
  // (OPT's word_embed_proj_dim, through project_in / project_out); 0: d_model.
  int64_t d_embed = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t d_ffn = 0;
  int64_t n_ctx_train = 0;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  int64_t rope_dims = 0;  // leading dimensions of each head that are rotated (= head_dim for Llama)
  RopeScaling rope_scaling;
  bool tied_embeddings = false;

  bool rope() const { return arch.position == PositionKind::kRope; }
  int64_t embed_dim() const { return d_embed > 0 ? d_embed : d_model; }
  int64_t group_size() const { return n_heads / n_kv_heads; }  // query heads per KV head
  // Bytes the uncompressed K/V cache takes per token at `bytes_per_number` (4 for f32).
  int64_t full_kv_bytes_per_token(int64_t bytes_per_number) const {
    return 2 * n_layers * n_kv_heads * head_dim * bytes_per_number;
  }
  // Throws Error naming `source` and the inconsistent field.
  void validate(const std::string& source) const;
};

ModelConfig config_from_gguf(const io::GgufFile& gguf);
ModelConfig config_from_hf(const nlohmann::json& config_json, const std::string& source);

// Per-dimension-pair RoPE inverse frequencies (rope_dims / 2 of them), with scaling applied.
std::vector<float> rope_inverse_frequencies(const ModelConfig& config);

}  // namespace eigenkv::model
