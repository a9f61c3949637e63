// The forward pass, written once: Model::forward is forward_batch over one sequence, and every
// family's decoder layer is decoder_layer below, shaped by the config's ArchSpec. The rows of all
// sequences of a batch are stacked so that the weight-bound work (norms, the q/k/v/o projections,
// FFN, output projection) reads each weight matrix once per step instead of once per sequence;
// only attention itself runs per sequence, against that sequence's cache.
#include <algorithm>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "model/model.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "util/error.h"

namespace eigenkv::model {
namespace {

// Checks every sequence before anything is written, so a bad one leaves all caches untouched.
// A single sequence's errors read as forward()'s, without a sequence number.
void check_batch(std::span<BatchSequence> batch, const ModelConfig& config) {
  std::set<const kv::KvCache*> caches;
  for (size_t i = 0; i < batch.size(); ++i) {
    const BatchSequence& s = batch[i];
    const std::string who = batch.size() == 1 ? "" : cat("batch sequence ", i, ": ");
    EKV_CHECK(!s.tokens.empty(), who, "forward called with no tokens");
    EKV_CHECK(s.cache != nullptr && s.logits != nullptr, who, "no cache or no logits buffer");
    EKV_CHECK(caches.insert(s.cache).second, who,
              "the KV cache is shared with an earlier sequence");
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    EKV_CHECK(s.cache->size() + n <= s.cache->capacity(), who, "context is full: ",
              s.cache->size(), " + ", n, " tokens exceed the context of ", s.cache->capacity());
    EKV_CHECK(config.arch.position != PositionKind::kLearned || s.cache->size() + n <= config.n_ctx_train,
              who, "positions up to ", s.cache->size() + n, " exceed the ", config.n_ctx_train,
              " learned positions of the model");
    EKV_CHECK(s.cache->n_layers() == config.n_layers, who, "the KV cache has ",
              s.cache->n_layers(), " layers, the model ", config.n_layers);
    for (const int32_t id : s.tokens) {
      EKV_CHECK(id >= 0 && id < config.n_vocab, who, "token id ", id,
                " is outside the vocabulary of ", config.n_vocab);
    }
  }
}

void add_bias(float* x, int64_t rows, const std::vector<float>& bias) {
  if (bias.empty()) return;
  const int64_t n = static_cast<int64_t>(bias.size());
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * n;
    for (int64_t c = 0; c < n; ++c) xr[c] += bias[c];
  }
}

}  // namespace

void Model::norm(const float* x, const std::vector<float>& weight, const std::vector<float>& bias,
                 int64_t rows, float* out) const {
  switch (config_.arch.norm) {
    case NormKind::kRms:
      ops::rms_norm(x, weight.data(), rows, config_.d_model, config_.norm_eps, out);
      return;
    case NormKind::kLayer:
      ops::layer_norm(x, weight.data(), bias.empty() ? nullptr : bias.data(), rows,
                      config_.d_model, config_.norm_eps, out);
      return;
  }
}

void Model::project_qkv(const LayerWeights& L, const float* x_norm, int64_t n_tokens, float* q,
                        float* k, float* v) const {
  const float c = static_cast<float>(config_.arch.clip_qkv);
  EKV_CHECK(c == 0 || L.key_mode == KeyMode::kFull || L.bases_after_clamp,
            "clip_qkv clamps q, k and v before any basis: this compressed layer folded its bases "
            "into W_q, W_k and W_v and cannot apply it");
  // A clamped compressed layer projects full rows first and its bases after the clamp.
  std::vector<float> full_q, full_k, full_v;
  if (L.bases_after_clamp) {
    full_q.resize(static_cast<size_t>(n_tokens * L.wq.rows));
    full_k.resize(static_cast<size_t>(n_tokens * L.wk.rows));
    full_v.resize(static_cast<size_t>(n_tokens * L.wv.rows));
  }
  float* pq = L.bases_after_clamp ? full_q.data() : q;
  float* pk = L.bases_after_clamp ? full_k.data() : k;
  float* pv = L.bases_after_clamp ? full_v.data() : v;
  ops::matmul(x_norm, n_tokens, L.wq.view(), pq);
  ops::matmul(x_norm, n_tokens, L.wk.view(), pk);
  ops::matmul(x_norm, n_tokens, L.wv.view(), pv);
  add_bias(pq, n_tokens, L.bq);
  add_bias(pk, n_tokens, L.bk);
  add_bias(pv, n_tokens, L.bv);
  if (c > 0) {
    for (auto [p, n] : {std::pair{pq, L.wq.rows}, {pk, L.wk.rows}, {pv, L.wv.rows}})
      for (int64_t i = 0; i < n_tokens * n; ++i) p[i] = std::clamp(p[i], -c, c);
  }
  if (!L.bases_after_clamp) return;
  project_heads(pq, n_tokens, config_.n_heads, config_.group_size(), L.key_basis, q);
  project_heads(pk, n_tokens, config_.n_kv_heads, 1, L.key_basis, k);
  project_heads(pv, n_tokens, config_.n_kv_heads, 1, L.value_basis, v);
}

