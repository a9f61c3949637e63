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
  static const TensorMap m{
      "token_embd.weight",       "output_norm.weight",     "output.weight",
      "blk.{}.attn_norm.weight", "blk.{}.attn_q.weight",   "blk.{}.attn_k.weight",
      "blk.{}.attn_v.weight",    "blk.{}.attn_output.weight", "blk.{}.ffn_norm.weight",
      "blk.{}.ffn_gate.weight",  "blk.{}.ffn_up.weight",   "blk.{}.ffn_down.weight",
      "blk.{}.attn_q.bias",      "blk.{}.attn_k.bias",     "blk.{}.attn_v.bias",
      "blk.{}.attn_output.bias"};
  return m;
}

const TensorMap& hf_tensor_map() {
  static const TensorMap m{"model.embed_tokens.weight",
                           "model.norm.weight",
                           "lm_head.weight",
                           "model.layers.{}.input_layernorm.weight",
                           "model.layers.{}.self_attn.q_proj.weight",
                           "model.layers.{}.self_attn.k_proj.weight",
                           "model.layers.{}.self_attn.v_proj.weight",
                           "model.layers.{}.self_attn.o_proj.weight",
                           "model.layers.{}.post_attention_layernorm.weight",
                           "model.layers.{}.mlp.gate_proj.weight",
                           "model.layers.{}.mlp.up_proj.weight",
                           "model.layers.{}.mlp.down_proj.weight",
                           "model.layers.{}.self_attn.q_proj.bias",
                           "model.layers.{}.self_attn.k_proj.bias",
                           "model.layers.{}.self_attn.v_proj.bias",
                           "model.layers.{}.self_attn.o_proj.bias"};
  return m;
}

}  // namespace eigenkv::model
