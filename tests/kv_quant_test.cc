// The quantized KV cache: row formats against their error bounds, the Highway kernels against the
// scalar reference on random shapes, every cache type in a real model, and the water-filled bit
// allotment (budget met in bytes, saved and reloaded, bad input).
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "compress/cache_bits.h"
#include "eval/perplexity.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "model/save.h"
#include "ops/attention.h"
#include "ops/attention_kernel.h"
#include "ops/kv_format.h"
#include "model_test_util.h"
#include "simd_test_util.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace eigenkv {
namespace {

using ops::KvType;
using ops::RowFormat;

std::vector<float> random_vector(int64_t n, std::mt19937& rng, float spread = 1.0f) {
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = normal(rng);
  return v;
}

std::vector<RowFormat> formats_of_width(int64_t w) {
  std::vector<RowFormat> f;
  for (KvType t : {KvType::kF32, KvType::kF16, KvType::kInt8, KvType::kInt4})
    f.push_back(RowFormat::uniform(t, w));
  f.push_back(RowFormat::mixed(w, w / 3));
  return f;
}

TEST(KvFormat, TypeNamesParseAndUnknownNamesAreErrors) {
  EXPECT_EQ(ops::kv_type_from_name("int8"), KvType::kInt8);
  EXPECT_EQ(ops::kv_type_from_name("q4_0"), KvType::kInt4);
  EXPECT_EQ(ops::kv_type_from_name("f16"), KvType::kF16);
  EXPECT_THROW(ops::kv_type_from_name("q5_1"), Error);
  EXPECT_THROW(ops::kv_type_from_name("mixed"), Error);  // only from a model file
  EXPECT_EQ(ops::kv_type_from_name("mixed", true), KvType::kMixed);
}

TEST(KvFormat, BytesPerRow) {
  EXPECT_EQ(RowFormat::uniform(KvType::kF32, 64).bytes(), 256);
  EXPECT_EQ(RowFormat::uniform(KvType::kF16, 64).bytes(), 128);
  EXPECT_EQ(RowFormat::uniform(KvType::kInt8, 64).bytes(), 64 + 2 * 2);  // as q8_0: 34 per 32
  EXPECT_EQ(RowFormat::uniform(KvType::kInt4, 64).bytes(), 32 + 2 * 2);  // as q4_0: 18 per 32
  EXPECT_EQ(RowFormat::uniform(KvType::kInt4, 5).bytes(), 3 + 2);
  EXPECT_EQ(RowFormat::mixed(40, 8).bytes(), 8 + 16 + 2 * 2);
}

// Every number comes back within half a quantization step (the group's scale / 2), and exactly
// for f32.
TEST(KvFormat, RoundTripWithinHalfAStep) {
  std::mt19937 rng(5);
  for (int64_t w : {1, 2, 7, 31, 32, 33, 64, 100, 128}) {
    for (const RowFormat& f : formats_of_width(w)) {
      const std::vector<float> x = random_vector(w, rng, 3.0f);
      std::vector<uint8_t> row(static_cast<size_t>(f.bytes()));
      std::vector<float> y(static_cast<size_t>(w));
      ops::encode_row(f, x.data(), nullptr, row.data());
      ops::decode_row_reference(f, row.data(), nullptr, y.data());
      for (int64_t i = 0; i < w; ++i) {
        double bound = 0;
        if (f.type == KvType::kF16) bound = std::abs(x[i]) * 1e-3;
        if (f.quantized()) {
          const bool eight = i < f.n8;
          const int64_t start = eight ? i / 32 * 32 : f.n8 + (i - f.n8) / 32 * 32;
          const int64_t end = std::min(eight ? f.n8 : w, start + 32);
          double amax = 0;
          for (int64_t k = start; k < end; ++k) amax = std::max(amax, double{std::abs(x[k])});
          bound = 0.5 * amax / (eight ? 127.0 : 7.0) * 1.002 + 1e-7;
        }
        ASSERT_LE(std::abs(x[i] - y[i]), bound)
            << f.describe() << " width " << w << " number " << i;
      }
    }
  }
}

// Scales divide before quantizing and multiply after: a row whose directions differ by 1000x in
// spread keeps its small directions only with them.
TEST(KvFormat, PerDirectionScalesKeepSmallDirections) {
  const int64_t w = 32;
  std::mt19937 rng(9);
  std::vector<float> sigma(w), x(w);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < w; ++i) {
    sigma[i] = std::pow(10.0f, -3.0f * i / (w - 1));
    x[i] = sigma[i] * normal(rng);
  }
  const RowFormat f = RowFormat::uniform(KvType::kInt8, w);
  std::vector<uint8_t> row(static_cast<size_t>(f.bytes()));
  std::vector<float> plain(w), scaled(w);
  ops::encode_row(f, x.data(), nullptr, row.data());
  ops::decode_row_reference(f, row.data(), nullptr, plain.data());
  ops::encode_row(f, x.data(), sigma.data(), row.data());
  ops::decode_row_reference(f, row.data(), sigma.data(), scaled.data());
  double err_plain = 0, err_scaled = 0;
  for (int64_t i = w / 2; i < w; ++i) {
    err_plain += std::pow(x[i] - plain[i], 2);
    err_scaled += std::pow(x[i] - scaled[i], 2);
  }
  EXPECT_LT(err_scaled * 100, err_plain);
}

