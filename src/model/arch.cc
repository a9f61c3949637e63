#include "model/arch.h"

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
  fail(source, ": unsupported architecture '", architecture,
       "' (eigenkv runs llama-family models — Llama 1/2/3, TinyLlama, SmolLM, Mistral — and qwen2; "
       "opt, mpt, gemma2 and phi3 are not built yet)");
}

const TensorMap& gguf_tensor_map() {
  static const TensorMap m = [] {
    TensorMap t;
    t.embedding = "token_embd.weight";
    t.position_embedding = "position_embd.weight";
    t.output_norm = "output_norm.weight";
    t.output_norm_bias = "output_norm.bias";
    t.output = "output.weight";
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
  }();
  return m;
}

namespace {

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

}  // namespace

const TensorMap& hf_tensor_map(const ArchSpec& arch) {
  static const TensorMap llama = llama_hf_map(), opt = opt_hf_map();
  return arch.name == "opt" ? opt : llama;
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
