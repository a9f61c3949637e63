// ArchSpec: what distinguishes one decoder-only family from another (norms, activation, positions,
// biases), and TensorMap: the names a family's tensors have in GGUF and in Hugging Face files. The
// forward pass, the loaders, the GGUF writer and compression read these, never a family's name.
// A family is a spec, a map and its tests; fields that describe maths eigenkv does not run yet
// (sliding windows, softcaps) are refused by name when a file sets them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ops/rope.h"

namespace eigenkv::model {

enum class NormKind { kRms, kLayer };
enum class PositionKind { kRope, kLearned, kAlibi, kNone };
// kSwiGlu: silu(gate) * up; the rest are ungated.
enum class FfnKind { kSwiGlu, kRelu, kGelu };
using ops::RopeLayout;  // which dimensions of a head RoPE rotates together

struct ArchSpec {
  std::string name = "llama";  // GGUF general.architecture
  NormKind norm = NormKind::kRms;
  bool norm_bias = false;
  FfnKind ffn = FfnKind::kSwiGlu;
  bool ffn_bias = false;
  PositionKind position = PositionKind::kRope;
  RopeLayout rope_layout = RopeLayout::kAdjacentPairs;
  bool q_bias = false, k_bias = false, v_bias = false, o_bias = false;
  // Norms after each residual add (OPT's do_layer_norm_before = false) instead of before each
  // block; and whether a norm precedes the output head.
  bool post_norm = false;
  bool final_norm = true;
  // kLearned: the row of token position t in the position table is t + position_offset (OPT: 2).
  int64_t position_offset = 0;
  // kAlibi: head h adds slope_h * (key position - query position) to its scores (alibi_slopes).
  double alibi_bias_max = 8;
  // Scores are scaled by query_scale; 0: 1 / sqrt(head_dim) (MPT's softmax_scale may set it).
  double query_scale = 0;
  // q, k and v are clamped to [-clip_qkv, clip_qkv] after their projection (MPT); 0: none.
  double clip_qkv = 0;
  // Not built yet; a file that sets them is refused (config.cc names the field).
  int64_t sliding_window = 0; // 0: every key is visible
  double attn_softcap = 0, final_softcap = 0;

  bool any_attention_bias() const { return q_bias || k_bias || v_bias || o_bias; }
};

// The families eigenkv runs, by GGUF architecture name: "llama", "qwen2", "mpt" (llama.cpp's
// layouts) and "opt" (eigenkv's own: llama.cpp has none; DESIGN.md, "Families"). Throws Error
// naming `source` for any other, saying which are known but not built (gemma2, phi3, ...).
ArchSpec arch_for_gguf(const std::string& architecture, const std::string& source);
// MPT (MPTForCausalLM): LayerNorm (with bias unless `no_bias`), exact GELU, ALiBi, fused Wqkv,
// biases on every projection unless `no_bias`, optional clip_qkv, tied output.
ArchSpec mpt_arch(bool no_bias, double alibi_bias_max, double clip_qkv);
// OPT (OPTForCausalLM): LayerNorm with bias, ReLU, learned positions offset by 2, biases on every
// projection unless `biases` is false (enable_bias), pre- or post-LN (do_layer_norm_before).
ArchSpec opt_arch(bool biases, bool layer_norm_before);

// ALiBi's per-head slopes (MosaicML's and llama.cpp's): for n heads and m = 2^ceil(log2 n), the
// slopes 2^(-bias_max * i / m), i = 1..m, of which the odd-numbered come first when n < m.
std::vector<float> alibi_slopes(int64_t n_heads, double bias_max);

// Tensor names of one family; "{}" stands for the layer number. An empty name: the family has no
// such tensor. Biases are loaded where the spec has them and must then be present. A family that
// stores q, k and v as one matrix ([q rows; k rows; v rows]) names it wqkv (and bqkv); wq, wk and
// wv are then empty.
struct TensorMap {
  std::string embedding, position_embedding, output_norm, output_norm_bias, output;
  // OPT's word_embed_proj_dim: embeddings narrower than the model, projected in and out.
  std::string project_in, project_out;
  std::string attn_norm, attn_norm_bias, wq, wk, wv, wqkv, wo, ffn_norm, ffn_norm_bias;
  std::string w_gate, w_up, w_down;
  std::string bq, bk, bv, bqkv, bo, b_up, b_down;

  bool fused_qkv() const { return !wqkv.empty(); }
};

// GGUF's names (llama.cpp's conventions) for the family `arch.name`: the same for llama and
// qwen2; mpt's fused attn_qkv.
const TensorMap& gguf_tensor_map(const ArchSpec& arch);
// Hugging Face's names of the family `arch.name` (llama, mistral and qwen2 share Llama's; opt; mpt).
const TensorMap& hf_tensor_map(const ArchSpec& arch);

}  // namespace eigenkv::model
