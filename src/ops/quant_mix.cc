#include "ops/quant_mix.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "util/error.h"

namespace eigenkv::ops {
namespace {

using io::TensorType;

struct MixInfo {
  QuantMix mix;
  std::string_view name;
  TensorType base;
  uint32_t file_type;  // llama_ftype
};

constexpr MixInfo kMixes[] = {
    {QuantMix::kQ8_0, "Q8_0", TensorType::kQ8_0, 7},
    {QuantMix::kQ4_0, "Q4_0", TensorType::kQ4_0, 2},
    {QuantMix::kQ4_1, "Q4_1", TensorType::kQ4_1, 3},
    {QuantMix::kQ5_0, "Q5_0", TensorType::kQ5_0, 8},
    {QuantMix::kQ5_1, "Q5_1", TensorType::kQ5_1, 9},
    {QuantMix::kQ6_K, "Q6_K", TensorType::kQ6_K, 18},
    {QuantMix::kQ4_K_M, "Q4_K_M", TensorType::kQ4_K, 15},
    {QuantMix::kQ5_K_M, "Q5_K_M", TensorType::kQ5_K, 17},
};

const MixInfo& mix_info(QuantMix mix) {
  for (const MixInfo& info : kMixes) {
    if (info.mix == mix) return info;
  }
  fail("unknown quantization mix #", static_cast<int>(mix));
}

bool contains(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// ggml_n_dims: dimensions up to the last one (innermost first) larger than 1.
int ggml_dims(const std::vector<int64_t>& shape) {
  int dims = 1;
  for (size_t i = 0; i < shape.size(); ++i) {  // shape is outer first: ne[k] = shape[size-1-k]
    if (shape[i] > 1) {
      dims = std::max(dims, static_cast<int>(shape.size() - i));
      break;
    }
  }
  return dims;
}

// llama.cpp's tensor_allows_quantization, for the names it can meet in the models eigenkv
// reads, plus eigenkv's own compressed-model tensors.
bool allows_quantization(const std::string& name, const std::vector<int64_t>& shape) {
  if (ggml_dims(shape) < 2) return false;
  if (!ends_with(name, "weight")) return false;
  static constexpr std::string_view kKept[] = {
      "_norm.weight",
      "ffn_gate_inp.weight",
      "altup",
      "laurel",
      "per_layer_model_proj",
      "ssm_conv1d",
      "shortconv.conv.weight",
      "time_mix_first.weight",
      "time_mix_w0.weight",
      "time_mix_w1.weight",
      "time_mix_w2.weight",
      "time_mix_v0.weight",
      "time_mix_v1.weight",
      "time_mix_v2.weight",
      "time_mix_a0.weight",
      "time_mix_a1.weight",
      "time_mix_a2.weight",
      "time_mix_g1.weight",
      "time_mix_g2.weight",
      "time_mix_decay_w1.weight",
      "time_mix_decay_w2.weight",
      "time_mix_lerp_fused.weight",
      "attn_rel_b.weight",
      // eigenkv: the key bases of a compressed model (its sigmas are 1-D and end otherwise).
      "_basis.weight",
  };
  for (std::string_view kept : kKept) {
    if (contains(name, kept)) return false;
  }
  return name != "position_embd.weight" && name != "token_types.weight";
}

enum class Category { kTokenEmbd, kOutput, kAttnV, kAttnK, kAttnQ, kAttnOutput, kFfnDown, kOther };

// llama.cpp's tensor_get_category, for the categories these mixes treat differently.
Category category(const std::string& name) {
  if (name == "output.weight") return Category::kOutput;
  if (name == "token_embd.weight" || name == "per_layer_token_embd.weight") {
    return Category::kTokenEmbd;
  }
  if (contains(name, "attn_qkv.weight") || contains(name, "attn_kv_b.weight") ||
      contains(name, "attn_v.weight")) {
    return Category::kAttnV;
  }
  if (contains(name, "attn_k.weight")) return Category::kAttnK;
  if (contains(name, "attn_q.weight")) return Category::kAttnQ;
  if (contains(name, "attn_output.weight")) return Category::kAttnOutput;
  if (contains(name, "ffn_up") || contains(name, "ffn_gate")) return Category::kOther;
  if (contains(name, "ffn_down")) return Category::kFfnDown;
  return Category::kOther;
}

// The layer number in "blk.<i>.", which the per-layer rules need.
int64_t layer_of(const std::string& name, int64_t n_layers) {
  EKV_CHECK(name.rfind("blk.", 0) == 0, "tensor '", name, "': no layer number in its name");
  char* end = nullptr;
  const long long layer = std::strtoll(name.c_str() + 4, &end, 10);
  EKV_CHECK(end != name.c_str() + 4 && *end == '.' && layer >= 0 && layer < n_layers, "tensor '",
            name, "': layer number outside the model's ", n_layers, " layers");
  return layer;
}

// llama.cpp's use_more_bits: the first and last eighth of the layers and every third between.
bool use_more_bits(int64_t layer, int64_t n_layers) {
  return layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
}

int64_t block_size(TensorType type) { return io::tensor_type_info(type).block_size; }

std::string type_name(TensorType type) { return std::string(io::tensor_type_info(type).name); }

// llama_tensor_get_type_impl for the mixes here.
TensorType mix_rule(QuantMix mix, const std::string& name, int64_t row_width,
                    const QuantModelInfo& model) {
  const TensorType base = mix_base_type(mix);
  const bool falcon = model.architecture == "falcon";
  const bool k_medium = mix == QuantMix::kQ4_K_M || mix == QuantMix::kQ5_K_M;
  const Category cat = category(name);
  if (cat == Category::kOutput || (!model.has_output && cat == Category::kTokenEmbd)) {
    if (falcon || row_width % block_size(base) != 0) return TensorType::kQ8_0;
    return base == TensorType::kQ8_0 ? TensorType::kQ8_0 : TensorType::kQ6_K;
  }
  switch (cat) {
    case Category::kAttnV: {
      TensorType type = base;
      if (k_medium && use_more_bits(layer_of(name, model.n_layers), model.n_layers)) {
        type = TensorType::kQ6_K;
      }
      const bool llama_70b = model.architecture == "llama" && model.n_layers == 80 &&
                             model.n_heads != model.n_kv_heads;
      if (llama_70b && (type == TensorType::kQ3_K || type == TensorType::kQ4_K)) {
        type = TensorType::kQ5_K;
      }
      if (model.n_experts == 8) type = TensorType::kQ8_0;
      return type;
    }
    case Category::kAttnK:
      return model.n_experts == 8 ? TensorType::kQ8_0 : base;
    case Category::kFfnDown: {
      if (!k_medium) return base;
      const int64_t layer = layer_of(name, model.n_layers);
      const int64_t n = model.n_layers;
      if (mix == QuantMix::kQ4_K_M && falcon) {
        if (layer < n / 16) return TensorType::kQ6_K;
        return use_more_bits(layer, n) ? TensorType::kQ5_K : TensorType::kQ4_K;
      }
      return use_more_bits(layer, n) ? TensorType::kQ6_K : base;
    }
    case Category::kAttnOutput:
      if (!falcon && model.n_experts == 8 && mix == QuantMix::kQ4_K_M) return TensorType::kQ5_K;
      return base;
    default:
      return base;
  }
}

}  // namespace

std::optional<QuantMix> quant_mix_from_name(std::string_view name) {
  for (const MixInfo& info : kMixes) {
    if (info.name.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i) {
      same = std::toupper(static_cast<unsigned char>(name[i])) == info.name[i];
    }
    if (same) return info.mix;
  }
  return std::nullopt;
}

std::string_view quant_mix_name(QuantMix mix) { return mix_info(mix).name; }

std::string quant_mix_names() {
  std::string names;
  for (const MixInfo& info : kMixes) {
    if (!names.empty()) names += ", ";
    for (char c : info.name)
      names += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return names;
}

TensorType mix_base_type(QuantMix mix) { return mix_info(mix).base; }

uint32_t mix_file_type(QuantMix mix) { return mix_info(mix).file_type; }

QuantModelInfo quant_model_info(const io::GgufFile& file) {
  QuantModelInfo info;
  EKV_CHECK(file.has("general.architecture"), file.path(), ": no general.architecture key");
  info.architecture = file.get_string("general.architecture");
  const std::string& arch = info.architecture;
  EKV_CHECK(file.has(arch + ".block_count"), file.path(), ": no ", arch, ".block_count key");
  info.n_layers = file.get_int(arch + ".block_count");
  info.n_heads = file.find_int(arch + ".attention.head_count").value_or(0);
  info.n_kv_heads = file.find_int(arch + ".attention.head_count_kv").value_or(info.n_heads);
  info.n_experts = file.find_int(arch + ".expert_count").value_or(0);
  info.has_output = file.find_tensor("output.weight") != nullptr;
  return info;
}

TensorChoice choose_tensor_type(QuantMix mix, const std::string& name,
                                const std::vector<int64_t>& shape, TensorType stored,
                                const QuantModelInfo& model) {
  if (!allows_quantization(name, shape)) return {stored, ""};
  const int64_t row_width = shape.back();
  const TensorType wanted = mix_rule(mix, name, row_width, model);
  if (row_width % block_size(wanted) == 0) return {wanted, ""};

  // llama.cpp's tensor_type_fallback.
  TensorType fallback = TensorType::kF16;
  switch (wanted) {
    case TensorType::kQ2_K:
    case TensorType::kQ3_K:
      fallback = TensorType::kQ4_0;
      break;
    case TensorType::kQ4_K:
      fallback = TensorType::kQ5_0;
      break;
    case TensorType::kQ5_K:
      fallback = TensorType::kQ5_1;
      break;
    case TensorType::kQ6_K:
      fallback = TensorType::kQ8_0;
      break;
    default:
      break;  // a 32-number type: llama-quantize stops here; F16 keeps the tensor usable
  }
  if (row_width % block_size(fallback) != 0) fallback = TensorType::kF16;
  return {fallback, cat("row width ", row_width, " is not a multiple of ", block_size(wanted), " (",
                        type_name(wanted), "): ", type_name(fallback), " instead")};
}

}  // namespace eigenkv::ops