TEST(KvKernel, SimdDecodeEqualsReference) {
  std::mt19937 rng(3);
  for (int64_t w : {1, 5, 16, 31, 32, 33, 64, 97}) {
    for (const RowFormat& f : formats_of_width(w)) {
      const int64_t n = 7;
      const std::vector<float> sigma = random_vector(w, rng);
      std::vector<float> abs_sigma(sigma.size());
      for (size_t i = 0; i < sigma.size(); ++i) abs_sigma[i] = std::abs(sigma[i]) + 0.1f;
      std::vector<uint8_t> rows(static_cast<size_t>(n * f.bytes() + ops::kKvRowSlack));
      for (int64_t r = 0; r < n; ++r) {
        const std::vector<float> x = random_vector(w, rng, 2.0f);
        ops::encode_row(f, x.data(), abs_sigma.data(), rows.data() + r * f.bytes());
      }
      std::vector<float> fast(static_cast<size_t>(n * w)), ref(static_cast<size_t>(w));
      ops::decode_rows(ops::KvRows{rows.data(), f, abs_sigma.data()}, 0, n, fast.data());
      for (int64_t r = 0; r < n; ++r) {
        ops::decode_row_reference(f, rows.data() + r * f.bytes(), abs_sigma.data(), ref.data());
        for (int64_t i = 0; i < w; ++i)
          ASSERT_FLOAT_EQ(fast[r * w + i], ref[i]) << f.describe() << " w " << w;
      }
    }
  }
}

