// Eigen Attention: the rank rule, eigenbases against an SVD, folding at full rank against the
// uncompressed logits in every key mode (no RoPE, pre, post; GQA and MHA), rank allotment, and
// the compressed model's save/reload round trip.
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>
#include <fstream>
#include <random>

#include "compress/allot.h"
#include "compress/calibrate.h"
#include "compress/eigen_basis.h"
#include "compress/fold.h"
#include "compress/gram.h"
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

using compress::RankRule;
using model::KeyMode;

Eigen::VectorXd spectrum(std::initializer_list<double> v) {
  Eigen::VectorXd s(static_cast<Eigen::Index>(v.size()));
  int i = 0;
  for (double x : v) s(i++) = x;
  return s;
}

TEST(RankRule, EnergyOnHandMadeSpectrum) {
  const Eigen::VectorXd s = spectrum({4, 3, 2, 1});  // total 10
  EXPECT_EQ(compress::rank_for_threshold(s, 0.0, RankRule::kEnergy), 4);
  EXPECT_EQ(compress::rank_for_threshold(s, 0.1, RankRule::kEnergy), 3);   // needs 9 = 4+3+2
  EXPECT_EQ(compress::rank_for_threshold(s, 0.11, RankRule::kEnergy), 3);  // needs 8.9
  EXPECT_EQ(compress::rank_for_threshold(s, 0.3, RankRule::kEnergy), 2);   // needs 7 = 4+3
  EXPECT_EQ(compress::rank_for_threshold(s, 0.61, RankRule::kEnergy), 1);  // needs 3.9
  // Trailing zeros cost nothing: eps = 0 keeps only the non-zero directions.
  EXPECT_EQ(compress::rank_for_threshold(spectrum({5, 2, 0, 0}), 0.0, RankRule::kEnergy), 2);
  EXPECT_EQ(compress::rank_for_threshold(spectrum({0, 0, 0}), 0.0, RankRule::kEnergy), 1);
}

TEST(RankRule, SingularValuesOnHandMadeSpectrum) {
  // Eigenvalues 16, 9, 4, 1 -> singular values 4, 3, 2, 1: the same cut points as above.
  const Eigen::VectorXd s = spectrum({16, 9, 4, 1});
  EXPECT_EQ(compress::rank_for_threshold(s, 0.1, RankRule::kSingular), 3);
  EXPECT_EQ(compress::rank_for_threshold(s, 0.3, RankRule::kSingular), 2);
  // The energy rule on the same spectrum: 30 total, 0.7 * 30 = 21 <= 16 + 9.
  EXPECT_EQ(compress::rank_for_threshold(s, 0.3, RankRule::kEnergy), 2);
  EXPECT_EQ(compress::rank_for_threshold(s, 0.15, RankRule::kEnergy), 3);  // needs 25.5 > 16 + 9
}

TEST(RankRule, LowerThresholdNeverGivesSmallerRank) {
  std::mt19937 rng(3);
  std::exponential_distribution<double> dist(1.0);
  for (int trial = 0; trial < 200; ++trial) {
    Eigen::VectorXd s(16);
    for (int i = 0; i < 16; ++i) s(i) = dist(rng);
    std::sort(s.data(), s.data() + 16, std::greater<>());
    for (RankRule rule : {RankRule::kEnergy, RankRule::kSingular}) {
      int64_t previous = 16;
      for (double eps = 0; eps < 0.99; eps += 0.01) {
        const int64_t r = compress::rank_for_threshold(s, eps, rule);
        EXPECT_LE(r, previous);
        previous = r;
      }
    }
  }
}

TEST(RankRule, RejectsThresholdOutsideRange) {
  EXPECT_THROW(compress::rank_for_threshold(spectrum({1, 1}), -0.1, RankRule::kEnergy), Error);
  EXPECT_THROW(compress::rank_for_threshold(spectrum({1, 1}), 1.0, RankRule::kEnergy), Error);
}

