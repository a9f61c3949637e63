// StiefAttention: the float64 layer gradient against central finite differences, the float64
// layer against the engine's folded layer, orthonormality after every training step, training
// lowering the loss, determinism, the zero-epoch and full-rank limits, allocation to the byte,
// the profile plot, and the errors for bad input.
#include "compress/stief.h"

#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "compress/calibrate.h"
#include "compress/fold.h"
#include "compress/layer_grad.h"
#include "compress/profile_plot.h"
#include "model/model.h"
#include "model/save.h"
#include "model_test_util.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace eigenkv {
namespace {

using testing::logits_of;
using testing::max_relative_diff;

using compress::LayerBases;
using model::KeyMode;

// The families the float64 layer covers, as small random variants of their ArchSpec.
enum class Family { kLlama, kQwen2, kOptPreLn, kOptPostLn, kMpt, kMptNoBias, kMptClipScaled };

const char* family_name(Family f) {
  switch (f) {
    case Family::kLlama: return "llama";
    case Family::kQwen2: return "qwen2 (q/k/v biases, rotate-half RoPE)";
    case Family::kOptPreLn: return "opt pre-LN (LayerNorm+bias, ReLU, biases)";
    case Family::kOptPostLn: return "opt post-LN";
    case Family::kMpt: return "mpt (ALiBi, LayerNorm+bias, GELU, biases)";
    case Family::kMptNoBias: return "mpt no_bias";
    case Family::kMptClipScaled: return "mpt clip_qkv + softmax_scale";
  }
  return "?";
}

model::ArchSpec family_arch(Family f, bool rope) {
  model::ArchSpec a;
  switch (f) {
    case Family::kLlama:
      a = model::arch_for_gguf("llama", "test");
      break;
    case Family::kQwen2:
      a = model::arch_for_gguf("qwen2", "test");
      break;
    case Family::kOptPreLn:
      return model::opt_arch(true, true);
    case Family::kOptPostLn:
      return model::opt_arch(true, false);
    case Family::kMpt:
      return model::mpt_arch(false, 8, 0);
    case Family::kMptNoBias:
      return model::mpt_arch(true, 8, 0);
    case Family::kMptClipScaled:
      a = model::mpt_arch(false, 6, 0.9);
      a.query_scale = 0.27;
      return a;
  }
  a.position = rope ? model::PositionKind::kRope : model::PositionKind::kNone;
  return a;
}

// A random two-layer model of the family with non-trivial norm weights and every bias and tensor
// its ArchSpec has (a gate only for SwiGLU).
std::unique_ptr<model::Model> random_model(int64_t n_heads, int64_t n_kv, int64_t head_dim,
                                           Family family, bool rope, uint64_t seed) {
  model::ModelConfig c;
  c.arch = family_arch(family, rope);
  c.n_vocab = 32;
  c.d_model = 16;
  c.n_layers = 2;
  c.n_heads = n_heads;
  c.n_kv_heads = n_kv;
  c.head_dim = head_dim;
  c.d_ffn = 20;
  c.n_ctx_train = 64;
  c.rope_dims = head_dim;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, 0.4f);
  std::uniform_real_distribution<float> gain(0.5f, 1.5f);
  auto matrix = [&](int64_t rows, int64_t cols) {
    model::Matrix m;
    m.rows = rows;
    m.cols = cols;
    for (int64_t i = 0; i < rows * cols; ++i) m.data.push_back(normal(rng));
    return model::Weight::from_float(std::move(m));
  };
  auto gains = [&](int64_t n) {
    std::vector<float> v;
    for (int64_t i = 0; i < n; ++i) v.push_back(gain(rng));
    return v;
  };
  auto bias = [&](bool has, int64_t n) {
    std::vector<float> v;
    for (int64_t i = 0; has && i < n; ++i) v.push_back(normal(rng));
    return v;
  };
  const model::ArchSpec& a = c.arch;
  const bool norm_bias = a.norm == model::NormKind::kLayer && a.norm_bias;
  model::ModelWeights w;
  w.token_embedding = matrix(c.n_vocab, c.d_model);
  w.output = matrix(c.n_vocab, c.d_model);
  w.output_norm = gains(c.d_model);
  if (a.position == model::PositionKind::kLearned)
    w.position_embedding = matrix(c.n_ctx_train + a.position_offset, c.d_model);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    model::LayerWeights L;
    L.attn_norm = gains(c.d_model);
    L.ffn_norm = gains(c.d_model);
    L.attn_norm_bias = bias(norm_bias, c.d_model);
    L.ffn_norm_bias = bias(norm_bias, c.d_model);
    L.wq = matrix(n_heads * head_dim, c.d_model);
    L.wk = matrix(n_kv * head_dim, c.d_model);
    L.wv = matrix(n_kv * head_dim, c.d_model);
    L.wo = matrix(c.d_model, n_heads * head_dim);
    if (a.ffn == model::FfnKind::kSwiGlu) L.w_gate = matrix(c.d_ffn, c.d_model);
    L.w_up = matrix(c.d_ffn, c.d_model);
    L.w_down = matrix(c.d_model, c.d_ffn);
    L.bq = bias(a.q_bias, n_heads * head_dim);
    L.bk = bias(a.k_bias, n_kv * head_dim);
    L.bv = bias(a.v_bias, n_kv * head_dim);
    L.bo = bias(a.o_bias, c.d_model);
    L.b_up = bias(a.ffn_bias, c.d_ffn);
    L.b_down = bias(a.ffn_bias, c.d_model);
    L.key_rank = head_dim;
    L.value_rank = head_dim;
    w.layers.push_back(std::move(L));
  }
  return std::make_unique<model::Model>(c, std::move(w), nullptr, "random");
}