// attend_range (tiles, online softmax, ranges split and merged) against the double-precision
// reference over the same decoded rows, for every type, odd widths and lengths, rank 1 and full;
// every other case with ALiBi's score hook (a slope per query, steep enough to matter).
TEST(KvKernel, AttentionMatchesReferenceOnRandomShapes) {
  std::mt19937 rng(11);
  struct Shape {
    int64_t key_width, value_width, n_keys, n_queries, chunks;
  };
  const std::vector<Shape> shapes = {{1, 1, 1, 1, 1},    {8, 8, 5, 2, 1},      {64, 64, 64, 4, 1},
                                     {64, 64, 65, 2, 3}, {33, 17, 200, 3, 2},  {1, 64, 130, 1, 4},
                                     {64, 1, 127, 2, 2}, {31, 45, 1000, 2, 5}, {128, 128, 300, 8, 3},
                                     {32, 96, 301, 3, 2}, {96, 32, 67, 1, 1}, {128, 64, 130, 4, 2}};
  for (size_t si = 0; si < shapes.size(); ++si) {
    const Shape& s = shapes[si];
    for (size_t fi = 0; fi < 5; ++fi) {
      const bool alibi = (si + fi) % 2 == 1;
      std::vector<float> slopes;
      for (int64_t i = 0; alibi && i < s.n_queries; ++i) slopes.push_back(0.5f / (1 + i % 4));
      const RowFormat kf = formats_of_width(s.key_width)[fi];
      const RowFormat vf = formats_of_width(s.value_width)[fi];
      std::vector<uint8_t> keys(static_cast<size_t>(s.n_keys * kf.bytes() + ops::kKvRowSlack));
      std::vector<uint8_t> values(static_cast<size_t>(s.n_keys * vf.bytes() + ops::kKvRowSlack));
      // The mixed format carries per-direction scales, as a water-filled model's cache does.
      std::vector<float> ksig, vsig;
      if (kf.type == KvType::kMixed) {
        for (int64_t i = 0; i < s.key_width; ++i) ksig.push_back(0.2f + 0.1f * (i % 7));
        for (int64_t i = 0; i < s.value_width; ++i) vsig.push_back(1.5f - 0.1f * (i % 5));
      }
      const float* kp = ksig.empty() ? nullptr : ksig.data();
      const float* vp = vsig.empty() ? nullptr : vsig.data();
      for (int64_t t = 0; t < s.n_keys; ++t) {
        ops::encode_row(kf, random_vector(s.key_width, rng).data(), kp,
                        keys.data() + t * kf.bytes());
        ops::encode_row(vf, random_vector(s.value_width, rng).data(), vp,
                        values.data() + t * vf.bytes());
      }
      std::vector<float> kd(static_cast<size_t>(s.n_keys * s.key_width));
      std::vector<float> vd(static_cast<size_t>(s.n_keys * s.value_width));
      const ops::KvRows krows{keys.data(), kf, kp}, vrows{values.data(), vf, vp};
      for (int64_t t = 0; t < s.n_keys; ++t) {
        ops::decode_row_reference(kf, keys.data() + t * kf.bytes(), kp,
                                  kd.data() + t * s.key_width);
        ops::decode_row_reference(vf, values.data() + t * vf.bytes(), vp,
                                  vd.data() + t * s.value_width);
      }
      const std::vector<float> q = random_vector(s.n_queries * s.key_width, rng, 0.7f);
      std::vector<int64_t> limit(static_cast<size_t>(s.n_queries));
      for (int64_t i = 0; i < s.n_queries; ++i)
        limit[i] = std::max<int64_t>(1, s.n_keys - (i * 7) % s.n_keys);
      const float scale = 0.3f;
      ops::AttentionPartial total;
      total.reset(s.n_queries, s.value_width);
      const int64_t per = (s.n_keys + s.chunks - 1) / s.chunks;
      for (int64_t c = 0; c < s.chunks; ++c) {
        ops::AttentionPartial part;
        part.reset(s.n_queries, s.value_width);
        ops::attend_range(ops::QueryBlock{q.data(), s.n_queries, s.key_width, limit.data(),
                                          alibi ? slopes.data() : nullptr},
                          krows, nullptr, vrows, scale, c * per,
                          std::min(s.n_keys, (c + 1) * per), part);
        ops::merge_partial(total, part);
      }
      std::vector<float> out(static_cast<size_t>(s.n_queries * s.value_width));
      ops::finish_partial(total, out.data(), s.value_width);
      // Where the kernel scores with integer dot products, the reference takes the query on
      // the same int8 grid (the rounding is the method, not an error of the kernel).
      std::vector<float> qr = q;
      const bool integer = ops::integer_key_path(kf, s.n_queries);
      if (integer) {  // per query, groups of 32 (a short last one as if zero-padded)
        int8_t q8[ops::kQuantGroup];
        for (int64_t i = 0; i < s.n_queries; ++i) {
          for (int64_t g0 = 0; g0 < s.key_width; g0 += ops::kQuantGroup) {
            const int64_t m = std::min(ops::kQuantGroup, s.key_width - g0);
            float group[ops::kQuantGroup] = {};
            std::copy(q.begin() + i * s.key_width + g0, q.begin() + i * s.key_width + g0 + m, group);
            const float step = ops::round_query_group(group, q8);
            for (int64_t j = 0; j < m; ++j) qr[i * s.key_width + g0 + j] = q8[j] * step;
          }
        }
      }
      // The integer value path rounds each tile's weights (times the rows' group scales) to
      // 15 bits against the tile's largest: an error of about 1e-5 of the largest value per row,
      // far below the int8 step (0.4 %), allowed for here.
      float vmax = 0;
      for (float v : vd) vmax = std::max(vmax, std::abs(v));
      const bool integer_values = ops::integer_key_path(vf, s.n_queries);
      const double value_slack = integer_values ? 1e-4 * vmax : 0.0;
      std::vector<float> ref(static_cast<size_t>(s.value_width));
      for (int64_t i = 0; i < s.n_queries; ++i) {
        ops::attend_one_reference(qr.data() + i * s.key_width, kd.data(), s.key_width, vd.data(),
                                  s.value_width, limit[i], scale, ref.data(),
                                  alibi ? slopes[i] : 0.0);
        for (int64_t c = 0; c < s.value_width; ++c) {
          ASSERT_NEAR(out[i * s.value_width + c], ref[c], 2e-5 * (1 + std::abs(ref[c])) + value_slack)
              << kf.describe() << " keys " << s.n_keys << " query " << i << " dim " << c
              << (alibi ? " (ALiBi)" : "");
        }
      }
    }
  }
}

using eigenkv::testing::for_each_target;

// The queries as the integer path takes them: rounded to int8 per group of 32 (a short last
// group as if zero-padded) where integer_key_path holds, unchanged otherwise.
std::vector<float> queries_as_scored(const std::vector<float>& q, int64_t n, int64_t width,
                                     const RowFormat& keys) {
  std::vector<float> qr = q;
  if (!ops::integer_key_path(keys, n)) return qr;
  int8_t q8[ops::kQuantGroup];
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t g0 = 0; g0 < width; g0 += ops::kQuantGroup) {
      const int64_t m = std::min(ops::kQuantGroup, width - g0);
      float group[ops::kQuantGroup] = {};
      std::copy(q.begin() + i * width + g0, q.begin() + i * width + g0 + m, group);
      const float step = ops::round_query_group(group, q8);
      for (int64_t j = 0; j < m; ++j) qr[i * width + g0 + j] = q8[j] * step;
    }
  }
  return qr;
}

