// A loaded model (any family ArchSpec describes): config, typed weights, tokenizer, and the
// forward pass.
// Thread-compatible: one forward call at a time per KvCache; const calls may share the model.
#pragma once

#include <atomic>
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

// Sees the uncompressed model's intermediate values during forward (calibration uses it).
// Arrays are [n_tokens, ...] rows; positions run from pos0.
class ForwardTap {
 public:
  virtual ~ForwardTap() = default;
  // q: [T, n_heads, d_h], k and v: [T, n_kv_heads, d_h]; before and after RoPE.
  virtual void on_attention(int64_t layer, int64_t n_tokens, int64_t pos0, const float* q_pre,
                            const float* k_pre, const float* q_post, const float* k_post,
                            const float* v) {}
  // The decoder layer's input and output residual streams, [T, d_model] each.
  virtual void on_layer(int64_t layer, int64_t n_tokens, const float* input, const float* output) {}
};

// Only the tokenizer of a model (a .gguf file, including one that embeds a Hugging Face
// tokenizer.json, or a Hugging Face directory), without loading its weights.
std::unique_ptr<tok::Tokenizer> load_tokenizer(const std::string& path);

// One sequence's part of a batched forward step (Model::forward_batch).
struct BatchSequence {
  std::span<const int32_t> tokens;  // >= 1 tokens, at positions cache->size(), ...
  kv::KvCache* cache = nullptr;
  float* logits = nullptr;  // [tokens.size(), n_vocab] if all_logits, else [1, n_vocab]
  bool all_logits = false;
};

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
  // The element types new caches get: float32 unless set, "mixed" for a water-filled model
  // (from construction or set_weights on).
  const kv::CacheTypes& cache_types() const { return cache_types_; }
  // Throws Error when the types do not fit the model (a water-filled model takes only "mixed").
  void set_cache_types(kv::CacheTypes types);
  // True when the file stores a water-filled cache allotment (per-direction bits and scales).
  bool has_cache_allotment() const;
  // A cache for `capacity` positions (the RoPE angles of all of them are made ahead).
  kv::KvCache new_cache(int64_t capacity) const { return new_cache(capacity, cache_types_); }
  // Throws Error, before allocating, when the weights and the cache cannot fit in memory.
  kv::KvCache new_cache(int64_t capacity, kv::CacheTypes types) const;
  // Bytes per token of a cache of the current types.
  int64_t kv_bytes_per_token() const { return kv::cache_bytes_per_token(cache_shape(), cache_types_); }

  // Runs `tokens` at positions cache.size(), cache.size()+1, ... and appends their keys and
  // values to the cache. Writes logits [n, n_vocab] to `logits`, n = tokens.size() when
  // all_logits, else n = 1 (the last token's). Throws when the cache has no room.
  // `tap`, when given, sees every layer's intermediate values (uncompressed layers only).
  void forward(std::span<const int32_t> tokens, kv::KvCache& cache, float* logits, bool all_logits,
               ForwardTap* tap = nullptr) const;

  // forward() for several sequences at once: their rows are stacked so that the embeddings,
  // norms, FFN and output GEMMs run once over all rows; attention runs per sequence against its
  // own cache. Each sequence's logits equal what forward() gives it. Caches must be distinct.
  void forward_batch(std::span<BatchSequence> batch) const;

  // The first layer's input for `tokens` at positions first_position, first_position + 1, ...:
  // x [n, d_model] = their embedding rows (through project_in where the family has one) plus
  // the learned position rows where it has those. Throws Error naming an id outside the
  // vocabulary or a position outside the position table.
  void embed(std::span<const int32_t> tokens, int64_t first_position, float* x) const;

  // Runs one decoder layer with weights `w` (this model's layer `layer` or a candidate
  // replacement for it) on x [n_tokens, d_model] in place, at positions cache.size().. of
  // `cache_layer` in `cache`. Does not advance the cache.
  void layer_forward(int64_t layer, const LayerWeights& w, float* x, int64_t n_tokens,
                     kv::KvCache& cache, int64_t cache_layer, ForwardTap* tap = nullptr) const;

  // Replaces the weights (compression folds new attention weights in) and records how.
  // A water-filled model's caches default to "mixed", any other model's keep their types.
  void set_weights(ModelWeights weights);
  ModelWeights& mutable_weights() { return weights_; }
  const ops::RopeTable& rope() const { return rope_; }

  // The tokenizer.json text of a Hugging Face model (empty for GGUF), kept so that a compressed
  // GGUF written from it carries its tokenizer.
  const std::string& tokenizer_json() const { return tokenizer_json_; }
  const std::string& tokenizer_config_json() const { return tokenizer_config_json_; }
  void set_tokenizer_json(std::string text, std::string config_text) {
    tokenizer_json_ = std::move(text);
    tokenizer_config_json_ = std::move(config_text);
  }
  // The eigenkv.* metadata of a compressed model file (empty object when uncompressed).
  const std::string& compression_json() const { return compression_json_; }
  void set_compression_json(std::string text) { compression_json_ = std::move(text); }
  bool is_compressed() const;

  // Seconds spent in attention proper (key rebuild, scores, softmax, value sum) since the last
  // reset, summed over layers; the bench reports it per token.
  double attention_seconds() const { return attention_ns_.load() * 1e-9; }
  void reset_attention_seconds() const { attention_ns_.store(0); }

 private:
  // Rows [first, first + n) of a stacked batch belong to the sequence whose cache this is.
  struct RowSegment {
    int64_t first = 0;
    int64_t n = 0;
    kv::KvCache* cache = nullptr;
  };
  // forward() and forward_batch(): `tap` needs a batch of one sequence.
  void run_batch(std::span<BatchSequence> batch, ForwardTap* tap) const;
  // The decoder layer of every family (its ArchSpec shapes it) on the stacked rows x in place;
  // attention per segment against cache layer `cl`. Does not advance the caches.
  void decoder_layer(int64_t layer, const LayerWeights& w, float* x,
                     std::span<const RowSegment> segments, int64_t cl, ForwardTap* tap) const;
  // The family's normalization of `rows` rows of width d_model.
  void norm(const float* x, const std::vector<float>& weight, const std::vector<float>& bias,
            int64_t rows, float* out) const;
  // q/k/v projections of n_tokens rows, biases added, clip_qkv's clamp applied (then, in a layer
  // whose bases apply after the clamp, the bases): q [T, n_heads * q_width], k [T, n_kv * k_width],
  // v [T, n_kv * r_V] (widths as LayerWeights::query_width / key_proj_width give them).
  void project_qkv(const LayerWeights& w, const float* x_norm, int64_t n_tokens, float* q, float* k,
                   float* v) const;
  // One sequence's attention from its projections (rotated in place): RoPE, the tap, the cache
  // writes at positions cache.size().., and the attention itself into heads_out [T, n_heads, r_V].
  void attend_sequence(int64_t layer, const LayerWeights& w, float* q, float* k, const float* v,
                       int64_t n_tokens, kv::KvCache& cache, int64_t cl, float* heads_out,
                       ForwardTap* tap) const;
  // Attention of n_tokens queries (`qs`: [T, n_heads, sw]) at positions p0.. against the cached
  // keys and values of cache layer `cl`, written to heads_out [T, n_heads, r_V].
  void attend_cached(const LayerWeights& w, const float* qs, int64_t sw, int64_t n_tokens,
                     int64_t p0, const kv::KvCache& cache, int64_t cl, float* heads_out) const;
  void ffn_block(const LayerWeights& w, const float* x_norm, int64_t n_tokens,
                 float* ffn_out) const;

  ModelConfig config_;
  ModelWeights weights_;
  std::unique_ptr<tok::Tokenizer> tokenizer_;
  std::string path_;
  std::map<std::string, int64_t> stored_types_;
  ops::RopeTable rope_;
  std::vector<float> alibi_slopes_;  // [n_heads] for ALiBi positions, else empty
  std::string tokenizer_json_;
  std::string tokenizer_config_json_;
  std::string compression_json_;
  kv::CacheTypes cache_types_;
  mutable std::atomic<int64_t> attention_ns_{0};
};

}  // namespace eigenkv::model