TEST(EigenBasis, GramDecompositionMatchesSvdOfStackedMatrix) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0, 1);
  const int n = 300, d = 12;
  std::vector<float> x(n * d);
  for (int t = 0; t < n; ++t) {
    for (int i = 0; i < d; ++i) x[t * d + i] = normal(rng) * (1.0f + 3.0f * (i % 4 == 0)) / (1 + i);
  }
  // Streamed in two parts: Gram matrices add up.
  Eigen::MatrixXd gram = Eigen::MatrixXd::Zero(d, d);
  compress::add_gram(gram, x.data(), 100, d, 0, d);
  compress::add_gram(gram, x.data() + 100 * d, n - 100, d, 0, d);
  const compress::EigenBasis b = compress::eigen_basis(gram);

  Eigen::MatrixXd stacked(n, d);
  for (int t = 0; t < n; ++t) {
    for (int i = 0; i < d; ++i) stacked(t, i) = x[t * d + i];
  }
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(stacked, Eigen::ComputeThinV);
  for (int i = 0; i < d; ++i) {
    const double sv2 = svd.singularValues()(i) * svd.singularValues()(i);
    EXPECT_NEAR(b.eigenvalues(i), sv2, 1e-9 * sv2) << i;
    EXPECT_NEAR(std::abs(b.vectors.col(i).dot(svd.matrixV().col(i))), 1.0, 1e-6) << i;
  }
  const Eigen::MatrixXd gram_of_vectors = b.vectors.transpose() * b.vectors;
  EXPECT_LT((gram_of_vectors - Eigen::MatrixXd::Identity(d, d)).cwiseAbs().maxCoeff(), 1e-12);
}

TEST(EigenBasis, RejectsNonFiniteGram) {
  Eigen::MatrixXd g = Eigen::MatrixXd::Identity(3, 3);
  g(1, 1) = NAN;
  EXPECT_THROW(compress::eigen_basis(g), Error);
}

// ---------------------------------------------------------------------------------------------
// A random Llama-shaped model, so every key mode and head layout can be checked.

std::unique_ptr<model::Model> synthetic_model(int64_t n_heads, int64_t n_kv, bool rope,
                                              uint64_t seed, bool qwen2 = false) {
  model::ModelConfig c;
  // qwen2: q/k/v biases and rotate-half RoPE pairs.
  c.arch = model::arch_for_gguf(qwen2 ? "qwen2" : "llama", "test");
  c.n_vocab = 64;
  c.d_model = 48;
  c.n_layers = 2;
  c.n_heads = n_heads;
  c.n_kv_heads = n_kv;
  c.head_dim = 12;
  c.d_ffn = 40;
  c.n_ctx_train = 128;
  c.rope_dims = c.head_dim;
  c.arch.position = rope ? model::PositionKind::kRope : model::PositionKind::kNone;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0, 0.3f);
  auto matrix = [&](int64_t rows, int64_t cols) {
    model::Matrix m;
    m.rows = rows;
    m.cols = cols;
    m.data.resize(static_cast<size_t>(rows * cols));
    for (float& v : m.data) v = normal(rng);
    return model::Weight::from_float(std::move(m));
  };
  auto ones = [&](int64_t n) { return std::vector<float>(static_cast<size_t>(n), 1.0f); };
  model::ModelWeights w;
  w.token_embedding = matrix(c.n_vocab, c.d_model);
  w.output = matrix(c.n_vocab, c.d_model);
  w.output_norm = ones(c.d_model);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    model::LayerWeights L;
    L.attn_norm = ones(c.d_model);
    L.ffn_norm = ones(c.d_model);
    L.wq = matrix(n_heads * c.head_dim, c.d_model);
    L.wk = matrix(n_kv * c.head_dim, c.d_model);
    L.wv = matrix(n_kv * c.head_dim, c.d_model);
    L.wo = matrix(c.d_model, n_heads * c.head_dim);
    L.w_gate = matrix(c.d_ffn, c.d_model);
    L.w_up = matrix(c.d_ffn, c.d_model);
    L.w_down = matrix(c.d_model, c.d_ffn);
    if (qwen2) {
      for (auto [bias, n] : {std::pair{&L.bq, n_heads}, {&L.bk, n_kv}, {&L.bv, n_kv}}) {
        for (int64_t i = 0; i < n * c.head_dim; ++i) bias->push_back(normal(rng));
      }
    }
    L.key_rank = c.head_dim;
    L.value_rank = c.head_dim;
    w.layers.push_back(std::move(L));
  }
  return std::make_unique<model::Model>(c, std::move(w), nullptr, "synthetic");
}

std::vector<Eigen::MatrixXd> random_orthonormal(int64_t count, int64_t d, std::mt19937& rng) {
  std::normal_distribution<double> normal;
  std::vector<Eigen::MatrixXd> out;
  for (int64_t i = 0; i < count; ++i) {
    Eigen::MatrixXd a(d, d);
    for (int64_t r = 0; r < d; ++r) {
      for (int64_t c = 0; c < d; ++c) a(r, c) = normal(rng);
    }
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(a);
    out.push_back(qr.householderQ() * Eigen::MatrixXd::Identity(d, d));
  }
  return out;
}

