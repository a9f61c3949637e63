// ops::matmul against its plain reference (dequantized weights, double sums) for every weight
// type eigenkv runs: decode shapes (1..8 tokens, the 8-bit activation path) and prefill shapes
// in both prefill modes (exact: dequantized tiles into SGEMM; integer: rounded activations), on
// one and on two threads; and on the tensors of llama.cpp's quantized files of the shared model.
#include "ops/matmul.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "io/gguf.h"
#include "model/weights.h"
#include "ops/dequant.h"
#include "ops/qdot.h"
#include "test_util.h"
#include "util/error.h"

namespace eigenkv::ops {
namespace {

using io::TensorType;

// The error bound of one output: the 8-bit rounding of the activations (half a step of the
// coarsest block scale a kernel may use, amax / 127 over a block of 256, with the scale's own
// f16 rounding) times |w|, plus float32 summation error. Float weights take float activations.
std::vector<double> error_bounds(TensorType type, const std::vector<float>& x, int64_t n_tokens,
                                 const std::vector<float>& w, int64_t rows, int64_t cols) {
  const bool int8_path = (n_tokens <= kDecodeRows || prefill_rounds_activations()) &&
                         type != TensorType::kF32 && type != TensorType::kF16 &&
                         type != TensorType::kBF16;
  std::vector<double> step(x.size(), 0.0);
  if (int8_path) {
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t b = 0; b < cols; b += 256) {
        double amax = 0;
        const int64_t e = std::min(cols, b + 256);
        for (int64_t i = b; i < e; ++i) amax = std::max(amax, std::fabs(double{x[t * cols + i]}));
        for (int64_t i = b; i < e; ++i) step[t * cols + i] = amax / 127.0 * 0.5 * 1.002;
      }
    }
  }
  std::vector<double> bound(static_cast<size_t>(n_tokens * rows));
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t o = 0; o < rows; ++o) {
      double rounding = 0, magnitude = 0;
      for (int64_t i = 0; i < cols; ++i) {
        const double wi = std::fabs(double{w[o * cols + i]});
        rounding += wi * step[t * cols + i];
        magnitude += wi * std::fabs(double{x[t * cols + i]});
      }
      bound[t * rows + o] = rounding + 2e-5 * magnitude + 1e-6;
    }
  }
  return bound;
}

void expect_matches_reference_now(const WeightView& w, int64_t n_tokens, uint32_t seed,
                                  const std::string& what) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n_tokens * w.cols));
  for (float& v : x) v = normal(rng);
  std::vector<float> wf(static_cast<size_t>(w.rows * w.cols));
  dequantize(w.type, w.data, wf.data(), w.rows * w.cols);
  std::vector<float> want(static_cast<size_t>(n_tokens * w.rows));
  matmul_reference(x.data(), n_tokens, w, want.data());
  const std::vector<double> bound = error_bounds(w.type, x, n_tokens, wf, w.rows, w.cols);
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    std::vector<float> got(want.size(), NAN);
    matmul(x.data(), n_tokens, w, got.data());
    int64_t bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      if (!(std::fabs(double{got[i]} - want[i]) <= bound[i]) && bad++ < 3) {
        ADD_FAILURE() << what << " tokens " << n_tokens << " threads " << threads << ": output "
                      << i << " is " << got[i] << ", reference " << want[i] << " (bound "
                      << bound[i] << ")";
      }
    }
  }
  omp_set_num_threads(1);
}

// Decode shapes once; prefill shapes in each prefill mode (exact, integer: qgemm's panels where
// this CPU runs them, else the decode kernels over tiles), then back to the default.
void expect_matches_reference(const WeightView& w, int64_t n_tokens, uint32_t seed,
                              const std::string& what) {
  if (n_tokens <= kDecodeRows) return expect_matches_reference_now(w, n_tokens, seed, what);
  for (PrefillMode mode : {PrefillMode::kExact, PrefillMode::kInteger}) {
    set_prefill_mode(mode);
    expect_matches_reference_now(w, n_tokens, seed,
                                 what + (mode == PrefillMode::kExact ? " exact" : " integer"));
  }
  set_prefill_mode(PrefillMode::kAuto);
}

