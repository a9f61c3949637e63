#include "model/config.h"

#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <numbers>

#include "io/gguf.h"
#include "model/weights.h"
#include "util/error.h"

namespace eigenkv::model {

void ModelConfig::validate(const std::string& source) const {
  auto positive = [&](int64_t v, const char* what) {
    EKV_CHECK(v > 0, source, ": ", what, " must be positive, found ", v);
  };
  positive(n_vocab, "vocabulary size");
  positive(d_model, "model width");
  positive(n_layers, "layer count");
  positive(n_heads, "head count");
  positive(n_kv_heads, "KV head count");
  positive(head_dim, "head width");
  positive(d_ffn, "feed-forward width");
  positive(n_ctx_train, "training context");
  EKV_CHECK(d_embed >= 0, source, ": embedding width must be positive, found ", d_embed);
  EKV_CHECK(rope_scaling.factor > 0 && std::isfinite(rope_scaling.factor), source,
            ": the RoPE scaling factor must be a positive number, found ", rope_scaling.factor);
  EKV_CHECK(n_heads % n_kv_heads == 0, source, ": head count ", n_heads,
            " is not a multiple of the KV head count ", n_kv_heads);
  EKV_CHECK(!rope() || head_dim % 2 == 0, source, ": head width ", head_dim, " is odd; RoPE needs pairs");
  EKV_CHECK(rope_dims > 0 && rope_dims <= head_dim && rope_dims % 2 == 0, source,
            ": RoPE dimension count ", rope_dims, " does not fit head width ", head_dim);
  EKV_CHECK(norm_eps > 0 && norm_eps < 1, source, ": norm epsilon ", norm_eps, " is out of range");
  EKV_CHECK(rope_theta > 0, source, ": RoPE base ", rope_theta, " must be positive");
  EKV_CHECK(n_vocab < (int64_t{1} << 31) && d_model < (int64_t{1} << 20) && n_layers < 100000,
            source, ": implausible model shape");
}

ModelConfig config_from_gguf(const io::GgufFile& gguf) {
  ModelConfig c;
  c.arch = arch_for_gguf(gguf.get_string("general.architecture"), gguf.path());
  const std::string a = c.arch.name + ".";
  c.name = gguf.find_string("general.name").value_or("");
  c.d_model = gguf.get_int(a + "embedding_length");
  c.n_layers = gguf.get_int(a + "block_count");
  c.n_heads = gguf.get_int(a + "attention.head_count");
  c.n_kv_heads = gguf.find_int(a + "attention.head_count_kv").value_or(c.n_heads);
  c.d_ffn = gguf.get_int(a + "feed_forward_length");
  c.n_ctx_train = gguf.find_int(a + "context_length").value_or(2048);
  c.norm_eps = gguf.get_float(c.arch.norm == NormKind::kLayer ? a + "attention.layer_norm_epsilon"
                                                               : a + "attention.layer_norm_rms_epsilon");
  c.rope_theta = gguf.find_float(a + "rope.freq_base").value_or(10000.0);
  EKV_CHECK(c.n_heads > 0, gguf.path(), ": ", a, "attention.head_count must be positive");
  c.head_dim = gguf.find_int(a + "attention.key_length").value_or(c.d_model / c.n_heads);
  c.rope_dims = gguf.find_int(a + "rope.dimension_count").value_or(c.head_dim);
  if (auto n = gguf.find_int(a + "vocab_size")) {
    c.n_vocab = *n;
  } else if (const auto* t = gguf.find_tensor("token_embd.weight")) {
    c.n_vocab = t->shape[0];
  }
  const TensorMap& names = gguf_tensor_map(c.arch);
  c.tied_embeddings = gguf.find_tensor(names.output) == nullptr;
  if (c.arch.name == "mpt") {
    // llama.cpp's mpt: every bias is optional (present in all layers or in none), and so is a
    // learned position table; ALiBi whenever max_alibi_bias > 0.
    ArchSpec& s = c.arch;
    auto has = [&](const std::string& pattern) {
      return gguf.find_tensor(layer_name(pattern, 0)) != nullptr;
    };
    s.norm_bias = has(names.attn_norm_bias);
    s.q_bias = s.k_bias = s.v_bias = has(names.bqkv);
    s.o_bias = has(names.bo);
    s.ffn_bias = has(names.b_up);
    s.clip_qkv = gguf.find_float(a + "attention.clamp_kqv").value_or(0.0);
    s.alibi_bias_max = gguf.find_float(a + "attention.max_alibi_bias").value_or(0.0);
    const bool learned = gguf.find_tensor(names.position_embedding) != nullptr;
    EKV_CHECK(!(learned && s.alibi_bias_max > 0), gguf.path(), ": ", names.position_embedding,
              " and ", a, "attention.max_alibi_bias = ", s.alibi_bias_max,
              ": learned positions together with ALiBi are not built");
    s.position = learned ? PositionKind::kLearned
                         : (s.alibi_bias_max > 0 ? PositionKind::kAlibi : PositionKind::kNone);
  }
  if (c.arch.name == "opt") {
    ArchSpec& s = c.arch;
    auto has = [&](const std::string& pattern) {
      return gguf.find_tensor(layer_name(pattern, 0)) != nullptr;
    };
    s.q_bias = s.k_bias = s.v_bias = has(names.bq);
    s.o_bias = has(names.bo);
    s.ffn_bias = has(names.b_up);
    s.post_norm = gguf.has(a + "layer_norm_before") && !gguf.get_bool(a + "layer_norm_before");
    s.final_norm = gguf.find_tensor(names.output_norm) != nullptr;
    if (const auto* t = gguf.find_tensor(names.project_in)) c.d_embed = t->shape[1];
  }
  if (auto window = gguf.find_int(a + "attention.sliding_window"); window && *window > 0) {
    fail(gguf.path(), ": ", a, "attention.sliding_window = ", *window,
         ": sliding-window attention is not built");
  }
  if (auto type = gguf.find_string(a + "rope.scaling.type"); type && *type == "linear") {
    c.rope_scaling.kind = RopeScaling::Kind::kLinear;
    c.rope_scaling.factor = gguf.get_float(a + "rope.scaling.factor");
  }
  c.validate(gguf.path());
  return c;
}

namespace {

// Typed reads of config.json keys: a value of the wrong type is an error naming the file, the key
// and what was found (never the JSON library's bare type_error); null counts as absent, as in
// Hugging Face's configs.
class HfKeys {
 public:
  HfKeys(const nlohmann::json& j, std::string source, std::string prefix = "")
      : j_(j), source_(std::move(source)), prefix_(std::move(prefix)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  int64_t integer(const char* key) const {
    if (!has(key)) fail(source_, ": missing key '", prefix_, key, "'");
    return integer(key, 0);
  }
  int64_t integer(const char* key, int64_t fallback) const {
    if (!has(key)) return fallback;
    const nlohmann::json& v = j_.at(key);
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX)) {
      wrong(key, "an integer");
    }
    return v.get<int64_t>();
  }
  double number(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    if (!j_.at(key).is_number()) wrong(key, "a number");
    return j_.at(key).get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_.at(key).is_boolean()) wrong(key, "true or false");
    return j_.at(key).get<bool>();
  }
  std::string string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!j_.at(key).is_string()) wrong(key, "a string");
    return j_.at(key).get<std::string>();
  }
  // A nested object, read with the same checks ("rope_scaling.factor" in errors).
  HfKeys object(const char* key) const {
    if (!j_.at(key).is_object()) wrong(key, "an object");
    return HfKeys(j_.at(key), source_, prefix_ + key + ".");
  }

 private:
  [[noreturn]] void wrong(const char* key, const char* expected) const {
    std::string found = j_.at(key).dump();
    if (found.size() > 60) found = found.substr(0, 60) + "...";
    fail(source_, ": key '", prefix_, key, "' must be ", expected, ", found ", found);
  }

  const nlohmann::json& j_;
  std::string source_;
  std::string prefix_;
};

}  // namespace

