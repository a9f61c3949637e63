// Tests for ops/qgemm.h: packed panels run by qgemm_tile against qgemm_reference (the stored rows
// dequantized independently of the packing, times the same rounded activations, in double) on
// every block type, odd row counts (partial panels), token counts around the kernel's block of 8,
// strided outputs, and every SIMD target this build has and this CPU runs.
#include "ops/qgemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "io/tensor_type.h"
#include "ops/dequant.h"
#include "simd_test_util.h"
#include "util/error.h"

namespace eigenkv::ops {
namespace {

using io::TensorType;

constexpr TensorType kBlockTypes[] = {TensorType::kQ4_0, TensorType::kQ4_1, TensorType::kQ5_0,
                                      TensorType::kQ5_1, TensorType::kQ8_0, TensorType::kQ2_K,
                                      TensorType::kQ3_K, TensorType::kQ4_K, TensorType::kQ5_K,
                                      TensorType::kQ6_K};

struct Shape {
  int64_t rows, cols, n_x, pad;  // pad: extra output columns per row (must stay untouched)
};

// extreme: instead of normal numbers, weights of +-0.97 with one -+1 per 16 (the largest
// magnitude: symmetric types put the rest at their top level, affine ones at 0 or their
// largest, so the stored unsigned numbers sit at the type's largest) and activations of +-1
// (int8 +-127): the largest sums the kernels' 16-bit and 32-bit lanes can meet.
void check(TensorType type, const Shape& s, uint32_t seed, bool extreme = false) {
  SCOPED_TRACE(std::string(io::tensor_type_info(type).name) + " rows=" + std::to_string(s.rows) +
               " cols=" + std::to_string(s.cols) + " n_x=" + std::to_string(s.n_x) +
               (extreme ? " extreme" : ""));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> wf(static_cast<size_t>(s.rows * s.cols));
  for (float& v : wf) v = 0.05f * normal(rng);
  if (extreme) {
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int64_t i = 0; i < s.cols; ++i) {
        wf[r * s.cols + i] = (r % 2 ? -1.0f : 1.0f) * (i % 16 == 5 ? -1.0f : 0.97f);
      }
    }
  }
  const size_t row_bytes = io::tensor_bytes(type, s.cols);
  std::vector<uint8_t> w(row_bytes * static_cast<size_t>(s.rows));
  quantize(type, wf.data(), w.data(), s.rows * s.cols);

  std::vector<float> x(static_cast<size_t>(s.n_x * s.cols));
  for (float& v : x) v = normal(rng);
  x[3] = 40.0f;  // an outlier: its block's scale is coarse
  if (extreme) {
    for (int64_t t = 0; t < s.n_x; ++t) {
      for (int64_t i = 0; i < s.cols; ++i) x[t * s.cols + i] = t % 3 == 1 ? -1.0f : 1.0f;
    }
  }
  const size_t act_bytes = qgemm_act_row_bytes(s.cols);
  std::vector<uint8_t> act(act_bytes * static_cast<size_t>(s.n_x));
  qgemm_prepare_act(x.data(), s.n_x, s.cols, act.data());

  const int64_t ldy = s.rows + s.pad;
  std::vector<float> want(static_cast<size_t>(s.n_x * ldy), 0.0f);
  qgemm_reference(type, w.data(), row_bytes, s.cols, s.rows, act.data(), s.n_x, want.data(), ldy);
  // Float32 accumulation bound: a few ulps of the sum of |w| |x|.
  std::vector<double> bound(want.size(), 0.0);
  for (int64_t t = 0; t < s.n_x; ++t) {
    for (int64_t r = 0; r < s.rows; ++r) {
      double m = 0;
      for (int64_t i = 0; i < s.cols; ++i) {
        m += std::fabs(double{wf[r * s.cols + i]}) * std::fabs(double{x[t * s.cols + i]});
      }
      bound[t * ldy + r] = 2e-6 * m + 1e-7;
    }
  }

