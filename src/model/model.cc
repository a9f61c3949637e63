#include "model/model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "ops/attention_kernel.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/memory.h"
#include "util/threads.h"

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
  // The angles of the first 4096 positions; a cache reserves more when it is made (new_cache), so
  // a file claiming a 1M context costs nothing until a run uses it.
  rope_ = ops::RopeTable(std::move(inv_freq), 4096, config_.arch.rope_layout);
  if (config_.arch.position == PositionKind::kAlibi)
    alibi_slopes_ = alibi_slopes(config_.n_heads, config_.arch.alibi_bias_max);
  if (has_cache_allotment()) cache_types_ = {ops::KvType::kMixed, ops::KvType::kMixed};
}

Model::~Model() = default;

std::vector<kv::LayerShape> Model::cache_shape() const {
  std::vector<kv::LayerShape> shape;
  for (const LayerWeights& L : weights_.layers) {
    kv::LayerShape s;
    s.n_kv_heads = config_.n_kv_heads;
    s.key_width = L.key_rank;
    s.value_width = L.value_rank;
    s.key_n8 = L.key_n8;
    s.value_n8 = L.value_n8;
    s.key_sigma = L.key_sigma;
    s.value_sigma = L.value_sigma;
    shape.push_back(std::move(s));
  }
  return shape;
}

kv::KvCache Model::new_cache(int64_t capacity, kv::CacheTypes types) const {
  const int64_t cache_bytes = kv::cache_bytes_per_token(cache_shape(), types) * capacity;
  check_fits_in_memory(weights_.stored_bytes() + cache_bytes,
                       cat("the weights (", format_bytes(weights_.stored_bytes()), ") and a ",
                           capacity, "-token KV cache (", format_bytes(cache_bytes), ")"));
  rope_.reserve(capacity);
  return kv::KvCache(cache_shape(), capacity, types);
}

bool Model::has_cache_allotment() const {
  for (const LayerWeights& L : weights_.layers) {
    if (!L.key_sigma.empty() || !L.value_sigma.empty()) return true;
  }
  return false;
}

void Model::set_cache_types(kv::CacheTypes types) {
  const bool mixed = types.key == ops::KvType::kMixed || types.value == ops::KvType::kMixed;
  if (has_cache_allotment()) {
    EKV_CHECK(types.key == ops::KvType::kMixed && types.value == ops::KvType::kMixed,
              "cache type ", types.describe(), " does not match this model: it stores a "
              "water-filled cache allotment (per-direction 8/4 bits), which only the 'mixed' "
              "cache reads");
  } else {
    EKV_CHECK(!mixed, "the 'mixed' cache type needs a water-filled model (eigenkv quantize-cache)");
  }
  cache_types_ = types;
}

void Model::set_weights(ModelWeights weights) {
  weights_ = std::move(weights);
  if (has_cache_allotment()) cache_types_ = {ops::KvType::kMixed, ops::KvType::kMixed};
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

}  // namespace

void Model::attend_cached(const LayerWeights& L, const float* qs, int64_t sw, int64_t n_tokens,
                          int64_t p0, const kv::KvCache& cache, int64_t cl,
                          float* heads_out) const {
  const int64_t dh = config_.head_dim, nh = config_.n_heads, nkv = config_.n_kv_heads;
  const int64_t g = config_.group_size(), rk = L.key_rank, rv = L.value_rank;
  const int64_t n_keys = p0 + n_tokens;
  const bool rope = config_.rope();
  // kPre: U_K^T per KV head, [r_K, d_h], to rebuild cached keys inside the kernel.
  std::vector<std::vector<float>> basis_t;
  std::vector<ops::KeyRebuild> rebuild;
  if (L.key_mode == KeyMode::kPre) {
    for (int64_t j = 0; j < nkv; ++j) {
      const Matrix& u = L.key_basis[j];  // [d_h, r_K]
      std::vector<float> ut(static_cast<size_t>(rk * dh));
      for (int64_t i = 0; i < dh; ++i)
        for (int64_t c = 0; c < rk; ++c) ut[c * dh + i] = u.row(i)[c];
      basis_t.push_back(std::move(ut));
      rebuild.push_back(ops::KeyRebuild{basis_t.back().data(), dh, rope ? &rope_ : nullptr});
    }
  }
  // Work items: (KV head, block of query positions, range of keys). Prefill blocks positions so a
  // decoded key tile serves kQueryBlock positions x g heads; decode splits the keys instead, so
  // that a long context keeps every thread busy (flash-decoding).
  constexpr int64_t kQueryBlock = 16;
  constexpr int64_t kMinKeysPerChunk = 256;
  const int64_t n_blocks = (n_tokens + kQueryBlock - 1) / kQueryBlock;
  const int64_t threads = thread_count();
  int64_t n_chunks = 1;
  if (nkv * n_blocks < 2 * threads) {
    n_chunks = std::clamp<int64_t>(2 * threads / (nkv * n_blocks), 1,
                                   std::max<int64_t>(1, n_keys / kMinKeysPerChunk));
  }
  const int64_t n_items = nkv * n_blocks * n_chunks;
  std::vector<ops::AttentionPartial> partials(static_cast<size_t>(n_items));
  const float scale = static_cast<float>(config_.arch.query_scale > 0
                                             ? config_.arch.query_scale
                                             : 1.0 / std::sqrt(static_cast<double>(dh)));
  const int64_t work = n_tokens * nh * n_keys * (sw + rv);
#pragma omp parallel for schedule(dynamic, 1) if (work > kParallelWork && n_items > 1)
  for (int64_t item = 0; item < n_items; ++item) {
    const int64_t j = item / (n_blocks * n_chunks);
    const int64_t b = item / n_chunks % n_blocks;
    const int64_t c = item % n_chunks;
    const int64_t t0 = b * kQueryBlock, t1 = std::min(n_tokens, t0 + kQueryBlock);
    // Query i = (position t0 + i / g, head j * g + i % g).
    const int64_t nq = (t1 - t0) * g;
    std::vector<float> q(static_cast<size_t>(nq * sw));
    std::vector<int64_t> limit(static_cast<size_t>(nq));
    std::vector<float> slope(alibi_slopes_.empty() ? 0 : static_cast<size_t>(nq));
    for (int64_t t = t0; t < t1; ++t) {
      std::copy(qs + (t * nh + j * g) * sw, qs + (t * nh + j * g + g) * sw,
                q.begin() + (t - t0) * g * sw);
      for (int64_t h = 0; h < g; ++h) {
        limit[(t - t0) * g + h] = p0 + t + 1;
        if (!slope.empty()) slope[(t - t0) * g + h] = alibi_slopes_[j * g + h];
      }
    }
    const int64_t span = p0 + t1;
    const int64_t per_chunk = (span + n_chunks - 1) / n_chunks;
    ops::AttentionPartial& part = partials[item];
    part.reset(nq, rv);
    ops::attend_range(ops::QueryBlock{q.data(), nq, sw, limit.data(),
                                      slope.empty() ? nullptr : slope.data()},
                      cache.key_rows(cl, j),
                      rebuild.empty() ? nullptr : &rebuild[j], cache.value_rows(cl, j), scale,
                      c * per_chunk, std::min(span, (c + 1) * per_chunk), part);
  }
  for (int64_t j = 0; j < nkv; ++j) {
    for (int64_t b = 0; b < n_blocks; ++b) {
      ops::AttentionPartial& first = partials[(j * n_blocks + b) * n_chunks];
      for (int64_t c = 1; c < n_chunks; ++c)
        ops::merge_partial(first, partials[(j * n_blocks + b) * n_chunks + c]);
      const int64_t t0 = b * kQueryBlock;
      std::vector<float> out(static_cast<size_t>(first.n * rv));
      ops::finish_partial(first, out.data(), rv);
      for (int64_t i = 0; i < first.n; ++i) {
        const int64_t t = t0 + i / g, h = j * g + i % g;
        std::copy(out.begin() + i * rv, out.begin() + (i + 1) * rv,
                  heads_out + (t * nh + h) * rv);
      }
    }
  }
}

