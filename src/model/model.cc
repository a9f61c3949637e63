#include "model/model.h"

#include <cmath>
#include <cstring>

#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace eigenkv::model {

Model::Model(ModelConfig config, ModelWeights weights, std::unique_ptr<tok::Tokenizer> tokenizer,
             std::string path)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      tokenizer_(std::move(tokenizer)),
      path_(std::move(path)) {
  std::vector<float> inv_freq = rope_inverse_frequencies(config_);
  if (!weights_.rope_freq_factors.empty()) {
    for (size_t i = 0; i < inv_freq.size(); ++i) inv_freq[i] /= weights_.rope_freq_factors[i];
  }
  rope_ = ops::RopeTable(std::move(inv_freq), std::max<int64_t>(config_.n_ctx_train, 4096));
}

Model::~Model() = default;

std::vector<kv::LayerShape> Model::cache_shape() const {
  return std::vector<kv::LayerShape>(
      static_cast<size_t>(config_.n_layers),
      kv::LayerShape{config_.n_kv_heads, config_.head_dim, config_.head_dim});
}

int64_t Model::kv_bytes_per_token() const {
  int64_t numbers = 0;
  for (const kv::LayerShape& s : cache_shape()) numbers += s.n_kv_heads * (s.key_width + s.value_width);
  return numbers * static_cast<int64_t>(sizeof(float));
}

void Model::attention_block(int64_t layer, const float* x_norm, int64_t n_tokens,
                            kv::KvCache& cache, float* attn_out) const {
  const LayerWeights& L = weights_.layers[layer];
  const int64_t d = config_.d_model, dh = config_.head_dim;
  const int64_t nh = config_.n_heads, nkv = config_.n_kv_heads, g = config_.group_size();
  const int64_t p0 = cache.size();
  std::vector<float> q(static_cast<size_t>(n_tokens * nh * dh));    // [T, n_heads, d_h]
  std::vector<float> k(static_cast<size_t>(n_tokens * nkv * dh));   // [T, n_kv, d_h]
  std::vector<float> v(static_cast<size_t>(n_tokens * nkv * dh));   // [T, n_kv, d_h]
  ops::matmul_transposed(x_norm, n_tokens, d, L.wq.data.data(), nh * dh, q.data());
  ops::matmul_transposed(x_norm, n_tokens, d, L.wk.data.data(), nkv * dh, k.data());
  ops::matmul_transposed(x_norm, n_tokens, d, L.wv.data.data(), nkv * dh, v.data());
  for (int64_t t = 0; t < n_tokens; ++t) {
    rope_.rotate(q.data() + t * nh * dh, nh, dh, p0 + t);
    rope_.rotate(k.data() + t * nkv * dh, nkv, dh, p0 + t);
    for (int64_t j = 0; j < nkv; ++j) {
      std::memcpy(cache.keys(layer, j) + (p0 + t) * dh, k.data() + (t * nkv + j) * dh,
                  sizeof(float) * dh);
      std::memcpy(cache.values(layer, j) + (p0 + t) * dh, v.data() + (t * nkv + j) * dh,
                  sizeof(float) * dh);
    }
  }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dh)));
  std::vector<float> heads_out(static_cast<size_t>(n_tokens * nh * dh));  // [T, n_heads, d_h]
#pragma omp parallel
  {
    std::vector<float> scores(static_cast<size_t>(p0 + n_tokens));
#pragma omp for collapse(2) schedule(dynamic, 4)
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t j = h / g;
        ops::attend_one(q.data() + (t * nh + h) * dh, cache.keys(layer, j), dh,
                        cache.values(layer, j), dh, p0 + t + 1, scale, scores.data(),
                        heads_out.data() + (t * nh + h) * dh);
      }
    }
  }
  ops::matmul_transposed(heads_out.data(), n_tokens, nh * dh, L.wo.data.data(), d, attn_out);
}

void Model::ffn_block(int64_t layer, const float* x_norm, int64_t n_tokens, float* ffn_out) const {
  const LayerWeights& L = weights_.layers[layer];
  const int64_t d = config_.d_model, f = config_.d_ffn;
  std::vector<float> gate(static_cast<size_t>(n_tokens * f));  // [T, d_ffn]
  std::vector<float> up(static_cast<size_t>(n_tokens * f));    // [T, d_ffn]
  ops::matmul_transposed(x_norm, n_tokens, d, L.w_gate.data.data(), f, gate.data());
  ops::matmul_transposed(x_norm, n_tokens, d, L.w_up.data.data(), f, up.data());
  ops::swiglu(gate.data(), up.data(), n_tokens * f);
  ops::matmul_transposed(gate.data(), n_tokens, f, L.w_down.data.data(), d, ffn_out);
}

void Model::forward(std::span<const int32_t> tokens, kv::KvCache& cache, float* logits,
                    bool all_logits) const {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t d = config_.d_model;
  EKV_CHECK(n > 0, "forward called with no tokens");
  EKV_CHECK(cache.size() + n <= cache.capacity(), "context is full: ", cache.size(), " + ", n,
            " tokens exceed the context of ", cache.capacity());
  std::vector<float> x(static_cast<size_t>(n * d));       // [T, d_model] residual stream
  std::vector<float> x_norm(static_cast<size_t>(n * d));  // [T, d_model]
  std::vector<float> delta(static_cast<size_t>(n * d));   // [T, d_model]
  for (int64_t t = 0; t < n; ++t) {
    const int32_t id = tokens[t];
    EKV_CHECK(id >= 0 && id < config_.n_vocab, "token id ", id, " is outside the vocabulary of ",
              config_.n_vocab);
    std::memcpy(x.data() + t * d, weights_.token_embedding.row(id), sizeof(float) * d);
  }
  for (int64_t l = 0; l < config_.n_layers; ++l) {
    const LayerWeights& L = weights_.layers[l];
    ops::rms_norm(x.data(), L.attn_norm.data(), n, d, config_.norm_eps, x_norm.data());
    attention_block(l, x_norm.data(), n, cache, delta.data());
    for (int64_t i = 0; i < n * d; ++i) x[i] += delta[i];
    ops::rms_norm(x.data(), L.ffn_norm.data(), n, d, config_.norm_eps, x_norm.data());
    ffn_block(l, x_norm.data(), n, delta.data());
    for (int64_t i = 0; i < n * d; ++i) x[i] += delta[i];
  }
  cache.advance(n);
  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t rows = n - first;
  ops::rms_norm(x.data() + first * d, weights_.output_norm.data(), rows, d, config_.norm_eps,
                x_norm.data());
  ops::matmul_transposed(x_norm.data(), rows, d, weights_.output.data.data(), config_.n_vocab,
                         logits);
}

}  // namespace eigenkv::model
