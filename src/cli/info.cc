// eigenkv info: a model's shapes, stored tensor types and KV cache size.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "tokenizer/tokenizer.h"

namespace eigenkv::cli {
namespace {

struct InfoFlags {
  ModelFlags model;
  bool json = false;
};

void run(const InfoFlags& f) {
  auto model = load_model(f.model);
  const model::ModelConfig& c = model->config();
  const int64_t kv = model->kv_bytes_per_token();
  const int64_t kv_full = c.full_kv_bytes_per_token(sizeof(float));
  nlohmann::json j = {{"path", model->path()},
                      {"architecture", c.arch.name},
                      {"name", c.name},
                      {"n_vocab", c.n_vocab},
                      {"d_model", c.d_model},
                      {"n_layers", c.n_layers},
                      {"n_heads", c.n_heads},
                      {"n_kv_heads", c.n_kv_heads},
                      {"head_dim", c.head_dim},
                      {"d_ffn", c.d_ffn},
                      {"n_ctx_train", c.n_ctx_train},
                      {"rope_theta", c.rope_theta},
                      {"norm_eps", c.norm_eps},
                      {"tied_embeddings", c.tied_embeddings},
                      {"tensor_types", model->stored_types()},
                      {"bos_id", model->tokenizer().bos_id()},
                      {"eos_id", model->tokenizer().eos_id()},
                      {"weight_bytes", model->weights().stored_bytes()},
                      {"weight_bytes_per_token", model->weights().decode_bytes_read()},
                      {"kv_bytes_per_token", kv},
                      {"kv_bytes_per_token_full", kv_full},
                      {"kv_ratio", static_cast<double>(kv) / kv_full},
                      {"cache_types", model->cache_types().describe()}};
  nlohmann::json layers = nlohmann::json::array();
  for (const model::LayerWeights& L : model->weights().layers) {
    nlohmann::json layer = {{"key_mode", model::key_mode_name(L.key_mode)},
                            {"key_rank", L.key_rank},
                            {"value_rank", L.value_rank}};
    if (L.key_mode != model::KeyMode::kFull) {
      // "folded": the bases are in W_q/W_k/W_v; "after_clamp": clip_qkv keeps them apart.
      layer["bases"] = L.bases_after_clamp ? "after_clamp" : "folded";
    }
    if (model->has_cache_allotment()) {
      layer["key_bits8"] = L.key_n8;
      layer["value_bits8"] = L.value_n8;
    }
    layers.push_back(layer);
  }
  j["layers"] = layers;
  j["compressed"] = model->is_compressed();
  if (model->is_compressed()) j["compression"] = nlohmann::json::parse(model->compression_json());
  if (f.json) {
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("model:          %s\n", model->path().c_str());
  std::printf("architecture:   %s (%s)\n", c.arch.name.c_str(), c.name.c_str());
  std::printf(
      "shape:          %lld layers, d_model %lld, %lld heads / %lld KV heads of %lld, "
      "FFN %lld, vocab %lld\n",
      static_cast<long long>(c.n_layers), static_cast<long long>(c.d_model),
      static_cast<long long>(c.n_heads), static_cast<long long>(c.n_kv_heads),
      static_cast<long long>(c.head_dim), static_cast<long long>(c.d_ffn),
      static_cast<long long>(c.n_vocab));
  std::printf("context:        %lld (RoPE theta %g)\n", static_cast<long long>(c.n_ctx_train),
              c.rope_theta);
  std::string types;
  for (const auto& [name, count] : model->stored_types()) {
    types += (types.empty() ? "" : ", ") + name + " x" + std::to_string(count);
  }
  std::printf("tensor types:   %s\n", types.c_str());
  std::printf("weights:        %.1f MiB held as stored, %.1f MiB read per decoded token\n",
              model->weights().stored_bytes() / 1048576.0,
              model->weights().decode_bytes_read() / 1048576.0);
  if (model->is_compressed()) {
    const auto meta = nlohmann::json::parse(model->compression_json());
    std::printf(
        "compression:    %s, key mode %s, calibrated on %s tokens of %s\n",
        meta.value("method", "?").c_str(),
        model::key_mode_name(model->weights().layers[0].key_mode),
        meta.contains("calibration_tokens") ? meta["calibration_tokens"].dump().c_str() : "?",
        meta.value("calibration_source", "?").c_str());
    std::string ranks;
    for (size_t l = 0; l < model->weights().layers.size(); ++l) {
      const model::LayerWeights& L = model->weights().layers[l];
      ranks += (l ? ", " : "") + std::to_string(L.key_rank) + "/" + std::to_string(L.value_rank);
    }
    std::printf("ranks r_K/r_V:  %s (of %lld)\n", ranks.c_str(),
                static_cast<long long>(c.head_dim));
    if (model->weights().layers[0].bases_after_clamp) {
      std::printf("bases:          applied after clip_qkv's clamp (W_q, W_k, W_v kept full: two "
                  "products each)\n");
    } else {
      std::printf("bases:          folded into the attention weights\n");
    }
  }
  if (model->has_cache_allotment()) {
    std::string bits;
    for (size_t l = 0; l < model->weights().layers.size(); ++l) {
      const model::LayerWeights& L = model->weights().layers[l];
      bits += (l ? ", " : "") + std::to_string(L.key_n8) + "/" + std::to_string(L.value_n8);
    }
    std::printf("8-bit K/V dirs: %s (the rest of each rank at 4 bits, water-filled)\n",
                bits.c_str());
  }
  std::printf("KV bytes/token: %lld (%s cache; uncompressed f32 %lld, ratio %.3f)\n",
              static_cast<long long>(kv), model->cache_types().describe().c_str(),
              static_cast<long long>(kv_full), static_cast<double>(kv) / kv_full);
}

}  // namespace

void register_info(CLI::App& app) {
  auto flags = std::make_shared<InfoFlags>();
  CLI::App* cmd = app.add_subcommand("info", "model shapes, tensor types and KV bytes per token");
  add_model_flags(cmd, flags->model);
  cmd->add_flag("--json", flags->json, "print one JSON object (includes kv_bytes_per_token)");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