// With every rank at d_h and any orthonormal bases, a folded model computes the same function.
void expect_full_rank_fold_is_exact(int64_t n_heads, int64_t n_kv, bool rope, KeyMode mode,
                                    bool qwen2 = false) {
  auto m = synthetic_model(n_heads, n_kv, rope, 17, qwen2);
  std::vector<int32_t> ids;
  for (int i = 0; i < 40; ++i) ids.push_back((i * 7 + 3) % 64);
  const std::vector<float> before = logits_of(*m, ids);
  std::mt19937 rng(23);
  model::ModelWeights w = m->weights();
  const int64_t dh = m->config().head_dim;
  for (int64_t l = 0; l < m->config().n_layers; ++l) {
    w.layers[l] = compress::fold_layer(m->weights().layers[l], m->config(), mode,
                                       random_orthonormal(n_kv, dh, rng),
                                       random_orthonormal(n_kv, dh, rng), dh, dh);
  }
  m->set_weights(std::move(w));
  EXPECT_LT(max_relative_diff(logits_of(*m, ids), before), 1e-4)
      << "heads " << n_heads << "/" << n_kv << " mode " << model::key_mode_name(mode)
      << (qwen2 ? " (q/k/v biases, rotate-half RoPE)" : "");
}

TEST(Fold, FullRankReproducesLogitsInEveryMode) {
  for (auto [nh, nkv] : {std::pair<int64_t, int64_t>{4, 4}, {4, 2}, {6, 2}}) {
    expect_full_rank_fold_is_exact(nh, nkv, true, KeyMode::kPre);
    expect_full_rank_fold_is_exact(nh, nkv, true, KeyMode::kPost);
    expect_full_rank_fold_is_exact(nh, nkv, false, KeyMode::kNoRope);
    for (KeyMode mode : {KeyMode::kPre, KeyMode::kPost})
      expect_full_rank_fold_is_exact(nh, nkv, true, mode, true);
    expect_full_rank_fold_is_exact(nh, nkv, false, KeyMode::kNoRope, true);
  }
}

TEST(Fold, RejectsRanksOutsideTheHead) {
  auto m = synthetic_model(4, 2, true, 1);
  std::mt19937 rng(2);
  const auto u = random_orthonormal(2, 12, rng);
  EXPECT_THROW(
      compress::fold_layer(m->weights().layers[0], m->config(), KeyMode::kPre, u, u, 13, 4), Error);
  EXPECT_THROW(compress::fold_layer(m->weights().layers[0], m->config(), KeyMode::kPre, u, u, 4, 0),
               Error);
}

// ---------------------------------------------------------------------------------------------

TEST(Allot, ErrorBudgetPicksTheSmallestPassingCandidate) {
  std::vector<compress::LayerProfile> p = {
      {{8, 8, 0.0}, {6, 5, 0.01}, {4, 3, 0.04}, {2, 2, 0.2}},
      {{8, 8, 0.0}, {7, 7, 0.03}, {5, 5, 0.08}},
  };
  const auto chosen = compress::allot_error_budget(p, 0.05);
  EXPECT_EQ(chosen[0].key_rank + chosen[0].value_rank, 7);
  EXPECT_EQ(chosen[1].key_rank + chosen[1].value_rank, 14);
  EXPECT_THROW(compress::allot_error_budget({{{8, 8, 0.1}}}, 0.05), Error);
}

TEST(Allot, KvBudgetIsOptimalAndMetExactly) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> rank(1, 8);
  std::uniform_real_distribution<double> err(0, 1);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<compress::LayerProfile> p(3);
    for (auto& layer : p) {
      for (int i = 0; i < 4; ++i) layer.push_back({rank(rng), rank(rng), err(rng)});
    }
    const int64_t budget = 12 + trial % 20;
    // Brute force over all 4^3 choices.
    double best = INFINITY;
    for (int a = 0; a < 4; ++a) {
      for (int b = 0; b < 4; ++b) {
        for (int c = 0; c < 4; ++c) {
          const int64_t size = p[0][a].key_rank + p[0][a].value_rank + p[1][b].key_rank +
                               p[1][b].value_rank + p[2][c].key_rank + p[2][c].value_rank;
          if (size <= budget) best = std::min(best, p[0][a].error + p[1][b].error + p[2][c].error);
        }
      }
    }
    if (std::isinf(best)) {
      EXPECT_THROW(compress::allot_kv_budget(p, budget), Error);
      continue;
    }
    const auto chosen = compress::allot_kv_budget(p, budget);
    int64_t size = 0;
    double total = 0;
    for (const auto& c : chosen) {
      size += c.key_rank + c.value_rank;
      total += c.error;
    }
    EXPECT_LE(size, budget);
    EXPECT_NEAR(total, best, 1e-12);
  }
}

