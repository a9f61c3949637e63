// Highway's foreach_target compiles this file once per SIMD target; HWY_ONCE holds the dispatch.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/attention_kernel.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// The includes above must come first.
#include <hwy/contrib/math/math-inl.h>
#include <hwy/cache_control.h>
#include <hwy/highway.h>
#if HWY_ARCH_X86
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops/attention_kernel.h"
#include "ops/half.h"
#include "util/error.h"

// The targets with an integer path (evaluated at each use, so per target).
#ifndef EIGENKV_INTEGER_ATTENTION
#define EIGENKV_INTEGER_ATTENTION (HWY_TARGET == HWY_AVX3_DL || HWY_TARGET == HWY_AVX2)
#endif

HWY_BEFORE_NAMESPACE();
namespace eigenkv::ops {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// At most 16 float lanes, so that a 4-bit group's 16 bytes fill whole vectors.
using DF = hn::CappedTag<float, 16>;

// Floats a decoded row may write past its padded width (a vector past the last partial group).
constexpr int64_t kDecodeSlack = 2 * kQuantGroup;

inline int64_t round_up(int64_t n, int64_t lanes) { return (n + lanes - 1) / lanes * lanes; }

inline float stored_scale(const uint8_t* scales, int64_t group) {
  uint16_t h;
  std::memcpy(&h, scales + 2 * group, 2);
  return fp16_to_fp32(h);
}

// Decodes one row into dst[0, width) and zeroes dst[width, padded).
void DecodeRow(const RowFormat& f, const uint8_t* row, const float* sigma_padded, float* dst,
               int64_t padded) {
  const DF df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  const int64_t w = f.width;
  if (f.type == KvType::kF32) {
    std::memcpy(dst, row, sizeof(float) * w);
  } else if (f.type == KvType::kF16) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    const auto* h = reinterpret_cast<const hwy::float16_t*>(row);
    for (int64_t i = 0; i < w; i += L)
      hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, h + i)), df, dst + i);
  } else {
    const hn::RebindToSigned<DF> di;
    const hn::Rebind<int8_t, DF> d8;
    const hn::Rebind<uint8_t, DF> du8;
    const uint8_t* scales = row;
    const uint8_t* q8 = row + 2 * (f.groups8() + f.groups4());
    const uint8_t* q4 = q8 + f.n8;
    int64_t g = 0;
    for (int64_t start = 0; start < f.n8; start += kQuantGroup, ++g) {
      const int64_t m = std::min(kQuantGroup, f.n8 - start);
      const float scale = stored_scale(scales, g);
      const auto vs = hn::Set(df, scale);
      // Whole vectors, reading and writing past a partial group: rows carry kKvRowSlack bytes
      // of slack, the destination kDecodeSlack floats, and later groups overwrite the excess.
      for (int64_t i = 0; i < m; i += L) {
        const auto q = hn::PromoteTo(di, hn::LoadU(d8, reinterpret_cast<const int8_t*>(q8) + start + i));
        hn::StoreU(hn::Mul(hn::ConvertTo(df, q), vs), df, dst + start + i);
      }
    }
    const auto low_mask = hn::Set(du8, uint8_t{0x0F});
    const auto eight = hn::Set(df, 8.0f);
    for (int64_t start = f.n8; start < w; start += kQuantGroup, ++g) {
      const int64_t m = std::min(kQuantGroup, w - start);
      const int64_t half = (m + 1) / 2;
      const float scale = stored_scale(scales, g);
      const auto vs = hn::Set(df, scale);
      // Low nibbles first: the high nibbles' stores overwrite what the low ones wrote past half.
      for (int64_t i = 0; i < half; i += L) {
        const auto bytes = hn::LoadU(du8, q4 + i);
        const auto lo = hn::ConvertTo(df, hn::PromoteTo(di, hn::And(bytes, low_mask)));
        hn::StoreU(hn::Mul(hn::Sub(lo, eight), vs), df, dst + start + i);
      }
      for (int64_t i = 0; i < half; i += L) {
        const auto bytes = hn::LoadU(du8, q4 + i);
        const auto hi = hn::ConvertTo(df, hn::PromoteTo(di, hn::ShiftRight<4>(bytes)));
        hn::StoreU(hn::Mul(hn::Sub(hi, eight), vs), df, dst + start + half + i);
      }
      q4 += half;
    }
  }
  std::fill(dst + w, dst + padded, 0.0f);
  if (sigma_padded) {
    for (int64_t i = 0; i < padded; i += L)
      hn::StoreU(hn::Mul(hn::LoadU(df, dst + i), hn::LoadU(df, sigma_padded + i)), df, dst + i);
  }
}

// k[0, padded) = sum over c < rank of raw[c] * basis row c (rows `padded` wide), with the
// accumulators held in registers for up to 8 vectors.
template <int kChunks>
void RebuildKeyBlocked(const float* raw, int64_t rank, const float* basis, float* k) {
  const DF df;
  constexpr int64_t L = static_cast<int64_t>(hn::MaxLanes(DF()));
  using V = decltype(hn::Zero(df));
  V acc[kChunks];
  for (int j = 0; j < kChunks; ++j) acc[j] = hn::Zero(df);
  for (int64_t c = 0; c < rank; ++c) {
    const V a = hn::Set(df, raw[c]);
    const float* u = basis + c * kChunks * L;
    for (int j = 0; j < kChunks; ++j) acc[j] = hn::MulAdd(a, hn::LoadU(df, u + j * L), acc[j]);
  }
  for (int j = 0; j < kChunks; ++j) hn::StoreU(acc[j], df, k + j * L);
}

void RebuildKey(const float* raw, int64_t rank, const float* basis, int64_t padded, float* k) {
  const DF df;
  constexpr int64_t L = static_cast<int64_t>(hn::MaxLanes(DF()));
  switch (padded / L) {
    case 1: return RebuildKeyBlocked<1>(raw, rank, basis, k);
    case 2: return RebuildKeyBlocked<2>(raw, rank, basis, k);
    case 3: return RebuildKeyBlocked<3>(raw, rank, basis, k);
    case 4: return RebuildKeyBlocked<4>(raw, rank, basis, k);
    case 5: return RebuildKeyBlocked<5>(raw, rank, basis, k);
    case 6: return RebuildKeyBlocked<6>(raw, rank, basis, k);
    case 7: return RebuildKeyBlocked<7>(raw, rank, basis, k);
    case 8: return RebuildKeyBlocked<8>(raw, rank, basis, k);
    default: break;
  }
  std::fill(k, k + padded, 0.0f);
  for (int64_t c = 0; c < rank; ++c) {
    const auto a = hn::Set(df, raw[c]);
    for (int64_t i = 0; i < padded; i += L)
      hn::StoreU(hn::MulAdd(a, hn::LoadU(df, basis + c * padded + i), hn::LoadU(df, k + i)), df,
                 k + i);
  }
}

// Per-thread scratch, grown on demand.
struct Scratch {
  std::vector<float> queries, keys, raw, values, scores, key_sigma, basis;
};

const float* padded_sigma(const float* sigma, int64_t width, int64_t padded,
                          std::vector<float>& buffer) {
  if (!sigma) return nullptr;
  buffer.assign(static_cast<size_t>(padded), 0.0f);
  std::copy(sigma, sigma + width, buffer.begin());
  return buffer.data();
}

void DecodeRows(const KvRows& rows, int64_t begin, int64_t n, float* out) {
  const DF df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  const int64_t w = rows.format.width, padded = round_up(w, L), bytes = rows.format.bytes();
  thread_local Scratch s;
  const float* sigma = padded_sigma(rows.sigma, w, padded, s.key_sigma);
  s.raw.resize(static_cast<size_t>(padded + kDecodeSlack));
  for (int64_t r = 0; r < n; ++r) {
    DecodeRow(rows.format, rows.data + (begin + r) * bytes, sigma, s.raw.data(), padded);
    std::copy(s.raw.begin(), s.raw.begin() + w, out + r * w);
  }
}

// ---- Fused decode path: rows are decoded a vector at a time straight into the arithmetic, with
// no tile buffer. Used for up to kMaxFusedQueries queries (decode: the heads of one GQA group) and
// row formats whose vectors never straddle a group: f32/f16 of any width, int8/int4 widths that
// are multiples of 32. Everything else takes the tile path.

constexpr int64_t kMaxFusedQueries = 4;
// Decode-sized blocks of up to kMaxSplitQueries queries (GQA groups of 8: TinyLlama-1.1B,
// Llama-3-70B; 7: Qwen2-7B) take the fused and integer paths in sub-blocks of kMaxFusedQueries:
// every sub-block meets the same tile of rows while it is in L1, so the cache is still read from
// memory once. Larger blocks (prefill) decode each tile once for all their queries.
constexpr int64_t kMaxSplitQueries = 2 * kMaxFusedQueries;
constexpr int64_t kSubBlocks = kMaxSplitQueries / kMaxFusedQueries;

// Queries [first, first + count) of sub-block b of a block of n.
inline int64_t SubFirst(int64_t b) { return b * kMaxFusedQueries; }
inline int SubCount(int64_t n, int64_t b) {
  return static_cast<int>(std::min(kMaxFusedQueries, n - SubFirst(b)));
}
inline int64_t SubBlockCount(int64_t n) { return (n + kMaxFusedQueries - 1) / kMaxFusedQueries; }

bool FusedFormat(const RowFormat& f, int64_t lanes) {
  switch (f.type) {
    case KvType::kF32:
    case KvType::kF16:
      return true;
    case KvType::kInt8:
    case KvType::kInt4:
      return f.width % kQuantGroup == 0 && kQuantGroup % lanes == 0;
    default:
      return false;
  }
}

// The float scales of a row's groups.
HWY_INLINE void RowScales(const uint8_t* row, int64_t groups, float* out) {
  for (int64_t g = 0; g < groups; ++g) out[g] = stored_scale(row, g);
}