  const size_t panel_bytes = qgemm_panel_bytes(type, s.cols);
  const int64_t n_panels = (s.rows + kPanelRows - 1) / kPanelRows;
  std::vector<uint8_t> tile(panel_bytes * static_cast<size_t>(n_panels), 0xAB);
  for (int64_t p = 0; p < n_panels; ++p) {
    qgemm_pack_panel(type, w.data() + static_cast<size_t>(p * kPanelRows) * row_bytes, row_bytes,
                     s.cols, std::min(kPanelRows, s.rows - p * kPanelRows),
                     tile.data() + static_cast<size_t>(p) * panel_bytes);
  }
  testing::for_each_target([&](int64_t) {
    const float sentinel = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> got(want.size(), sentinel);
    qgemm_tile(type, tile.data(), n_panels, s.cols, act.data(), s.n_x, s.rows, got.data(), ldy);
    int bad = 0;
    for (int64_t t = 0; t < s.n_x; ++t) {
      for (int64_t r = 0; r < ldy; ++r) {
        const size_t i = static_cast<size_t>(t * ldy + r);
        if (r >= s.rows) {
          if (!std::isnan(got[i]) && bad++ < 3) ADD_FAILURE() << "wrote past the rows at " << r;
        } else if (!(std::fabs(double{got[i]} - want[i]) <= bound[i]) && bad++ < 3) {
          ADD_FAILURE() << "token " << t << " row " << r << ": " << got[i] << ", reference "
                        << want[i] << " (bound " << bound[i] << ")";
        }
      }
    }
  });
}

// Saturation: every stored number at 0 or the type's largest, every activation at +-127.
TEST(Qgemm, ExtremeNumbersDoNotOverflowTheLanes) {
  uint32_t seed = 100;
  for (TensorType type : kBlockTypes) {
    check(type, {18, 512, 5, 0}, seed++, /*extreme=*/true);
  }
}

TEST(Qgemm, EveryBlockTypeMatchesTheReference) {
  uint32_t seed = 1;
  for (TensorType type : kBlockTypes) {
    ASSERT_TRUE(can_qgemm(type));
    const int64_t block = io::tensor_type_info(type).block_size;
    for (const Shape& s : std::vector<Shape>{{1, 256, 1, 0},
                                             {16, 512, 8, 0},
                                             {17, 256, 9, 3},
                                             {40, 768, 20, 0},
                                             {33, 96, 7, 1}}) {
      if (s.cols % block) continue;
      check(type, s, seed++);
    }
  }
}

// The rounded activations: q * d reproduces x to half a step of its block's scale, and the
// stored sums are those of q.
TEST(Qgemm, PreparedActivationsRoundX) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const int64_t n = 128;
  std::vector<float> x(2 * n);
  for (float& v : x) v = normal(rng);
  std::vector<uint8_t> act(2 * qgemm_act_row_bytes(n));
  qgemm_prepare_act(x.data(), 2, n, act.data());
  for (int64_t t = 0; t < 2; ++t) {
    const uint8_t* row = act.data() + t * qgemm_act_row_bytes(n);
    const int8_t* q = reinterpret_cast<const int8_t*>(row);
    const float* d = reinterpret_cast<const float*>(row + n);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(q[i] * d[i / 32], x[t * n + i], 0.5001 * d[i / 32]) << i;
    }
  }
}

TEST(Qgemm, RefusesFloatTypesAndPartialBlocksByName) {
  EXPECT_FALSE(can_qgemm(TensorType::kF16));
  try {
    qgemm_panel_bytes(TensorType::kF16, 64);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f16"), std::string::npos) << e.what();
  }
  EXPECT_THROW(qgemm_panel_bytes(TensorType::kQ4_K, 128), Error);
  EXPECT_THROW(qgemm_prepare_act(nullptr, 1, 40, nullptr), Error);
  std::vector<uint8_t> panel(qgemm_panel_bytes(TensorType::kQ4_0, 32));
  std::vector<uint8_t> w(18 * 17);
  EXPECT_THROW(qgemm_pack_panel(TensorType::kQ4_0, w.data(), 18, 32, 17, panel.data()), Error);
}

}  // namespace
}  // namespace eigenkv::ops