void Model::ffn_block(const LayerWeights& L, const float* x_norm, int64_t n_tokens,
                      float* ffn_out) const {
  const int64_t f = config_.d_ffn;
  std::vector<float> up(static_cast<size_t>(n_tokens * f));  // [T, d_ffn]
  ops::matmul(x_norm, n_tokens, L.w_up.view(), up.data());
  add_bias(up.data(), n_tokens, L.b_up);
  switch (config_.arch.ffn) {
    case FfnKind::kSwiGlu: {
      std::vector<float> gate(static_cast<size_t>(n_tokens * f));  // [T, d_ffn]
      ops::matmul(x_norm, n_tokens, L.w_gate.view(), gate.data());
      ops::swiglu(gate.data(), up.data(), n_tokens * f);
      up.swap(gate);
      break;
    }
    case FfnKind::kRelu:
      ops::relu(up.data(), n_tokens * f);
      break;
    case FfnKind::kGelu:
      ops::gelu(up.data(), n_tokens * f);
      break;
  }
  ops::matmul(up.data(), n_tokens, L.w_down.view(), ffn_out);
  add_bias(ffn_out, n_tokens, L.b_down);
}

void Model::decoder_layer(int64_t layer, const LayerWeights& L, float* x,
                          std::span<const RowSegment> segments, int64_t cl,
                          ForwardTap* tap) const {
  const int64_t d = config_.d_model, dh = config_.head_dim;
  const int64_t nh = config_.n_heads, nkv = config_.n_kv_heads;
  const int64_t rows = segments.empty() ? 0 : segments.back().first + segments.back().n;
  EKV_CHECK(!tap || segments.size() == 1, "a forward tap sees one sequence at a time");
  std::vector<float> input(tap ? static_cast<size_t>(rows * d) : 0);
  if (tap) std::copy(x, x + rows * d, input.begin());
  std::vector<float> x_norm(static_cast<size_t>(rows * d));  // [rows, d_model]
  std::vector<float> delta(static_cast<size_t>(rows * d));   // [rows, d_model]
  // Pre-norm (Llama, Qwen2, OPT by default): x += attn(norm(x)); x += ffn(norm(x)). Post-norm
  // (OPT with do_layer_norm_before = false): x = norm(x + attn(x)); x = norm(x + ffn(x)).
  const bool post = config_.arch.post_norm;
  if (post) {
    std::copy(x, x + rows * d, x_norm.begin());
  } else {
    norm(x, L.attn_norm, L.attn_norm_bias, rows, x_norm.data());
  }
  // The projections run once over all rows; attention per sequence against its own cache.
  const int64_t qw = nh * L.query_width(dh), kw = nkv * L.key_proj_width(dh);
  const int64_t vw = nkv * L.value_rank, ow = nh * L.value_rank;
  std::vector<float> q(static_cast<size_t>(rows * qw));          // [rows, n_heads * q_width]
  std::vector<float> k(static_cast<size_t>(rows * kw));          // [rows, n_kv * k_width]
  std::vector<float> v(static_cast<size_t>(rows * vw));          // [rows, n_kv * r_V]
  std::vector<float> heads_out(static_cast<size_t>(rows * ow));  // [rows, n_heads * r_V]
  project_qkv(L, x_norm.data(), rows, q.data(), k.data(), v.data());
  for (const RowSegment& s : segments) {
    attend_sequence(layer, L, q.data() + s.first * qw, k.data() + s.first * kw,
                    v.data() + s.first * vw, s.n, *s.cache, cl, heads_out.data() + s.first * ow,
                    tap);
  }
  ops::matmul(heads_out.data(), rows, L.wo.view(), delta.data());
  add_bias(delta.data(), rows, L.bo);
  for (int64_t i = 0; i < rows * d; ++i) x[i] += delta[i];
  if (post) {
    norm(x, L.attn_norm, L.attn_norm_bias, rows, x_norm.data());
    std::copy(x_norm.begin(), x_norm.end(), x);
  } else {
    norm(x, L.ffn_norm, L.ffn_norm_bias, rows, x_norm.data());
  }
  ffn_block(L, x_norm.data(), rows, delta.data());
  for (int64_t i = 0; i < rows * d; ++i) x[i] += delta[i];
  if (post) {
    norm(x, L.ffn_norm, L.ffn_norm_bias, rows, x_norm.data());
    std::copy(x_norm.begin(), x_norm.end(), x);
  }
  if (tap) tap->on_layer(layer, rows, input.data(), x);
}

void Model::layer_forward(int64_t layer, const LayerWeights& L, float* x, int64_t n,
                          kv::KvCache& cache, int64_t cache_layer, ForwardTap* tap) const {
  const RowSegment one{0, n, &cache};
  decoder_layer(layer, L, x, std::span<const RowSegment>(&one, 1), cache_layer, tap);
}