// Calls f(chunk index, vector) for every vector of one row, in an order that suits the format.
template <KvType kType, class F>
HWY_INLINE void ForEachChunk(const RowFormat& fmt, const uint8_t* row, F&& f) {
  const DF df;
  constexpr int64_t L = static_cast<int64_t>(hn::MaxLanes(DF()));
  // Float rows: a last partial vector reads past the row (rows carry slack) and masks the excess
  // to zero, so whatever lies there (even an infinity) never reaches the arithmetic.
  const int64_t full = fmt.width / L, tail = fmt.width % L;
  if constexpr (kType == KvType::kF32) {
    const float* x = reinterpret_cast<const float*>(row);
    for (int64_t c = 0; c < full; ++c) f(c, hn::LoadU(df, x + c * L));
    if (tail) f(full, hn::IfThenElseZero(hn::FirstN(df, tail), hn::LoadU(df, x + full * L)));
  } else if constexpr (kType == KvType::kF16) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    const auto* h = reinterpret_cast<const hwy::float16_t*>(row);
    for (int64_t c = 0; c < full; ++c) f(c, hn::PromoteTo(df, hn::LoadU(dh, h + c * L)));
    if (tail) {
      f(full, hn::IfThenElseZero(hn::FirstN(df, tail), hn::PromoteTo(df, hn::LoadU(dh, h + full * L))));
    }
  } else if constexpr (kType == KvType::kInt8) {
    const hn::RebindToSigned<DF> di;
    const hn::Rebind<int8_t, DF> d8;
    const int64_t groups = fmt.width / kQuantGroup;
    const auto* q8 = reinterpret_cast<const int8_t*>(row + 2 * groups);
    for (int64_t g = 0; g < groups; ++g) {
      const auto vs = hn::Set(df, stored_scale(row, g));
      for (int64_t c = g * (kQuantGroup / L); c < (g + 1) * (kQuantGroup / L); ++c)
        f(c, hn::Mul(hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, q8 + c * L))), vs));
    }
  } else {
    const hn::RebindToSigned<DF> di;
    const hn::Rebind<uint8_t, DF> du8;
    const int64_t groups = fmt.width / kQuantGroup;
    const uint8_t* q4 = row + 2 * groups;
    const auto mask = hn::Set(di, 15), eight = hn::Set(di, 8);
    for (int64_t g = 0; g < groups; ++g) {
      const auto vs = hn::Set(df, stored_scale(row, g));
      const uint8_t* bytes = q4 + g * (kQuantGroup / 2);
      for (int64_t h = 0; h < kQuantGroup / 2; h += L) {
        const auto v = hn::PromoteTo(di, hn::LoadU(du8, bytes + h));
        const int64_t c = (g * kQuantGroup + h) / L;
        f(c, hn::Mul(hn::ConvertTo(df, hn::Sub(hn::And(v, mask), eight)), vs));
        f(c + kQuantGroup / 2 / L,
          hn::Mul(hn::ConvertTo(df, hn::Sub(hn::ShiftRight<4>(v), eight)), vs));
      }
    }
  }
}

// sc[i * stride + r] = scale * q_i . key(t0 + r) for r < rows.
template <KvType kType, int kQ>
void FusedScores(const KvRows& keys, int64_t t0, int64_t rows, const float* q, int64_t qstride,
                 float scale, float* sc, int64_t stride) {
  const DF df;
  constexpr int64_t L = static_cast<int64_t>(hn::MaxLanes(DF()));
  const int64_t bytes = keys.format.bytes();
  using V = decltype(hn::Zero(df));
  // Four rows at a time: their sums are reduced together by a tree of even/odd concatenations
  // (row k ends in lanes [k L/4, (k+1) L/4)), far cheaper than four full reductions.
  int64_t r = 0;
  // (HWY_SCALAR, one lane, has no ConcatEven/ConcatOdd at all in Highway 1.0.3, and the names
  // below do not depend on the template arguments: compiled out there.)
#if HWY_TARGET != HWY_SCALAR
  // Sixteen rows at a time with 16 lanes: four 4-row trees (row k's sum spread over lanes
  // [4k, 4k + 4)), then two more levels leave row j's whole sum in lane j.
  if constexpr (L == 16) {
    for (; r + 16 <= rows; r += 16) {
      V part[kQ][4];
      for (int b = 0; b < 4; ++b) {
        V acc[kQ][4];
        for (int i = 0; i < kQ; ++i)
          for (int k = 0; k < 4; ++k) acc[i][k] = hn::Zero(df);
        for (int k = 0; k < 4; ++k) {
          ForEachChunk<kType>(keys.format, keys.data + (t0 + r + 4 * b + k) * bytes, [&](int64_t c, V x) {
            for (int i = 0; i < kQ; ++i)
              acc[i][k] = hn::MulAdd(hn::LoadU(df, q + i * qstride + c * L), x, acc[i][k]);
          });
        }
        for (int i = 0; i < kQ; ++i) {
          const V v01 = hn::Add(hn::ConcatEven(df, acc[i][1], acc[i][0]), hn::ConcatOdd(df, acc[i][1], acc[i][0]));
          const V v23 = hn::Add(hn::ConcatEven(df, acc[i][3], acc[i][2]), hn::ConcatOdd(df, acc[i][3], acc[i][2]));
          part[i][b] = hn::Add(hn::ConcatEven(df, v23, v01), hn::ConcatOdd(df, v23, v01));
        }
      }
      const V vscale = hn::Set(df, scale);
      for (int i = 0; i < kQ; ++i) {
        const V w01 = hn::Add(hn::ConcatEven(df, part[i][1], part[i][0]), hn::ConcatOdd(df, part[i][1], part[i][0]));
        const V w23 = hn::Add(hn::ConcatEven(df, part[i][3], part[i][2]), hn::ConcatOdd(df, part[i][3], part[i][2]));
        const V sums = hn::Add(hn::ConcatEven(df, w23, w01), hn::ConcatOdd(df, w23, w01));
        hn::StoreU(hn::Mul(sums, vscale), df, sc + i * stride + r);
      }
    }
  }
  if constexpr (L >= 4) {
    HWY_ALIGN float lanes[L];
    for (; r + 4 <= rows; r += 4) {
      V acc[kQ][4];
      for (int i = 0; i < kQ; ++i)
        for (int k = 0; k < 4; ++k) acc[i][k] = hn::Zero(df);
      for (int k = 0; k < 4; ++k) {
        ForEachChunk<kType>(keys.format, keys.data + (t0 + r + k) * bytes, [&](int64_t c, V x) {
          for (int i = 0; i < kQ; ++i)
            acc[i][k] = hn::MulAdd(hn::LoadU(df, q + i * qstride + c * L), x, acc[i][k]);
        });
      }
      for (int i = 0; i < kQ; ++i) {
        const V v01 = hn::Add(hn::ConcatEven(df, acc[i][1], acc[i][0]),
                              hn::ConcatOdd(df, acc[i][1], acc[i][0]));
        const V v23 = hn::Add(hn::ConcatEven(df, acc[i][3], acc[i][2]),
                              hn::ConcatOdd(df, acc[i][3], acc[i][2]));
        hn::Store(hn::Add(hn::ConcatEven(df, v23, v01), hn::ConcatOdd(df, v23, v01)), df, lanes);
        for (int k = 0; k < 4; ++k) {
          float sum = 0;
          for (int64_t j = k * (L / 4); j < (k + 1) * (L / 4); ++j) sum += lanes[j];
          sc[i * stride + r + k] = scale * sum;
        }
      }
    }
  }
#endif  // HWY_TARGET != HWY_SCALAR
  for (; r < rows; ++r) {
    V acc[kQ];
    for (int i = 0; i < kQ; ++i) acc[i] = hn::Zero(df);
    ForEachChunk<kType>(keys.format, keys.data + (t0 + r) * bytes, [&](int64_t c, V x) {
      for (int i = 0; i < kQ; ++i) acc[i] = hn::MulAdd(hn::LoadU(df, q + i * qstride + c * L), x, acc[i]);
    });
    for (int i = 0; i < kQ; ++i) sc[i * stride + r] = scale * hn::GetLane(hn::SumOfLanes(df, acc[i]));
  }
}

// out_i += sum over r < rows of p[i * stride + r] * value(t0 + r).
template <KvType kType, int kQ>
void FusedValues(const KvRows& values, int64_t t0, int64_t rows, const float* p, int64_t stride,
                 float* out, int64_t ostride) {
  const DF df;
  constexpr int64_t L = static_cast<int64_t>(hn::MaxLanes(DF()));
  const int64_t bytes = values.format.bytes();
  using V = decltype(hn::Zero(df));
  // Two rows at a time into separate accumulators (independent FMA chains); a row's vectors are
  // added to the output in place, which stays in L1.
  for (int64_t r = 0; r < rows; ++r) {
    float pr[kQ];
    for (int i = 0; i < kQ; ++i) pr[i] = p[i * stride + r];
    ForEachChunk<kType>(values.format, values.data + (t0 + r) * bytes, [&](int64_t c, V x) {
      for (int i = 0; i < kQ; ++i) {
        float* o = out + i * ostride + c * L;
        hn::StoreU(hn::MulAdd(hn::Set(df, pr[i]), x, hn::LoadU(df, o)), df, o);
      }
    });
  }
}

template <int kQ>
void DispatchScores(const KvRows& keys, int64_t t0, int64_t rows, const float* q, int64_t qstride,
                    float scale, float* sc, int64_t stride) {
  switch (keys.format.type) {
    case KvType::kF32: return FusedScores<KvType::kF32, kQ>(keys, t0, rows, q, qstride, scale, sc, stride);
    case KvType::kF16: return FusedScores<KvType::kF16, kQ>(keys, t0, rows, q, qstride, scale, sc, stride);
    case KvType::kInt8: return FusedScores<KvType::kInt8, kQ>(keys, t0, rows, q, qstride, scale, sc, stride);
    default: return FusedScores<KvType::kInt4, kQ>(keys, t0, rows, q, qstride, scale, sc, stride);
  }
}

// Float rows of at most kC vectors: the outputs stay in registers for the whole tile.
template <KvType kType, int kQ, int kC>
void FusedValuesInRegisters(const KvRows& values, int64_t t0, int64_t rows, const float* p,
                            int64_t stride, float* out, int64_t ostride) {
  const DF df;
  constexpr int64_t L = static_cast<int64_t>(hn::MaxLanes(DF()));
  using V = decltype(hn::Zero(df));
  const int64_t bytes = values.format.bytes(), width = values.format.width;
  const int64_t tail = width - (kC - 1) * L;  // numbers in the last vector, 1..L
  const auto last = hn::FirstN(df, static_cast<size_t>(tail));
  V acc[kQ][kC];
  for (int i = 0; i < kQ; ++i)
    for (int c = 0; c < kC; ++c) acc[i][c] = hn::LoadU(df, out + i * ostride + c * L);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = values.data + (t0 + r) * bytes;
    V x[kC];
    for (int c = 0; c < kC; ++c) {
      if constexpr (kType == KvType::kF32) {
        x[c] = hn::LoadU(df, reinterpret_cast<const float*>(row) + c * L);
      } else {
        const hn::Rebind<hwy::float16_t, DF> dh;
        x[c] = hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(row) + c * L));
      }
    }
    // The last vector reads past the row (rows carry slack): masked to zero.
    x[kC - 1] = hn::IfThenElseZero(last, x[kC - 1]);
    for (int i = 0; i < kQ; ++i) {
      const V w = hn::Set(df, p[i * stride + r]);
      for (int c = 0; c < kC; ++c) acc[i][c] = hn::MulAdd(w, x[c], acc[i][c]);
    }
  }
  for (int i = 0; i < kQ; ++i)
    for (int c = 0; c < kC; ++c) hn::StoreU(acc[i][c], df, out + i * ostride + c * L);
}

