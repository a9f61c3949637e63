#include "compress/stief.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>

#include "compress/fold.h"
#include "util/error.h"
#include "util/progress.h"

namespace eigenkv::compress {
namespace {

using Eigen::MatrixXd;

// Adam moments of one basis, kept on the skew-symmetric generator (the basis' own frame).
struct AdamState {
  MatrixXd m, v;
};

// Cayley transform of a skew-symmetric matrix: exactly orthogonal, cay(D) = I + D + O(D^2).
MatrixXd cayley(const MatrixXd& delta) {
  const MatrixXd id = MatrixXd::Identity(delta.rows(), delta.cols());
  return (id - 0.5 * delta).partialPivLu().solve(id + 0.5 * delta);
}

// One Adam step on U <- U cay(Delta): the generator's gradient is skew(U^T G).
void adam_step(MatrixXd& u, const MatrixXd& euclidean_grad, AdamState& s, double lr, int64_t t) {
  constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;
  const MatrixXd a = u.transpose() * euclidean_grad;
  const MatrixXd g = 0.5 * (a - a.transpose());
  if (s.m.size() == 0) {
    s.m = MatrixXd::Zero(g.rows(), g.cols());
    s.v = MatrixXd::Zero(g.rows(), g.cols());
  }
  s.m = kBeta1 * s.m + (1 - kBeta1) * g;
  s.v = kBeta2 * s.v + (1 - kBeta2) * g.cwiseAbs2();
  const double c1 = 1 - std::pow(kBeta1, static_cast<double>(t));
  const double c2 = 1 - std::pow(kBeta2, static_cast<double>(t));
  // m is skew and v symmetric, so the step is skew too and the Cayley factor orthogonal.
  const MatrixXd delta = -lr * ((s.m / c1).array() / ((s.v / c2).array().sqrt() + kEps)).matrix();
  u = u * cayley(delta);
}

LayerBases zeros_like(const LayerBases& b) {
  LayerBases z;
  for (const MatrixXd& u : b.key) z.key.push_back(MatrixXd::Zero(u.rows(), u.cols()));
  for (const MatrixXd& u : b.value) z.value.push_back(MatrixXd::Zero(u.rows(), u.cols()));
  return z;
}

bool all_finite(const LayerBases& b) {
  for (const auto* set : {&b.key, &b.value}) {
    for (const MatrixXd& m : *set) {
      if (!m.allFinite()) return false;
    }
  }
  return true;
}

// Training loss and gradient of one window: relative error sqrt(D / ||Y||^2) and its gradient
// dD / (2 sqrt(D ||Y||^2)).
double window_relative_loss(const LayerConstants& c, const WindowInputs& w, const LayerBases& b,
                            int64_t rk, int64_t rv, LayerBases& grad) {
  LayerBases dd = zeros_like(b);
  const double d = window_squared_error(c, w, b, rk, rv, &dd);
  const double ref = std::max(w.target_sq, 1e-300);
  if (!std::isfinite(d) || d <= 0) return std::isfinite(d) ? 0.0 : d;
  const double scale = 1.0 / (2.0 * std::sqrt(d * ref));
  for (size_t j = 0; j < grad.key.size(); ++j) {
    grad.key[j] += scale * dd.key[j];
    grad.value[j] += scale * dd.value[j];
  }
  return std::sqrt(d / ref);
}

// Draws the training progress line (layer, epoch, loss) when stderr is a terminal.
class TrainProgress {
 public:
  TrainProgress(int64_t layer, int64_t layers, bool enabled)
      : layer_(layer), layers_(layers), enabled_(enabled && ::isatty(STDERR_FILENO)) {}
  void draw(int64_t epoch, int64_t epochs, int64_t step, int64_t steps, double loss) {
    if (!enabled_) return;
    std::fprintf(stderr, "\rstief layer %lld/%lld  epoch %lld/%lld  step %lld/%lld  loss %.5f   ",
                 static_cast<long long>(layer_ + 1), static_cast<long long>(layers_),
                 static_cast<long long>(epoch), static_cast<long long>(epochs),
                 static_cast<long long>(step), static_cast<long long>(steps), loss);
    std::fflush(stderr);
  }
  void finish() {
    if (enabled_) std::fprintf(stderr, "\n");
  }