namespace {

// OPTForCausalLM's config.json (transformers' OPTConfig and its defaults).
ModelConfig opt_config(const nlohmann::json& j, const HfKeys& k, const std::string& source) {
  ModelConfig c;
  const bool before = k.boolean("do_layer_norm_before", true);
  c.arch = opt_arch(k.boolean("enable_bias", true), before);
  if (before && k.boolean("_remove_final_layer_norm", false)) c.arch.final_norm = false;
  const std::string act = k.string("activation_function", "relu");
  EKV_CHECK(act == "relu", source, ": activation_function '", act,
            "' is not built for OPT (expected relu)");
  EKV_CHECK(k.boolean("layer_norm_elementwise_affine", true), source,
            ": layer_norm_elementwise_affine = false is not built");
  c.name = k.string("_name_or_path", "");
  c.n_vocab = k.integer("vocab_size");
  c.d_model = k.integer("hidden_size");
  c.n_layers = k.integer("num_hidden_layers");
  c.n_heads = k.integer("num_attention_heads");
  c.n_kv_heads = c.n_heads;
  c.d_ffn = k.integer("ffn_dim");
  EKV_CHECK(c.n_heads > 0, source, ": num_attention_heads must be positive");
  c.head_dim = c.d_model / c.n_heads;
  EKV_CHECK(c.head_dim * c.n_heads == c.d_model, source, ": hidden_size ", c.d_model,
            " is not a multiple of num_attention_heads ", c.n_heads);
  c.rope_dims = c.head_dim;
  const int64_t proj = k.integer("word_embed_proj_dim", c.d_model);
  EKV_CHECK(proj > 0, source, ": word_embed_proj_dim must be positive, found ", proj);
  if (proj != c.d_model) c.d_embed = proj;
  c.n_ctx_train = k.integer("max_position_embeddings", 2048);
  c.norm_eps = 1e-5;  // torch.nn.LayerNorm's default, which OPT keeps
  c.tied_embeddings = k.boolean("tie_word_embeddings", true);
  c.validate(source);
  return c;
}

// MptForCausalLM's config.json: transformers' MptConfig, and MosaicML's fields it passes through
// (attn_config, ffn_config). Where the two differ, MosaicML's reading is taken (alibi_bias_max,
// expansion_ratio; the loader checks the tensors' shapes against them).
ModelConfig mpt_config(const nlohmann::json& j, const HfKeys& k, const std::string& source) {
  ModelConfig c;
  c.name = k.string("_name_or_path", "");
  c.n_vocab = k.integer("vocab_size");
  c.d_model = k.integer("d_model");
  c.n_layers = k.integer("n_layers");
  c.n_heads = k.integer("n_heads");
  EKV_CHECK(c.n_heads > 0, source, ": n_heads must be positive");
  c.head_dim = c.d_model / c.n_heads;
  EKV_CHECK(c.head_dim * c.n_heads == c.d_model, source, ": d_model ", c.d_model,
            " is not a multiple of n_heads ", c.n_heads);
  c.rope_dims = c.head_dim;
  const double ratio = k.number("expansion_ratio", 4.0);
  EKV_CHECK(ratio > 0 && ratio * c.d_model == std::floor(ratio * c.d_model) &&
                ratio * c.d_model < 1e9,
            source, ": expansion_ratio ", ratio, " does not give a whole feed-forward width");
  c.d_ffn = static_cast<int64_t>(ratio * c.d_model);
  c.n_ctx_train = k.integer("max_seq_len", 2048);
  c.norm_eps = k.number("layer_norm_epsilon", 1e-5);
  c.tied_embeddings = k.boolean("tie_word_embeddings", true);
  const std::string norm = k.string("norm_type", "low_precision_layernorm");
  EKV_CHECK(norm == "low_precision_layernorm" || norm == "layernorm", source, ": norm_type '",
            norm, "' is not built (low_precision_layernorm and layernorm are)");
  EKV_CHECK(!k.has("logit_scale"), source, ": logit_scale = ", j["logit_scale"].dump(),
            " is not built");
  double clip = 0, bias_max = 8;
  bool alibi = false;
  c.n_kv_heads = c.n_heads;
  double softmax_scale = 0;
  if (k.has("attn_config")) {
    const HfKeys at = k.object("attn_config");
    const std::string type = at.string("attn_type", "multihead_attention");
    if (type == "multiquery_attention") {
      c.n_kv_heads = 1;
    } else if (type == "grouped_query_attention") {
      c.n_kv_heads = at.integer("kv_n_heads");
    } else {
      EKV_CHECK(type == "multihead_attention", source, ": attn_config.attn_type '", type,
                "' is not built");
    }
    const std::string impl = at.string("attn_impl", "torch");
    EKV_CHECK(impl == "torch" || impl == "flash" || impl == "triton", source,
              ": attn_config.attn_impl '", impl, "' is not built (torch, flash and triton are)");
    for (const char* key : {"qk_ln", "qk_gn", "prefix_lm", "rope"}) {
      EKV_CHECK(!at.boolean(key, false), source, ": attn_config.", key,
                " = true is not built");
    }
    EKV_CHECK(at.integer("sliding_window_size", -1) == -1, source,
              ": attn_config.sliding_window_size: sliding-window attention is not built");
    clip = at.number("clip_qkv", 0.0);
    EKV_CHECK(clip >= 0 && std::isfinite(clip), source, ": attn_config.clip_qkv ", clip,
              " must be a positive number or null");
    softmax_scale = at.number("softmax_scale", 0.0);
    EKV_CHECK(softmax_scale >= 0 && std::isfinite(softmax_scale), source,
              ": attn_config.softmax_scale ", softmax_scale, " must be a positive number or null");
    alibi = at.boolean("alibi", false);
    bias_max = at.number("alibi_bias_max", 8.0);
    EKV_CHECK(bias_max > 0 && bias_max < 1000, source, ": attn_config.alibi_bias_max ", bias_max,
              " is out of range");
  }
  if (k.has("ffn_config")) {
    const HfKeys ffn = k.object("ffn_config");
    const std::string type = ffn.string("ffn_type", "mptmlp");
    EKV_CHECK(type == "mptmlp", source, ": ffn_config.ffn_type '", type,
              "' is not built (mptmlp is)");
    if (ffn.has("ffn_act_fn")) {
      const HfKeys act = ffn.object("ffn_act_fn");
      const std::string name = act.string("name", "gelu");
      const std::string approx = act.string("approximate", "none");
      EKV_CHECK(name == "gelu" && approx == "none", source, ": ffn_config.ffn_act_fn ",
                j["ffn_config"]["ffn_act_fn"].dump(), " is not built (exact gelu is)");
    }
  }
  c.arch = mpt_arch(k.boolean("no_bias", true), bias_max, clip);
  c.arch.query_scale = softmax_scale;
  // Without ALiBi, MosaicML's model adds a learned position table (transformer.wpe).
  if (!alibi) c.arch.position = PositionKind::kLearned;
  c.validate(source);
  return c;
}

}  // namespace

