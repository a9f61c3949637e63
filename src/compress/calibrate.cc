#include "compress/calibrate.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "compress/fold.h"
#include "compress/gram.h"
#include "util/error.h"
#include "util/progress.h"

namespace eigenkv::compress {
namespace {

std::vector<Eigen::MatrixXd> basis_vectors(const std::vector<EigenBasis>& bases) {
  std::vector<Eigen::MatrixXd> out;
  for (const EigenBasis& b : bases) out.push_back(b.vectors);
  return out;
}

// The layer's ranks at threshold eps: the largest over its KV heads (one rank per layer and kind).
std::pair<int64_t, int64_t> ranks_at(const LayerCalibration& lc, double eps, RankRule rule) {
  int64_t rk = 1, rv = 1;
  for (const EigenBasis& b : lc.key)
    rk = std::max(rk, rank_for_threshold(b.eigenvalues, eps, rule));
  for (const EigenBasis& b : lc.value)
    rv = std::max(rv, rank_for_threshold(b.eigenvalues, eps, rule));
  return {rk, rv};
}

const char* allotment_name(Allotment a) {
  switch (a) {
    case Allotment::kThreshold:
      return "threshold";
    case Allotment::kErrorBudget:
      return "error_budget";
    case Allotment::kKvBudget:
      return "kv_budget";
  }
  return "unknown";
}

}  // namespace

int64_t min_calibration_tokens(const model::ModelConfig& config, int64_t ctx) {
  // One whole window, and enough vectors that every Gram matrix can have full rank.
  return std::max(ctx, 2 * config.head_dim);
}

Candidate measure_layer(const model::Model& model, int64_t layer,
                        const model::LayerWeights& candidate, const LayerSamples& samples) {
  const int64_t d = model.config().d_model;
  double diff2 = 0, ref2 = 0, cos_sum = 0;
  int64_t rows = 0;
  kv::KvCache cache(
      {kv::LayerShape{model.config().n_kv_heads, candidate.key_rank, candidate.value_rank}},
      samples.ctx);
  std::vector<float> x;
  for (size_t w = 0; w < samples.inputs.size(); ++w) {
    x = samples.inputs[w];
    const std::vector<float>& y = samples.outputs[w];
    const int64_t n = static_cast<int64_t>(x.size()) / d;
    cache.clear();
    model.layer_forward(layer, candidate, x.data(), n, cache, 0);
    for (int64_t t = 0; t < n; ++t) {
      double dot = 0, a2 = 0, b2 = 0;
      for (int64_t i = 0; i < d; ++i) {
        const double a = x[t * d + i], b = y[t * d + i];
        diff2 += (a - b) * (a - b);
        dot += a * b;
        a2 += a * a;
        b2 += b * b;
      }
      ref2 += b2;
      cos_sum += dot / std::sqrt(std::max(a2 * b2, 1e-300));
      ++rows;
    }
  }
  Candidate c;
  c.key_rank = candidate.key_rank;
  c.value_rank = candidate.value_rank;
  c.error = std::sqrt(diff2 / std::max(ref2, 1e-300));
  c.cosine = rows ? cos_sum / rows : 1.0;
  return c;
}

namespace {

// The number of whole calibration windows, after checking the model and the options.
int64_t checked_windows(const model::Model& model, const std::vector<int32_t>& ids,
                        const CalibrationOptions& o) {
  const model::ModelConfig& config = model.config();
  EKV_CHECK(!model.is_compressed(), model.path(),
            ": the model is already compressed; calibrate the original model instead");
  const bool rope = config.rope();
  // clip_qkv clamps between the projection and the basis: the compressed layer keeps both
  // products (fold.h), which is built for models without RoPE (MPT) only.
  EKV_CHECK(config.arch.clip_qkv == 0 || !rope, model.path(), ": clip_qkv = ",
            config.arch.clip_qkv, " with RoPE is not built");
  EKV_CHECK(o.key_mode != model::KeyMode::kFull, "calibration needs a low-rank key mode");
  EKV_CHECK(rope || o.key_mode == model::KeyMode::kNoRope,
            "the model has no RoPE: use the no-RoPE key mode");
  EKV_CHECK(!rope || o.key_mode != model::KeyMode::kNoRope,
            "the model uses RoPE: choose the pre or post key mode");
  EKV_CHECK(o.ctx >= 2, "the calibration window must be at least 2 tokens, found ", o.ctx);
  EKV_CHECK(o.threshold >= 0 && o.threshold < 1, "the threshold must be in [0, 1), found ",
            o.threshold);
  EKV_CHECK(o.error_budget > 0 && o.error_budget <= 1, "the error budget must be in (0, 1], found ",
            o.error_budget);
  EKV_CHECK(o.kv_budget > 0 && o.kv_budget <= 1, "the KV budget must be in (0, 1], found ",
            o.kv_budget);
  EKV_CHECK(o.max_tokens >= 0, "the token limit must be >= 0, found ", o.max_tokens);
  int64_t usable = static_cast<int64_t>(ids.size());
  if (o.max_tokens > 0) usable = std::min(usable, o.max_tokens);
  const int64_t needed = min_calibration_tokens(config, o.ctx);
  EKV_CHECK(usable >= needed, "the calibration text has ", usable, " tokens; at least ", needed,
            " are needed (one window of ", o.ctx, " tokens and 2 x head width ", config.head_dim,
            ")");
  return usable / o.ctx;
}

}  // namespace

CalibrationStream::CalibrationStream(const model::Model& model, const std::vector<int32_t>& ids,
                                     const CalibrationOptions& o)
    : model_(model), options_(o), stream_(model, ids, o.ctx, checked_windows(model, ids, o)) {}

LayerData CalibrationStream::next() {
  GramCollector grams(model_.config(), options_.key_mode);
  LayerData data;
  stream_.run_layer(&grams, options_.error_windows, &data.samples);
  for (const Eigen::MatrixXd& g : grams.grams().key) data.key.push_back(eigen_basis(g));
  for (const Eigen::MatrixXd& g : grams.grams().value) data.value.push_back(eigen_basis(g));
  return data;
}

CalibrationResult calibrate_eigen(model::Model& model, const std::vector<int32_t>& ids,
                                  const CalibrationOptions& o) {
  const model::ModelConfig& config = model.config();
  const double start = now_seconds();
  CalibrationStream stream(model, ids, o);

  CalibrationResult result;
  result.tokens = stream.tokens();
  result.layers.resize(static_cast<size_t>(config.n_layers));
  const model::ModelWeights& weights = model.weights();
  Progress progress("calibrate", config.n_layers, "layers");
  for (int64_t l = 0; l < config.n_layers; ++l) {
    LayerData data = stream.next();
    const LayerSamples& samples = data.samples;
    LayerCalibration& lc = result.layers[l];
    lc.key = std::move(data.key);
    lc.value = std::move(data.value);
    const auto key_vectors = basis_vectors(lc.key);
    const auto value_vectors = basis_vectors(lc.value);
    // The error-rank profile over the eps grid; the uniform threshold's own point is added so
    // its error is reported too.
    std::vector<double> grid;
    for (double eps = 0; eps <= o.threshold_max + 1e-12; eps += o.threshold_step)
      grid.push_back(eps);
    if (o.allotment == Allotment::kThreshold) grid = {o.threshold};
    std::map<std::pair<int64_t, int64_t>, Candidate> seen;
    for (double eps : grid) {
      const auto [rk, rv] = ranks_at(lc, eps, o.rule);
      auto it = seen.find({rk, rv});
      if (it != seen.end()) continue;
      model::LayerWeights cand =
          fold_layer(weights.layers[l], config, o.key_mode, key_vectors, value_vectors, rk, rv);
      Candidate c = measure_layer(model, l, cand, samples);
      c.threshold = eps;
      seen.emplace(std::make_pair(rk, rv), c);
      lc.profile.push_back(c);
    }
    if (o.progress) progress.update(l + 1, static_cast<double>(l + 1), "layers");
  }
  progress.finish();

  std::vector<Candidate> chosen;
  if (o.allotment == Allotment::kThreshold) {
    for (const LayerCalibration& lc : result.layers) chosen.push_back(lc.profile.front());
  } else if (o.allotment == Allotment::kErrorBudget) {
    // The authors' scan: raise eps from 0 while the layer's error stays within the budget.
    for (size_t l = 0; l < result.layers.size(); ++l) {
      const LayerProfile& p = result.layers[l].profile;
      EKV_CHECK(p.front().error <= o.error_budget, "layer ", l, ": even eps = 0 gives error ",
                p.front().error, ", above the budget ", o.error_budget);
      Candidate keep = p.front();
      for (const Candidate& c : p) {
        if (c.error > o.error_budget) break;
        keep = c;
      }
      chosen.push_back(keep);
    }
  } else {
    const int64_t full = config.n_layers * 2 * config.head_dim;
    const int64_t budget = static_cast<int64_t>(std::floor(o.kv_budget * full + 1e-9));
    std::vector<LayerProfile> profiles;
    for (const LayerCalibration& lc : result.layers) profiles.push_back(lc.profile);
    chosen = allot_kv_budget(profiles, budget);
  }

  model::ModelWeights new_weights = weights;
  nlohmann::json layers_json = nlohmann::json::array();
  for (int64_t l = 0; l < config.n_layers; ++l) {
    LayerCalibration& lc = result.layers[l];
    lc.chosen = chosen[l];
    new_weights.layers[l] =
        fold_layer(weights.layers[l], config, o.key_mode, basis_vectors(lc.key),
                   basis_vectors(lc.value), lc.chosen.key_rank, lc.chosen.value_rank);
    layers_json.push_back({{"key_rank", lc.chosen.key_rank},
                           {"value_rank", lc.chosen.value_rank},
                           {"threshold", lc.chosen.threshold},
                           {"error", lc.chosen.error},
                           {"cosine", lc.chosen.cosine}});
  }
  model.set_weights(std::move(new_weights));
  result.seconds = now_seconds() - start;
  nlohmann::json meta = {{"method", "eigen"},
                         {"key_mode", model::key_mode_name(o.key_mode)},
                         {"rank_rule", o.rule == RankRule::kEnergy ? "energy" : "singular"},
                         {"allotment", allotment_name(o.allotment)},
                         {"calibration_source", o.source},
                         {"calibration_tokens", result.tokens},
                         {"calibration_ctx", o.ctx},
                         {"layers", layers_json}};
  if (o.allotment == Allotment::kThreshold) meta["threshold"] = o.threshold;
  if (o.allotment == Allotment::kErrorBudget) meta["error_budget"] = o.error_budget;
  if (o.allotment == Allotment::kKvBudget) meta["kv_budget"] = o.kv_budget;
  result.metadata_json = meta.dump();
  model.set_compression_json(result.metadata_json);
  return result;
}

}  // namespace eigenkv::compress