template <KvType kType, int kQ>
void FloatValues(const KvRows& values, int64_t t0, int64_t rows, const float* p, int64_t stride,
                 float* out, int64_t ostride) {
  constexpr int64_t L = static_cast<int64_t>(hn::MaxLanes(DF()));
  switch ((values.format.width + L - 1) / L) {
    case 1: return FusedValuesInRegisters<kType, kQ, 1>(values, t0, rows, p, stride, out, ostride);
    case 2: return FusedValuesInRegisters<kType, kQ, 2>(values, t0, rows, p, stride, out, ostride);
    case 3: return FusedValuesInRegisters<kType, kQ, 3>(values, t0, rows, p, stride, out, ostride);
    case 4: return FusedValuesInRegisters<kType, kQ, 4>(values, t0, rows, p, stride, out, ostride);
    default: return FusedValues<kType, kQ>(values, t0, rows, p, stride, out, ostride);
  }
}

template <int kQ>
void DispatchValues(const KvRows& values, int64_t t0, int64_t rows, const float* p, int64_t stride,
                    float* out, int64_t ostride) {
  switch (values.format.type) {
    case KvType::kF32: return FloatValues<KvType::kF32, kQ>(values, t0, rows, p, stride, out, ostride);
    case KvType::kF16: return FloatValues<KvType::kF16, kQ>(values, t0, rows, p, stride, out, ostride);
    case KvType::kInt8: return FusedValues<KvType::kInt8, kQ>(values, t0, rows, p, stride, out, ostride);
    default: return FusedValues<KvType::kInt4, kQ>(values, t0, rows, p, stride, out, ostride);
  }
}

void ScoresFused(int nq, const KvRows& keys, int64_t t0, int64_t rows, const float* q,
                 int64_t qstride, float scale, float* sc, int64_t stride) {
  switch (nq) {
    case 1: return DispatchScores<1>(keys, t0, rows, q, qstride, scale, sc, stride);
    case 2: return DispatchScores<2>(keys, t0, rows, q, qstride, scale, sc, stride);
    case 3: return DispatchScores<3>(keys, t0, rows, q, qstride, scale, sc, stride);
    default: return DispatchScores<4>(keys, t0, rows, q, qstride, scale, sc, stride);
  }
}

void ValuesFused(int nq, const KvRows& values, int64_t t0, int64_t rows, const float* p,
                 int64_t stride, float* out, int64_t ostride) {
  switch (nq) {
    case 1: return DispatchValues<1>(values, t0, rows, p, stride, out, ostride);
    case 2: return DispatchValues<2>(values, t0, rows, p, stride, out, ostride);
    case 3: return DispatchValues<3>(values, t0, rows, p, stride, out, ostride);
    default: return DispatchValues<4>(values, t0, rows, p, stride, out, ostride);
  }
}

// ---- Integer path (x86 AVX-512 VNNI, Highway's AVX3_DL target): int8 and int4 rows are used
// as the integers they are. Scores: each query is rounded to int8 per group of 32 (one float scale
// per group, as llama.cpp does for its q8_0 dot products), 16 key rows are transposed so that a
// vector holds one 4-byte column of all 16 rows, and VPDPBUSD adds 64 byte products per
// instruction with no horizontal sums. Values: the softmax weights of a tile times each row's group
// scale are rounded to 15-bit integers (relative to the tile's largest), and VPDPWSSD adds the
// products of two rows per instruction into 32-bit sums, turned back into floats once per tile.
// Highway 1.0.3 has no int8 dot products, so this target-specific code uses raw intrinsics; AVX2
// has its own version below, and every other target keeps the float path above.
#if HWY_TARGET == HWY_AVX3_DL
constexpr bool kIntegerPath = true;
constexpr int64_t kIntBlock = 16;  // key rows scored per transposed block

// Column c of 16 rows of 16 dwords ends in x[c] (lane r = row r).
HWY_INLINE void Transpose16(__m512i* x) {
  __m512i t[16], u[16];
  for (int b = 0; b < 16; b += 4) {
    t[b + 0] = _mm512_unpacklo_epi32(x[b + 0], x[b + 1]);
    t[b + 1] = _mm512_unpackhi_epi32(x[b + 0], x[b + 1]);
    t[b + 2] = _mm512_unpacklo_epi32(x[b + 2], x[b + 3]);
    t[b + 3] = _mm512_unpackhi_epi32(x[b + 2], x[b + 3]);
    u[b + 0] = _mm512_unpacklo_epi64(t[b + 0], t[b + 2]);  // 128-bit lane k: rows b..b+3 of column 4k
    u[b + 1] = _mm512_unpackhi_epi64(t[b + 0], t[b + 2]);  // column 4k + 1
    u[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);  // column 4k + 2
    u[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);  // column 4k + 3
  }
  for (int j = 0; j < 4; ++j) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88);   // rows 0-7: columns j, 8+j
    const __m512i w0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xDD);   // rows 0-7: columns 4+j, 12+j
    const __m512i v1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88);
    const __m512i w1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xDD);
    x[j] = _mm512_shuffle_i32x4(v0, v1, 0x88);
    x[8 + j] = _mm512_shuffle_i32x4(v0, v1, 0xDD);
    x[4 + j] = _mm512_shuffle_i32x4(w0, w1, 0x88);
    x[12 + j] = _mm512_shuffle_i32x4(w0, w1, 0xDD);
  }
}

// The float16 scales of groups 2j and 2j + 1 of rows [0, n) as floats a[r] and b[r], zero from
// n up to a whole vector. Plain loads into a buffer: on Zen 4 a 16-lane gather costs more.
HWY_INLINE void ScalePairs(const uint8_t* first_row, int64_t bytes, int64_t n, int64_t j, float* a,
                           float* b) {
  alignas(64) uint32_t raw[kAttentionTile];
  const int64_t padded = (n + 15) / 16 * 16;
  for (int64_t r = 0; r < n; ++r) std::memcpy(raw + r, first_row + r * bytes + 4 * j, 4);
  for (int64_t r = n; r < padded; ++r) raw[r] = 0;
  for (int64_t r = 0; r < padded; r += 16) {
    const __m512i s = _mm512_load_si512(raw + r);
    _mm512_storeu_ps(a + r, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(s)));
    _mm512_storeu_ps(b + r, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(s, 16))));
  }
}

// The 64 numbers (groups 2c and 2c + 1) of chunk c of a row as bytes: int8 offset by 128 to
// unsigned, int4 as their stored nibbles q + 8 in the order [2c: 0-15][2c+1: 0-15][2c: 16-31]
// [2c+1: 16-31]. A chunk with one group reads bytes past it, which meet zero query bytes.
template <KvType kType>
HWY_INLINE __m512i ChunkBytes(const uint8_t* numbers, int64_t c) {
  if constexpr (kType == KvType::kInt8) {
    return _mm512_xor_si512(_mm512_loadu_si512(numbers + 64 * c), _mm512_set1_epi8(-128));
  } else {
    // The 32 bytes in both halves, the upper half shifted down by a nibble, then masked.
    const __m512i b = _mm512_broadcast_i64x4(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(numbers + 32 * c)));
    const __m512i shift = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
    return _mm512_and_si512(_mm512_srlv_epi64(b, shift), _mm512_set1_epi8(0x0F));
  }
}

// Queries rounded to int8 in the byte order of ChunkBytes, with their group scales and the
// offset corrections (128 or 8 times the sum of a group's query bytes).
struct IntQueries {
  int64_t chunks = 0, groups = 0;
  std::vector<int8_t> bytes;    // [n][chunks * 64]
  std::vector<float> scale;     // [n][groups]
  std::vector<int32_t> offset;  // [n][groups]
};

// Where number j of group g sits in the chunk's bytes (ChunkBytes' order).
// A group of m numbers (the last may be short) holds its int4 numbers as byte i = numbers i and
// i + ceil(m/2).
inline int64_t ChunkPosition(KvType type, int64_t g, int64_t j, int64_t m) {
  if (type == KvType::kInt8) return (g % 2) * 32 + j;
  const int64_t half = (m + 1) / 2;
  return (g % 2) * 16 + (j >= half ? 32 + j - half : j);
}

// The queries in `q` are replaced by their rounded values, so that rows scored by the float
// path (a tile's last rows short of 16) see the same queries.
void QuantizeQueries(KvType type, float* q, int64_t n, int64_t qstride, int64_t width,
                     IntQueries& iq) {
  iq.groups = (width + kQuantGroup - 1) / kQuantGroup;
  iq.chunks = (iq.groups + 1) / 2;
  iq.bytes.assign(static_cast<size_t>(n * iq.chunks * 64), 0);
  iq.scale.assign(static_cast<size_t>(n * iq.groups), 0.0f);
  iq.offset.assign(static_cast<size_t>(n * iq.groups), 0);
  const int32_t offset = type == KvType::kInt8 ? 128 : 8;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t g = 0; g < iq.groups; ++g) {
      // A short last group is rounded as if zero-padded; its missing numbers meet zero bytes.
      const int64_t m = std::min(kQuantGroup, width - g * kQuantGroup);
      float* x = q + i * qstride + g * kQuantGroup;
      float padded[kQuantGroup] = {};
      std::copy(x, x + m, padded);
      int8_t q8[kQuantGroup];
      const float step = round_query_group(padded, q8);
      iq.scale[i * iq.groups + g] = step;
      int32_t sum = 0;
      int8_t* out = iq.bytes.data() + (i * iq.chunks + g / 2) * 64;
      for (int64_t j = 0; j < m; ++j) {
        x[j] = static_cast<float>(q8[j]) * step;
        out[ChunkPosition(type, g, j, m)] = q8[j];
        sum += q8[j];
      }
      iq.offset[i * iq.groups + g] = offset * sum;
    }
  }
}

