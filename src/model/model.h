// A loaded Llama-family model: config, float32 weights, tokenizer, and the forward pass.
// Thread-compatible: one forward call at a time per KvCache; const calls may share the model.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "model/config.h"
#include "model/weights.h"
#include "ops/rope.h"

namespace eigenkv::tok {
class Tokenizer;
}

namespace eigenkv::model {

class Model {
 public:
  // Loads a .gguf file, or a Hugging Face directory (config.json, model.safetensors or sharded
  // model-*.safetensors, tokenizer.json). Throws Error naming the file and the problem.
  static std::unique_ptr<Model> load(const std::string& path);
  Model(ModelConfig config, ModelWeights weights, std::unique_ptr<tok::Tokenizer> tokenizer,
        std::string path);
  ~Model();

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const tok::Tokenizer& tokenizer() const { return *tokenizer_; }
  const std::string& path() const { return path_; }
  // Stored tensor types and how many tensors of each, e.g. {"f32": 21, "q4_K": 28}.
  const std::map<std::string, int64_t>& stored_types() const { return stored_types_; }
  void set_stored_types(std::map<std::string, int64_t> types) { stored_types_ = std::move(types); }

  std::vector<kv::LayerShape> cache_shape() const;
  kv::KvCache new_cache(int64_t capacity) const { return kv::KvCache(cache_shape(), capacity); }
  int64_t kv_bytes_per_token() const;  // float32 cache

  // Runs `tokens` at positions cache.size(), cache.size()+1, ... and appends their keys and
  // values to the cache. Writes logits [n, n_vocab] to `logits`, n = tokens.size() when
  // all_logits, else n = 1 (the last token's). Throws when the cache has no room.
  void forward(std::span<const int32_t> tokens, kv::KvCache& cache, float* logits,
               bool all_logits) const;

 private:
  void attention_block(int64_t layer, const float* x_norm, int64_t n_tokens, kv::KvCache& cache,
                       float* attn_out) const;
  void ffn_block(int64_t layer, const float* x_norm, int64_t n_tokens, float* ffn_out) const;

  ModelConfig config_;
  ModelWeights weights_;
  std::unique_ptr<tok::Tokenizer> tokenizer_;
  std::string path_;
  std::map<std::string, int64_t> stored_types_;
  ops::RopeTable rope_;
};

}  // namespace eigenkv::model
