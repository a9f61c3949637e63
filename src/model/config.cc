#include "model/config.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <numbers>

#include "io/gguf.h"
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
  EKV_CHECK(n_heads % n_kv_heads == 0, source, ": head count ", n_heads,
            " is not a multiple of the KV head count ", n_kv_heads);
  EKV_CHECK(head_dim % 2 == 0, source, ": head width ", head_dim, " is odd; RoPE needs pairs");
  EKV_CHECK(rope_dims > 0 && rope_dims <= head_dim && rope_dims % 2 == 0, source,
            ": RoPE dimension count ", rope_dims, " does not fit head width ", head_dim);
  EKV_CHECK(norm_eps > 0 && norm_eps < 1, source, ": norm epsilon ", norm_eps, " is out of range");
  EKV_CHECK(rope_theta > 0, source, ": RoPE base ", rope_theta, " must be positive");
  EKV_CHECK(n_vocab < (int64_t{1} << 31) && d_model < (int64_t{1} << 20) && n_layers < 100000,
            source, ": implausible model shape");
}

ModelConfig config_from_gguf(const io::GgufFile& gguf) {
  ModelConfig c;
  c.architecture = gguf.get_string("general.architecture");
  if (c.architecture != "llama") {
    fail(gguf.path(), ": unsupported architecture '", c.architecture,
         "' (eigenkv runs 'llama'-family models: Llama 1/2/3, TinyLlama, SmolLM, Mistral)");
  }
  const std::string a = c.architecture + ".";
  c.name = gguf.find_string("general.name").value_or("");
  c.d_model = gguf.get_int(a + "embedding_length");
  c.n_layers = gguf.get_int(a + "block_count");
  c.n_heads = gguf.get_int(a + "attention.head_count");
  c.n_kv_heads = gguf.find_int(a + "attention.head_count_kv").value_or(c.n_heads);
  c.d_ffn = gguf.get_int(a + "feed_forward_length");
  c.n_ctx_train = gguf.find_int(a + "context_length").value_or(2048);
  c.norm_eps = gguf.get_float(a + "attention.layer_norm_rms_epsilon");
  c.rope_theta = gguf.find_float(a + "rope.freq_base").value_or(10000.0);
  EKV_CHECK(c.n_heads > 0, gguf.path(), ": ", a, "attention.head_count must be positive");
  c.head_dim = gguf.find_int(a + "attention.key_length").value_or(c.d_model / c.n_heads);
  c.rope_dims = gguf.find_int(a + "rope.dimension_count").value_or(c.head_dim);
  if (auto n = gguf.find_int(a + "vocab_size")) {
    c.n_vocab = *n;
  } else if (const auto* t = gguf.find_tensor("token_embd.weight")) {
    c.n_vocab = t->shape[0];
  }
  c.tied_embeddings = gguf.find_tensor("output.weight") == nullptr;
  if (auto type = gguf.find_string(a + "rope.scaling.type"); type && *type == "linear") {
    c.rope_scaling.kind = RopeScaling::Kind::kLinear;
    c.rope_scaling.factor = gguf.get_float(a + "rope.scaling.factor");
  }
  c.validate(gguf.path());
  return c;
}

ModelConfig config_from_hf(const nlohmann::json& j, const std::string& source) {
  ModelConfig c;
  auto need = [&](const char* key) -> const nlohmann::json& {
    if (!j.contains(key)) fail(source, ": missing key '", key, "'");
    return j.at(key);
  };
  auto get_int = [&](const char* key) -> int64_t {
    const auto& v = need(key);
    if (!v.is_number_integer()) fail(source, ": key '", key, "' is not an integer");
    return v.get<int64_t>();
  };
  std::string model_type = j.value("model_type", "");
  if (model_type != "llama" && model_type != "mistral") {
    fail(source, ": unsupported model_type '", model_type,
         "' (eigenkv runs Llama-family models: llama, mistral)");
  }
  if (model_type == "mistral" && j.contains("sliding_window") && !j["sliding_window"].is_null()) {
    fail(source, ": sliding-window attention (sliding_window=", j["sliding_window"].dump(),
         ") is not supported");
  }
  c.architecture = "llama";
  c.name = j.value("_name_or_path", "");
  c.n_vocab = get_int("vocab_size");
  c.d_model = get_int("hidden_size");
  c.n_layers = get_int("num_hidden_layers");
  c.n_heads = get_int("num_attention_heads");
  c.n_kv_heads = j.contains("num_key_value_heads") ? get_int("num_key_value_heads") : c.n_heads;
  c.d_ffn = get_int("intermediate_size");
  EKV_CHECK(c.n_heads > 0, source, ": num_attention_heads must be positive");
  c.head_dim = j.contains("head_dim") && j["head_dim"].is_number_integer()
                   ? j["head_dim"].get<int64_t>()
                   : c.d_model / c.n_heads;
  c.rope_dims = c.head_dim;
  c.n_ctx_train = j.value("max_position_embeddings", int64_t{2048});
  c.norm_eps = j.value("rms_norm_eps", 1e-6);
  c.rope_theta = j.value("rope_theta", 10000.0);
  c.tied_embeddings = j.value("tie_word_embeddings", false);
  std::string act = j.value("hidden_act", "silu");
  EKV_CHECK(act == "silu", source, ": unsupported hidden_act '", act, "' (expected silu)");
  if (j.value("attention_bias", false) || j.value("mlp_bias", false)) {
    fail(source, ": attention or MLP biases are not supported for model_type ", model_type);
  }
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const auto& rs = j["rope_scaling"];
    std::string type = rs.value("rope_type", rs.value("type", ""));
    if (type == "llama3") {
      c.rope_scaling.kind = RopeScaling::Kind::kLlama3;
      c.rope_scaling.factor = rs.value("factor", 8.0);
      c.rope_scaling.low_freq_factor = rs.value("low_freq_factor", 1.0);
      c.rope_scaling.high_freq_factor = rs.value("high_freq_factor", 4.0);
      c.rope_scaling.original_context = rs.value("original_max_position_embeddings", int64_t{8192});
    } else if (type == "linear") {
      c.rope_scaling.kind = RopeScaling::Kind::kLinear;
      c.rope_scaling.factor = rs.value("factor", 1.0);
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