// sc[i * stride + r] = scale * q_i . key(t0 + r) for r < 16 * blocks.
template <KvType kType, int kQ>
void IntScores16(const KvRows& keys, int64_t t0, int64_t blocks, const IntQueries& iq,
                 float scale, float* sc, int64_t stride) {
  const int64_t bytes = keys.format.bytes(), groups = iq.groups;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* first = keys.data + (t0 + 16 * b) * bytes;
    __m512 score[kQ];
    for (int i = 0; i < kQ; ++i) score[i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < iq.chunks; ++c) {
      __m512i x[16];
      for (int r = 0; r < 16; ++r) x[r] = ChunkBytes<kType>(first + r * bytes + 2 * groups, c);
      Transpose16(x);
      alignas(64) float sa[16], sb[16];
      ScalePairs(first, bytes, 16, c, sa, sb);
      const __m512 ka = _mm512_load_ps(sa), kb = _mm512_load_ps(sb);
      const bool two = 2 * c + 1 < groups;
      for (int i = 0; i < kQ; ++i) {
        const int32_t* qd = reinterpret_cast<const int32_t*>(iq.bytes.data() + (i * iq.chunks + c) * 64);
        __m512i acc_a = _mm512_setzero_si512(), acc_b = _mm512_setzero_si512();
        // Columns of group 2c: int8 0-7; int4 0-3 and 8-11.
        for (int d = 0; d < 16; ++d) {
          const bool in_a = kType == KvType::kInt8 ? d < 8 : (d / 4) % 2 == 0;
          if (in_a) {
            acc_a = _mm512_dpbusd_epi32(acc_a, x[d], _mm512_set1_epi32(qd[d]));
          } else if (two) {
            acc_b = _mm512_dpbusd_epi32(acc_b, x[d], _mm512_set1_epi32(qd[d]));
          }
        }
        const float* qs = iq.scale.data() + i * groups + 2 * c;
        const int32_t* off = iq.offset.data() + i * groups + 2 * c;
        const __m512 fa = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc_a, _mm512_set1_epi32(off[0])));
        score[i] = _mm512_fmadd_ps(fa, _mm512_mul_ps(ka, _mm512_set1_ps(qs[0] * scale)), score[i]);
        if (two) {
          const __m512 fb = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc_b, _mm512_set1_epi32(off[1])));
          score[i] = _mm512_fmadd_ps(fb, _mm512_mul_ps(kb, _mm512_set1_ps(qs[1] * scale)), score[i]);
        }
      }
    }
    for (int i = 0; i < kQ; ++i) _mm512_storeu_ps(sc + i * stride + 16 * b, score[i]);
  }
}

template <int kQ>
void IntScores(KvType type, const KvRows& keys, int64_t t0, int64_t blocks, const IntQueries& iq,
               float scale, float* sc, int64_t stride) {
  if (type == KvType::kInt8) return IntScores16<KvType::kInt8, kQ>(keys, t0, blocks, iq, scale, sc, stride);
  return IntScores16<KvType::kInt4, kQ>(keys, t0, blocks, iq, scale, sc, stride);
}

void ScoresInt(int nq, KvType type, const KvRows& keys, int64_t t0, int64_t blocks,
               const IntQueries& iq, float scale, float* sc, int64_t stride) {
  switch (nq) {
    case 1: return IntScores<1>(type, keys, t0, blocks, iq, scale, sc, stride);
    case 2: return IntScores<2>(type, keys, t0, blocks, iq, scale, sc, stride);
    case 3: return IntScores<3>(type, keys, t0, blocks, iq, scale, sc, stride);
    default: return IntScores<4>(type, keys, t0, blocks, iq, scale, sc, stride);
  }
}

// Groups g and g + 1 of a row as 32 int16 numbers each (int4: the stored nibbles q + 8). A
// missing group g + 1 reads bytes past the row (rows carry slack), which are never used.
template <KvType kType>
HWY_INLINE void PairWords(const uint8_t* numbers, int64_t g, __m512i* out) {
  if constexpr (kType == KvType::kInt8) {
    out[0] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(numbers + 32 * g)));
    out[1] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(numbers + 32 * g + 32)));
  } else {
    // Bytes [g: 16][g+1: 16] as words; low nibbles are numbers 0-15, high 16-31 of each group.
    const __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(numbers + 16 * g)));
    const __m512i lo = _mm512_and_si512(w, _mm512_set1_epi16(0x0F)), hi = _mm512_srli_epi16(w, 4);
    out[0] = _mm512_shuffle_i64x2(lo, hi, 0x44);  // [lo: g][hi: g]
    out[1] = _mm512_shuffle_i64x2(lo, hi, 0xEE);  // [lo: g+1][hi: g+1]
  }
}

// The weighted sum over `rows` value rows of groups g0 .. g0 + kNg - 1, added to the outputs:
// wq holds the weights in units of unit[g].
template <KvType kType, int kQ, int kNg>
HWY_INLINE void ValuesGroups(const uint8_t* numbers0, int64_t bytes, int64_t rows, int64_t g0,
                             int64_t width, int64_t groups, int64_t blocks, const int16_t* wq, const int32_t* wsum,
                             const float* unit, float* out, int64_t ostride) {
  // Natural order of the two accumulators' lanes: lane l of `lo` holds numbers 8l..8l+3 of the
  // group, of `hi` 8l+4..8l+7.
  const __m512i first16 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second16 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  __m512i acc[kQ][kNg][2];
  for (int i = 0; i < kQ; ++i)
    for (int h = 0; h < kNg; ++h) acc[i][h][0] = acc[i][h][1] = _mm512_setzero_si512();
  for (int64_t r = 0; r < rows; r += 2) {
    __m512i a[2], b[2];
    PairWords<kType>(numbers0 + r * bytes, g0, a);
    if (r + 1 < rows) {
      PairWords<kType>(numbers0 + (r + 1) * bytes, g0, b);
    } else {
      b[0] = b[1] = _mm512_setzero_si512();
    }
    for (int h = 0; h < kNg; ++h) {
      const __m512i lo = _mm512_unpacklo_epi16(a[h], b[h]), hi = _mm512_unpackhi_epi16(a[h], b[h]);
      for (int i = 0; i < kQ; ++i) {
        int32_t pair;
        std::memcpy(&pair, wq + (i * groups + g0 + h) * blocks * 16 + r, 4);
        const __m512i w = _mm512_set1_epi32(pair);
        acc[i][h][0] = _mm512_dpwssd_epi32(acc[i][h][0], lo, w);
        acc[i][h][1] = _mm512_dpwssd_epi32(acc[i][h][1], hi, w);
      }
    }
  }
  for (int h = 0; h < kNg; ++h) {
    const int64_t g = g0 + h;
    // A short last group: its int4 numbers sit at word positions [0, half) and [16, 16 + m - half)
    // (reordered below), and only its m numbers are stored.
    const int64_t m = std::min(kQuantGroup, width - g * kQuantGroup);
    const int64_t half = (m + 1) / 2;
    const bool reorder = kType == KvType::kInt4 && m < kQuantGroup;
    alignas(64) int32_t order[kQuantGroup];
    if (reorder) {
      for (int64_t d = 0; d < kQuantGroup; ++d)
        order[d] = static_cast<int32_t>(d < half ? d : 16 + d - half);
    }
    const __mmask16 keep0 = static_cast<__mmask16>(m >= 16 ? 0xFFFFu : (1u << m) - 1);
    const __mmask16 keep1 = static_cast<__mmask16>(m >= 32 ? 0xFFFFu : m <= 16 ? 0u : (1u << (m - 16)) - 1);
    for (int i = 0; i < kQ; ++i) {
      __m512i lo = acc[i][h][0], hi = acc[i][h][1];
      if constexpr (kType == KvType::kInt4) {  // the nibbles are q + 8
        const __m512i off = _mm512_set1_epi32(8 * wsum[i * groups + g]);
        lo = _mm512_sub_epi32(lo, off);
        hi = _mm512_sub_epi32(hi, off);
      }
      const __m512 fl = _mm512_cvtepi32_ps(lo), fh = _mm512_cvtepi32_ps(hi);
      const __m512 u = _mm512_set1_ps(unit[g]);
      float* o = out + i * ostride + g * kQuantGroup;
      __m512 w0 = _mm512_permutex2var_ps(fl, first16, fh), w1 = _mm512_permutex2var_ps(fl, second16, fh);
      if (reorder) {
        const __m512 d0 = _mm512_permutex2var_ps(w0, _mm512_load_si512(order), w1);
        w1 = _mm512_permutex2var_ps(w0, _mm512_load_si512(order + 16), w1);
        w0 = d0;
      }
      _mm512_mask_storeu_ps(o, keep0, _mm512_fmadd_ps(w0, u, _mm512_maskz_loadu_ps(keep0, o)));
      if (keep1) {
        _mm512_mask_storeu_ps(o + 16, keep1,
                              _mm512_fmadd_ps(w1, u, _mm512_maskz_loadu_ps(keep1, o + 16)));
      }
    }
  }
}

// out_i += sum over r < rows of p[i * stride + r] * value(t0 + r), p zero past each query's rows.
template <KvType kType, int kQ>
void IntValuesTile(const KvRows& values, int64_t t0, int64_t rows, const float* p, int64_t stride,
                   float* out, int64_t ostride) {
  const int64_t bytes = values.format.bytes();
  const int64_t groups = (values.format.width + kQuantGroup - 1) / kQuantGroup;
  const int64_t blocks = (rows + 15) / 16;
  const uint8_t* first = values.data + t0 * bytes;
  // Row group scales, [groups][blocks * 16] (zero past the tile), and the weights
  // w = p * scale rounded to int16 against each query's largest: [kQ][groups][blocks * 16].
  thread_local std::vector<float> vs;
  thread_local std::vector<int16_t> wq;
  thread_local std::vector<int32_t> wsum;  // int4: the sum of a query's weights per group
  if (vs.size() < static_cast<size_t>(groups * blocks * 16)) vs.resize(groups * blocks * 16);
  if (wq.size() < static_cast<size_t>(kQ * groups * blocks * 16)) wq.resize(kQ * groups * blocks * 16);
  if (wsum.size() < static_cast<size_t>(kQ * groups)) wsum.resize(kQ * groups);
  for (int64_t j = 0; 2 * j < groups; ++j) {
    float* a = vs.data() + 2 * j * blocks * 16;
    alignas(64) float spare[kAttentionTile];
    ScalePairs(first, bytes, rows, j, a, 2 * j + 1 < groups ? a + blocks * 16 : spare);
  }
  // Weights p <= 1 (the online softmax subtracts a running max), so w = p * scale fits 15 bits
  // against a group's largest row scale: one unit per group and tile, shared by the queries.
  thread_local std::vector<float> unit;
  if (unit.size() < static_cast<size_t>(groups)) unit.resize(groups);
  for (int64_t g = 0; g < groups; ++g) {
    float* s = vs.data() + g * blocks * 16;
    __m512 m = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) m = _mm512_max_ps(m, _mm512_loadu_ps(s + 16 * b));
    const float smax = _mm512_reduce_max_ps(m);
    unit[g] = smax / 32767.0f;
    const __m512 inv = _mm512_set1_ps(smax > 0 ? 32767.0f / smax : 0.0f);
    for (int64_t b = 0; b < blocks; ++b) _mm512_storeu_ps(s + 16 * b, _mm512_mul_ps(_mm512_loadu_ps(s + 16 * b), inv));
  }
  for (int i = 0; i < kQ; ++i) {
    for (int64_t g = 0; g < groups; ++g) {
      __m512i sum = _mm512_setzero_si512();
      for (int64_t b = 0; b < blocks; ++b) {
        const __m512 w = _mm512_mul_ps(_mm512_loadu_ps(p + i * stride + 16 * b),
                                       _mm512_loadu_ps(vs.data() + g * blocks * 16 + 16 * b));
        const __m512i w32 = _mm512_cvtps_epi32(w);
        sum = _mm512_add_epi32(sum, w32);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(wq.data() + (i * groups + g) * blocks * 16 + 16 * b),
                            _mm512_cvtsepi32_epi16(w32));
      }
      wsum[i * groups + g] = _mm512_reduce_add_epi32(sum);
    }
  }
  const uint8_t* numbers0 = first + 2 * groups;
  // Groups two at a time (a pair's int4 bytes are expanded together).
  for (int64_t g0 = 0; g0 < groups; g0 += 2) {
    if (g0 + 1 < groups) {
      ValuesGroups<kType, kQ, 2>(numbers0, bytes, rows, g0, values.format.width, groups, blocks, wq.data(), wsum.data(), unit.data(), out, ostride);
    } else {
      ValuesGroups<kType, kQ, 1>(numbers0, bytes, rows, g0, values.format.width, groups, blocks, wq.data(), wsum.data(), unit.data(), out, ostride);
    }
  }
}