// ---------------------------------------------------------------------------------------------
// The layer-at-a-time pass gives what the whole-model forward pass sees.

// Keeps one layer's input and output, and feeds its attention to a Gram collector.
class OneLayerTap : public model::ForwardTap {
 public:
  OneLayerTap(int64_t layer, int64_t d, compress::GramCollector& grams)
      : layer_(layer), d_(d), grams_(grams) {}
  void on_attention(int64_t layer, int64_t n, int64_t pos0, const float* q_pre, const float* k_pre,
                    const float* q_post, const float* k_post, const float* v) override {
    if (layer == layer_) grams_.on_attention(layer, n, pos0, q_pre, k_pre, q_post, k_post, v);
  }
  void on_layer(int64_t layer, int64_t n, const float* input, const float* output) override {
    if (layer != layer_) return;
    inputs.emplace_back(input, input + n * d_);
    outputs.emplace_back(output, output + n * d_);
  }
  std::vector<std::vector<float>> inputs, outputs;

 private:
  int64_t layer_, d_;
  compress::GramCollector& grams_;
};

TEST(LayerStream, EachLayerSeesWhatTheWholeForwardPassSees) {
  auto m = synthetic_model(4, 2, true, 21);
  const model::ModelConfig& c = m->config();
  std::mt19937 rng(5);
  std::vector<int32_t> ids(3 * 24 + 7);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % c.n_vocab);
  compress::CalibrationOptions o;
  o.key_mode = KeyMode::kPost;
  o.ctx = 24;
  o.error_windows = 2;
  o.progress = false;
  compress::CalibrationStream stream(*m, ids, o);
  EXPECT_EQ(stream.tokens(), 3 * 24);  // whole windows only
  for (int64_t l = 0; l < c.n_layers; ++l) {
    compress::GramCollector grams(c, o.key_mode);
    OneLayerTap tap(l, c.d_model, grams);
    for (int64_t w = 0; w < 3; ++w) {
      kv::KvCache cache = m->new_cache(o.ctx);
      std::vector<float> logits(static_cast<size_t>(c.n_vocab));
      m->forward(std::span<const int32_t>(ids.data() + w * o.ctx, static_cast<size_t>(o.ctx)),
                 cache, logits.data(), false, &tap);
    }
    const compress::LayerData d = stream.next();
    ASSERT_EQ(d.samples.inputs.size(), 2u);
    ASSERT_EQ(d.samples.outputs.size(), 2u);
    for (size_t w = 0; w < 2; ++w) {
      EXPECT_EQ(d.samples.inputs[w], tap.inputs[w]) << "layer " << l << " window " << w;
      EXPECT_EQ(d.samples.outputs[w], tap.outputs[w]) << "layer " << l << " window " << w;
    }
    ASSERT_EQ(d.key.size(), 2u);
    for (size_t j = 0; j < d.key.size(); ++j) {
      const compress::EigenBasis ref = compress::eigen_basis(grams.grams().key[j]);
      EXPECT_LT((ref.eigenvalues - d.key[j].eigenvalues).norm(), 1e-12 * ref.eigenvalues.norm());
      const compress::EigenBasis vref = compress::eigen_basis(grams.grams().value[j]);
      EXPECT_LT((vref.eigenvalues - d.value[j].eigenvalues).norm(),
                1e-12 * vref.eigenvalues.norm());
    }
  }
  EXPECT_THROW(stream.next(), Error);  // every layer has run
}

// ---------------------------------------------------------------------------------------------
// Calibration on the bundled model and the compressed file.

std::vector<int32_t> calibration_ids(const model::Model& m) {
  return testing::repo_text_ids(m, "data/tinystories-calib.txt");
}

TEST(Calibrate, ZeroThresholdKeepsTheModelsFunction) {
  for (KeyMode mode : {KeyMode::kPre, KeyMode::kPost}) {
    auto m = model::Model::load(testing::source_path("models/stories260K.gguf"));
    const std::vector<int32_t> ids = calibration_ids(*m);
    const std::vector<int32_t> probe(ids.begin(), ids.begin() + 100);
    const std::vector<float> before = logits_of(*m, probe);
    compress::CalibrationOptions o;
    o.key_mode = mode;
    o.threshold = 0.0;
    o.progress = false;
    o.max_tokens = 2048;
    compress::calibrate_eigen(*m, ids, o);
    EXPECT_LT(max_relative_diff(logits_of(*m, probe), before), 1e-4) << model::key_mode_name(mode);
  }
}

