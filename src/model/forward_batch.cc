// Model::forward_batch: one forward step over several sequences (continuous batching). The rows
// of all sequences are stacked so that the weight-bound work (norms, the q/k/v/o projections,
// FFN, output projection) reads each weight matrix once per step instead of once per sequence;
// only attention itself runs per sequence, against that sequence's cache.
#include <algorithm>
#include <cstring>
#include <set>
#include <vector>

#include "model/model.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "util/error.h"

namespace eigenkv::model {
namespace {

// Checks every sequence before anything is written, so a bad one leaves all caches untouched.
void check_batch(std::span<BatchSequence> batch, const ModelConfig& config) {
  std::set<const kv::KvCache*> caches;
  for (size_t i = 0; i < batch.size(); ++i) {
    const BatchSequence& s = batch[i];
    EKV_CHECK(!s.tokens.empty(), "batch sequence ", i, " has no tokens");
    EKV_CHECK(s.cache != nullptr && s.logits != nullptr, "batch sequence ", i,
              " has no cache or no logits buffer");
    EKV_CHECK(caches.insert(s.cache).second, "batch sequence ", i,
              " shares its KV cache with an earlier sequence");
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    EKV_CHECK(s.cache->size() + n <= s.cache->capacity(), "batch sequence ", i,
              ": context is full: ", s.cache->size(), " + ", n, " tokens exceed the context of ",
              s.cache->capacity());
    EKV_CHECK(s.cache->n_layers() == config.n_layers, "batch sequence ", i, ": the KV cache has ",
              s.cache->n_layers(), " layers, the model ", config.n_layers);
    for (const int32_t id : s.tokens) {
      EKV_CHECK(id >= 0 && id < config.n_vocab, "batch sequence ", i, ": token id ", id,
                " is outside the vocabulary of ", config.n_vocab);
    }
  }
}

}  // namespace

void Model::forward_batch(std::span<BatchSequence> batch) const {
  if (batch.empty()) return;
  check_batch(batch, config_);
  const int64_t d = config_.d_model;
  // first_row[i]: where sequence i's rows start in the stacked [rows, d_model] arrays.
  std::vector<int64_t> first_row(batch.size() + 1, 0);
  for (size_t i = 0; i < batch.size(); ++i) {
    first_row[i + 1] = first_row[i] + static_cast<int64_t>(batch[i].tokens.size());
  }
  const int64_t rows = first_row.back();
  std::vector<float> x(static_cast<size_t>(rows * d));  // [rows, d_model] residual streams
  for (size_t i = 0; i < batch.size(); ++i) {
    for (size_t t = 0; t < batch[i].tokens.size(); ++t) {
      weights_.token_embedding.row_to_float(batch[i].tokens[t],
                                            x.data() + (first_row[i] + static_cast<int64_t>(t)) * d);
    }
  }
  std::vector<float> x_norm(static_cast<size_t>(rows * d));  // [rows, d_model]
  std::vector<float> delta(static_cast<size_t>(rows * d));   // [rows, d_model]
  const int64_t dh = config_.head_dim, nh = config_.n_heads, nkv = config_.n_kv_heads;
  std::vector<float> q, k, v, heads_out;  // the layer's projections of all rows
  for (int64_t l = 0; l < config_.n_layers; ++l) {
    const LayerWeights& L = weights_.layers[l];
    ops::rms_norm(x.data(), L.attn_norm.data(), rows, d, config_.norm_eps, x_norm.data());
    // The projections run once over all rows; attention per sequence against its own cache.
    const int64_t qw = nh * L.query_width(dh), kw = nkv * L.key_proj_width(dh);
    const int64_t vw = nkv * L.value_rank, ow = nh * L.value_rank;
    q.resize(static_cast<size_t>(rows * qw));   // [rows, n_heads * q_width]
    k.resize(static_cast<size_t>(rows * kw));   // [rows, n_kv * k_width]
    v.resize(static_cast<size_t>(rows * vw));   // [rows, n_kv * r_V]
    heads_out.resize(static_cast<size_t>(rows * ow));  // [rows, n_heads * r_V]
    project_qkv(L, x_norm.data(), rows, q.data(), k.data(), v.data());
    for (size_t i = 0; i < batch.size(); ++i) {
      const int64_t r0 = first_row[i];
      attend_sequence(l, L, q.data() + r0 * qw, k.data() + r0 * kw, v.data() + r0 * vw,
                      first_row[i + 1] - r0, *batch[i].cache, l, heads_out.data() + r0 * ow,
                      nullptr);
    }
    ops::matmul(heads_out.data(), rows, L.wo.view(), delta.data());
    for (int64_t k = 0; k < rows * d; ++k) x[k] += delta[k];
    ops::rms_norm(x.data(), L.ffn_norm.data(), rows, d, config_.norm_eps, x_norm.data());
    ffn_block(L, x_norm.data(), rows, delta.data());
    for (int64_t k = 0; k < rows * d; ++k) x[k] += delta[k];
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    batch[i].cache->advance(static_cast<int64_t>(batch[i].tokens.size()));
  }

  // Only the rows whose logits are wanted go through the output projection, in one GEMM.
  std::vector<int64_t> out_rows;  // stacked row index of each wanted logits row
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t from = batch[i].all_logits ? first_row[i] : first_row[i + 1] - 1;
    for (int64_t r = from; r < first_row[i + 1]; ++r) out_rows.push_back(r);
  }
  const int64_t n_out = static_cast<int64_t>(out_rows.size());
  std::vector<float> picked(static_cast<size_t>(n_out * d));  // [n_out, d_model]
  for (int64_t k = 0; k < n_out; ++k) {
    std::memcpy(picked.data() + k * d, x.data() + out_rows[k] * d, sizeof(float) * d);
  }
  x_norm.resize(picked.size());
  ops::rms_norm(picked.data(), weights_.output_norm.data(), n_out, d, config_.norm_eps,
                x_norm.data());
  const int64_t nv = config_.n_vocab;
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