std::unique_ptr<model::Model> random_model(int64_t n_heads, int64_t n_kv, int64_t head_dim,
                                           bool rope, uint64_t seed) {
  return random_model(n_heads, n_kv, head_dim, Family::kLlama, rope, seed);
}

Eigen::MatrixXd random_matrix(int64_t rows, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<double> normal;
  Eigen::MatrixXd a(rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) a(r, c) = normal(rng);
  }
  return a;
}

Eigen::MatrixXd random_orthonormal(int64_t d, std::mt19937& rng) {
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(random_matrix(d, d, rng));
  return qr.householderQ() * Eigen::MatrixXd::Identity(d, d);
}

LayerBases random_bases(int64_t n_kv, int64_t d, bool orthonormal, std::mt19937& rng) {
  LayerBases b;
  for (int64_t j = 0; j < n_kv; ++j) {
    b.key.push_back(orthonormal ? random_orthonormal(d, rng) : random_matrix(d, d, rng));
    b.value.push_back(orthonormal ? random_orthonormal(d, rng) : random_matrix(d, d, rng));
  }
  return b;
}

// Inputs of layer 0: random residual rows; the target is the uncompressed layer's output.
struct Window {
  std::vector<float> x, y;
  int64_t n = 0;
};

Window layer_window(const model::Model& m, int64_t n, uint64_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  Window w;
  w.n = n;
  for (int64_t i = 0; i < n * m.config().d_model; ++i) w.x.push_back(normal(rng));
  w.y = w.x;
  kv::KvCache cache = m.new_cache(n);
  m.layer_forward(0, m.weights().layers[0], w.y.data(), n, cache, 0);
  return w;
}

double orthonormality_error(const Eigen::MatrixXd& u) {
  return (u.transpose() * u - Eigen::MatrixXd::Identity(u.cols(), u.cols())).cwiseAbs().maxCoeff();
}

struct ModeCase {
  int64_t n_heads, n_kv;
  KeyMode mode;
  Family family = Family::kLlama;
};

std::string describe(const ModeCase& mc) {
  return cat(family_name(mc.family), ", ", model::key_mode_name(mc.mode), ", heads ", mc.n_heads,
             "/", mc.n_kv);
}

const ModeCase kModes[] = {
    {4, 2, KeyMode::kPre},
    {4, 2, KeyMode::kPost},
    {2, 2, KeyMode::kPre},
    {3, 1, KeyMode::kNoRope},
    {4, 2, KeyMode::kPre, Family::kQwen2},
    {4, 2, KeyMode::kPost, Family::kQwen2},
    {3, 1, KeyMode::kNoRope, Family::kQwen2},
    {4, 4, KeyMode::kNoRope, Family::kOptPreLn},
    {4, 4, KeyMode::kNoRope, Family::kOptPostLn},
    {4, 2, KeyMode::kNoRope, Family::kOptPostLn},
    {4, 4, KeyMode::kNoRope, Family::kMpt},
    {3, 1, KeyMode::kNoRope, Family::kMpt},  // 3 heads: ALiBi's interleaved slopes
    {4, 2, KeyMode::kNoRope, Family::kMptNoBias},
    {4, 4, KeyMode::kNoRope, Family::kMptClipScaled},
};

std::unique_ptr<model::Model> case_model(const ModeCase& mc, int64_t head_dim, uint64_t seed) {
  return random_model(mc.n_heads, mc.n_kv, head_dim, mc.family, mc.mode != KeyMode::kNoRope,
                      seed);
}

// The engine's output of layer 0 with weights L on the window's input.
std::vector<float> engine_layer(const model::Model& m, const model::LayerWeights& L,
                                const Window& win) {
  kv::KvCache cache({kv::LayerShape{m.config().n_kv_heads, L.key_rank, L.value_rank}}, win.n);
  std::vector<float> x = win.x;
  m.layer_forward(0, L, x.data(), win.n, cache, 0);
  return x;
}

// Largest |a - b| over the largest |b| of a [T, d] float64 matrix against row-major floats.
double max_relative_diff(const Eigen::MatrixXd& a, const std::vector<float>& b) {
  double diff = 0, scale = 1e-12;
  for (int64_t t = 0; t < a.rows(); ++t) {
    for (int64_t i = 0; i < a.cols(); ++i) {
      const double bi = b[t * a.cols() + i];
      diff = std::max(diff, std::abs(a(t, i) - bi));
      scale = std::max(scale, std::abs(bi));
    }
  }
  return diff / scale;
}

// ---------------------------------------------------------------------------------------------