// One KV head's cache of n rows encoded from given floats, with the rows it decodes to.
struct TestCache {
  RowFormat format;
  std::vector<uint8_t> bytes;
  std::vector<float> decoded;  // [n, width]
  TestCache(const RowFormat& f, const std::vector<float>& x, int64_t n) : format(f) {
    bytes.assign(static_cast<size_t>(n * f.bytes() + ops::kKvRowSlack), 0);
    decoded.resize(static_cast<size_t>(n * f.width));
    for (int64_t t = 0; t < n; ++t) {
      ops::encode_row(f, x.data() + t * f.width, nullptr, bytes.data() + t * f.bytes());
      ops::decode_row_reference(f, bytes.data() + t * f.bytes(), nullptr,
                                decoded.data() + t * f.width);
    }
  }
};

// attend_range over `cuts` (key ranges, merged) against the double-precision reference over the
// decoded rows with the queries as the kernel scores them, within the bound of
// AttentionMatchesReferenceOnRandomShapes: 2e-5 relative, plus 1e-4 of the largest value where
// the values are summed with 15-bit integer weights. Returns the largest error.
double check_attention(const TestCache& k, const TestCache& v, const std::vector<float>& q,
                       int64_t n_queries, const std::vector<int64_t>& limit,
                       const std::vector<int64_t>& cuts, float scale, const std::string& what) {
  const int64_t kw = k.format.width, vw = v.format.width;
  ops::AttentionPartial total;
  total.reset(n_queries, vw);
  for (size_t c = 0; c + 1 < cuts.size(); ++c) {
    ops::AttentionPartial part;
    part.reset(n_queries, vw);
    ops::attend_range(ops::QueryBlock{q.data(), n_queries, kw, limit.data()},
                      ops::KvRows{k.bytes.data(), k.format}, nullptr,
                      ops::KvRows{v.bytes.data(), v.format}, scale, cuts[c], cuts[c + 1], part);
    ops::merge_partial(total, part);
  }
  std::vector<float> out(static_cast<size_t>(n_queries * vw)), ref(static_cast<size_t>(vw));
  ops::finish_partial(total, out.data(), vw);
  const std::vector<float> qr = queries_as_scored(q, n_queries, kw, k.format);
  float vmax = 0;
  for (float x : v.decoded) vmax = std::max(vmax, std::abs(x));
  const double value_slack = ops::integer_key_path(v.format, n_queries) ? 1e-4 * vmax : 0.0;
  double worst = 0;
  for (int64_t i = 0; i < n_queries; ++i) {
    ops::attend_one_reference(qr.data() + i * kw, k.decoded.data(), kw, v.decoded.data(), vw,
                              limit[i], scale, ref.data());
    for (int64_t c = 0; c < vw; ++c) {
      const double err = std::abs(double{out[i * vw + c]} - ref[c]);
      worst = std::max(worst, err);
      EXPECT_LE(err, 2e-5 * (1 + std::abs(ref[c])) + value_slack)
          << what << " query " << i << " dim " << c << ": " << out[i * vw + c] << " vs " << ref[c];
      if (err > 2e-5 * (1 + std::abs(ref[c])) + value_slack) return worst;  // one report a case
    }
  }
  return worst;
}

// On an x86 CPU with AVX2 and no AVX-512 (this project's Zen 3 build machine, Haswell and later
// Intel client parts) the dispatched target is AVX2 and int8/int4 rows take its integer path, for
// decode-sized blocks only; AVX-512 CPUs run AVX3_DL's (VNNI) or, for plain AVX3, the float path.
TEST(KvKernel, IntegerPathTargetFollowsTheCpu) {
  const std::string target = ops::integer_attention_target();
  const RowFormat i8 = RowFormat::uniform(KvType::kInt8, 64), i4 = RowFormat::uniform(KvType::kInt4, 40);
  const bool any = target != "none";
  EXPECT_EQ(ops::integer_key_path(i8, 1), any);
  EXPECT_EQ(ops::integer_key_path(i4, 4), any);
  EXPECT_EQ(ops::integer_key_path(i8, 8), any);  // a GQA group of 8, in sub-blocks of 4
  EXPECT_FALSE(ops::integer_key_path(i8, 9));  // prefill-sized blocks: the tiled float path
  EXPECT_FALSE(ops::integer_key_path(RowFormat::uniform(KvType::kF16, 64), 1));
  EXPECT_FALSE(ops::integer_key_path(RowFormat::mixed(64, 16), 1));
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2");
  if (avx2 && !__builtin_cpu_supports("avx512f")) {
    EXPECT_EQ(target, "AVX2");
  } else if (__builtin_cpu_supports("avx512f")) {
    EXPECT_TRUE(target == "AVX3_DL" || target == "none") << target;
  } else {
    EXPECT_EQ(target, "none");
  }
#else
  EXPECT_EQ(target, "none");
#endif
}