ModelConfig config_from_hf(const nlohmann::json& j, const std::string& source) {
  EKV_CHECK(j.is_object(), source, ": expected a JSON object");
  ModelConfig c;
  const HfKeys k(j, source);
  const std::string model_type = k.string("model_type", "");
  if (model_type == "opt") return opt_config(j, k, source);
  if (model_type == "mpt") return mpt_config(j, k, source);
  if (model_type == "llama" || model_type == "mistral") {
    c.arch = arch_for_gguf("llama", source);
    // The loader permutes Llama's rotate-half q/k rows into adjacent pairs (GGUF's order).
    if (model_type == "mistral" && k.has("sliding_window")) {
      fail(source, ": sliding-window attention (sliding_window=", j["sliding_window"].dump(),
           ") is not built");
    }
  } else if (model_type == "qwen2") {
    c.arch = arch_for_gguf("qwen2", source);  // q/k rows stay as stored: rotate-half RoPE
    if (k.boolean("use_sliding_window", false)) {
      fail(source, ": use_sliding_window = true: sliding-window attention is not built");
    }
    if (j.contains("layer_types") && j["layer_types"].is_array()) {
      for (const auto& t : j["layer_types"]) {
        if (!t.is_string() || t.get<std::string>() != "full_attention") {
          fail(source, ": layer_types holds ", t.dump(), ": only full_attention layers are built");
        }
      }
    }
  } else {
    fail(source, ": unsupported model_type '", model_type,
         "' (eigenkv runs llama, mistral, qwen2, opt and mpt)");
  }
  c.name = k.string("_name_or_path", "");
  c.n_vocab = k.integer("vocab_size");
  c.d_model = k.integer("hidden_size");
  c.n_layers = k.integer("num_hidden_layers");
  c.n_heads = k.integer("num_attention_heads");
  c.n_kv_heads = k.integer("num_key_value_heads", c.n_heads);
  c.d_ffn = k.integer("intermediate_size");
  EKV_CHECK(c.n_heads > 0, source, ": num_attention_heads must be positive");
  c.head_dim = k.integer("head_dim", c.d_model / c.n_heads);
  c.rope_dims = c.head_dim;
  c.n_ctx_train = k.integer("max_position_embeddings", 2048);
  c.norm_eps = k.number("rms_norm_eps", 1e-6);
  c.rope_theta = k.number("rope_theta", 10000.0);
  c.tied_embeddings = k.boolean("tie_word_embeddings", false);
  const std::string act = k.string("hidden_act", "silu");
  EKV_CHECK(act == "silu", source, ": unsupported hidden_act '", act, "' (expected silu)");
  if (model_type != "qwen2" && k.boolean("attention_bias", false)) {
    fail(source, ": attention_bias = true is not built for model_type ", model_type);
  }
  if (k.boolean("mlp_bias", false)) {
    fail(source, ": mlp_bias = true is not built for model_type ", model_type);
  }
  if (k.has("rope_scaling")) {
    const HfKeys rs = k.object("rope_scaling");
    const std::string type = rs.string("rope_type", rs.string("type", ""));
    if (type == "llama3") {
      c.rope_scaling.kind = RopeScaling::Kind::kLlama3;
      c.rope_scaling.factor = rs.number("factor", 8.0);
      c.rope_scaling.low_freq_factor = rs.number("low_freq_factor", 1.0);
      c.rope_scaling.high_freq_factor = rs.number("high_freq_factor", 4.0);
      c.rope_scaling.original_context = rs.integer("original_max_position_embeddings", 8192);
      EKV_CHECK(c.rope_scaling.low_freq_factor > 0 &&
                    c.rope_scaling.high_freq_factor > c.rope_scaling.low_freq_factor &&
                    c.rope_scaling.original_context > 0,
                source, ": rope_scaling needs 0 < low_freq_factor < high_freq_factor and "
                "original_max_position_embeddings > 0, found ", c.rope_scaling.low_freq_factor,
                ", ", c.rope_scaling.high_freq_factor, ", ", c.rope_scaling.original_context);
    } else if (type == "linear") {
      c.rope_scaling.kind = RopeScaling::Kind::kLinear;
      c.rope_scaling.factor = rs.number("factor", 1.0);
    } else if (!type.empty() && type != "default") {
      fail(source, ": unsupported rope_scaling type '", type, "'");
    }
  }
  c.validate(source);
  return c;
}

std::vector<float> rope_inverse_frequencies(const ModelConfig& c) {
  const int64_t n = c.rope_dims / 2;
  std::vector<float> inv(n);
  const RopeScaling& s = c.rope_scaling;
  for (int64_t i = 0; i < n; ++i) {
    double f = std::pow(c.rope_theta, -2.0 * static_cast<double>(i) / c.rope_dims);
    if (s.kind == RopeScaling::Kind::kLinear) {
      f /= s.factor;
    } else if (s.kind == RopeScaling::Kind::kLlama3) {
      // Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
      const double wavelength = 2.0 * std::numbers::pi / f;
      const double low_wavelength = s.original_context / s.low_freq_factor;
      const double high_wavelength = s.original_context / s.high_freq_factor;
      if (wavelength > low_wavelength) {
        f /= s.factor;
      } else if (wavelength >= high_wavelength) {
        const double smooth = (s.original_context / wavelength - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        f = (1.0 - smooth) * f / s.factor + smooth * f;
      }
    }
    inv[i] = static_cast<float>(f);
  }
  return inv;
}

}  // namespace eigenkv::model
