#include "model/model.h"

#include <algorithm>
#include <chrono>
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
  std::vector<kv::LayerShape> shape;
  for (const LayerWeights& L : weights_.layers) {
    shape.push_back(kv::LayerShape{config_.n_kv_heads, L.key_rank, L.value_rank});
  }
  return shape;
}

int64_t Model::kv_bytes_per_token() const {
  int64_t numbers = 0;
  for (const kv::LayerShape& s : cache_shape())
    numbers += s.n_kv_heads * (s.key_width + s.value_width);
  return numbers * static_cast<int64_t>(sizeof(float));
}

bool Model::is_compressed() const {
  for (const LayerWeights& L : weights_.layers) {
    if (L.key_mode != KeyMode::kFull) return true;
  }
  return false;
}

namespace {

// Multiply-adds below which a loop is not worth splitting across threads.
constexpr int64_t kParallelWork = int64_t{1} << 16;

// out[r] = U^T x for each of n rows x of width u.rows: [n, u.cols].
void project_rows(const float* x, int64_t n, const Matrix& u, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * u.rows;
    float* ot = out + t * u.cols;
    std::fill(ot, ot + u.cols, 0.0f);
    for (int64_t i = 0; i < u.rows; ++i) {
      const float xi = xt[i];
      const float* ui = u.row(i);
      for (int64_t c = 0; c < u.cols; ++c) ot[c] += xi * ui[c];
    }
  }
}

}  // namespace

void Model::attention_block(int64_t layer, const LayerWeights& L, const float* x_norm,
                            int64_t n_tokens, kv::KvCache& cache, int64_t cl, float* attn_out,
                            ForwardTap* tap) const {
  const int64_t d = config_.d_model, dh = config_.head_dim;
  const int64_t nh = config_.n_heads, nkv = config_.n_kv_heads, g = config_.group_size();
  const int64_t p0 = cache.size();
  const int64_t qw = L.query_width(dh);     // query width per head from W_q
  const int64_t kw = L.key_proj_width(dh);  // key width per KV head from W_k
  const int64_t rk = L.key_rank, rv = L.value_rank;
  const bool rope = config_.position == PositionKind::kRope;
  EKV_CHECK(cache.layer(cl).key_width == rk && cache.layer(cl).value_width == rv, "KV cache layer ",
            cl, " has widths ", cache.layer(cl).key_width, "/", cache.layer(cl).value_width,
            ", the model's layer ", layer, " needs ", rk, "/", rv);
  std::vector<float> q(static_cast<size_t>(n_tokens * nh * qw));   // [T, n_heads, q_width]
  std::vector<float> k(static_cast<size_t>(n_tokens * nkv * kw));  // [T, n_kv, k_width]
  std::vector<float> v(static_cast<size_t>(n_tokens * nkv * rv));  // [T, n_kv, r_V]
  ops::matmul_transposed(x_norm, n_tokens, d, L.wq.data.data(), nh * qw, q.data());
  ops::matmul_transposed(x_norm, n_tokens, d, L.wk.data.data(), nkv * kw, k.data());
  ops::matmul_transposed(x_norm, n_tokens, d, L.wv.data.data(), nkv * rv, v.data());
  std::vector<float> q_pre, k_pre;
  if (tap) {
    EKV_CHECK(L.key_mode == KeyMode::kFull, "a forward tap needs an uncompressed layer");
    q_pre = q;
    k_pre = k;
  }
  const bool rotate_queries = rope && L.key_mode != KeyMode::kNoRope;
  const bool rotate_keys = rope && (L.key_mode == KeyMode::kFull || L.key_mode == KeyMode::kPost);
  for (int64_t t = 0; t < n_tokens; ++t) {
    if (rotate_queries) rope_.rotate(q.data() + t * nh * qw, nh, dh, p0 + t);
    if (rotate_keys) rope_.rotate(k.data() + t * nkv * kw, nkv, dh, p0 + t);
  }
  if (tap)
    tap->on_attention(layer, n_tokens, p0, q_pre.data(), k_pre.data(), q.data(), k.data(),
                      v.data());

  // Scores use `sw` numbers per query: r_K in kPost/kNoRope (queries projected), else d_h.
  const int64_t sw = L.key_mode == KeyMode::kPost || L.key_mode == KeyMode::kNoRope ? rk : dh;
  std::vector<float> q_scored;  // [T, n_heads, sw]
  if (L.key_mode == KeyMode::kPost) {
    q_scored.resize(static_cast<size_t>(n_tokens * nh * rk));
    std::vector<float> kp(static_cast<size_t>(n_tokens * nkv * rk));
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t h = 0; h < nh; ++h) {
        project_rows(q.data() + (t * nh + h) * dh, 1, L.key_basis[h / g],
                     q_scored.data() + (t * nh + h) * rk);
      }
      for (int64_t j = 0; j < nkv; ++j) {
        project_rows(k.data() + (t * nkv + j) * dh, 1, L.key_basis[j],
                     kp.data() + (t * nkv + j) * rk);
      }
    }
    k.swap(kp);
  }
  const float* qs = L.key_mode == KeyMode::kPost ? q_scored.data() : q.data();
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t j = 0; j < nkv; ++j) {
      std::memcpy(cache.keys(cl, j) + (p0 + t) * rk, k.data() + (t * nkv + j) * rk,
                  sizeof(float) * rk);
      std::memcpy(cache.values(cl, j) + (p0 + t) * rv, v.data() + (t * nkv + j) * rv,
                  sizeof(float) * rv);
    }
  }
  const int64_t n_keys = p0 + n_tokens;
  const auto attention_start = std::chrono::steady_clock::now();
  // kPre: rebuild every cached key to d_h numbers (U_K k') and rotate it with its own position.
  std::vector<float> rebuilt;  // [n_kv, n_keys, d_h]
  if (L.key_mode == KeyMode::kPre) {
    rebuilt.resize(static_cast<size_t>(nkv * n_keys * dh));
#pragma omp parallel for collapse(2) schedule(static) if (nkv * n_keys * dh * rk > kParallelWork)
    for (int64_t j = 0; j < nkv; ++j) {
      for (int64_t s = 0; s < n_keys; ++s) {
        const float* kc = cache.keys(cl, j) + s * rk;
        float* out = rebuilt.data() + (j * n_keys + s) * dh;
        const Matrix& u = L.key_basis[j];
        for (int64_t i = 0; i < dh; ++i) out[i] = ops::dot(u.row(i), kc, rk);
        if (rope) rope_.rotate(out, 1, dh, s);
      }
    }
  }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dh)));
  std::vector<float> heads_out(static_cast<size_t>(n_tokens * nh * rv));  // [T, n_heads, r_V]
  // Small problems (one token against a short context) run on the calling thread: waking the pool
  // costs more than the work.
  const int64_t attention_work = n_tokens * nh * n_keys * (sw + rv);