template <int kQ>
void IntValues(KvType type, const KvRows& values, int64_t t0, int64_t rows, const float* p,
               int64_t stride, float* out, int64_t ostride) {
  if (type == KvType::kInt8) return IntValuesTile<KvType::kInt8, kQ>(values, t0, rows, p, stride, out, ostride);
  return IntValuesTile<KvType::kInt4, kQ>(values, t0, rows, p, stride, out, ostride);
}

void ValuesInt(int nq, KvType type, const KvRows& values, int64_t t0, int64_t rows, const float* p,
               int64_t stride, float* out, int64_t ostride) {
  switch (nq) {
    case 1: return IntValues<1>(type, values, t0, rows, p, stride, out, ostride);
    case 2: return IntValues<2>(type, values, t0, rows, p, stride, out, ostride);
    case 3: return IntValues<3>(type, values, t0, rows, p, stride, out, ostride);
    default: return IntValues<4>(type, values, t0, rows, p, stride, out, ostride);
  }
}
#elif HWY_TARGET == HWY_AVX2
// ---- Integer path on AVX2 (Highway's AVX2 target: Haswell and later, Zen): the same numbers as
// the AVX-512 VNNI path above (queries rounded to int8 per group with round_query_group, softmax
// weights times the rows' group scales rounded to 15 bits per tile and group), so that both give
// the same scores and sums up to float summation order. AVX2 has neither VPDPBUSD nor VPDPWSSD:
//
// Scores use VPMADDUBSW (_mm256_maddubs_epi16: unsigned byte times signed byte, adjacent pairs
// added into int16 with saturation) and VPMADDWD with ones (pairs of int16 into int32). Blocks of
// 8 key rows are transposed per group of 32 so that one vector holds one 4-byte column of all 8
// rows (lane r = row r), and each column meets the query's 4 bytes broadcast. The pairwise int16
// sum must never saturate:
// - int8 keys k in [-127, 127] (encode_row clamps there; -128 never occurs), queries q in
//   [-127, 127]. Offsetting k by 128 to unsigned, as VPDPBUSD does, would allow pairs up to
//   2 * 255 * 127 = 64770 > 32767. Instead the sign moves from one operand to the other: the
//   unsigned operand is |k| (_mm256_abs_epi8, once per column for all the queries) and the
//   signed one sign(k) * q (_mm256_sign_epi8, zero where k is zero), whose product is k * q: at
//   most 127 * 127 = 16129 in magnitude, a pair at most 32258 < 32767 (even a stray -128 byte,
//   |k| = 128 as unsigned, could only reach 2 * 128 * 127 = 32512). Every pair sum goes
//   straight to int32 through VPMADDWD with ones; two of them could exceed int16, so none are
//   added in int16.
// - int4 keys: the stored nibbles n = k + 8 in [0, 15] (masked to 4 bits, so any byte gives such
//   a number) are the unsigned operand and q the signed one: a product is at most 15 * 127 = 1905,
//   a pair at most 3810, and the 8 columns of a group, added in int16, at most 8 * 3810 = 30480 <
//   32767; VPMADDWD with ones then takes the group's sum to int32 once, and 8 * sum(q) is
//   subtracted, as on the VNNI path.
// Bytes past a short last group (and past a row: rows carry slack) meet zero query bytes.
// Values: the weights w in [0, 32767] (int16) of rows r and r + 1 meet the rows' numbers widened
// to int16 (int8: [-127, 127], int4 nibbles [0, 15]) through VPMADDWD: a pair is at most
// 2 * 32767 * 127 < 2^23 and a tile's 64 rows at most 64 * 32767 * 127 < 2^28, far inside int32.
constexpr bool kIntegerPath = true;
constexpr int64_t kIntBlock = 8;  // key rows scored per transposed block

// Column c of 8 rows of 8 dwords ends in x[c] (lane r = row r).
HWY_INLINE void Transpose8(__m256i* x) {
  __m256i t[8], u[8];
  for (int b = 0; b < 8; b += 4) {
    t[b + 0] = _mm256_unpacklo_epi32(x[b + 0], x[b + 1]);
    t[b + 1] = _mm256_unpackhi_epi32(x[b + 0], x[b + 1]);
    t[b + 2] = _mm256_unpacklo_epi32(x[b + 2], x[b + 3]);
    t[b + 3] = _mm256_unpackhi_epi32(x[b + 2], x[b + 3]);
    u[b + 0] = _mm256_unpacklo_epi64(t[b + 0], t[b + 2]);  // 128-bit lane k: rows b..b+3 of column 4k
    u[b + 1] = _mm256_unpackhi_epi64(t[b + 0], t[b + 2]);  // column 4k + 1
    u[b + 2] = _mm256_unpacklo_epi64(t[b + 1], t[b + 3]);  // column 4k + 2
    u[b + 3] = _mm256_unpackhi_epi64(t[b + 1], t[b + 3]);  // column 4k + 3
  }
  for (int j = 0; j < 4; ++j) {
    x[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
    x[4 + j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
  }
}

// The float16 scales of groups 2j and 2j + 1 of rows [0, n), n <= 8, as floats in the lanes of
// a and b (zero from n on): the rows' 4 bytes at 4j loaded as scalars into one vector (Zen 3's
// VPGATHERDD costs more, and stores to a buffer stall the wide load that reads them back).
HWY_INLINE void ScalePairs8(const uint8_t* first_row, int64_t bytes, int64_t n, int64_t j,
                            __m256* a, __m256* b) {
  int32_t v[8];
  for (int r = 0; r < 8; ++r) {
    v[r] = 0;
    if (r < n) std::memcpy(&v[r], first_row + r * bytes + 4 * j, 4);
  }
  const __m256i s = _mm256_setr_epi32(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
  // [lo 0-3, hi 0-3 | lo 4-7, hi 4-7] as 64-bit quarters 0 1 2 3, reordered 0 2 1 3.
  const __m256i halves = _mm256_permute4x64_epi64(
      _mm256_packus_epi32(_mm256_and_si256(s, _mm256_set1_epi32(0xFFFF)), _mm256_srli_epi32(s, 16)),
      0xD8);
  *a = _mm256_cvtph_ps(_mm256_castsi256_si128(halves));
  *b = _mm256_cvtph_ps(_mm256_extracti128_si256(halves, 1));
}

// The 32 numbers of group g of a row as bytes: int8 as stored (signed); int4 as the stored
// nibbles q + 8 in the order [low nibbles: 16][high nibbles: 16], which for a group of m numbers
// puts number j at ChunkPosition below. Reads 32 (int8) or 16 (int4) bytes whatever m is.
template <KvType kType>
HWY_INLINE __m256i GroupBytes(const uint8_t* numbers, int64_t g) {
  if constexpr (kType == KvType::kInt8) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(numbers + 32 * g));
  } else {
    const __m256i b = _mm256_broadcastsi128_si256(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(numbers + 16 * g)));
    return _mm256_and_si256(_mm256_srlv_epi64(b, _mm256_setr_epi64x(0, 0, 4, 4)),
                            _mm256_set1_epi8(0x0F));
  }
}

// Where number j of a group of m numbers sits in GroupBytes' order.
inline int64_t ChunkPosition(KvType type, int64_t j, int64_t m) {
  if (type == KvType::kInt8) return j;
  const int64_t half = (m + 1) / 2;
  return j >= half ? 16 + j - half : j;
}

// Queries rounded to int8 in GroupBytes' order, per query and group: the bytes, the group
// scales, the int4 offset corrections (8 times the sum of the group's query bytes), and per
// group the columns holding any number.
struct IntQueries {
  int64_t groups = 0;
  std::vector<int8_t> bytes;        // [n][groups][32]
  std::vector<float> scale;         // [n][groups]
  std::vector<int32_t> offset;      // [n][groups]
  std::vector<uint8_t> columns;     // [groups]: bit d set where column d holds a number
};

// The queries in `q` are replaced by their rounded values, so that rows scored by the float
// path (a tile's last rows short of 8) see the same queries.
void QuantizeQueries(KvType type, float* q, int64_t n, int64_t qstride, int64_t width,
                     IntQueries& iq) {
  iq.groups = (width + kQuantGroup - 1) / kQuantGroup;
  iq.bytes.assign(static_cast<size_t>(n * iq.groups * kQuantGroup), 0);
  iq.scale.assign(static_cast<size_t>(n * iq.groups), 0.0f);
  iq.offset.assign(static_cast<size_t>(n * iq.groups), 0);
  iq.columns.assign(static_cast<size_t>(iq.groups), 0);
  for (int64_t g = 0; g < iq.groups; ++g) {
    const int64_t m = std::min(kQuantGroup, width - g * kQuantGroup);
    for (int64_t j = 0; j < m; ++j) iq.columns[g] |= static_cast<uint8_t>(1u << (ChunkPosition(type, j, m) / 4));
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t g = 0; g < iq.groups; ++g) {
      // A short last group is rounded as if zero-padded; its missing numbers meet zero bytes.
      const int64_t m = std::min(kQuantGroup, width - g * kQuantGroup);
      float* x = q + i * qstride + g * kQuantGroup;
      float padded[kQuantGroup] = {};
      std::copy(x, x + m, padded);
      int8_t q8[kQuantGroup];
      const float step = round_query_group(padded, q8);
      iq.scale[i * iq.groups + g] = step;
      int32_t sum = 0;
      int8_t* out = iq.bytes.data() + (i * iq.groups + g) * kQuantGroup;
      for (int64_t j = 0; j < m; ++j) {
        x[j] = static_cast<float>(q8[j]) * step;
        out[ChunkPosition(type, j, m)] = q8[j];
        sum += q8[j];
      }
      iq.offset[i * iq.groups + g] = type == KvType::kInt4 ? 8 * sum : 0;
    }
  }
}