// Each compiled target reports its own path: AVX2 and AVX3_DL the integer one, the rest none.
TEST(KvKernel, IntegerPathOnEachCompiledTarget) {
  for_each_target([](int64_t target) {
    const std::string name = hwy::TargetName(target);
    const std::string expected = name == "AVX2" || name == "AVX3_DL" ? name : "none";
    EXPECT_EQ(ops::integer_attention_target(), expected);
    EXPECT_EQ(ops::integer_key_path(RowFormat::uniform(KvType::kInt4, 17), 4), expected != "none");
  });
}

// The integer path really scores with rounded queries: a query number far below its group's step
// is lost, which moves the output well beyond the bound away from the float answer, while the
// answer with the rounded query is met to within it.
TEST(KvKernel, IntegerPathScoresTheRoundedQuery) {
  const RowFormat f = RowFormat::uniform(KvType::kInt8, 64);
  if (!ops::integer_key_path(f, 1)) GTEST_SKIP() << "no integer path on this CPU";
  const int64_t n = 100;
  std::mt19937 rng(23);
  std::vector<float> kx = random_vector(n * 64, rng), vx = random_vector(n * 64, rng);
  for (int64_t t = 0; t < n; ++t) kx[t * 64 + 1] = 200.0f * std::sin(0.7f * t);  // a large key direction
  std::vector<float> q(64, 0.0f);
  q[0] = 1.0f;
  q[1] = 0.003f;  // 0.38 steps of 1/127: rounds to 0
  const TestCache k(f, kx, n), v(f, vx, n);
  const std::vector<int64_t> limit = {n};
  check_attention(k, v, q, 1, limit, {0, n}, 1.0f, "rounded query");
  std::vector<float> out(64), exact(64);
  ops::AttentionPartial part;
  part.reset(1, 64);
  ops::attend_range(ops::QueryBlock{q.data(), 1, 64, limit.data()}, ops::KvRows{k.bytes.data(), f},
                    nullptr, ops::KvRows{v.bytes.data(), f}, 1.0f, 0, n, part);
  ops::finish_partial(part, out.data(), 64);
  ops::attend_one_reference(q.data(), k.decoded.data(), 64, v.decoded.data(), 64, n, 1.0f, exact.data());
  double diff = 0;
  for (int c = 0; c < 64; ++c) diff = std::max(diff, double{std::abs(out[c] - exact[c])});
  EXPECT_GT(diff, 1e-2);
}

// The integer path over head widths / ranks with short last groups (17, 40, 100) and whole ones
// (64), int8 and int4 keys and values (and each with a float partner), GQA groups of 4 and 7
// queries (sub-blocks of 4 and 3) with their own limits, keys spanning several 64-row tiles and 8/16-row blocks with a ragged
// tail, ranges cut off the block grid, and a 4096-key context.
TEST(KvKernel, IntegerPathOddWidthsTilesAndLongContext) {
  for_each_target([](int64_t) {
    std::mt19937 rng(29);
    struct Pair {
      KvType key, value;
    };
    const std::vector<Pair> pairs = {{KvType::kInt8, KvType::kInt8}, {KvType::kInt4, KvType::kInt4},
                                     {KvType::kInt8, KvType::kInt4}, {KvType::kInt4, KvType::kF16},
                                     {KvType::kF16, KvType::kInt8}};
    for (int64_t w : {17, 40, 64, 100}) {
      for (const Pair& p : pairs) {
        for (int64_t n : {5, 211, 4096}) {
          if (n == 4096 && p.key != p.value) continue;
          const RowFormat kf = RowFormat::uniform(p.key, w), vf = RowFormat::uniform(p.value, w);
          const TestCache k(kf, random_vector(n * w, rng), n);
          const TestCache v(vf, random_vector(n * w, rng, 2.0f), n);
          for (int64_t nq : {4, 7}) {
            if (nq == 7 && n == 4096) continue;
            const std::vector<float> q = random_vector(nq * w, rng);
            std::vector<int64_t> limit(nq);
            for (int64_t i = 0; i < nq; ++i) limit[i] = std::max<int64_t>(1, n - 3 * i);
            std::vector<int64_t> cuts = {0, n};
            if (n == 211) cuts = {0, 37, 150, 211};
            if (n == 4096) cuts = {0, 1000, 4096};
            // Scores of spread ~ sqrt(w) / 2: the softmax picks out a few keys even among 4096.
            const std::string what = kf.describe() + "/" + vf.describe() + " width " +
                                     std::to_string(w) + " keys " + std::to_string(n) + ", " +
                                     std::to_string(nq) + " queries";
            ASSERT_EQ(ops::integer_key_path(kf, nq), kf.type == KvType::kInt8 || kf.type == KvType::kInt4
                                                         ? std::string(ops::integer_attention_target()) != "none"
                                                         : false);
            check_attention(k, v, q, nq, limit, cuts, 0.5f, what);
            if (::testing::Test::HasFailure()) return;
          }
        }
      }
    }
  });
}