#pragma omp parallel if (attention_work > kParallelWork)
  {
    std::vector<float> scores(static_cast<size_t>(n_keys));
#pragma omp for collapse(2) schedule(dynamic, 4)
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t j = h / g;
        const float* keys =
            L.key_mode == KeyMode::kPre ? rebuilt.data() + j * n_keys * dh : cache.keys(cl, j);
        ops::attend_one(qs + (t * nh + h) * sw, keys, sw, cache.values(cl, j), rv, p0 + t + 1,
                        scale, scores.data(), heads_out.data() + (t * nh + h) * rv);
      }
    }
  }
  attention_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::steady_clock::now() - attention_start)
                       .count();
  ops::matmul_transposed(heads_out.data(), n_tokens, nh * rv, L.wo.data.data(), d, attn_out);
}

void Model::ffn_block(const LayerWeights& L, const float* x_norm, int64_t n_tokens,
                      float* ffn_out) const {
  const int64_t d = config_.d_model, f = config_.d_ffn;
  std::vector<float> gate(static_cast<size_t>(n_tokens * f));  // [T, d_ffn]
  std::vector<float> up(static_cast<size_t>(n_tokens * f));    // [T, d_ffn]
  ops::matmul_transposed(x_norm, n_tokens, d, L.w_gate.data.data(), f, gate.data());
  ops::matmul_transposed(x_norm, n_tokens, d, L.w_up.data.data(), f, up.data());
  ops::swiglu(gate.data(), up.data(), n_tokens * f);
  ops::matmul_transposed(gate.data(), n_tokens, f, L.w_down.data.data(), d, ffn_out);
}

void Model::layer_forward(int64_t layer, const LayerWeights& L, float* x, int64_t n,
                          kv::KvCache& cache, int64_t cache_layer, ForwardTap* tap) const {
  const int64_t d = config_.d_model;
  std::vector<float> input(tap ? static_cast<size_t>(n * d) : 0);
  if (tap) std::copy(x, x + n * d, input.begin());
  std::vector<float> x_norm(static_cast<size_t>(n * d));  // [T, d_model]
  std::vector<float> delta(static_cast<size_t>(n * d));   // [T, d_model]
  ops::rms_norm(x, L.attn_norm.data(), n, d, config_.norm_eps, x_norm.data());
  attention_block(layer, L, x_norm.data(), n, cache, cache_layer, delta.data(), tap);
  for (int64_t i = 0; i < n * d; ++i) x[i] += delta[i];
  ops::rms_norm(x, L.ffn_norm.data(), n, d, config_.norm_eps, x_norm.data());
  ffn_block(L, x_norm.data(), n, delta.data());
  for (int64_t i = 0; i < n * d; ++i) x[i] += delta[i];
  if (tap) tap->on_layer(layer, n, input.data(), x);
}

void Model::forward(std::span<const int32_t> tokens, kv::KvCache& cache, float* logits,
                    bool all_logits, ForwardTap* tap) const {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t d = config_.d_model;
  EKV_CHECK(n > 0, "forward called with no tokens");
  EKV_CHECK(cache.size() + n <= cache.capacity(), "context is full: ", cache.size(), " + ", n,
            " tokens exceed the context of ", cache.capacity());
  EKV_CHECK(cache.n_layers() == config_.n_layers, "the KV cache has ", cache.n_layers(),
            " layers, the model ", config_.n_layers);
  std::vector<float> x(static_cast<size_t>(n * d));  // [T, d_model] residual stream
  for (int64_t t = 0; t < n; ++t) {
    const int32_t id = tokens[t];
    EKV_CHECK(id >= 0 && id < config_.n_vocab, "token id ", id, " is outside the vocabulary of ",
              config_.n_vocab);
    std::memcpy(x.data() + t * d, weights_.token_embedding.row(id), sizeof(float) * d);
  }
  for (int64_t l = 0; l < config_.n_layers; ++l) {
    layer_forward(l, weights_.layers[l], x.data(), n, cache, l, tap);
  }
  cache.advance(n);
  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t rows = n - first;
  std::vector<float> x_norm(static_cast<size_t>(rows * d));
  ops::rms_norm(x.data() + first * d, weights_.output_norm.data(), rows, d, config_.norm_eps,
                x_norm.data());
  ops::matmul_transposed(x_norm.data(), rows, d, weights_.output.data.data(), config_.n_vocab,
                         logits);
}

}  // namespace eigenkv::model