HWY_INLINE __m256i Broadcast4(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// The integer dot products of one group of 8 transposed key rows x[8] with each query: acc[i]
// lane r = q_i . key r over the group (int4: before the offset correction). kMasked: a short last
// group, whose columns without numbers are skipped.
template <KvType kType, int kQ, bool kMasked>
HWY_INLINE void GroupDots(const __m256i* x, const int8_t* qb, int64_t qstride, unsigned columns,
                          __m256i* acc) {
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (kType == KvType::kInt8) {
    for (int i = 0; i < kQ; ++i) acc[i] = _mm256_setzero_si256();
    for (int d = 0; d < 8; ++d) {
      if (kMasked && !(columns >> d & 1)) continue;
      // |k| (unsigned, shared by the queries) times sign(k) * q (signed): pairs within +-32258.
      const __m256i magnitude = _mm256_abs_epi8(x[d]);
      for (int i = 0; i < kQ; ++i) {
        const __m256i signed_q = _mm256_sign_epi8(Broadcast4(qb + i * qstride + 4 * d), x[d]);
        acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed_q), ones));
      }
    }
  } else {
    // Nibbles (unsigned) times q (signed): the group's 8 columns within +-30480 in int16.
    __m256i sum16[kQ];
    for (int i = 0; i < kQ; ++i) sum16[i] = _mm256_setzero_si256();
    for (int d = 0; d < 8; ++d) {
      if (kMasked && !(columns >> d & 1)) continue;
      for (int i = 0; i < kQ; ++i) {
        sum16[i] = _mm256_add_epi16(sum16[i], _mm256_maddubs_epi16(x[d], Broadcast4(qb + i * qstride + 4 * d)));
      }
    }
    for (int i = 0; i < kQ; ++i) acc[i] = _mm256_madd_epi16(sum16[i], ones);
  }
}

// sc[i * stride + r] = scale * q_i . key(t0 + r) for r < 8 * blocks.
template <KvType kType, int kQ>
void IntScores8(const KvRows& keys, int64_t t0, int64_t blocks, const IntQueries& iq, float scale,
                float* sc, int64_t stride) {
  const int64_t bytes = keys.format.bytes(), groups = iq.groups;
  const int64_t qstride = groups * kQuantGroup;  // from one query's bytes to the next's
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* first = keys.data + (t0 + 8 * b) * bytes;
    __m256 kscale[2];
    for (int64_t g = 0; g < groups; ++g) {
      __m256i x[8];
      for (int r = 0; r < 8; ++r) x[r] = GroupBytes<kType>(first + r * bytes + 2 * groups, g);
      Transpose8(x);
      if (g % 2 == 0) ScalePairs8(first, bytes, 8, g / 2, &kscale[0], &kscale[1]);
      const unsigned columns = iq.columns[g];
      const int8_t* qb = iq.bytes.data() + g * kQuantGroup;
      __m256i acc[kQ];
      if (columns == 0xFF) {
        GroupDots<kType, kQ, false>(x, qb, qstride, columns, acc);
      } else {
        GroupDots<kType, kQ, true>(x, qb, qstride, columns, acc);
      }
      // The running sums stay in the score rows (L1), the registers for the group's work.
      for (int i = 0; i < kQ; ++i) {
        __m256i dot = acc[i];
        if constexpr (kType == KvType::kInt4) {
          dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(iq.offset[i * groups + g]));
        }
        const float qs = iq.scale[i * groups + g];
        float* out = sc + i * stride + 8 * b;
        const __m256 before = g == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(out);
        _mm256_storeu_ps(out, _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                                              _mm256_mul_ps(kscale[g % 2], _mm256_set1_ps(qs * scale)),
                                              before));
      }
    }
  }
}

template <int kQ>
void IntScores(KvType type, const KvRows& keys, int64_t t0, int64_t blocks, const IntQueries& iq,
               float scale, float* sc, int64_t stride) {
  if (type == KvType::kInt8) return IntScores8<KvType::kInt8, kQ>(keys, t0, blocks, iq, scale, sc, stride);
  return IntScores8<KvType::kInt4, kQ>(keys, t0, blocks, iq, scale, sc, stride);
}

void ScoresInt(int nq, KvType type, const KvRows& keys, int64_t t0, int64_t blocks,
               const IntQueries& iq, float scale, float* sc, int64_t stride) {
  switch (nq) {
    case 1: return IntScores<1>(type, keys, t0, blocks, iq, scale, sc, stride);
    case 2: return IntScores<2>(type, keys, t0, blocks, iq, scale, sc, stride);
    case 3: return IntScores<3>(type, keys, t0, blocks, iq, scale, sc, stride);
    default: return IntScores<4>(type, keys, t0, blocks, iq, scale, sc, stride);
  }
}

// Half h of group g of a row as 16 int16 numbers: int8 numbers 16h..16h+15; int4 the low (h = 0)
// or high (h = 1) nibbles of the group's bytes, q + 8.
template <KvType kType>
HWY_INLINE __m256i HalfWords(const uint8_t* numbers, int64_t g, int h) {
  if constexpr (kType == KvType::kInt8) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(numbers + 32 * g + 16 * h)));
  } else {
    const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(numbers + 16 * g)));
    return h == 0 ? _mm256_and_si256(w, _mm256_set1_epi16(0x0F)) : _mm256_srli_epi16(w, 4);
  }
}

// out[0, n) += a[0, n) * u for n <= 8.
HWY_INLINE void AddScaled(float* out, __m256 a, __m256 u, int64_t n) {
  if (n >= 8) {
    _mm256_storeu_ps(out, _mm256_fmadd_ps(a, u, _mm256_loadu_ps(out)));
  } else if (n > 0) {
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(n)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_maskstore_ps(out, keep, _mm256_fmadd_ps(a, u, _mm256_maskload_ps(out, keep)));
  }
}

// The weighted sum over `rows` value rows of half h of group g, added to the outputs: wq holds
// the weights in units of unit[g], [kQ][groups][padded].
template <KvType kType, int kQ>
HWY_INLINE void ValuesHalf(const uint8_t* numbers0, int64_t bytes, int64_t rows, int64_t g, int h,
                           int64_t width, int64_t groups, int64_t padded, const int16_t* wq,
                           const int32_t* wsum, const float* unit, float* out, int64_t ostride) {
  // The numbers this half holds: [base, base + count) of the group.
  const int64_t m = std::min(kQuantGroup, width - g * kQuantGroup);
  int64_t base, count;
  if constexpr (kType == KvType::kInt8) {
    base = 16 * h;
    count = std::clamp<int64_t>(m - 16 * h, 0, 16);
  } else {
    const int64_t half = (m + 1) / 2;
    base = h == 0 ? 0 : half;
    count = h == 0 ? half : m - half;
  }
  if (count <= 0) return;
  // Lanes of acc[i][0]: numbers 0-3 (low 128 bits) and 8-11 (high) of the half; acc[i][1]: 4-7
  // and 12-15.
  __m256i acc[kQ][2];
  for (int i = 0; i < kQ; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  for (int64_t r = 0; r < rows; r += 2) {
    const __m256i a = HalfWords<kType>(numbers0 + r * bytes, g, h);
    const __m256i b = r + 1 < rows ? HalfWords<kType>(numbers0 + (r + 1) * bytes, g, h)
                                   : _mm256_setzero_si256();
    const __m256i lo = _mm256_unpacklo_epi16(a, b), hi = _mm256_unpackhi_epi16(a, b);
    for (int i = 0; i < kQ; ++i) {
      const __m256i w = Broadcast4(wq + (i * groups + g) * padded + r);  // w_r, w_r+1
      acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(lo, w));
      acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(hi, w));
    }
  }
  const __m256 u = _mm256_set1_ps(unit[g]);
  for (int i = 0; i < kQ; ++i) {
    __m256i lo = acc[i][0], hi = acc[i][1];
    if constexpr (kType == KvType::kInt4) {  // the nibbles are q + 8
      const __m256i off = _mm256_set1_epi32(8 * wsum[i * groups + g]);
      lo = _mm256_sub_epi32(lo, off);
      hi = _mm256_sub_epi32(hi, off);
    }
    const __m256 fl = _mm256_cvtepi32_ps(lo), fh = _mm256_cvtepi32_ps(hi);
    float* o = out + i * ostride + g * kQuantGroup + base;
    AddScaled(o, _mm256_permute2f128_ps(fl, fh, 0x20), u, count);      // numbers 0-7
    AddScaled(o + 8, _mm256_permute2f128_ps(fl, fh, 0x31), u, count - 8);  // 8-15
  }
}

// out_i += sum over r < rows of p[i * stride + r] * value(t0 + r), p zero past each query's rows.
template <KvType kType, int kQ>
void IntValuesTile(const KvRows& values, int64_t t0, int64_t rows, const float* p, int64_t stride,
                   float* out, int64_t ostride) {
  const int64_t bytes = values.format.bytes(), width = values.format.width;
  const int64_t groups = (width + kQuantGroup - 1) / kQuantGroup;
  const int64_t padded = (rows + 7) / 8 * 8;
  const uint8_t* first = values.data + t0 * bytes;
  // Row group scales [groups][padded] (zero past the tile), and the weights w = p * scale
  // rounded to int16 against each group's largest: [kQ][groups][padded].
  thread_local std::vector<float> vs, unit;
  thread_local std::vector<int16_t> wq;
  thread_local std::vector<int32_t> wsum;  // int4: the sum of a query's weights per group
  if (vs.size() < static_cast<size_t>(groups * padded)) vs.resize(groups * padded);
  if (wq.size() < static_cast<size_t>(kQ * groups * padded)) wq.resize(kQ * groups * padded);
  if (wsum.size() < static_cast<size_t>(kQ * groups)) wsum.resize(kQ * groups);
  if (unit.size() < static_cast<size_t>(groups)) unit.resize(groups);
  // Weights p <= 1 (the online softmax subtracts a running max), so w = p * scale fits 15 bits
  // against a group's largest row scale: one unit per group and tile, shared by the queries.
  for (int64_t j = 0; 2 * j < groups; ++j) {
    for (int64_t r = 0; r < padded; r += 8) {
      __m256 a, b;
      ScalePairs8(first + r * bytes, bytes, std::min<int64_t>(8, rows - r), j, &a, &b);
      _mm256_storeu_ps(vs.data() + 2 * j * padded + r, a);
      if (2 * j + 1 < groups) _mm256_storeu_ps(vs.data() + (2 * j + 1) * padded + r, b);
    }
  }
  for (int64_t g = 0; g < groups; ++g) {
    float* s = vs.data() + g * padded;
    __m256 mx = _mm256_setzero_ps();
    for (int64_t r = 0; r < padded; r += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + r));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, mx);
    const float smax = *std::max_element(lanes, lanes + 8);
    unit[g] = smax / 32767.0f;
    const __m256 inv = _mm256_set1_ps(smax > 0 ? 32767.0f / smax : 0.0f);
    for (int64_t r = 0; r < padded; r += 8) _mm256_storeu_ps(s + r, _mm256_mul_ps(_mm256_loadu_ps(s + r), inv));
  }
  for (int i = 0; i < kQ; ++i) {
    for (int64_t g = 0; g < groups; ++g) {
      __m256i sum = _mm256_setzero_si256();
      int16_t* w16 = wq.data() + (i * groups + g) * padded;
      for (int64_t r = 0; r < padded; r += 8) {
        const __m256 w = _mm256_mul_ps(_mm256_loadu_ps(p + i * stride + r),
                                       _mm256_loadu_ps(vs.data() + g * padded + r));
        const __m256i w32 = _mm256_cvtps_epi32(w);
        sum = _mm256_add_epi32(sum, w32);
        // Saturating pack (per 128-bit lane), then the two lanes' low halves together.
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(w32, w32), 0x08);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(w16 + r), _mm256_castsi256_si128(packed));
      }
      alignas(32) int32_t lanes[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sum);
      int32_t total = 0;
      for (int32_t v : lanes) total += v;
      wsum[i * groups + g] = total;
    }
  }
  const uint8_t* numbers0 = first + 2 * groups;
  for (int64_t g = 0; g < groups; ++g) {
    for (int h = 0; h < 2; ++h) {
      ValuesHalf<kType, kQ>(numbers0, bytes, rows, g, h, width, groups, padded, wq.data(),
                            wsum.data(), unit.data(), out, ostride);
    }
  }
}