// The integer sums at their limits: int8 keys and queries all at +-127 (pairs of products at
// +-32258, the most VPMADDUBSW's int16 pairs meet on AVX2) and int4 keys at +-7 (nibbles 1 and 15)
// against queries at +-127, with the signs aligned and opposed, and values at their extremes
// under the largest weights.
TEST(KvKernel, IntegerPathExtremeNumbersDoNotSaturate) {
  for_each_target([](int64_t) {
    for (KvType type : {KvType::kInt8, KvType::kInt4}) {
      for (int64_t w : {64, 40}) {
        const int64_t n = 150, nq = 4;
        const RowFormat f = RowFormat::uniform(type, w);
        std::vector<float> kx(static_cast<size_t>(n * w)), vx(kx.size());
        for (int64_t t = 0; t < n; ++t) {
          for (int64_t c = 0; c < w; ++c) {
            const float sign = t % 3 == 0 ? 1.0f : t % 3 == 1 ? -1.0f : (c % 2 ? 1.0f : -1.0f);
            kx[t * w + c] = sign;
            vx[t * w + c] = (t + c) % 4 == 0 ? -3.0f : 3.0f;  // every value at its group's largest
          }
        }
        std::vector<float> q(static_cast<size_t>(nq * w));
        for (int64_t c = 0; c < w; ++c) {
          q[c] = 0.01f;
          q[w + c] = -0.01f;
          q[2 * w + c] = c % 2 ? 0.01f : -0.01f;
          q[3 * w + c] = c % 5 ? -0.01f : 0.01f;
        }
        const TestCache k(f, kx, n), v(f, vx, n);
        const std::vector<int64_t> limit(nq, n);
        check_attention(k, v, q, nq, limit, {0, n}, 3.0f,
                        f.describe() + " width " + std::to_string(w) + " at the limits");
      }
    }
  });
}

// kPre: rows of r numbers are rebuilt with U^T and rotated with their own positions.
TEST(KvKernel, KeyRebuildMatchesExplicitRebuild) {
  std::mt19937 rng(17);
  const int64_t dh = 16, r = 5, n = 90, vw = 3;
  std::vector<float> inv_freq;
  for (int64_t i = 0; i < dh / 2; ++i) inv_freq.push_back(std::pow(10000.0f, -2.0f * i / dh));
  const ops::RopeTable rope(inv_freq, 128);
  const std::vector<float> basis_t = random_vector(r * dh, rng);  // [r, dh]
  for (KvType type : {KvType::kF32, KvType::kInt8}) {
    const RowFormat kf = RowFormat::uniform(type, r), vf = RowFormat::uniform(KvType::kF32, vw);
    std::vector<uint8_t> keys(static_cast<size_t>(n * kf.bytes() + ops::kKvRowSlack)),
        values(n * vf.bytes() + ops::kKvRowSlack);
    std::vector<float> rebuilt(static_cast<size_t>(n * dh), 0.0f), vd(n * vw), raw(r);
    for (int64_t t = 0; t < n; ++t) {
      ops::encode_row(kf, random_vector(r, rng).data(), nullptr, keys.data() + t * kf.bytes());
      const std::vector<float> v = random_vector(vw, rng);
      ops::encode_row(vf, v.data(), nullptr, values.data() + t * vf.bytes());
      std::copy(v.begin(), v.end(), vd.begin() + t * vw);
      ops::decode_row_reference(kf, keys.data() + t * kf.bytes(), nullptr, raw.data());
      for (int64_t c = 0; c < r; ++c)
        for (int64_t i = 0; i < dh; ++i) rebuilt[t * dh + i] += raw[c] * basis_t[c * dh + i];
      rope.rotate(rebuilt.data() + t * dh, 1, dh, t);
    }
    const std::vector<float> q = random_vector(dh, rng);
    const int64_t limit = n;
    const ops::KeyRebuild rebuild{basis_t.data(), dh, &rope};
    ops::AttentionPartial part;
    part.reset(1, vw);
    ops::attend_range(ops::QueryBlock{q.data(), 1, dh, &limit}, ops::KvRows{keys.data(), kf},
                      &rebuild, ops::KvRows{values.data(), vf}, 0.25f, 0, n, part);
    std::vector<float> out(vw), ref(vw);
    ops::finish_partial(part, out.data(), vw);
    ops::attend_one_reference(q.data(), rebuilt.data(), dh, vd.data(), vw, n, 0.25f, ref.data());
    for (int64_t c = 0; c < vw; ++c) EXPECT_NEAR(out[c], ref[c], 1e-4 * (1 + std::abs(ref[c])));
  }
}