 private:
  int64_t layer_, layers_;
  bool enabled_;
};

std::vector<MatrixXd> basis_matrices(const std::vector<EigenBasis>& bases) {
  std::vector<MatrixXd> out;
  for (const EigenBasis& b : bases) out.push_back(b.vectors);
  return out;
}

// One key basis for all KV heads: the eigenvectors of the heads' Gram matrices summed
// (G_j = V_j diag(lambda_j) V_j^T), i.e. Eigen Attention's basis for the stacked keys.
MatrixXd shared_key_basis(const std::vector<EigenBasis>& heads) {
  MatrixXd gram = MatrixXd::Zero(heads[0].vectors.rows(), heads[0].vectors.rows());
  for (const EigenBasis& b : heads)
    gram += b.vectors * b.eigenvalues.asDiagonal() * b.vectors.transpose();
  return eigen_basis(gram).vectors;
}

// The first `n` windows of `samples`.
LayerSamples first_windows(const LayerSamples& samples, int64_t n) {
  LayerSamples out;
  out.ctx = samples.ctx;
  const size_t k = std::min(samples.inputs.size(), static_cast<size_t>(n));
  out.inputs.assign(samples.inputs.begin(), samples.inputs.begin() + k);
  out.outputs.assign(samples.outputs.begin(), samples.outputs.begin() + k);
  return out;
}

// The profile of `bases` over every (r_K, r_V) pair of the candidate ranks, measured by folding
// them into the engine's layer and running it on `samples`.
LayerProfile measure_profile(const model::Model& model, int64_t layer, model::KeyMode mode,
                             const LayerBases& bases, const std::vector<int64_t>& ranks,
                             const LayerSamples& samples) {
  LayerProfile p;
  for (int64_t rk : ranks) {
    for (int64_t rv : ranks) {
      const model::LayerWeights cand = fold_layer(model.weights().layers[layer], model.config(),
                                                  mode, bases.key, bases.value, rk, rv);
      Candidate c = measure_layer(model, layer, cand, samples);
      c.threshold = -1;
      p.push_back(c);
    }
  }
  return p;
}

double mean_error(const LayerProfile& p) {
  double s = 0;
  for (const Candidate& c : p) s += c.error;
  return p.empty() ? 0 : s / static_cast<double>(p.size());
}

std::vector<Candidate> allot(const StiefOptions& o, const model::ModelConfig& config,
                             const std::vector<int64_t>& ranks,
                             const std::vector<LayerProfile>& profiles) {
  const CalibrationOptions& c = o.calibration;
  if (c.allotment == Allotment::kErrorBudget) return allot_error_budget(profiles, c.error_budget);
  const int64_t full = config.n_layers * 2 * config.head_dim;
  const int64_t budget = static_cast<int64_t>(std::floor(c.kv_budget * full + 1e-9));
  const int64_t smallest = config.n_layers * 2 * ranks.front();
  EKV_CHECK(budget >= smallest, "the KV budget ", c.kv_budget,
            " cannot be met with the candidate ranks: the smallest is ",
            static_cast<double>(smallest) / full, " (rank ", ranks.front(),
            " for keys and values of every layer); raise --kv-budget or add a smaller rank");
  return allot_kv_budget(profiles, budget);
}

void check_options(const StiefOptions& o) {
  const StiefTraining& t = o.training;
  EKV_CHECK(o.calibration.allotment != Allotment::kThreshold,
            "StiefAttention allots ranks from its profiles: give an error budget or a KV budget, "
            "not a threshold");
  EKV_CHECK(t.epochs >= 0 && t.epochs <= 100000, "the epoch count must be in [0, 100000], found ",
            t.epochs);
  EKV_CHECK(std::isfinite(t.lr) && t.lr > 0 && t.lr <= 1,
            "the learning rate must be in (0, 1], found ", t.lr);
  EKV_CHECK(t.batch >= 1, "the batch must be at least 1 window, found ", t.batch);
  EKV_CHECK(o.train_windows >= 1, "at least one training window is needed, found ",
            o.train_windows);
  EKV_CHECK(o.profile_windows >= 1, "at least one profile window is needed, found ",
            o.profile_windows);
  EKV_CHECK(o.heldout_windows >= 1, "at least one held-out window is needed, found ",
            o.heldout_windows);
}

}  // namespace

std::vector<int64_t> candidate_ranks(int64_t head_dim, const std::vector<double>& fractions) {
  EKV_CHECK(!fractions.empty(), "the list of candidate rank fractions is empty");
  std::vector<int64_t> ranks;
  for (double f : fractions) {
    EKV_CHECK(std::isfinite(f) && f > 0 && f <= 1, "a candidate rank fraction must be in (0, 1], ",
              "found ", f);
    ranks.push_back(std::max<int64_t>(1, std::llround(f * static_cast<double>(head_dim))));
  }
  std::sort(ranks.begin(), ranks.end());
  for (size_t i = 1; i < ranks.size(); ++i) {
    EKV_CHECK(ranks[i] != ranks[i - 1], "two candidate rank fractions give the same rank ",
              ranks[i], " of head width ", head_dim);
  }
  return ranks;
}

std::vector<double> parse_rank_fractions(const std::string& text) {
  std::vector<double> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    double f = 0;
    try {
      f = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    EKV_CHECK(used > 0 && used == item.size(), "--ranks: '", item,
              "' is not a number (expected fractions of the head width like 0.5,0.6,0.7)");
    out.push_back(f);
  }
  EKV_CHECK(!out.empty(), "--ranks: no fractions in '", text, "'");
  return out;
}

std::vector<double> train_layer_bases(const LayerConstants& c,
                                      const std::vector<WindowInputs>& windows,
                                      const std::vector<int64_t>& ranks, const StiefTraining& t,
                                      int64_t layer, LayerBases& bases,
                                      const StepCallback& on_step) {
  const int64_t n_windows = static_cast<int64_t>(windows.size());
  const int64_t n_pairs = static_cast<int64_t>(ranks.size() * ranks.size());
  EKV_CHECK(n_windows >= 1, "no training windows");
  const int64_t batch = std::min(t.batch, n_windows);
  const int64_t steps_per_epoch = (n_windows + batch - 1) / batch;
  const int64_t total_steps = t.epochs * steps_per_epoch;
  std::vector<AdamState> key_state(bases.key.size()), value_state(bases.value.size());
  std::mt19937_64 rng(t.seed * 1000003 + static_cast<uint64_t>(layer));
  std::vector<int64_t> order(static_cast<size_t>(n_windows));
  std::vector<double> epoch_loss;
  int64_t step = 0, pair_counter = 0;
  for (int64_t e = 0; e < t.epochs; ++e) {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    double loss_sum = 0;
    for (int64_t s = 0; s < steps_per_epoch; ++s) {
      const int64_t first = s * batch, count = std::min(batch, n_windows - first);
      std::vector<LayerBases> grads(static_cast<size_t>(count), zeros_like(bases));
      std::vector<double> losses(static_cast<size_t>(count));
      const int64_t pair0 = pair_counter;
      pair_counter += count;
#pragma omp parallel for schedule(dynamic, 1) if (count > 1)
      for (int64_t b = 0; b < count; ++b) {
        const int64_t pair = (pair0 + b) % n_pairs;
        const int64_t n_ranks = static_cast<int64_t>(ranks.size());
        losses[b] = window_relative_loss(c, windows[order[first + b]], bases, ranks[pair / n_ranks],
                                         ranks[pair % n_ranks], grads[b]);
      }
      // Summed in a fixed order so the result does not depend on the thread count.
      LayerBases grad = zeros_like(bases);
      double batch_loss = 0;
      for (int64_t b = 0; b < count; ++b) {
        batch_loss += losses[b];
        for (size_t j = 0; j < grad.key.size(); ++j) {
          grad.key[j] += grads[b].key[j] / static_cast<double>(count);
          grad.value[j] += grads[b].value[j] / static_cast<double>(count);
        }
      }
      EKV_CHECK(std::isfinite(batch_loss) && all_finite(grad), "StiefAttention: layer ", layer,
                ", epoch ", e + 1, ", step ", s + 1,
                ": the layer-output loss or its gradient is not finite (", batch_loss,
                "); nothing was written");
      loss_sum += batch_loss;
      ++step;
      // Cosine schedule from lr down to 0 over all steps.
      const double lr = 0.5 * t.lr *
                        (1 + std::cos(M_PI * static_cast<double>(step - 1) /
                                      static_cast<double>(std::max<int64_t>(total_steps, 1))));
      if (t.shared_key) {
        // d/dU of a loss through the same U in every head: the heads' gradients summed.
        for (size_t j = 1; j < grad.key.size(); ++j) grad.key[0] += grad.key[j];
        adam_step(bases.key[0], grad.key[0], key_state[0], lr, step);
        for (size_t j = 1; j < bases.key.size(); ++j) bases.key[j] = bases.key[0];
      } else {
        for (size_t j = 0; j < bases.key.size(); ++j)
          adam_step(bases.key[j], grad.key[j], key_state[j], lr, step);
      }
      for (size_t j = 0; j < bases.value.size(); ++j)
        adam_step(bases.value[j], grad.value[j], value_state[j], lr, step);
      if (on_step)
        on_step(bases, StepInfo{e + 1, s + 1, steps_per_epoch, loss_sum / (first + count)});
    }
    epoch_loss.push_back(loss_sum / static_cast<double>(n_windows));
  }
  return epoch_loss;
}

StiefResult train_stief(const model::Model& model, const std::vector<int32_t>& ids,
                        const std::vector<int32_t>& heldout_ids, const StiefOptions& o) {
  check_options(o);
  const model::ModelConfig& config = model.config();
  const double start = now_seconds();
  StiefResult result;
  result.ranks = candidate_ranks(config.head_dim, o.rank_fractions);
  CalibrationOptions co = o.calibration;
  co.error_windows = std::max(o.train_windows, o.profile_windows);
  // Both texts advance one layer at a time: only that layer's statistics and samples exist.
  CalibrationStream stream(model, ids, co);
  result.tokens = stream.tokens();
  std::unique_ptr<LayerStream> heldout_stream;
  if (!heldout_ids.empty()) {
    const int64_t n = std::min(o.heldout_windows,
                               static_cast<int64_t>(heldout_ids.size()) / co.ctx);
    EKV_CHECK(n >= 1, "the held-out text has ", heldout_ids.size(), " tokens; one window of ",
              co.ctx, " is needed");
    heldout_stream = std::make_unique<LayerStream>(model, heldout_ids, co.ctx, n);
  }
  int64_t profile_windows = 0;

  std::vector<float> inv_freq = model::rope_inverse_frequencies(config);
  const std::vector<float>& factors = model.weights().rope_freq_factors;
  for (size_t i = 0; i < factors.size() && i < inv_freq.size(); ++i) inv_freq[i] /= factors[i];
  result.layers.resize(static_cast<size_t>(config.n_layers));
  for (int64_t l = 0; l < config.n_layers; ++l) {
    const double layer_start = now_seconds();
    StiefLayer& sl = result.layers[l];
    const LayerData data = stream.next();
    LayerSamples heldout;
    if (heldout_stream) heldout_stream->run_layer(nullptr, heldout_stream->windows(), &heldout);
    const int64_t n_train = std::min<int64_t>(o.train_windows, data.samples.inputs.size());
    result.train_tokens = n_train * co.ctx;
    const LayerSamples profile_samples = first_windows(data.samples, o.profile_windows);
    profile_windows = static_cast<int64_t>(profile_samples.inputs.size());
    sl.eigen.key = basis_matrices(data.key);
    sl.eigen.value = basis_matrices(data.value);
    sl.stief = sl.eigen;
    if (o.training.shared_key) {
      const MatrixXd shared = shared_key_basis(data.key);
      for (MatrixXd& u : sl.stief.key) u = shared;
    }
    const LayerConstants lc =
        layer_constants(config, model.weights().layers[l], co.key_mode, inv_freq, co.ctx);
    std::vector<WindowInputs> windows;
    for (int64_t w = 0; w < n_train; ++w) {
      const auto& x = data.samples.inputs[w];
      windows.push_back(window_inputs(lc, x.data(), data.samples.outputs[w].data(),
                                      static_cast<int64_t>(x.size()) / config.d_model));
    }
    TrainProgress progress(l, config.n_layers, co.progress);
    sl.epoch_loss = train_layer_bases(lc, windows, result.ranks, o.training, l, sl.stief,
                                      [&](const LayerBases&, const StepInfo& i) {
                                        progress.draw(i.epoch, o.training.epochs, i.step,
                                                      i.steps_per_epoch, i.epoch_loss);
                                      });
    progress.finish();
    sl.eigen_profile =
        measure_profile(model, l, co.key_mode, sl.eigen, result.ranks, profile_samples);
    sl.stief_profile =
        measure_profile(model, l, co.key_mode, sl.stief, result.ranks, profile_samples);
    // Training minimises a sampled average; if it ended worse than where it started on the
    // profile windows, the Eigen bases are the better answer for this layer.
    sl.trained_profile = sl.stief_profile;
    if (!heldout.inputs.empty()) {
      sl.eigen_heldout = measure_profile(model, l, co.key_mode, sl.eigen, result.ranks, heldout);
      sl.trained_heldout = measure_profile(model, l, co.key_mode, sl.stief, result.ranks, heldout);
      sl.stief_heldout = sl.trained_heldout;
    }
    if (mean_error(sl.stief_profile) > mean_error(sl.eigen_profile)) {
      sl.kept_eigen = true;
      sl.stief = sl.eigen;
      sl.stief_profile = sl.eigen_profile;
      sl.stief_heldout = sl.eigen_heldout;
    }
    sl.seconds = now_seconds() - layer_start;
  }

  result.profile_tokens = profile_windows * co.ctx;
  result.seconds = now_seconds() - start;
  return result;
}

void apply_stief(model::Model& model, StiefResult& result, const StiefOptions& o) {
  check_options(o);
  const model::ModelConfig& config = model.config();
  const CalibrationOptions& co = o.calibration;
  EKV_CHECK(!model.is_compressed(), model.path(),
            ": the model is already compressed; apply the bases to the original model");
  EKV_CHECK(static_cast<int64_t>(result.layers.size()) == config.n_layers, "the result has ",
            result.layers.size(), " layers, the model ", config.n_layers);
  std::vector<LayerProfile> profiles;
  for (const StiefLayer& sl : result.layers) profiles.push_back(sl.stief_profile);
  const std::vector<Candidate> chosen = allot(o, config, result.ranks, profiles);

  model::ModelWeights new_weights = model.weights();
  nlohmann::json layers_json = nlohmann::json::array();
  for (int64_t l = 0; l < config.n_layers; ++l) {
    StiefLayer& sl = result.layers[l];
    sl.chosen = chosen[l];
    new_weights.layers[l] = fold_layer(model.weights().layers[l], config, co.key_mode, sl.stief.key,
                                       sl.stief.value, sl.chosen.key_rank, sl.chosen.value_rank);
    layers_json.push_back({{"key_rank", sl.chosen.key_rank},
                           {"value_rank", sl.chosen.value_rank},
                           {"error", sl.chosen.error},
                           {"cosine", sl.chosen.cosine},
                           {"kept_eigen", sl.kept_eigen},
                           {"epoch_loss", sl.epoch_loss}});
  }
  nlohmann::json meta = {
      {"method", "stief"},
      {"key_mode", model::key_mode_name(co.key_mode)},
      {"allotment", co.allotment == Allotment::kErrorBudget ? "error_budget" : "kv_budget"},
      {"calibration_source", co.source},
      {"calibration_tokens", result.tokens},
      {"calibration_ctx", co.ctx},
      {"train_tokens", result.train_tokens},
      {"profile_tokens", result.profile_tokens},
      {"epochs", o.training.epochs},
      {"lr", o.training.lr},
      {"seed", o.training.seed},
      {"batch", o.training.batch},
      {"key_basis", o.training.shared_key ? "shared" : "per_kv_head"},
      {"candidate_ranks", result.ranks},
      {"layers", layers_json}};
  if (co.allotment == Allotment::kErrorBudget) meta["error_budget"] = co.error_budget;
  if (co.allotment == Allotment::kKvBudget) meta["kv_budget"] = co.kv_budget;
  result.metadata_json = meta.dump();
  model.set_weights(std::move(new_weights));
  model.set_compression_json(result.metadata_json);
}

StiefResult calibrate_stief(model::Model& model, const std::vector<int32_t>& ids,
                            const std::vector<int32_t>& heldout_ids, const StiefOptions& o) {
  StiefResult result = train_stief(model, ids, heldout_ids, o);
  apply_stief(model, result, o);
  return result;
}

}  // namespace eigenkv::compress