TEST(LayerGrad, MatchesCentralFiniteDifferencesInFloat64) {
  for (const ModeCase& mc : kModes) {
    const int64_t dh = 6;
    auto m = case_model(mc, dh, 3);
    const Window win = layer_window(*m, 7, 5);
    const auto c = compress::layer_constants(m->config(), m->weights().layers[0], mc.mode,
                                             model::rope_inverse_frequencies(m->config()), 8);
    const auto w = compress::window_inputs(c, win.x.data(), win.y.data(), win.n);
    std::mt19937 rng(9);
    // Free (non-orthonormal) matrices: the gradient is the Euclidean one of D(U).
    LayerBases b = random_bases(mc.n_kv, dh, false, rng);
    double case_worst = 0;
    for (auto [rk, rv] : {std::pair<int64_t, int64_t>{3, 4}, {6, 2}, {1, 5}}) {
      LayerBases grad = b;
      for (auto* set : {&grad.key, &grad.value})
        for (auto& g : *set) g.setZero();
      compress::window_squared_error(c, w, b, rk, rv, &grad);
      double worst = 0, scale = 0;
      for (int kind = 0; kind < 2; ++kind) {
        for (int64_t j = 0; j < mc.n_kv; ++j) {
          Eigen::MatrixXd& u = kind ? b.value[j] : b.key[j];
          const Eigen::MatrixXd& g = kind ? grad.value[j] : grad.key[j];
          for (int64_t r = 0; r < dh; ++r) {
            for (int64_t col = 0; col < dh; ++col) {
              const double h = 1e-5, keep = u(r, col);
              u(r, col) = keep + h;
              const double plus = compress::window_squared_error(c, w, b, rk, rv, nullptr);
              u(r, col) = keep - h;
              const double minus = compress::window_squared_error(c, w, b, rk, rv, nullptr);
              u(r, col) = keep;
              const double fd = (plus - minus) / (2 * h);
              worst = std::max(worst, std::abs(fd - g(r, col)));
              scale = std::max(scale, std::abs(fd));
              // Columns past the rank do not enter the loss.
              if (col >= (kind ? rv : rk)) {
                EXPECT_EQ(g(r, col), 0.0);
              }
            }
          }
        }
      }
      EXPECT_GT(scale, 1e-3) << describe(mc);
      EXPECT_LT(worst / scale, 1e-6) << describe(mc) << " ranks " << rk << "/" << rv;
      case_worst = std::max(case_worst, worst / scale);
    }
    std::printf("finite differences: %-50s worst relative difference %.2e\n",
                describe(mc).c_str(), case_worst);
  }
}

TEST(LayerGrad, Float64LayerMatchesTheEnginesFoldedLayer) {
  for (const ModeCase& mc : kModes) {
    const int64_t dh = 8;
    auto m = case_model(mc, dh, 4);
    const Window win = layer_window(*m, 20, 6);
    const auto c = compress::layer_constants(m->config(), m->weights().layers[0], mc.mode,
                                             model::rope_inverse_frequencies(m->config()), 20);
    const auto w = compress::window_inputs(c, win.x.data(), win.y.data(), win.n);
    std::mt19937 rng(10);
    const LayerBases b = random_bases(mc.n_kv, dh, true, rng);
    // At full rank any orthonormal bases give the uncompressed layer: the engine's own output.
    EXPECT_LT(max_relative_diff(compress::projected_layer_output(c, w, b, dh, dh), win.y), 1e-5)
        << describe(mc);
    if (m->config().arch.clip_qkv > 0) {
      // The clamp is at work (some q, k or v sits on it), and the full-rank match above needs it.
      double top = 0;
      for (const auto* set : {&w.q, &w.k, &w.v})
        for (const auto& x : *set) top = std::max(top, x.cwiseAbs().maxCoeff());
      EXPECT_NEAR(top, static_cast<float>(m->config().arch.clip_qkv), 1e-6) << describe(mc);
    }
    compress::LayerSamples samples;
    samples.ctx = win.n;
    samples.inputs = {win.x};
    samples.outputs = {win.y};
    for (auto [rk, rv] : {std::pair<int64_t, int64_t>{3, 5}, {8, 8}, {5, 2}}) {
      const double d = compress::window_squared_error(c, w, b, rk, rv, nullptr);
      const auto folded = compress::fold_layer(m->weights().layers[0], m->config(), mc.mode, b.key,
                                               b.value, rk, rv);
      const compress::Candidate engine = compress::measure_layer(*m, 0, folded, samples);
      EXPECT_NEAR(std::sqrt(d / w.target_sq), engine.error, 1e-5)
          << describe(mc) << " ranks " << rk << "/" << rv;
      EXPECT_LT(max_relative_diff(compress::projected_layer_output(c, w, b, rk, rv),
                                  engine_layer(*m, folded, win)),
                1e-5)
          << describe(mc) << " ranks " << rk << "/" << rv;
    }
  }
}