// Angles kept in blocks (made ahead by reserve) equal the ones computed per call, and a
// rotation round-trips, below and past the kept positions.
TEST(KvKernel, RopeTableKeptAndComputedAnglesAgree) {
  std::vector<float> inv_freq;
  for (int i = 0; i < 4; ++i) inv_freq.push_back(std::pow(10000.0f, -2.0f * i / 8));
  const ops::RopeTable kept(inv_freq, 16), computed(inv_freq, 0);
  kept.reserve(9000);  // three blocks
  for (int64_t pos : {0, 15, 16, 4095, 4096, 8191, 8999, 9000, 70000}) {
    std::vector<float> a = {1, 2, 3, 4, 5, 6, 7, 8}, b = a, c = a;
    kept.rotate(a.data(), 1, 8, pos);
    computed.rotate(b.data(), 1, 8, pos);
    for (int i = 0; i < 8; ++i) EXPECT_EQ(a[i], b[i]) << "position " << pos;
    kept.rotate_inverse(a.data(), 1, 8, pos);
    for (int i = 0; i < 8; ++i) EXPECT_NEAR(a[i], c[i], 1e-5) << "position " << pos;
  }
}

const char* kSmallModel = "models/stories260K.gguf";

std::vector<int32_t> eval_ids(const model::Model& m) {
  return testing::repo_text_ids(m, "data/tinystories-eval.txt");
}

double ppl_with(model::Model& m, const std::vector<int32_t>& ids, kv::CacheTypes types) {
  m.set_cache_types(types);
  eval::PerplexityOptions o;
  o.ctx = 256;  // the whole eval text: ~24 windows, a fraction of a second on this model
  return eval::perplexity(m, ids, o, nullptr).ppl;
}

// The DoD's bar: an int8 cache scores within 0.5 % of f16; f16 within 0.01 % of f32.
TEST(KvCacheModel, Int8PerplexityWithinHalfAPercentOfF16) {
  auto m = model::Model::load(testing::source_path(kSmallModel));
  const std::vector<int32_t> ids = eval_ids(*m);
  const double f32 = ppl_with(*m, ids, {KvType::kF32, KvType::kF32});
  const double f16 = ppl_with(*m, ids, {KvType::kF16, KvType::kF16});
  const double i8 = ppl_with(*m, ids, {KvType::kInt8, KvType::kInt8});
  const double i4 = ppl_with(*m, ids, {KvType::kInt4, KvType::kInt4});
  EXPECT_NEAR(f16 / f32, 1.0, 1e-4);
  EXPECT_NEAR(i8 / f16, 1.0, 5e-3);
  EXPECT_GT(i4, i8);  // 4 bits lose something measurable on 8-wide heads
}

// Decode (one token at a time) runs the decode kernels, which on AVX-512 VNNI and AVX2 machines
// score int8/int4 caches with integer dot products (queries rounded to int8): the bar holds there too,
// and with f16 the decode path equals the prefill path.
TEST(KvCacheModel, Int8DecodePathPerplexityOnHeadDim64) {
  const std::string rel = "models/tinystories-c4-gqa.gguf";
  EKV_REQUIRE_SHARED(rel);
  auto m = model::Model::load(testing::shared_path(rel));
  const std::vector<int32_t> ids = eval_ids(*m);
  const auto ppl = [&](KvType t, bool decode) {
    m->set_cache_types({t, t});
    eval::PerplexityOptions o;
    o.ctx = 256;
    o.max_windows = 4;
    o.decode = decode;
    o.progress = false;
    return eval::perplexity(*m, ids, o, nullptr).ppl;
  };
  const double f16 = ppl(KvType::kF16, true);
  EXPECT_NEAR(f16 / ppl(KvType::kF16, false), 1.0, 1e-5);
  EXPECT_NEAR(ppl(KvType::kInt8, true) / f16, 1.0, 5e-3);
  EXPECT_NEAR(ppl(KvType::kInt4, true) / f16, 1.0, 3e-2);
}