TEST(Matmul, EveryWritableTypeDecodeAndPrefill) {
  int tested = 0;
  for (uint32_t raw = 0; raw < 40; ++raw) {
    const auto info = io::tensor_type_info(raw);
    if (!info || !can_quantize(info->type) || !can_dot(info->type)) continue;
    const int64_t block = info->block_size;
    for (const auto& [rows, cols] :
         std::vector<std::pair<int64_t, int64_t>>{{1, 256}, {37, 512}, {130, 768}}) {
      if (cols % block) continue;
      std::mt19937 rng(raw * 31 + static_cast<uint32_t>(rows));
      std::normal_distribution<float> normal(0.0f, 0.05f);
      std::vector<float> wf(static_cast<size_t>(rows * cols));
      for (float& v : wf) v = normal(rng);
      std::vector<uint8_t> bytes(io::tensor_bytes(info->type, rows * cols));
      quantize(info->type, wf.data(), bytes.data(), rows * cols);
      const WeightView w{info->type, rows, cols, bytes.data(), io::tensor_bytes(info->type, cols)};
      for (int64_t n : {1, 2, 3, 8, 9, 40}) {
        expect_matches_reference(w, n, static_cast<uint32_t>(n), std::string(info->name));
      }
      ++tested;
    }
  }
  EXPECT_GE(tested, 15);  // F32, F16, BF16, Q8_0, Q4_0 at least, three shapes each
}

// The shared model quantized by llama.cpp: every matrix of every file, decode and prefill.
TEST(Matmul, LlamaCppQuantizedTensors) {
  int tested = 0;
  for (const char* name : {"Q4_0", "Q4_K_M", "Q6_K", "Q8_0"}) {
    const std::string rel = std::string("models/quantized/tinystories-c4-gqa-") + name + ".gguf";
    if (!std::filesystem::exists(testing::shared_path(rel))) {
      GTEST_SKIP() << "skipped: ../shared/" << rel << " is absent";
    }
    const io::GgufFile file(testing::shared_path(rel));
    for (const io::TensorView& t : file.tensors()) {
      if (t.shape.size() != 2 || t.name.find("blk.1.") != 0) continue;
      const WeightView w{t.type, t.shape[0], t.shape[1], t.data,
                         io::tensor_bytes(t.type, t.shape[1])};
      for (int64_t n : {1, 4, 16, 40}) expect_matches_reference(w, n, 5, rel + " " + t.name);
      ++tested;
    }
    // The output matrix (q6_K in the mixes) on one token.
    const io::TensorView* out = file.find_tensor("output.weight");
    ASSERT_NE(out, nullptr);
    expect_matches_reference({out->type, out->shape[0], out->shape[1], out->data,
                              io::tensor_bytes(out->type, out->shape[1])},
                             1, 9, rel + " output.weight");
  }
  EXPECT_GE(tested, 28);
}

TEST(Matmul, UnsupportedTypeNamesIt) {
  std::vector<uint8_t> bytes(64);
  const WeightView w{TensorType::kI32, 1, 16, bytes.data(), 64};
  std::vector<float> x(16), y(1);
  try {
    matmul(x.data(), 1, w, y.data());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("i32"), std::string::npos) << e.what();
  }
}

// The basis projection (kPost queries and keys, clip_qkv's bases) against its plain loop, on the
// shapes it meets: one row or a GQA group of rows, ranks from 1 to the head width.
TEST(ProjectRows, MatchesThePlainLoop) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  for (auto [n, d, r] : {std::tuple<int64_t, int64_t, int64_t>{1, 64, 32}, {4, 64, 1}, {8, 128, 96},
                         {3, 16, 16}, {1, 8, 5}}) {
    model::Matrix u;
    u.rows = d;
    u.cols = r;
    for (int64_t i = 0; i < d * r; ++i) u.data.push_back(normal(rng));
    std::vector<float> x(static_cast<size_t>(n * d)), fast(static_cast<size_t>(n * r)), plain(fast);
    for (float& v : x) v = normal(rng);
    model::project_rows(x.data(), n, u, fast.data());
    model::project_rows_reference(x.data(), n, u, plain.data());
    for (size_t i = 0; i < fast.size(); ++i)
      EXPECT_NEAR(fast[i], plain[i], 1e-4f * (1.0f + std::abs(plain[i]))) << n << "x" << d << "x" << r;
  }
}

}  // namespace
}  // namespace eigenkv::ops