// The same agreement on the real tiny models of each family (../shared), every layer, with the
// calibration's own Eigen bases and with random ones, on calibration text.
void expect_real_layers_match(const std::string& rel, KeyMode mode) {
  auto m = model::Model::load(testing::shared_path(rel));
  const std::vector<int32_t> ids = testing::repo_text_ids(*m, "data/tinystories-calib.txt");
  compress::CalibrationOptions o;
  o.key_mode = mode;
  o.ctx = 48;
  o.max_tokens = 4 * 48;
  o.error_windows = 2;
  o.progress = false;
  compress::CalibrationStream stream(*m, ids, o);
  const model::ModelConfig& cfg = m->config();
  const int64_t dh = cfg.head_dim;
  std::mt19937 rng(21);
  double worst = 0;
  for (int64_t l = 0; l < cfg.n_layers; ++l) {
    const compress::LayerData data = stream.next();
    const auto c = compress::layer_constants(cfg, m->weights().layers[l], mode,
                                             model::rope_inverse_frequencies(cfg), o.ctx);
    LayerBases eigen;
    for (const auto& e : data.key) eigen.key.push_back(e.vectors);
    for (const auto& e : data.value) eigen.value.push_back(e.vectors);
    const LayerBases random = random_bases(cfg.n_kv_heads, dh, true, rng);
    for (const LayerBases* b : {static_cast<const LayerBases*>(&eigen), &random}) {
      for (auto [rk, rv] : {std::pair<int64_t, int64_t>{dh / 2, 3 * dh / 4}, {dh, dh}}) {
        double d = 0, ref = 0;
        for (size_t i = 0; i < data.samples.inputs.size(); ++i) {
          const auto w = compress::window_inputs(c, data.samples.inputs[i].data(),
                                                 data.samples.outputs[i].data(), o.ctx);
          d += compress::window_squared_error(c, w, *b, rk, rv, nullptr);
          ref += w.target_sq;
        }
        const auto folded =
            compress::fold_layer(m->weights().layers[l], cfg, mode, b->key, b->value, rk, rv);
        const compress::Candidate engine = compress::measure_layer(*m, l, folded, data.samples);
        EXPECT_NEAR(std::sqrt(d / ref), engine.error, 1e-4 * std::max(1.0, engine.error))
            << rel << " layer " << l << (b == &eigen ? " eigen" : " random") << " ranks " << rk
            << "/" << rv;
        worst = std::max(worst, std::abs(std::sqrt(d / ref) - engine.error));
      }
    }
  }
  std::printf("%s (%s): float64 vs engine layer error, largest difference %.2e\n", rel.c_str(),
              model::key_mode_name(mode), worst);
}

TEST(LayerGrad, Float64LayerMatchesTheRealTinyModelsOfEachFamily) {
  int ran = 0;
  for (auto [rel, mode] : {std::pair<const char*, KeyMode>{"models/opt-tiny-hf", KeyMode::kNoRope},
                           {"models/mpt-tiny-hf", KeyMode::kNoRope},
                           {"models/qwen2-tiny-hf", KeyMode::kPre},
                           {"models/qwen2-tiny-hf", KeyMode::kPost}}) {
    if (!std::filesystem::exists(testing::shared_path(rel))) continue;
    expect_real_layers_match(rel, mode);
    ++ran;
  }
  if (ran == 0) GTEST_SKIP() << "skipped: ../shared/models/{opt,mpt,qwen2}-tiny-hf are absent";
}

