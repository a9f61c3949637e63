#include "model/arch.h"

#include <cmath>

#include "util/error.h"

namespace eigenkv::model {

ArchSpec arch_for_gguf(const std::string& architecture, const std::string& source) {
  ArchSpec a;
  a.name = architecture;
  if (architecture == "llama") return a;
  if (architecture == "qwen2") {
    // Qwen2/2.5: biases on q, k and v only; rotate-half RoPE (llama.cpp stores its q/k rows as
    // Hugging Face does, unpermuted).
    a.q_bias = a.k_bias = a.v_bias = true;
    a.rope_layout = RopeLayout::kHalves;
    return a;
  }
  // llama.cpp's mpt: every bias optional; config_from_gguf sets them from the tensors present.
  if (architecture == "mpt") return mpt_arch(true, 8, 0);
  // eigenkv's opt: position_embd holds position 0 first (no offset rows); biases, the final
  // norm and the projections as the tensors present say (config_from_gguf).
  if (architecture == "opt") {
    a = opt_arch(true, true);
    a.position_offset = 0;
    return a;
  }
  fail(source, ": unsupported architecture '", architecture,
       "' (eigenkv runs llama-family models — Llama 1/2/3, TinyLlama, SmolLM, Mistral — qwen2, "
       "mpt and opt; gemma2 and phi3 are not built yet)");
}

std::vector<float> alibi_slopes(int64_t n_heads, double bias_max) {
  int64_t m = 1;
  while (m < n_heads) m *= 2;
  std::vector<float> all(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i)
    all[i] = static_cast<float>(std::exp2(-bias_max * static_cast<double>(i + 1) / m));
  if (m == n_heads) return all;
  std::vector<float> out;  // slopes 2, 4, 6, ... then 1, 3, 5, ... (1-based), cut to n_heads
  for (int64_t i = 1; i < m; i += 2) out.push_back(all[i]);
  for (int64_t i = 0; i < m; i += 2) out.push_back(all[i]);
  out.resize(static_cast<size_t>(n_heads));
  return out;
}

namespace {

TensorMap gguf_map() {
  TensorMap t;
  t.embedding = "token_embd.weight";
  t.position_embedding = "position_embd.weight";
  t.output_norm = "output_norm.weight";
  t.output_norm_bias = "output_norm.bias";
  t.output = "output.weight";
  t.project_in = "proj_in.weight";
  t.project_out = "proj_out.weight";
  t.attn_norm = "blk.{}.attn_norm.weight";
  t.attn_norm_bias = "blk.{}.attn_norm.bias";
  t.wq = "blk.{}.attn_q.weight";
  t.wk = "blk.{}.attn_k.weight";
  t.wv = "blk.{}.attn_v.weight";
  t.wo = "blk.{}.attn_output.weight";
  t.ffn_norm = "blk.{}.ffn_norm.weight";
  t.ffn_norm_bias = "blk.{}.ffn_norm.bias";
  t.w_gate = "blk.{}.ffn_gate.weight";
  t.w_up = "blk.{}.ffn_up.weight";
  t.w_down = "blk.{}.ffn_down.weight";
  t.bq = "blk.{}.attn_q.bias";
  t.bk = "blk.{}.attn_k.bias";
  t.bv = "blk.{}.attn_v.bias";
  t.bo = "blk.{}.attn_output.bias";
  t.b_up = "blk.{}.ffn_up.bias";
  t.b_down = "blk.{}.ffn_down.bias";
  return t;
}

TensorMap gguf_mpt_map() {
  TensorMap t = gguf_map();
  t.wq = t.wk = t.wv = t.bq = t.bk = t.bv = "";
  t.wqkv = "blk.{}.attn_qkv.weight";
  t.bqkv = "blk.{}.attn_qkv.bias";
  return t;
}

TensorMap llama_hf_map() {
  TensorMap t;
  const std::string l = "model.layers.{}.";
  t.embedding = "model.embed_tokens.weight";
  t.output_norm = "model.norm.weight";
  t.output = "lm_head.weight";
  t.attn_norm = l + "input_layernorm.weight";
  t.wq = l + "self_attn.q_proj.weight";
  t.wk = l + "self_attn.k_proj.weight";
  t.wv = l + "self_attn.v_proj.weight";
  t.wo = l + "self_attn.o_proj.weight";
  t.ffn_norm = l + "post_attention_layernorm.weight";
  t.w_gate = l + "mlp.gate_proj.weight";
  t.w_up = l + "mlp.up_proj.weight";
  t.w_down = l + "mlp.down_proj.weight";
  t.bq = l + "self_attn.q_proj.bias";
  t.bk = l + "self_attn.k_proj.bias";
  t.bv = l + "self_attn.v_proj.bias";
  t.bo = l + "self_attn.o_proj.bias";
  return t;
}

TensorMap opt_hf_map() {
  TensorMap t;
  const std::string d = "model.decoder.", l = d + "layers.{}.";
  t.embedding = d + "embed_tokens.weight";
  t.position_embedding = d + "embed_positions.weight";
  t.output_norm = d + "final_layer_norm.weight";
  t.output_norm_bias = d + "final_layer_norm.bias";
  t.output = "lm_head.weight";
  t.project_in = d + "project_in.weight";
  t.project_out = d + "project_out.weight";
  t.attn_norm = l + "self_attn_layer_norm.weight";
  t.attn_norm_bias = l + "self_attn_layer_norm.bias";
  t.wq = l + "self_attn.q_proj.weight";
  t.wk = l + "self_attn.k_proj.weight";
  t.wv = l + "self_attn.v_proj.weight";
  t.wo = l + "self_attn.out_proj.weight";
  t.bq = l + "self_attn.q_proj.bias";
  t.bk = l + "self_attn.k_proj.bias";
  t.bv = l + "self_attn.v_proj.bias";
  t.bo = l + "self_attn.out_proj.bias";
  t.ffn_norm = l + "final_layer_norm.weight";
  t.ffn_norm_bias = l + "final_layer_norm.bias";
  t.w_up = l + "fc1.weight";
  t.b_up = l + "fc1.bias";
  t.w_down = l + "fc2.weight";
  t.b_down = l + "fc2.bias";
  return t;
}

// MosaicML's names, which transformers' MptForCausalLM keeps.
TensorMap mpt_hf_map() {
  TensorMap t;
  const std::string d = "transformer.", l = d + "blocks.{}.";
  t.embedding = d + "wte.weight";
  t.position_embedding = d + "wpe.weight";
  t.output_norm = d + "norm_f.weight";
  t.output_norm_bias = d + "norm_f.bias";
  t.output = "lm_head.weight";
  t.attn_norm = l + "norm_1.weight";
  t.attn_norm_bias = l + "norm_1.bias";
  t.wqkv = l + "attn.Wqkv.weight";
  t.bqkv = l + "attn.Wqkv.bias";
  t.wo = l + "attn.out_proj.weight";
  t.bo = l + "attn.out_proj.bias";
  t.ffn_norm = l + "norm_2.weight";
  t.ffn_norm_bias = l + "norm_2.bias";
  t.w_up = l + "ffn.up_proj.weight";
  t.b_up = l + "ffn.up_proj.bias";
  t.w_down = l + "ffn.down_proj.weight";
  t.b_down = l + "ffn.down_proj.bias";
  return t;
}

}  // namespace

const TensorMap& gguf_tensor_map(const ArchSpec& arch) {
  static const TensorMap plain = gguf_map(), mpt = gguf_mpt_map();
  return arch.name == "mpt" ? mpt : plain;
}

const TensorMap& hf_tensor_map(const ArchSpec& arch) {
  static const TensorMap llama = llama_hf_map(), opt = opt_hf_map(), mpt = mpt_hf_map();
  if (arch.name == "opt") return opt;
  return arch.name == "mpt" ? mpt : llama;
}

ArchSpec mpt_arch(bool no_bias, double alibi_bias_max, double clip_qkv) {
  ArchSpec a;
  a.name = "mpt";
  a.norm = NormKind::kLayer;
  a.norm_bias = !no_bias;
  a.ffn = FfnKind::kGelu;
  a.ffn_bias = !no_bias;
  a.position = PositionKind::kAlibi;
  a.alibi_bias_max = alibi_bias_max;
  a.q_bias = a.k_bias = a.v_bias = a.o_bias = !no_bias;
  a.clip_qkv = clip_qkv;
  return a;
}

ArchSpec opt_arch(bool biases, bool layer_norm_before) {
  ArchSpec a;
  a.name = "opt";
  a.norm = NormKind::kLayer;
  a.norm_bias = true;
  a.ffn = FfnKind::kRelu;
  a.ffn_bias = biases;
  a.position = PositionKind::kLearned;
  a.position_offset = 2;
  a.q_bias = a.k_bias = a.v_bias = a.o_bias = biases;
  a.post_norm = !layer_norm_before;
  a.final_norm = layer_norm_before;
  return a;
}

}  // namespace eigenkv::model