template <int kQ>
void IntValues(KvType type, const KvRows& values, int64_t t0, int64_t rows, const float* p,
               int64_t stride, float* out, int64_t ostride) {
  if (type == KvType::kInt8) return IntValuesTile<KvType::kInt8, kQ>(values, t0, rows, p, stride, out, ostride);
  return IntValuesTile<KvType::kInt4, kQ>(values, t0, rows, p, stride, out, ostride);
}

void ValuesInt(int nq, KvType type, const KvRows& values, int64_t t0, int64_t rows, const float* p,
               int64_t stride, float* out, int64_t ostride) {
  switch (nq) {
    case 1: return IntValues<1>(type, values, t0, rows, p, stride, out, ostride);
    case 2: return IntValues<2>(type, values, t0, rows, p, stride, out, ostride);
    case 3: return IntValues<3>(type, values, t0, rows, p, stride, out, ostride);
    default: return IntValues<4>(type, values, t0, rows, p, stride, out, ostride);
  }
}
#else
constexpr bool kIntegerPath = false;
#endif  // HWY_TARGET == HWY_AVX3_DL, HWY_AVX2

// Whether blocks of n_queries read rows of this format on the integer path.
bool IntegerRows(const RowFormat& f, int64_t n_queries) {
  return kIntegerPath && n_queries <= kMaxSplitQueries &&
         (f.type == KvType::kInt8 || f.type == KvType::kInt4);
}

void AttendRange(const QueryBlock& qb, const KvRows& keys, const KeyRebuild* rebuild,
                 const KvRows& values, float scale, int64_t begin, int64_t end,
                 AttentionPartial& part) {
  const DF df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  const int64_t kw = rebuild ? rebuild->head_dim : keys.format.width;
  const int64_t rk = keys.format.width;
  const int64_t kpad = round_up(kw, L), rpad = round_up(rk, L);
  const int64_t vw = values.format.width, vpad = part.stride;
  EKV_CHECK(qb.width == kw, "attention: queries of ", qb.width, " numbers against keys of ", kw);
  EKV_CHECK(part.n == qb.n && part.width == vw && vpad == round_up(vw, L),
            "attention: partial state does not fit the block");
  thread_local Scratch s;
  s.queries.assign(static_cast<size_t>(qb.n * kpad), 0.0f);
  for (int64_t i = 0; i < qb.n; ++i)
    std::copy(qb.q + i * qb.width, qb.q + (i + 1) * qb.width, s.queries.begin() + i * kpad);
  s.keys.resize(static_cast<size_t>(kAttentionTile * kpad + kDecodeSlack));
  s.raw.resize(static_cast<size_t>(rebuild ? kAttentionTile * rpad + kDecodeSlack : 0));
  s.values.resize(static_cast<size_t>(kAttentionTile * vpad + kDecodeSlack));
  if (rebuild) {  // U_K^T with rows padded to whole vectors: [r_K, kpad]
    s.basis.assign(static_cast<size_t>(rk * kpad), 0.0f);
    for (int64_t c = 0; c < rk; ++c)
      std::copy(rebuild->basis_t + c * kw, rebuild->basis_t + (c + 1) * kw,
                s.basis.begin() + c * kpad);
  }
  // Per-direction scales cost nothing per row: a key's scales multiply the query instead (q.(s*y)
  // = (s*q).y), and a value's the finished output (sum p (s*y) = s * sum p y), which
  // finish_partial applies. Rebuilt keys scale their r numbers before the basis.
  const float* ksig = nullptr;
  if (keys.sigma && rebuild) {
    ksig = padded_sigma(keys.sigma, rk, rpad, s.key_sigma);
  } else if (keys.sigma) {
    for (int64_t i = 0; i < qb.n; ++i)
      for (int64_t c = 0; c < kw; ++c) s.queries[i * kpad + c] *= keys.sigma[c];
  }
  if (values.sigma) {
    if (part.value_scale.empty()) part.value_scale.assign(values.sigma, values.sigma + vw);
    EKV_CHECK(std::equal(part.value_scale.begin(), part.value_scale.end(), values.sigma),
              "attention: value scales differ between the ranges of one partial state");
  }
  int64_t max_limit = 0;
  for (int64_t i = 0; i < qb.n; ++i) max_limit = std::max(max_limit, qb.limit[i]);
  end = std::min(end, max_limit);
  const int64_t kbytes = keys.format.bytes(), vbytes = values.format.bytes();
  const auto neg_inf = hn::Set(df, -INFINITY);

  // Decode-sized blocks: the fused and integer paths, a sub-block of queries at a time.
  const bool split = qb.n <= kMaxSplitQueries;
  const int64_t subs = split ? SubBlockCount(qb.n) : 0;
  const bool fused_keys = !rebuild && split && FusedFormat(keys.format, L);
  const bool fused_values = split && FusedFormat(values.format, L);
  const bool int_keys = !rebuild && IntegerRows(keys.format, qb.n);
  const bool int_values = IntegerRows(values.format, qb.n);
  const int64_t sstride = round_up(kAttentionTile, L);
#if EIGENKV_INTEGER_ATTENTION
  thread_local IntQueries iq[kSubBlocks];
  if (int_keys) {
    for (int64_t b = 0; b < subs; ++b)
      QuantizeQueries(keys.format.type, s.queries.data() + SubFirst(b) * kpad, SubCount(qb.n, b),
                      kpad, kw, iq[b]);
  }
#endif
  s.scores.resize(static_cast<size_t>(qb.n * sstride));
  // Sub-block b's queries, score rows and output rows.
  const auto sub_q = [&](int64_t b) { return s.queries.data() + SubFirst(b) * kpad; };
  const auto sub_sc = [&](int64_t b) { return s.scores.data() + SubFirst(b) * sstride; };
  const auto sub_out = [&](int64_t b) { return part.out.data() + SubFirst(b) * vpad; };

  for (int64_t t0 = begin; t0 < end; t0 += kAttentionTile) {
    const int64_t rows = std::min(kAttentionTile, end - t0);
    // The next tile's rows, asked for while this one is worked on: the integer path finishes a
    // tile in less time than its rows take to come from memory (measured: int8 at depth 32768,
    // 1.65x; the float paths lose 15-30 % by it, their larger tiles evicting the current one).
    if ((int_keys || int_values) && t0 + kAttentionTile < end) {
      const int64_t ahead = std::min(kAttentionTile, end - t0 - kAttentionTile);
      const uint8_t* kn = keys.data + (t0 + kAttentionTile) * kbytes;
      const uint8_t* vn = values.data + (t0 + kAttentionTile) * vbytes;
      for (int64_t off = 0; off < ahead * kbytes; off += 64) hwy::Prefetch(kn + off);
      for (int64_t off = 0; off < ahead * vbytes; off += 64) hwy::Prefetch(vn + off);
    }
    // 1. Scores of every query against the tile's keys.
    if (int_keys) {
#if EIGENKV_INTEGER_ATTENTION
      const int64_t blocks = rows / kIntBlock;
      for (int64_t b = 0; b < subs; ++b)
        ScoresInt(SubCount(qb.n, b), keys.format.type, keys, t0, blocks, iq[b], scale, sub_sc(b), sstride);
      // The tile's last rows short of a block: the fused float path, or (short groups) decoded
      // first.
      const int64_t done = kIntBlock * blocks;
      if (rows > done && !fused_keys) {
        for (int64_t r = done; r < rows; ++r)
          DecodeRow(keys.format, keys.data + (t0 + r) * kbytes, nullptr, s.keys.data() + r * kpad, kpad);
      }
      const KvRows decoded{reinterpret_cast<const uint8_t*>(s.keys.data()),
                           RowFormat::uniform(KvType::kF32, kpad), nullptr};
      for (int64_t b = 0; b < subs && rows > done; ++b) {
        ScoresFused(SubCount(qb.n, b), fused_keys ? keys : decoded, fused_keys ? t0 + done : done,
                    rows - done, sub_q(b), kpad, scale, sub_sc(b) + done, sstride);
      }
#endif
    } else if (fused_keys) {
      for (int64_t b = 0; b < subs; ++b)
        ScoresFused(SubCount(qb.n, b), keys, t0, rows, sub_q(b), kpad, scale, sub_sc(b), sstride);
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        const uint8_t* row = keys.data + (t0 + r) * kbytes;
        if (!rebuild) {
          DecodeRow(keys.format, row, ksig, s.keys.data() + r * kpad, kpad);
          continue;
        }
        // k = U_K k': the basis rows (columns of U_K) weighted by k', then rotated.
        float* raw = s.raw.data() + r * rpad;
        DecodeRow(keys.format, row, ksig, raw, rpad);
        float* k = s.keys.data() + r * kpad;
        RebuildKey(raw, rk, s.basis.data(), kpad, k);
        if (rebuild->rope) rebuild->rope->rotate(k, 1, kw, t0 + r);
      }
      // Decode-sized blocks score the decoded tile as float32 rows on the fused path.
      const KvRows tile{reinterpret_cast<const uint8_t*>(s.keys.data()),
                        RowFormat::uniform(KvType::kF32, kpad), nullptr};
      for (int64_t b = 0; b < subs; ++b)
        ScoresFused(SubCount(qb.n, b), tile, 0, rows, sub_q(b), kpad, scale, sub_sc(b), sstride);
      for (int64_t i = 0; i < qb.n && !split; ++i) {
        const int64_t valid = std::min(qb.limit[i], t0 + rows) - t0;
        const float* q = s.queries.data() + i * kpad;
        float* sc = s.scores.data() + i * sstride;
        int64_t r = 0;
        for (; r + 2 <= valid; r += 2) {  // two keys at a time: independent FMA chains
          const float* k0 = s.keys.data() + r * kpad;
          const float* k1 = k0 + kpad;
          auto a0 = hn::Zero(df), a1 = hn::Zero(df);
          for (int64_t c = 0; c < kpad; c += L) {
            const auto qc = hn::LoadU(df, q + c);
            a0 = hn::MulAdd(qc, hn::LoadU(df, k0 + c), a0);
            a1 = hn::MulAdd(qc, hn::LoadU(df, k1 + c), a1);
          }
          sc[r] = scale * hn::GetLane(hn::SumOfLanes(df, a0));
          sc[r + 1] = scale * hn::GetLane(hn::SumOfLanes(df, a1));
        }
        for (; r < valid; ++r) {
          const float* k = s.keys.data() + r * kpad;
          auto acc = hn::Zero(df);
          for (int64_t c = 0; c < kpad; c += L)
            acc = hn::MulAdd(hn::LoadU(df, q + c), hn::LoadU(df, k + c), acc);
          sc[r] = scale * hn::GetLane(hn::SumOfLanes(df, acc));
        }
      }
    }
    // 2. Online softmax per query: scores become weights, the running state is rescaled.
    int64_t rows_used = 0;
    for (int64_t i = 0; i < qb.n; ++i) {
      const int64_t valid = std::max<int64_t>(0, std::min(qb.limit[i], t0 + rows) - t0);
      rows_used = std::max(rows_used, valid);
      float* sc = s.scores.data() + i * sstride;
      const int64_t valid_pad = round_up(valid, L);
      if (valid == 0) {  // no key of this tile is visible: all its weights are 0
        std::fill(sc, sc + sstride, 0.0f);
        continue;
      }
      if (qb.alibi_slope) {  // the score hook: ALiBi's distance penalty, 0 at the query itself
        const auto slope = hn::Set(df, qb.alibi_slope[i]);
        const auto first = hn::Set(df, static_cast<float>(t0 - (qb.limit[i] - 1)));
        for (int64_t r = 0; r < valid; r += L) {
          const auto dist = hn::Add(first, hn::Iota(df, static_cast<float>(r)));
          hn::StoreU(hn::MulAdd(slope, dist, hn::LoadU(df, sc + r)), df, sc + r);
        }
      }
      std::fill(sc + valid, sc + sstride, -INFINITY);
      auto vtile = neg_inf;
      for (int64_t r = 0; r < valid_pad; r += L) vtile = hn::Max(vtile, hn::LoadU(df, sc + r));
      const float tile_max = hn::GetLane(hn::MaxOfLanes(df, vtile));
      const float old_max = part.max[i];
      const float new_max = std::max(old_max, tile_max);
      const float correction = old_max == -INFINITY ? 0.0f : std::exp(old_max - new_max);
      const auto vmax = hn::Set(df, new_max);
      auto vsum = hn::Zero(df);
      for (int64_t r = 0; r < valid_pad; r += L) {
        auto x = hn::LoadU(df, sc + r);
        // exp(-inf) is 0; Highway's Exp needs finite input, so mask the padding.
        const auto is_pad = hn::Eq(x, neg_inf);
        x = hn::IfThenZeroElse(is_pad, hn::Exp(df, hn::Sub(hn::IfThenElse(is_pad, vmax, x), vmax)));
        hn::StoreU(x, df, sc + r);
        vsum = hn::Add(vsum, x);
      }
      std::fill(sc + valid_pad, sc + sstride, 0.0f);
      part.sum[i] = part.sum[i] * correction + hn::GetLane(hn::SumOfLanes(df, vsum));
      part.max[i] = new_max;
      if (correction != 1.0f) {
        float* out = part.out.data() + i * vpad;
        const auto vc = hn::Set(df, correction);
        for (int64_t c = 0; c < vpad; c += L) hn::StoreU(hn::Mul(hn::LoadU(df, out + c), vc), df, out + c);
      }
    }
    if (rows_used == 0) continue;
    // 3. Weighted sum of the values (weights past a query's limit are 0).
    if (int_values) {
#if EIGENKV_INTEGER_ATTENTION
      for (int64_t b = 0; b < subs; ++b)
        ValuesInt(SubCount(qb.n, b), values.format.type, values, t0, rows_used, sub_sc(b), sstride,
                  sub_out(b), vpad);
#endif
      continue;
    }
    if (fused_values) {
      for (int64_t b = 0; b < subs; ++b)
        ValuesFused(SubCount(qb.n, b), values, t0, rows_used, sub_sc(b), sstride, sub_out(b), vpad);
      continue;
    }
    for (int64_t r = 0; r < rows_used; ++r)
      DecodeRow(values.format, values.data + (t0 + r) * vbytes, nullptr,
                s.values.data() + r * vpad, vpad);
    if (split) {
      const KvRows tile{reinterpret_cast<const uint8_t*>(s.values.data()),
                        RowFormat::uniform(KvType::kF32, vpad), nullptr};
      for (int64_t b = 0; b < subs; ++b)
        ValuesFused(SubCount(qb.n, b), tile, 0, rows_used, sub_sc(b), sstride, sub_out(b), vpad);
      continue;
    }
    for (int64_t i = 0; i < qb.n; ++i) {
      const int64_t valid = std::max<int64_t>(0, std::min(qb.limit[i], t0 + rows) - t0);
      if (valid == 0) continue;
      const float* sc = s.scores.data() + i * sstride;
      float* out = part.out.data() + i * vpad;
      // Four accumulators over interleaved rows, so consecutive FMAs do not wait on each other.
      const float* vt = s.values.data();
      for (int64_t c = 0; c < vpad; c += L) {
        auto a0 = hn::LoadU(df, out + c);
        auto a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
        int64_t r = 0;
        for (; r + 4 <= valid; r += 4) {
          a0 = hn::MulAdd(hn::Set(df, sc[r]), hn::LoadU(df, vt + r * vpad + c), a0);
          a1 = hn::MulAdd(hn::Set(df, sc[r + 1]), hn::LoadU(df, vt + (r + 1) * vpad + c), a1);
          a2 = hn::MulAdd(hn::Set(df, sc[r + 2]), hn::LoadU(df, vt + (r + 2) * vpad + c), a2);
          a3 = hn::MulAdd(hn::Set(df, sc[r + 3]), hn::LoadU(df, vt + (r + 3) * vpad + c), a3);
        }
        for (; r < valid; ++r) a0 = hn::MulAdd(hn::Set(df, sc[r]), hn::LoadU(df, vt + r * vpad + c), a0);
        hn::StoreU(hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)), df, out + c);
      }
    }
  }
}

