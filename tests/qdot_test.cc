// Tests for ops/qdot.h: dot_rows against dot_rows_reference (the same rounded activations, so
// only float32 accumulation differs) and against a float64 dot of the dequantized weights with the
// unrounded activations (off by at most the activation rounding, bounded from the activation
// blocks' scales). Every SIMD target compiled into this build and supported by this CPU is run.
#include "ops/qdot.h"

#include <gtest/gtest.h>

#include <hwy/targets.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "io/tensor_type.h"
#include "ops/dequant.h"
#include "ops/half.h"
#include "simd_test_util.h"
#include "util/error.h"

namespace eigenkv::ops {
namespace {

using io::TensorType;

constexpr TensorType kTypes[] = {
    TensorType::kF32,  TensorType::kF16,  TensorType::kBF16, TensorType::kQ4_0, TensorType::kQ4_1,
    TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kQ8_0, TensorType::kQ2_K, TensorType::kQ3_K,
    TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K};

std::string name(TensorType type) { return std::string(io::tensor_type_info(type).name); }

bool is_k_quant(TensorType type) {
  return type == TensorType::kQ2_K || type == TensorType::kQ3_K || type == TensorType::kQ4_K ||
         type == TensorType::kQ5_K || type == TensorType::kQ6_K;
}

// Numbers per activation block, 0 for float weights (activations kept as float32).
int64_t act_block(TensorType type) {
  const int64_t b = io::tensor_type_info(type).block_size;
  return b == 1 ? 0 : b;
}

// Byte offsets of a block's f16 fields (scales and mins) for the types built from random bytes.
std::vector<size_t> half_fields(TensorType type) {
  switch (type) {
    case TensorType::kQ4_1: return {0, 2};
    case TensorType::kQ5_0: return {0};
    case TensorType::kQ5_1: return {0, 2};
    case TensorType::kQ2_K: return {80, 82};
    case TensorType::kQ3_K: return {108};
    case TensorType::kQ4_K: return {0, 2};
    case TensorType::kQ5_K: return {0, 2};
    case TensorType::kQ6_K: return {208};
    default: return {};
  }
}

// A [rows, n] weight matrix with rows of row_bytes (>= the row's own bytes). Types eigenkv
// quantizes are quantized from normal numbers; the others are random bytes (every bit pattern of
// the quants and packed scales is a valid block) with their f16 scales and mins set in [-1, 1].
std::vector<uint8_t> random_weights(TensorType type, int64_t rows, int64_t n, size_t row_bytes,
                                    std::mt19937& rng) {
  std::vector<uint8_t> w(static_cast<size_t>(rows) * row_bytes + 64);
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const io::TensorTypeInfo& info = io::tensor_type_info(type);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = w.data() + r * row_bytes;
    if (can_quantize(type)) {
      std::vector<float> values(static_cast<size_t>(n));
      for (auto& v : values) v = normal(rng);
      quantize(type, values.data(), row, n);
      continue;
    }
    for (int64_t b = 0; b < n / info.block_size; ++b) {
      for (size_t offset : half_fields(type)) {
        const uint16_t h = fp32_to_fp16(uniform(rng));
        std::memcpy(row + b * info.block_bytes + offset, &h, 2);
      }
    }
  }
  return w;
}

struct Case {
  TensorType type;
  int64_t n;
  int64_t n_x;
  int64_t rows;
  int64_t r0, r1;
  size_t row_pad;  // extra bytes after each row
};

// Largest (observed error / allowed error) over all checks, reported at the end.
struct Worst {
  double tight = 0;
  double loose = 0;
};

void check_case(const Case& c, std::mt19937& rng, Worst& worst) {
  SCOPED_TRACE(name(c.type) + " n=" + std::to_string(c.n) + " n_x=" + std::to_string(c.n_x) +
               " rows=" + std::to_string(c.rows) + " [" + std::to_string(c.r0) + ", " +
               std::to_string(c.r1) + ")");
  const size_t row_bytes = io::tensor_bytes(c.type, c.n) + c.row_pad;
  // Offsets of one byte: the buffers need no alignment.
  const std::vector<uint8_t> w_buffer = random_weights(c.type, c.rows, c.n, row_bytes, rng);
  std::vector<uint8_t> w_shifted(w_buffer.size() + 1);
  std::memcpy(w_shifted.data() + 1, w_buffer.data(), w_buffer.size());
  const uint8_t* w = w_shifted.data() + 1;

  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(c.n_x * c.n));
  for (auto& v : x) v = normal(rng);
  // An outlier and a block of zeros, as real activations have.
  if (c.n_x > 0) x[static_cast<size_t>(c.n / 2)] = 40.0f;
  if (c.n_x > 1) std::fill(x.begin() + c.n, x.begin() + c.n + std::min<int64_t>(c.n, 256), 0.0f);