TEST(LayerGrad, RefusesWhatItDoesNotCoverByName) {
  for (auto [field, edit] :
       {std::pair<const char*, void (*)(model::ArchSpec&)>{
            "sliding window", [](model::ArchSpec& a) { a.sliding_window = 8; }},
        {"softcap", [](model::ArchSpec& a) { a.attn_softcap = 30; }}}) {
    auto m = random_model(2, 2, 8, true, 1);
    model::ModelConfig cfg = m->config();
    edit(cfg.arch);
    try {
      compress::layer_constants(cfg, m->weights().layers[0], KeyMode::kPre,
                                model::rope_inverse_frequencies(cfg), 8);
      ADD_FAILURE() << field << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  }
}

// ---------------------------------------------------------------------------------------------

struct TrainingSetup {
  std::unique_ptr<model::Model> model;
  compress::LayerConstants constants;
  std::vector<compress::WindowInputs> windows;
  LayerBases start;
};

TrainingSetup training_setup(KeyMode mode) {
  TrainingSetup s;
  const bool rope = mode != KeyMode::kNoRope;
  s.model = random_model(4, 2, 8, rope, 12);
  s.constants = compress::layer_constants(s.model->config(), s.model->weights().layers[0], mode,
                                          model::rope_inverse_frequencies(s.model->config()), 16);
  for (uint64_t i = 0; i < 4; ++i) {
    const Window win = layer_window(*s.model, 16, 100 + i);
    s.windows.push_back(compress::window_inputs(s.constants, win.x.data(), win.y.data(), win.n));
  }
  std::mt19937 rng(13);
  s.start = random_bases(2, 8, true, rng);
  return s;
}

double mean_relative_error(const TrainingSetup& s, const LayerBases& b,
                           const std::vector<int64_t>& ranks) {
  double sum = 0;
  int n = 0;
  for (const auto& w : s.windows) {
    for (int64_t rk : ranks) {
      for (int64_t rv : ranks) {
        sum += std::sqrt(compress::window_squared_error(s.constants, w, b, rk, rv, nullptr) /
                         w.target_sq);
        ++n;
      }
    }
  }
  return sum / n;
}

TEST(StiefTraining, BasesStayOrthonormalAfterEveryStepAndTheLossFalls) {
  for (KeyMode mode : {KeyMode::kPre, KeyMode::kPost, KeyMode::kNoRope}) {
    TrainingSetup s = training_setup(mode);
    const std::vector<int64_t> ranks = {3, 5};
    compress::StiefTraining t;
    t.epochs = 30;
    t.lr = 2e-2;
    LayerBases b = s.start;
    int steps = 0;
    double worst = 0;
    compress::train_layer_bases(s.constants, s.windows, ranks, t, 0, b,
                                [&](const LayerBases& now, const compress::StepInfo&) {
                                  ++steps;
                                  for (const auto* set : {&now.key, &now.value})
                                    for (const auto& u : *set)
                                      worst = std::max(worst, orthonormality_error(u));
                                });
    EXPECT_EQ(steps, 30 * 2);  // 4 windows, batch 2
    EXPECT_LT(worst, 1e-6);
    const double before = mean_relative_error(s, s.start, ranks);
    const double after = mean_relative_error(s, b, ranks);
    EXPECT_LT(after, 0.85 * before)
        << model::key_mode_name(mode) << ": " << before << " -> " << after;
  }
}

TEST(StiefTraining, IsDeterministicForASeedAndZeroEpochsChangeNothing) {
  TrainingSetup s = training_setup(KeyMode::kPre);
  compress::StiefTraining t;
  t.epochs = 3;
  t.seed = 7;
  LayerBases a = s.start, b = s.start, c = s.start;
  compress::train_layer_bases(s.constants, s.windows, {3, 5}, t, 0, a);
  compress::train_layer_bases(s.constants, s.windows, {3, 5}, t, 0, b);
  for (size_t j = 0; j < a.key.size(); ++j) {
    EXPECT_EQ(a.key[j], b.key[j]);
    EXPECT_EQ(a.value[j], b.value[j]);
  }
  EXPECT_NE(a.key[0], s.start.key[0]);
  t.epochs = 0;
  compress::train_layer_bases(s.constants, s.windows, {3, 5}, t, 0, c);
  EXPECT_EQ(c.key[0], s.start.key[0]);
  EXPECT_EQ(c.value[1], s.start.value[1]);
}

TEST(StiefTraining, SharedKeyBasisStaysSharedAndItsGradientIsTheSumOverHeads) {
  TrainingSetup s = training_setup(KeyMode::kPre);
  LayerBases b = s.start;
  b.key[1] = b.key[0];
  // The gradient through a shared U is the sum of the per-head gradients: check against a
  // finite difference moving both heads' copies together.
  LayerBases grad = b;
  for (auto* set : {&grad.key, &grad.value})
    for (auto& g : *set) g.setZero();
  const auto& w = s.windows[0];
  compress::window_squared_error(s.constants, w, b, 3, 5, &grad);
  const Eigen::MatrixXd sum = grad.key[0] + grad.key[1];
  const double h = 1e-5;
  LayerBases plus = b, minus = b;
  for (int j = 0; j < 2; ++j) {
    plus.key[j](2, 1) += h;
    minus.key[j](2, 1) -= h;
  }
  const double fd = (compress::window_squared_error(s.constants, w, plus, 3, 5, nullptr) -
                     compress::window_squared_error(s.constants, w, minus, 3, 5, nullptr)) /
                    (2 * h);
  EXPECT_NEAR(fd, sum(2, 1), 1e-6 * std::max(1.0, std::abs(fd)));

  compress::StiefTraining t;
  t.epochs = 20;
  t.lr = 2e-2;
  t.shared_key = true;
  LayerBases trained = b;
  compress::train_layer_bases(s.constants, s.windows, {3, 5}, t, 0, trained,
                              [](const LayerBases& now, const compress::StepInfo&) {
                                EXPECT_EQ(now.key[0], now.key[1]);
                                EXPECT_LT(orthonormality_error(now.key[0]), 1e-6);
                              });
  EXPECT_LT(mean_relative_error(s, trained, {3, 5}), mean_relative_error(s, b, {3, 5}));
}

TEST(StiefTraining, NonFiniteLossStopsNamingTheLayer) {
  TrainingSetup s = training_setup(KeyMode::kPre);
  s.constants.w_down(0, 0) = NAN;
  compress::StiefTraining t;
  t.epochs = 1;
  LayerBases b = s.start;
  try {
    compress::train_layer_bases(s.constants, s.windows, {3, 5}, t, 3, b);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not finite"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// Whole calibration on the bundled stories260K (head width 8).

std::vector<int32_t> calibration_ids(const model::Model& m) {
  return testing::repo_text_ids(m, "data/tinystories-calib.txt");
}

compress::StiefOptions small_options() {
  compress::StiefOptions o;
  o.calibration.allotment = compress::Allotment::kKvBudget;
  o.calibration.kv_budget = 0.75;
  o.calibration.ctx = 128;
  o.calibration.max_tokens = 2048;
  o.calibration.progress = false;
  o.rank_fractions = {0.5, 0.75, 1.0};  // ranks 4, 6, 8
  o.train_windows = 4;
  o.profile_windows = 2;
  o.training.epochs = 2;
  return o;
}

std::unique_ptr<model::Model> stories() {
  return model::Model::load(testing::source_path("models/stories260K.gguf"));
}

TEST(CalibrateStief, FullRankModelEqualsTheOriginal) {
  for (KeyMode mode : {KeyMode::kPre, KeyMode::kPost}) {
    auto m = stories();
    const std::vector<int32_t> ids = calibration_ids(*m);
    const std::vector<int32_t> probe(ids.begin(), ids.begin() + 100);
    const std::vector<float> before = logits_of(*m, probe);
    compress::StiefOptions o = small_options();
    o.calibration.key_mode = mode;
    o.calibration.kv_budget = 1.0;
    const compress::StiefResult r = compress::calibrate_stief(*m, ids, {}, o);
    for (const auto& l : r.layers) {
      EXPECT_EQ(l.chosen.key_rank, 8);
      EXPECT_EQ(l.chosen.value_rank, 8);
      // Training moved the bases, and the full-rank fold does not care.
      EXPECT_NE(l.stief.key[0], l.eigen.key[0]);
    }
    EXPECT_LT(max_relative_diff(logits_of(*m, probe), before), 1e-4) << model::key_mode_name(mode);
  }
}

TEST(CalibrateStief, ZeroEpochsGiveEigenAttention) {
  auto m = stories();
  auto eigen = stories();
  const std::vector<int32_t> ids = calibration_ids(*m);
  compress::StiefOptions o = small_options();
  o.training.epochs = 0;
  const compress::StiefResult r = compress::calibrate_stief(*m, ids, {}, o);
  // The Eigen path's own bases, folded at the ranks Stief allotted, give the same model.
  compress::CalibrationOptions eo = o.calibration;
  eo.allotment = compress::Allotment::kThreshold;
  eo.threshold = 0;
  const compress::CalibrationResult er = compress::calibrate_eigen(*eigen, ids, eo);
  model::ModelWeights w = stories()->weights();
  for (size_t l = 0; l < r.layers.size(); ++l) {
    EXPECT_FALSE(r.layers[l].kept_eigen);
    std::vector<Eigen::MatrixXd> key, value;
    for (const auto& b : er.layers[l].key) key.push_back(b.vectors);
    for (const auto& b : er.layers[l].value) value.push_back(b.vectors);
    for (size_t j = 0; j < key.size(); ++j) EXPECT_EQ(r.layers[l].stief.key[j], key[j]);
    w.layers[l] = compress::fold_layer(w.layers[l], m->config(), o.calibration.key_mode, key, value,
                                       r.layers[l].chosen.key_rank, r.layers[l].chosen.value_rank);
    for (size_t i = 0; i < r.layers[l].stief_profile.size(); ++i) {
      EXPECT_EQ(r.layers[l].stief_profile[i].error, r.layers[l].eigen_profile[i].error);
    }
  }
  eigen->set_weights(std::move(w));
  const std::vector<int32_t> probe(ids.begin(), ids.begin() + 64);
  EXPECT_EQ(logits_of(*m, probe), logits_of(*eigen, probe));
}

TEST(CalibrateStief, KvBudgetIsMetExactlyInBytesAndTheFileRecordsTheRun) {
  auto m = stories();
  const std::vector<int32_t> ids = calibration_ids(*m);
  compress::StiefOptions o = small_options();
  o.training.seed = 5;
  const int64_t full = m->kv_bytes_per_token();
  const compress::StiefResult r = compress::calibrate_stief(*m, ids, {}, o);
  // 5 layers x 2 x 8 = 80 numbers per KV head; 0.75 of it = 60 is reachable (6 + 6 per layer).
  EXPECT_EQ(m->kv_bytes_per_token(), full * 3 / 4);
  int64_t numbers = 0;
  for (const auto& l : r.layers) {
    numbers += l.chosen.key_rank + l.chosen.value_rank;
    EXPECT_EQ(l.stief_profile.size(), 9u);  // 3 x 3 (r_K, r_V)
    for (size_t i = 0; i < l.stief_profile.size(); ++i) {
      // Kept only if at least as good as Eigen on average; per pair it may differ.
      EXPECT_TRUE(std::isfinite(l.stief_profile[i].error));
    }
  }
  EXPECT_EQ(numbers * m->config().n_kv_heads * 4, m->kv_bytes_per_token());
  const std::string path = testing::temp_path("stief.gguf");
  model::save_gguf(*m, path);
  auto reloaded = model::Model::load(path);
  std::filesystem::remove(path);
  EXPECT_EQ(reloaded->kv_bytes_per_token(), m->kv_bytes_per_token());
  const auto meta = nlohmann::json::parse(reloaded->compression_json());
  EXPECT_EQ(meta["method"], "stief");
  EXPECT_EQ(meta["epochs"], 2);
  EXPECT_EQ(meta["seed"], 5);
  EXPECT_EQ(meta["calibration_tokens"], 2048);
  EXPECT_EQ(meta["train_tokens"], 4 * 128);
  const std::vector<int32_t> probe(ids.begin(), ids.begin() + 64);
  EXPECT_EQ(logits_of(*reloaded, probe), logits_of(*m, probe));
}

TEST(CalibrateStief, WritesAReadableProfilePlot) {
  auto m = stories();
  const std::vector<int32_t> ids = calibration_ids(*m);
  compress::StiefOptions o = small_options();
  const std::vector<int32_t> heldout(ids.end() - 600, ids.end());
  const compress::StiefResult r = compress::calibrate_stief(*m, ids, heldout, o);
  ASSERT_EQ(r.layers[0].stief_heldout.size(), 9u);
  const std::string svg = compress::profile_svg(r, 8, "test");
  size_t lines = 0;
  for (size_t at = svg.find("<polyline"); at != std::string::npos;
       at = svg.find("<polyline", at + 1))
    ++lines;
  EXPECT_EQ(lines, 2 * r.layers.size());  // Eigen and Stief per layer
  EXPECT_NE(svg.find("held-out"), std::string::npos);
  EXPECT_EQ(svg.rfind("</svg>\n"), svg.size() - 7);
}

TEST(CalibrateStief, BadInputGetsClearErrors) {
  auto m = stories();
  const std::vector<int32_t> ids = calibration_ids(*m);
  auto message = [&](const compress::StiefOptions& o, const std::vector<int32_t>& text) {
    try {
      compress::calibrate_stief(*m, text, {}, o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  compress::StiefOptions o = small_options();
  o.calibration.kv_budget = 0.3;  // below rank 4 of 8 everywhere (0.5)
  EXPECT_NE(message(o, ids).find("the smallest is 0.5"), std::string::npos) << message(o, ids);
  o = small_options();
  o.calibration.allotment = compress::Allotment::kErrorBudget;
  o.calibration.error_budget = 1e-9;
  o.rank_fractions = {0.5, 0.75};
  EXPECT_NE(message(o, ids).find("smallest error this layer reaches"), std::string::npos)
      << message(o, ids);
  o = small_options();
  o.calibration.allotment = compress::Allotment::kThreshold;
  EXPECT_NE(message(o, ids).find("not a threshold"), std::string::npos);
  o = small_options();
  const std::vector<int32_t> few = m->tokenizer().encode("Once upon a time.", true);
  EXPECT_NE(message(o, few).find("are needed"), std::string::npos) << message(o, few);
  o.training.lr = NAN;
  EXPECT_NE(message(o, ids).find("learning rate"), std::string::npos);
  EXPECT_FALSE(m->is_compressed());  // nothing half-done

  EXPECT_THROW(compress::candidate_ranks(8, {}), Error);
  EXPECT_THROW(compress::candidate_ranks(8, {0.5, 1.5}), Error);
  EXPECT_THROW(compress::candidate_ranks(8, {0.0}), Error);
  EXPECT_THROW(compress::candidate_ranks(8, {0.5, 0.55}), Error);  // both rank 4
  EXPECT_EQ(compress::candidate_ranks(64, {0.9, 0.5, 0.6}), (std::vector<int64_t>{32, 38, 58}));
  EXPECT_THROW(compress::parse_rank_fractions("0.5,abc"), Error);
  EXPECT_THROW(compress::parse_rank_fractions("0.5,,0.7"), Error);
  EXPECT_THROW(compress::parse_rank_fractions(""), Error);
  EXPECT_EQ(compress::parse_rank_fractions("0.5,0.75"), (std::vector<double>{0.5, 0.75}));
}

// StiefAttention against Eigen Attention at the same candidate ranks on the real tiny models of
// the families this float64 layer was extended to: on every layer the trained bases' own profile
// (before the keep-Eigen fallback, which would make the comparison hold by construction) must
// have a lower mean error than Eigen's, and the folded model must meet the KV budget.
void expect_stief_below_eigen(const std::string& rel, double lr) {
  auto m = model::Model::load(testing::shared_path(rel));
  const std::vector<int32_t> ids = calibration_ids(*m);
  const int64_t full = m->kv_bytes_per_token();
  compress::StiefOptions o;
  o.calibration.key_mode = KeyMode::kNoRope;
  o.calibration.allotment = compress::Allotment::kKvBudget;
  o.calibration.kv_budget = 0.5;
  o.calibration.ctx = 64;
  o.calibration.max_tokens = 1024;
  o.calibration.progress = false;
  o.rank_fractions = {0.25, 0.5, 0.75};
  o.train_windows = 8;
  o.profile_windows = 4;
  o.training.epochs = 4;
  o.training.lr = lr;
  const compress::StiefResult r = compress::calibrate_stief(*m, ids, {}, o);
  ASSERT_EQ(static_cast<int64_t>(r.layers.size()), m->config().n_layers);
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const auto& sl = r.layers[l];
    ASSERT_EQ(sl.trained_profile.size(), sl.eigen_profile.size());
    double eigen = 0, stief = 0;
    for (size_t i = 0; i < sl.eigen_profile.size(); ++i) {
      EXPECT_EQ(sl.trained_profile[i].key_rank, sl.eigen_profile[i].key_rank);
      EXPECT_EQ(sl.trained_profile[i].value_rank, sl.eigen_profile[i].value_rank);
      eigen += sl.eigen_profile[i].error;
      stief += sl.trained_profile[i].error;
    }
    eigen /= static_cast<double>(sl.eigen_profile.size());
    stief /= static_cast<double>(sl.eigen_profile.size());
    EXPECT_LT(stief, eigen) << rel << " layer " << l;
    std::printf("%s layer %zu: mean layer error over %zu (r_K, r_V) pairs: Eigen %.5f, Stief %.5f "
                "(chosen %lld/%lld, error %.5f)\n",
                rel.c_str(), l, sl.eigen_profile.size(), eigen, stief,
                static_cast<long long>(sl.chosen.key_rank),
                static_cast<long long>(sl.chosen.value_rank), sl.chosen.error);
  }
  EXPECT_TRUE(m->is_compressed());
  EXPECT_LE(m->kv_bytes_per_token(), full / 2);
}

TEST(CalibrateStief, StiefLayerErrorIsBelowEigenOnMpt) {
  EKV_REQUIRE_SHARED("models/mpt-tiny-hf");
  expect_stief_below_eigen("models/mpt-tiny-hf", 1e-2);
}

TEST(CalibrateStief, StiefLayerErrorIsBelowEigenOnOpt) {
  EKV_REQUIRE_SHARED("models/opt-tiny-hf");
  // OPT's layer errors are 10x smaller than MPT's (1e-4..1e-3): Adam's steps, whose size does not
  // scale with the gradient, overshoot at 1e-2 and the bases end worse than Eigen's.
  expect_stief_below_eigen("models/opt-tiny-hf", 1e-3);
}

TEST(CalibrateCli, StiefRunsAndRejectsAThreshold) {
  const std::string out = testing::temp_path("cli_stief.gguf");
  const std::string svg = testing::temp_path("cli_stief.svg");
  const std::string base = "OMP_NUM_THREADS=1 " + testing::eigenkv_binary() +
                           " calibrate --method stief -m " +
                           testing::source_path("models/stories260K.gguf") + " -f " +
                           testing::source_path("data/tinystories-calib.txt") +
                           " --tokens 1024 --ctx 128 --train-windows 2 --error-windows 1 "
                           "--epochs 1";
  int status = 0;
  const std::string text = testing::run_command(
      base + " --ranks 0.5,0.75 --kv-budget 0.6 --plot " + svg + " --json -o " + out + " 2>&1",
      &status);
  EXPECT_EQ(status, 0) << text;
  const auto j = nlohmann::json::parse(text.substr(text.find('{')));
  EXPECT_LE(j["kv_fraction"].get<double>(), 0.6);
  EXPECT_TRUE(std::filesystem::exists(svg));
  // The profiles are saved beside the model.
  const std::string profile = out.substr(0, out.size() - 5) + ".profile.json";
  EXPECT_EQ(j["profile_json"], profile);
  std::ifstream profile_in(profile);
  const auto pj = nlohmann::json::parse(profile_in);
  EXPECT_EQ(pj["layers"].size(), 5u);
  EXPECT_EQ(pj["layers"][0]["stief"].size(), 4u);  // 2 x 2 (r_K, r_V)
  EXPECT_EQ(pj["compression"]["method"], "stief");
  std::filesystem::remove(profile);
  // One training, two budgets, two files.
  const std::string pattern = testing::temp_path("cli_stief_{}.gguf");
  const std::string two = testing::run_command(
      base + " --ranks 0.5,0.75 --kv-budgets 0.6,0.75 --json -o " + pattern + " 2>&1", &status);
  EXPECT_EQ(status, 0) << two;
  const auto jt = nlohmann::json::parse(two.substr(two.find('{')));
  ASSERT_EQ(jt["outputs"].size(), 2u);
  EXPECT_LE(jt["outputs"][0]["kv_fraction"].get<double>(), 0.6);
  EXPECT_EQ(jt["outputs"][1]["kv_fraction"].get<double>(), 0.75);
  for (const auto& o : jt["outputs"]) {
    auto reloaded = model::Model::load(o["output"].get<std::string>());
    EXPECT_EQ(reloaded->kv_bytes_per_token(),
              static_cast<int64_t>(o["kv_bytes_per_token"].get<double>()));
    std::filesystem::remove(o["output"].get<std::string>());
  }
  EXPECT_EQ(jt["profile_json"], testing::temp_path("cli_stief_profile.json"));
  std::filesystem::remove(jt["profile_json"].get<std::string>());
  const std::string bad =
      testing::run_command(base + " --threshold 0.1 -o " + out + " 2>&1", &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(bad.find("--error-budget or --kv-budget"), std::string::npos) << bad;
  const std::string ranks =
      testing::run_command(base + " --kv-budget 0.6 --ranks 0.5,x -o " + out + " 2>&1", &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(ranks.find("not a number"), std::string::npos) << ranks;
  std::filesystem::remove(out);
  std::filesystem::remove(svg);
}

}  // namespace
}  // namespace eigenkv