void Model::embed(std::span<const int32_t> tokens, int64_t first_position, float* x) const {
  const int64_t d = config_.d_model, n = static_cast<int64_t>(tokens.size());
  const bool project = !weights_.project_in.empty();
  std::vector<float> narrow(project ? static_cast<size_t>(n * config_.embed_dim()) : 0);
  float* rows = project ? narrow.data() : x;
  for (int64_t t = 0; t < n; ++t) {
    const int32_t id = tokens[t];
    EKV_CHECK(id >= 0 && id < config_.n_vocab, "token id ", id, " is outside the vocabulary of ",
              config_.n_vocab);
    weights_.token_embedding.row_to_float(id, rows + t * config_.embed_dim());
  }
  if (project) ops::matmul(narrow.data(), n, weights_.project_in.view(), x);
  if (config_.arch.position != PositionKind::kLearned) return;
  const int64_t offset = config_.arch.position_offset;
  EKV_CHECK(first_position >= 0 && first_position + n + offset <= weights_.position_embedding.rows,
            "positions ", first_position, "..", first_position + n - 1,
            " are outside the learned position table of ",
            weights_.position_embedding.rows - offset);
  std::vector<float> pos(static_cast<size_t>(d));
  for (int64_t t = 0; t < n; ++t) {  // row p + offset of the table holds position p
    weights_.position_embedding.row_to_float(first_position + t + offset, pos.data());
    float* xt = x + t * d;
    for (int64_t c = 0; c < d; ++c) xt[c] += pos[c];
  }
}

void Model::forward(std::span<const int32_t> tokens, kv::KvCache& cache, float* logits,
                    bool all_logits, ForwardTap* tap) const {
  BatchSequence one{tokens, &cache, logits, all_logits};
  run_batch(std::span<BatchSequence>(&one, 1), tap);
}

void Model::forward_batch(std::span<BatchSequence> batch) const { run_batch(batch, nullptr); }

void Model::run_batch(std::span<BatchSequence> batch, ForwardTap* tap) const {
  if (batch.empty()) return;
  check_batch(batch, config_);
  const int64_t d = config_.d_model;
  // Sequence i's rows start at segments[i].first in the stacked [rows, d_model] arrays.
  std::vector<RowSegment> segments;
  int64_t rows = 0;
  for (BatchSequence& s : batch) {
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    segments.push_back(RowSegment{rows, n, s.cache});
    rows += n;
  }
  std::vector<float> x(static_cast<size_t>(rows * d));  // [rows, d_model] residual streams
  for (size_t i = 0; i < batch.size(); ++i) {
    embed(batch[i].tokens, batch[i].cache->size(), x.data() + segments[i].first * d);
  }
  for (int64_t l = 0; l < config_.n_layers; ++l) {
    decoder_layer(l, weights_.layers[l], x.data(), segments, l, tap);
  }
  for (BatchSequence& s : batch) s.cache->advance(static_cast<int64_t>(s.tokens.size()));

  // Only the rows whose logits are wanted go through the output projection, in one GEMM.
  std::vector<int64_t> out_rows;  // stacked row index of each wanted logits row
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t end = segments[i].first + segments[i].n;
    const int64_t from = batch[i].all_logits ? segments[i].first : end - 1;
    for (int64_t r = from; r < end; ++r) out_rows.push_back(r);
  }
  const int64_t n_out = static_cast<int64_t>(out_rows.size());
  std::vector<float> picked(static_cast<size_t>(n_out * d));  // [n_out, d_model]
  for (int64_t k = 0; k < n_out; ++k) {
    std::memcpy(picked.data() + k * d, x.data() + out_rows[k] * d, sizeof(float) * d);
  }
  std::vector<float> x_norm = picked;
  if (config_.arch.final_norm)
    norm(picked.data(), weights_.output_norm, weights_.output_norm_bias, n_out, x_norm.data());
  if (!weights_.project_out.empty()) {  // to the embeddings' width, which the head reads
    std::vector<float> narrow(static_cast<size_t>(n_out * config_.embed_dim()));
    ops::matmul(x_norm.data(), n_out, weights_.project_out.view(), narrow.data());
    x_norm = std::move(narrow);
  }
  const int64_t nv = config_.n_vocab;
  if (batch.size() == 1) {  // straight into the caller's buffer
    ops::matmul(x_norm.data(), n_out, weights_.output.view(), batch[0].logits);
    return;
  }
  std::vector<float> logits(static_cast<size_t>(n_out * nv));  // [n_out, n_vocab]
  ops::matmul(x_norm.data(), n_out, weights_.output.view(), logits.data());
  int64_t at = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t n = batch[i].all_logits ? static_cast<int64_t>(batch[i].tokens.size()) : 1;
    std::memcpy(batch[i].logits, logits.data() + at * nv, sizeof(float) * n * nv);
    at += n;
  }
}

}  // namespace eigenkv::model