  const size_t arb = act_row_bytes(c.type, c.n);
  ASSERT_EQ(arb % 64, 0u);
  std::vector<uint8_t> act_buffer(static_cast<size_t>(c.n_x) * arb + 1);
  uint8_t* act = act_buffer.data() + 1;
  prepare_act(c.type, x.data(), c.n_x, c.n, act);

  const int64_t y_stride = c.rows + 3;
  const float sentinel = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> y(static_cast<size_t>(std::max<int64_t>(c.n_x, 1) * y_stride), sentinel);
  std::vector<float> y_ref(y.size(), sentinel);
  dot_rows(c.type, w, row_bytes, c.n, act, c.n_x, c.r0, c.r1, y.data(), y_stride);
  dot_rows_reference(c.type, w, row_bytes, c.n, act, c.n_x, c.r0, c.r1, y_ref.data(), y_stride);

  std::vector<float> wf(static_cast<size_t>(c.n));
  const int64_t ab = act_block(c.type);
  for (int64_t t = 0; t < c.n_x; ++t) {
    const float* xt = x.data() + t * c.n;
    // Activation rounding bound per number: half the block's scale max|x| / 127, with room for
    // the float32 rounding of that scale, its inverse and x times the inverse (relative 1e-4).
    std::vector<double> rounding(static_cast<size_t>(c.n), 0.0);
    for (int64_t b0 = 0; ab > 0 && b0 < c.n; b0 += ab) {
      float amax = 0;
      for (int64_t i = b0; i < b0 + ab; ++i) amax = std::max(amax, std::fabs(xt[i]));
      for (int64_t i = b0; i < b0 + ab; ++i) rounding[i] = 0.5001 * (amax / 127.0);
    }
    for (int64_t r = 0; r < c.rows; ++r) {
      const size_t at = static_cast<size_t>(t * y_stride + r);
      if (r < c.r0 || r >= c.r1) {
        EXPECT_TRUE(std::isnan(y[at])) << "row " << r << " outside the range was written";
        continue;
      }
      dequantize(c.type, w + r * row_bytes, wf.data(), c.n);
      double exact = 0, magnitude = 0, bound = 0;
      for (int64_t i = 0; i < c.n; ++i) {
        exact += static_cast<double>(wf[i]) * xt[i];
        magnitude += std::fabs(static_cast<double>(wf[i]) * xt[i]);
        bound += std::fabs(static_cast<double>(wf[i])) * rounding[i];
      }
      const double tight = 1e-5 * magnitude + 1e-30;
      const double diff_ref = std::fabs(static_cast<double>(y[at]) - y_ref[at]);
      EXPECT_LE(diff_ref, tight) << "row " << r << " x " << t << ": " << y[at] << " vs reference "
                                 << y_ref[at];
      const double diff_exact = std::fabs(static_cast<double>(y[at]) - exact);
      EXPECT_LE(diff_exact, bound + tight)
          << "row " << r << " x " << t << ": " << y[at] << " vs float64 " << exact;
      worst.tight = std::max(worst.tight, diff_ref / tight);
      worst.loose = std::max(worst.loose, diff_exact / (bound + tight));
    }
  }
  for (size_t i = 0; i < y.size(); ++i) {
    if (i % static_cast<size_t>(y_stride) >= static_cast<size_t>(c.rows)) {
      EXPECT_TRUE(std::isnan(y[i])) << "padding of y written at " << i;
    }
  }
}

std::vector<int64_t> widths(TensorType type) {
  if (is_k_quant(type)) return {256, 512, 4096};
  if (act_block(type) == 32) return {32, 96, 256, 512, 4096};
  return {32, 96, 256, 512, 4096, 1, 37, 100};  // any width for float weights
}

using eigenkv::testing::for_each_target;

TEST(QdotTest, CanDotEveryWeightType) {
  for (TensorType type : kTypes) EXPECT_TRUE(can_dot(type)) << name(type);
  EXPECT_FALSE(can_dot(TensorType::kQ8_K));
  EXPECT_FALSE(can_dot(TensorType::kF64));
  EXPECT_FALSE(can_dot(TensorType::kI8));
}

TEST(QdotTest, MatchesReferenceAndFloat64EveryType) {
  for_each_target([](int64_t target) {
    for (TensorType type : kTypes) {
      std::mt19937 rng(static_cast<uint32_t>(type) * 7919u + 17u);
      Worst worst;
      for (int64_t n : widths(type)) {
        for (int64_t n_x : {1, 2, 3, 5, 8}) {
          check_case({type, n, n_x, 7, 2, 7, static_cast<size_t>(n_x % 2)}, rng, worst);
        }
      }
      std::printf("  %-10s %-5s worst error / allowed: reference %.3g, float64 %.3g\n",
                  hwy::TargetName(target), name(type).c_str(), worst.tight, worst.loose);
    }
  });
}