void Model::attend_sequence(int64_t layer, const LayerWeights& L, float* q_in, float* k_in,
                            const float* v, int64_t n_tokens, kv::KvCache& cache, int64_t cl,
                            float* heads_out, ForwardTap* tap) const {
  const int64_t dh = config_.head_dim;
  const int64_t nh = config_.n_heads, nkv = config_.n_kv_heads, g = config_.group_size();
  const int64_t p0 = cache.size();
  const int64_t qw = L.query_width(dh);     // query width per head from W_q
  const int64_t kw = L.key_proj_width(dh);  // key width per KV head from W_k
  const int64_t rk = L.key_rank, rv = L.value_rank;
  const bool rope = config_.rope();
  EKV_CHECK(cache.layer(cl).key_width == rk && cache.layer(cl).value_width == rv, "KV cache layer ",
            cl, " has widths ", cache.layer(cl).key_width, "/", cache.layer(cl).value_width,
            ", the model's layer ", layer, " needs ", rk, "/", rv);
  std::vector<float> q_pre, k_pre;
  if (tap) {
    EKV_CHECK(L.key_mode == KeyMode::kFull, "a forward tap needs an uncompressed layer");
    q_pre.assign(q_in, q_in + n_tokens * nh * qw);
    k_pre.assign(k_in, k_in + n_tokens * nkv * kw);
  }
  const bool rotate_queries = rope && L.key_mode != KeyMode::kNoRope;
  const bool rotate_keys = rope && (L.key_mode == KeyMode::kFull || L.key_mode == KeyMode::kPost);
  for (int64_t t = 0; t < n_tokens; ++t) {
    if (rotate_queries) rope_.rotate(q_in + t * nh * qw, nh, dh, p0 + t);
    if (rotate_keys) rope_.rotate(k_in + t * nkv * kw, nkv, dh, p0 + t);
  }
  if (tap) tap->on_attention(layer, n_tokens, p0, q_pre.data(), k_pre.data(), q_in, k_in, v);

  // Scores use `sw` numbers per query: r_K in kPost/kNoRope (queries projected), else d_h.
  const int64_t sw = L.key_mode == KeyMode::kPost || L.key_mode == KeyMode::kNoRope ? rk : dh;
  std::vector<float> q_scored;  // [T, n_heads, r_K] in kPost
  std::vector<float> k_scored;  // [T, n_kv, r_K] in kPost
  const float* qs = q_in;
  const float* k = k_in;
  if (L.key_mode == KeyMode::kPost) {
    q_scored.resize(static_cast<size_t>(n_tokens * nh * rk));
    k_scored.resize(static_cast<size_t>(n_tokens * nkv * rk));
    project_heads(q_in, n_tokens, nh, g, L.key_basis, q_scored.data());
    project_heads(k_in, n_tokens, nkv, 1, L.key_basis, k_scored.data());
    qs = q_scored.data();
    k = k_scored.data();
  }
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t j = 0; j < nkv; ++j) {
      cache.write_key(cl, j, p0 + t, k + (t * nkv + j) * rk);
      cache.write_value(cl, j, p0 + t, v + (t * nkv + j) * rv);
    }
  }
  const auto attention_start = std::chrono::steady_clock::now();
  attend_cached(L, qs, sw, n_tokens, p0, cache, cl, heads_out);
  attention_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::steady_clock::now() - attention_start)
                       .count();
}

}  // namespace eigenkv::model