TEST(KvCacheModel, BytesPerTokenFollowTheTypes) {
  auto m = model::Model::load(testing::source_path(kSmallModel));
  const model::ModelConfig& c = m->config();
  const int64_t rows = c.n_layers * c.n_kv_heads;  // per kind
  m->set_cache_types({KvType::kF16, KvType::kInt4});
  EXPECT_EQ(m->kv_bytes_per_token(),
            rows * (2 * c.head_dim + RowFormat::uniform(KvType::kInt4, c.head_dim).bytes()));
  EXPECT_EQ(m->new_cache(4).bytes_per_token(), m->kv_bytes_per_token());
  EXPECT_THROW(m->set_cache_types({KvType::kMixed, KvType::kMixed}), Error);
}

TEST(KvCacheModel, WaterFilledModelMeetsBudgetAndRoundTrips) {
  auto m = model::Model::load(testing::source_path(kSmallModel));
  const std::vector<int32_t> ids = eval_ids(*m);
  // An uncompressed model has no eigenbasis to allot bits over.
  compress::CacheBitsOptions o;
  o.ctx = 128;
  o.max_tokens = 1024;
  o.progress = false;
  EXPECT_THROW(compress::water_fill_cache(*m, ids, o), Error);
  // Full-rank compression (any orthonormal basis reproduces the model), then water-filling.
  const std::string eigen = testing::temp_path("eigen_full.gguf");
  int status = 0;
  testing::run_command(testing::eigenkv_binary() + " calibrate -m " +
                           testing::source_path(kSmallModel) + " -f " +
                           testing::source_path("data/tinystories-calib.txt") +
                           " --threshold 0 --rope post --ctx 128 -t 1 -o " + eigen + " 2>&1",
                       &status);
  ASSERT_EQ(status, 0);
  auto full = model::Model::load(eigen);
  o.budget = 0.3;
  const compress::CacheBitsResult r = compress::water_fill_cache(*full, ids, o);
  EXPECT_LE(r.bytes_per_token, r.budget_bytes);
  EXPECT_EQ(r.bytes_per_token, full->kv_bytes_per_token());
  EXPECT_GT(r.bytes_per_token, r.budget_bytes * 0.9);  // the budget is used, not wasted
  EXPECT_EQ(full->cache_types().key, KvType::kMixed);
  EXPECT_THROW(full->set_cache_types({KvType::kInt8, KvType::kInt8}), Error);
  // Saved and reloaded: same allotment, same logits.
  const std::string path = testing::temp_path("waterfilled.gguf");
  model::save_gguf(*full, path);
  auto back = model::Model::load(path);
  ASSERT_TRUE(back->has_cache_allotment());
  EXPECT_EQ(back->kv_bytes_per_token(), full->kv_bytes_per_token());
  const std::vector<int32_t> head(ids.begin(), ids.begin() + 64);
  std::vector<float> a(64 * full->config().n_vocab), b(a.size());
  kv::KvCache ca = full->new_cache(64), cb = back->new_cache(64);
  full->forward(head, ca, a.data(), true);
  back->forward(head, cb, b.data(), true);
  EXPECT_EQ(a, b);
  // A budget below one 4-bit direction per layer, kind and head cannot be met.
  auto again = model::Model::load(eigen);
  o.budget = 0.01;
  try {
    compress::water_fill_cache(*again, ids, o);
    FAIL() << "an unmeetable budget was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot be met"), std::string::npos) << e.what();
  }
  std::filesystem::remove(eigen);
  std::filesystem::remove(path);
}

TEST(KvCacheCli, BadCacheTypeIsAClearError) {
  int status = 0;
  const std::string out = testing::run_command(
      testing::eigenkv_binary() + " generate -m " + testing::source_path(kSmallModel) +
          " -n 4 --cache-type-k q5_1 2>&1",
      &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(out.find("unknown KV cache type 'q5_1'"), std::string::npos) << out;
}

// Greedy text is the same with an f16 cache as with f32 on the bundled model.
TEST(KvCacheCli, GreedyTextWithF16Cache) {
  int status = 0;
  const std::string out = testing::run_command(
      testing::eigenkv_binary() + " generate -m " + testing::source_path(kSmallModel) +
          " -n 24 --temp 0 -t 1 --cache-type-k f16 --cache-type-v int8 2>/dev/null",
      &status);
  EXPECT_EQ(status, 0);
  EXPECT_NE(out.find("Once upon a time, there was a little girl named Lily."), std::string::npos)
      << out;
}

}  // namespace
}  // namespace eigenkv