int64_t LaneCount() { return static_cast<int64_t>(hn::Lanes(DF())); }

bool IntegerKeys(const RowFormat& keys, int64_t n_queries) { return IntegerRows(keys, n_queries); }

const char* IntegerTarget() { return kIntegerPath ? hwy::TargetName(HWY_TARGET) : "none"; }

}  // namespace HWY_NAMESPACE
}  // namespace eigenkv::ops
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace eigenkv::ops {

HWY_EXPORT(AttendRange);
HWY_EXPORT(DecodeRows);
HWY_EXPORT(LaneCount);
HWY_EXPORT(IntegerKeys);
HWY_EXPORT(IntegerTarget);

bool integer_key_path(const RowFormat& keys, int64_t n_queries) {
  return HWY_DYNAMIC_DISPATCH(IntegerKeys)(keys, n_queries);
}

const char* integer_attention_target() { return HWY_DYNAMIC_DISPATCH(IntegerTarget)(); }

float round_query_group(const float* x, int8_t* q8) {
  float amax = 0;
  for (int64_t j = 0; j < kQuantGroup; ++j) amax = std::max(amax, std::abs(x[j]));
  if (amax == 0) {
    std::fill(q8, q8 + kQuantGroup, int8_t{0});
    return 0.0f;
  }
  const float inv = 127.0f / amax;
  for (int64_t j = 0; j < kQuantGroup; ++j)
    q8[j] = static_cast<int8_t>(std::clamp(static_cast<int>(std::nearbyint(x[j] * inv)), -127, 127));
  return amax / 127.0f;
}

void AttentionPartial::reset(int64_t n_queries, int64_t value_width) {
  const int64_t lanes = HWY_DYNAMIC_DISPATCH(LaneCount)();
  n = n_queries;
  width = value_width;
  stride = (value_width + lanes - 1) / lanes * lanes;
  max.assign(static_cast<size_t>(n), -INFINITY);
  sum.assign(static_cast<size_t>(n), 0.0f);
  out.assign(static_cast<size_t>(n * stride), 0.0f);
  value_scale.clear();
}

void attend_range(const QueryBlock& queries, const KvRows& keys, const KeyRebuild* rebuild,
                  const KvRows& values, float scale, int64_t begin, int64_t end,
                  AttentionPartial& partial) {
  HWY_DYNAMIC_DISPATCH(AttendRange)(queries, keys, rebuild, values, scale, begin, end, partial);
}

void decode_rows(const KvRows& rows, int64_t begin, int64_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(DecodeRows)(rows, begin, n, out);
}

void merge_partial(AttentionPartial& into, const AttentionPartial& other) {
  if (into.value_scale.empty()) into.value_scale = other.value_scale;
  for (int64_t i = 0; i < into.n; ++i) {
    if (other.max[i] == -INFINITY) continue;
    const float m = std::max(into.max[i], other.max[i]);
    const float a = into.max[i] == -INFINITY ? 0.0f : std::exp(into.max[i] - m);
    const float b = std::exp(other.max[i] - m);
    into.sum[i] = into.sum[i] * a + other.sum[i] * b;
    into.max[i] = m;
    float* o = into.out.data() + i * into.stride;
    const float* p = other.out.data() + i * other.stride;
    for (int64_t c = 0; c < into.width; ++c) o[c] = o[c] * a + p[c] * b;
  }
}

void finish_partial(const AttentionPartial& partial, float* out, int64_t out_stride) {
  for (int64_t i = 0; i < partial.n; ++i) {
    const float inv = partial.sum[i] > 0 ? 1.0f / partial.sum[i] : 0.0f;
    const float* o = partial.out.data() + i * partial.stride;
    if (partial.value_scale.empty()) {
      for (int64_t c = 0; c < partial.width; ++c) out[i * out_stride + c] = o[c] * inv;
    } else {
      for (int64_t c = 0; c < partial.width; ++c)
        out[i * out_stride + c] = o[c] * inv * partial.value_scale[c];
    }
  }
}

}  // namespace eigenkv::ops
#endif  // HWY_ONCE