// More activation rows than one pass takes (chunks over tiles of rows), no rows, no activations.
TEST(QdotTest, ManyActivationRowsAndEmptyRanges) {
  for_each_target([](int64_t) {
    for (TensorType type : kTypes) {
      std::mt19937 rng(static_cast<uint32_t>(type) + 5u);
      Worst worst;
      const int64_t n = is_k_quant(type) ? 512 : 96;
      check_case({type, n, 11, 41, 3, 40, 0}, rng, worst);
      check_case({type, n, 17, 19, 0, 19, 1}, rng, worst);
      check_case({type, n, 4, 9, 5, 5, 0}, rng, worst);
      check_case({type, n, 0, 9, 0, 9, 0}, rng, worst);
    }
  });
}

// The activation layout: float32 copies for float weights; for Q8_0 and the K-quants (natural
// order; the nibble types interleave block pairs), the rounded numbers
// times their block scale give back the activations to within half a scale.
TEST(QdotTest, PreparedActivationsRoundTrip) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const int64_t n = 512;
  std::vector<float> x(2 * n);
  for (auto& v : x) v = normal(rng);
  for (TensorType type : {TensorType::kF16, TensorType::kQ8_0, TensorType::kQ6_K}) {
    const size_t arb = act_row_bytes(type, n);
    std::vector<uint8_t> act(2 * arb);
    prepare_act(type, x.data(), 2, n, act.data());
    for (int64_t t = 0; t < 2; ++t) {
      const uint8_t* row = act.data() + t * arb;
      const float* xt = x.data() + t * n;
      if (type == TensorType::kF16) {
        EXPECT_EQ(std::memcmp(row, xt, 4 * n), 0);
        continue;
      }
      const int64_t block = act_block(type);
      const auto* q = reinterpret_cast<const int8_t*>(row);
      for (int64_t b = 0; b < n / block; ++b) {
        float d;
        const size_t d_offset = block == 32 ? n + 4 * b : n + 2 * (n / 16) + 4 * b;
        std::memcpy(&d, row + d_offset, 4);
        float amax = 0;
        for (int64_t i = 0; i < block; ++i) amax = std::max(amax, std::fabs(xt[b * block + i]));
        EXPECT_FLOAT_EQ(d, amax / 127.0f);
        int sum = 0;
        for (int64_t i = 0; i < block; ++i) {
          const int64_t e = b * block + i;
          EXPECT_NEAR(q[e] * d, xt[e], 0.5001 * d) << name(type) << " number " << e;
          EXPECT_GE(q[e], -127);
          sum += q[e];
        }
        if (block == 32) {
          float s;
          std::memcpy(&s, row + n + 4 * (n / 32) + 4 * b, 4);
          EXPECT_FLOAT_EQ(s, d * static_cast<float>(sum));
        } else {
          int total = 0;
          for (int g = 0; g < 16; ++g) {
            int16_t bs;
            std::memcpy(&bs, row + n + 2 * (16 * b + g), 2);
            int expect = 0;
            for (int l = 0; l < 16; ++l) expect += q[b * block + 16 * g + l];
            EXPECT_EQ(bs, expect);
            total += bs;
          }
          EXPECT_EQ(total, sum);
        }
      }
    }
  }
}

TEST(QdotTest, UnsupportedTypeThrowsWithItsName) {
  std::vector<uint8_t> w(1024), act(4096);
  std::vector<float> x(256), y(4);
  for (TensorType type : {TensorType::kQ8_K, TensorType::kF64, TensorType::kI8}) {
    const std::string type_name = io::tensor_type_name(static_cast<uint32_t>(type));
    const auto expect_named = [&](auto&& call) {
      try {
        call();
        ADD_FAILURE() << type_name << " did not throw";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(type_name), std::string::npos) << e.what();
      }
    };
    expect_named([&] { dot_rows(type, w.data(), 256, 256, act.data(), 1, 0, 1, y.data(), 1); });
    expect_named(
        [&] { dot_rows_reference(type, w.data(), 256, 256, act.data(), 1, 0, 1, y.data(), 1); });
    expect_named([&] { act_row_bytes(type, 256); });
    expect_named([&] { prepare_act(type, x.data(), 1, 256, act.data()); });
  }
  // A width that is not a whole number of blocks, and rows too short for their numbers.
  EXPECT_THROW(act_row_bytes(TensorType::kQ4_K, 32), Error);
  EXPECT_THROW(dot_rows(TensorType::kQ4_0, w.data(), 17, 32, act.data(), 1, 0, 1, y.data(), 1),
               Error);
}

}  // namespace
}  // namespace eigenkv::ops
