// llama-quantize's quantization mixes: which type each tensor of a model gets for a file type
// such as Q4_K_M, following llama.cpp's llama_tensor_get_type (src/llama-quant.cpp) for the
// mixes eigenkv writes, without an importance matrix and without per-tensor overrides.
//
// The rules, for a mix with base type B (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q6_K, Q4_K for Q4_K_M,
// Q5_K for Q5_K_M):
//   - Only 2-D and larger tensors whose names end in "weight" are quantized, and not norms
//     ("_norm.weight"), MoE router gates ("ffn_gate_inp.weight"), position or token-type
//     embeddings, nor the small tensors llama.cpp keeps (ssm_conv1d, time_mix_*, altup, laurel,
//     attn_rel_b, ...). eigenkv's compressed-model tensors (the key bases
//     blk.N.attn_k_basis.weight and the *_cache_sigma scales) are never quantized either. The
//     rest keep the type they are stored in.
//   - output.weight, and token_embd.weight when the model has no output.weight (tied
//     embeddings), gets Q6_K, or Q8_0 in the Q8_0 mix, or Q8_0 when its row width is not a
//     multiple of B's block (or the model is a Falcon). Other token embeddings get B.
//   - Q4_K_M and Q5_K_M give Q6_K to attn_v (also attn_qkv, attn_kv_b) and ffn_down of the
//     layers where use_more_bits(i, n) holds: i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2 (for
//     Falcon in Q4_K_M, ffn_down gets Q6_K for i < n/16, else Q5_K where use_more_bits holds).
//   - A Llama with 80 layers and grouped-query attention (llama.cpp's "70B") gets Q5_K for the
//     attn_v it would give Q3_K or Q4_K. Models with 8 experts get Q8_0 for attn_v and attn_k,
//     and Q5_K for attn_output in Q4_K_M.
//   - Fallback: a row width (the innermost dimension) that is not a multiple of the chosen
//     type's block (256 for the K types) gets Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and F16
//     when even that does not fit; the choice then carries a note saying so.
//
// Differences from llama.cpp, all for models eigenkv does not load or shapes it does not make:
//   - The layer position i of attn_v and ffn_down is read from the name ("blk.<i>."), with n
//     the model's layer count; llama.cpp counts attn_v tensors in name order instead, which is
//     the same for any model with one attn_v per layer.
//   - A row width that is not a multiple of 32 for a 32-number type (Q4_0 ... Q8_0) gets F16
//     with a note; llama-quantize stops with "no tensor type fallback is defined".
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/gguf.h"
#include "io/tensor_type.h"

namespace eigenkv::ops {

enum class QuantMix { kQ8_0, kQ4_0, kQ4_1, kQ5_0, kQ5_1, kQ6_K, kQ4_K_M, kQ5_K_M };

// Parses a mix name, case-insensitively: "q4_k_m", "Q4_K_M", "q8_0", ...
std::optional<QuantMix> quant_mix_from_name(std::string_view name);
// The name llama-quantize uses ("Q4_K_M") and the list of all of them, lower case, for help.
std::string_view quant_mix_name(QuantMix mix);
std::string quant_mix_names();

// The mix's base tensor type (Q4_K for Q4_K_M) and the general.file_type number llama.cpp
// writes for it (llama_ftype: Q4_0 = 2, Q8_0 = 7, Q4_K_M = 15, Q6_K = 18, ...).
io::TensorType mix_base_type(QuantMix mix);
uint32_t mix_file_type(QuantMix mix);

// What the rules need to know about the model.
struct QuantModelInfo {
  std::string architecture = "llama";  // general.architecture
  int64_t n_layers = 0;                // <arch>.block_count
  int64_t n_heads = 0;                 // <arch>.attention.head_count
  int64_t n_kv_heads = 0;              // <arch>.attention.head_count_kv (n_heads when absent)
  int64_t n_experts = 0;               // <arch>.expert_count (0 when absent)
  bool has_output = true;              // false: token_embd.weight doubles as the output matrix
};

// Reads QuantModelInfo from a GGUF file's metadata and tensor names. Throws Error naming the
// file when general.architecture or <arch>.block_count is missing.
QuantModelInfo quant_model_info(const io::GgufFile& file);

struct TensorChoice {
  io::TensorType type;
  std::string note;  // non-empty when a fallback replaced the mix's choice
};

// The type `mix` gives tensor `name` (a GGUF name, "blk.3.attn_v.weight") of `shape` (outer
// dimension first, as io::TensorView holds it) now stored as `stored`. Tensors the mix does not
// quantize keep `stored`.
TensorChoice choose_tensor_type(QuantMix mix, const std::string& name,
                                const std::vector<int64_t>& shape, io::TensorType stored,
                                const QuantModelInfo& model);

}  // namespace eigenkv::ops