TEST(Calibrate, BasesAreOrthonormalAndRanksFollowTheThreshold) {
  auto m = model::Model::load(testing::source_path("models/stories260K.gguf"));
  const std::vector<int32_t> ids = calibration_ids(*m);
  compress::CalibrationOptions o;
  o.threshold = 0.1;
  o.progress = false;
  o.max_tokens = 4096;
  const compress::CalibrationResult r = compress::calibrate_eigen(*m, ids, o);
  int64_t total = 0;
  for (size_t l = 0; l < r.layers.size(); ++l) {
    for (const auto& b : r.layers[l].key) {
      const Eigen::MatrixXd g = b.vectors.transpose() * b.vectors;
      EXPECT_LT((g - Eigen::MatrixXd::Identity(g.rows(), g.cols())).cwiseAbs().maxCoeff(), 1e-6);
    }
    const auto& L = m->weights().layers[l];
    for (const auto& u : L.key_basis) {
      for (int64_t a = 0; a < u.cols; ++a) {
        for (int64_t b = 0; b < u.cols; ++b) {
          double dot = 0;
          for (int64_t i = 0; i < u.rows; ++i) dot += double{u.row(i)[a]} * u.row(i)[b];
          EXPECT_NEAR(dot, a == b ? 1.0 : 0.0, 1e-6);
        }
      }
    }
    total += L.key_rank + L.value_rank;
  }
  EXPECT_LT(total, 5 * 2 * 8);  // something was compressed
  EXPECT_EQ(m->kv_bytes_per_token(), total * 4 * 4);
}

TEST(Calibrate, SavedModelReloadsToIdenticalLogits) {
  for (KeyMode mode : {KeyMode::kPre, KeyMode::kPost}) {
    auto m = model::Model::load(testing::source_path("models/stories260K.gguf"));
    const std::vector<int32_t> ids = calibration_ids(*m);
    compress::CalibrationOptions o;
    o.key_mode = mode;
    o.allotment = compress::Allotment::kKvBudget;
    o.kv_budget = 0.6;
    o.error_windows = 2;
    o.threshold_step = 0.05;
    o.progress = false;
    o.max_tokens = 4096;
    compress::calibrate_eigen(*m, ids, o);
    const std::string path = testing::temp_path("compressed.gguf");
    model::save_gguf(*m, path);
    auto reloaded = model::Model::load(path);
    std::filesystem::remove(path);
    ASSERT_TRUE(reloaded->is_compressed());
    EXPECT_EQ(reloaded->kv_bytes_per_token(), m->kv_bytes_per_token());
    EXPECT_LE(reloaded->kv_bytes_per_token(), 0.6 * 5 * 2 * 4 * 8 * 4);
    const std::vector<int32_t> probe(ids.begin(), ids.begin() + 64);
    EXPECT_EQ(logits_of(*reloaded, probe), logits_of(*m, probe)) << model::key_mode_name(mode);
    // A compressed model cannot be compressed again.
    EXPECT_THROW(compress::calibrate_eigen(*reloaded, ids, o), Error);
  }
}

TEST(Calibrate, RejectsTooLittleTextAndBadOptions) {
  auto m = model::Model::load(testing::source_path("models/stories260K.gguf"));
  const std::vector<int32_t> few = m->tokenizer().encode("Once upon a time.", true);
  compress::CalibrationOptions o;
  o.progress = false;
  try {
    compress::calibrate_eigen(*m, few, o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("are needed"), std::string::npos) << e.what();
  }
  const std::vector<int32_t> ids = calibration_ids(*m);
  o.threshold = 1.0;
  EXPECT_THROW(compress::calibrate_eigen(*m, ids, o), Error);
  o.threshold = 0.1;
  o.allotment = compress::Allotment::kKvBudget;
  o.kv_budget = 0.0;
  EXPECT_THROW(compress::calibrate_eigen(*m, ids, o), Error);
  o.kv_budget = 0.01;  // below one direction per layer and kind
  o.max_tokens = 1024;
  EXPECT_THROW(compress::calibrate_eigen(*m, ids, o), Error);
}

}  // namespace
}  // namespace eigenkv
