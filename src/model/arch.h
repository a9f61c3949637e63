// ArchSpec: what distinguishes one decoder-only family from another (norms, activation, positions,
// biases), and TensorMap: the names a family's tensors have in GGUF and in Hugging Face files. The
// forward pass, the loaders, the GGUF writer and compression read these, never a family's name.
// A family is a spec, a map and its tests; fields that describe maths eigenkv does not run yet
// (sliding windows, softcaps, ALiBi, learned positions) are refused by name when a file sets them.
#pragma once

#include <cstdint>
#include <string>

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
  // Not built yet; a file that sets them is refused (config.cc names the field).
  double clip_qkv = 0;        // clamp of q/k/v to [-c, c]; 0: none
  int64_t sliding_window = 0; // 0: every key is visible
  double attn_softcap = 0, final_softcap = 0;

  bool any_attention_bias() const { return q_bias || k_bias || v_bias || o_bias; }
};

// The families eigenkv runs, by GGUF architecture name: "llama", "qwen2". Throws Error naming
// `source` for any other, saying which are known but not built (opt, mpt, gemma2, phi3, ...).
ArchSpec arch_for_gguf(const std::string& architecture, const std::string& source);
// OPT (OPTForCausalLM): LayerNorm with bias, ReLU, learned positions offset by 2, biases on every
// projection unless `biases` is false (enable_bias), pre- or post-LN (do_layer_norm_before).
ArchSpec opt_arch(bool biases, bool layer_norm_before);

// Tensor names of one family; "{}" stands for the layer number. An empty name: the family has no
// such tensor. Biases are loaded where the spec has them and must then be present.
struct TensorMap {
  std::string embedding, position_embedding, output_norm, output_norm_bias, output;
  std::string attn_norm, attn_norm_bias, wq, wk, wv, wo, ffn_norm, ffn_norm_bias;
  std::string w_gate, w_up, w_down;
  std::string bq, bk, bv, bo, b_up, b_down;
};

// GGUF's names (llama.cpp's conventions, the same for every family it stores this way).
const TensorMap& gguf_tensor_map();
// Hugging Face's names of the family `arch.name` (llama, mistral and qwen2 share Llama's; opt).
const TensorMap& hf_tensor_map(const ArchSpec& arch);

}  // namespace eigenkv::model
