// Weight-row dot products for decode (see qdot.h).
//
// Highway's foreach_target compiles this file once per SIMD target; HWY_ONCE holds the dispatch,
// the argument checks and the scalar reference. On x86 targets with AVX2 (AVX2, AVX3, AVX3_DL)
// the block types run fused kernels written with intrinsics, one per type, that decode a block
// in registers and multiply it with every activation row: unsigned weight bytes times signed
// activation bytes with VPMADDUBSW (or VPDPBUSD where AVX-512 VNNI is compiled in), the 16-bit
// pair sums scaled per sub-block with VPMADDWD, and the block's float scales applied once per
// block. Other targets unpack each block to bytes with the scalar code the reference uses and
// take the integer dot products with Highway's widening multiply-add. Float weights use Highway
// everywhere.
//
// Activation rows (offsets within one row of act_row_bytes, rounded up to 64 bytes):
//   float weights:       float32 x[n]
//   32-number blocks:    int8 q[n] | float32 d[n/32] | float32 s[n/32]     s = d * (sum of q)
//   K-quants (256):      int8 q[n] | int16 bsums[n/16] | float32 d[n/256]  bsums: per 16 numbers
// Each block of 32 or 256 numbers is rounded with d = max|x| / 127 and q = round(x / d), so
// |q| <= 127 (never -128, which the sign trick below could not negate).
//
// The weights are written as unsigned integers u with an offset or min handled from the
// activation sums: Q4_0 is (u - 8) * d, so its dot is d * dx * (u . q) - 8 * d * s; Q4_1 adds
// m * s; the K-quants subtract min (or offset) times the group sums bsums. Only Q8_0 weights are
// signed, multiplied with the sign trick (|w| times x with w's sign).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/qdot.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// The includes above must come first.
#include <hwy/highway.h>
#if HWY_ARCH_X86
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "ops/half.h"
#include "ops/qblocks.h"
#include "ops/qdot.h"
#include "util/error.h"

// ---- Shared by every target (compiled once) ----
#ifndef EIGENKV_OPS_QDOT_SHARED_
#define EIGENKV_OPS_QDOT_SHARED_
namespace eigenkv::ops::qdot_detail {

using io::TensorType;

enum class Family { kNone, kFloat, kBlock32, kBlockK };

inline Family family(TensorType type) {
  switch (type) {
    case TensorType::kF32:
    case TensorType::kF16:
    case TensorType::kBF16:
      return Family::kFloat;
    case TensorType::kQ4_0:
    case TensorType::kQ4_1:
    case TensorType::kQ5_0:
    case TensorType::kQ5_1:
    case TensorType::kQ8_0:
      return Family::kBlock32;
    case TensorType::kQ2_K:
    case TensorType::kQ3_K:
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
    case TensorType::kQ6_K:
      return Family::kBlockK;
    default:
      return Family::kNone;
  }
}

inline size_t round_up64(size_t bytes) { return (bytes + 63) / 64 * 64; }

inline size_t act_bytes(Family f, int64_t n) {
  const size_t un = static_cast<size_t>(n);
  switch (f) {
    case Family::kFloat: return round_up64(4 * un);
    case Family::kBlock32: return round_up64(un + 8 * (un / 32));
    case Family::kBlockK: return round_up64(un + 2 * (un / 16) + 4 * (un / 256));
    default: return 0;
  }
}

// One call's operands; act_bytes is one activation row's size.
struct Args {
  const uint8_t* w;
  size_t row_bytes;
  int64_t n;
  const uint8_t* act;
  size_t act_bytes;
  float* y;
  int64_t y_stride;
};

using namespace blocks;  // NOLINT

// Activation row pointers.
inline const int8_t* act_q(const uint8_t* row) { return reinterpret_cast<const int8_t*>(row); }
inline const uint8_t* act32_d(const uint8_t* row, int64_t n) { return row + n; }
inline const uint8_t* act32_s(const uint8_t* row, int64_t n) { return row + n + 4 * (n / 32); }

// Q4_0, Q4_1, Q5_0 and Q5_1 hold numbers j and j + 16 of a block in one byte, so their
// activations are laid out to meet two blocks' nibbles in one 256-bit vector: blocks 2p and
// 2p + 1 fill bytes [64p, 64p + 64) with numbers 0..15 of block 2p, 0..15 of 2p + 1, 16..31 of
// 2p, 16..31 of 2p + 1. Their scales and sums go in groups of eight blocks in the order
// 0, 2, 4, 6, 1, 3, 5, 7 in which the kernel's lane folding leaves the eight blocks' dots. An odd
// last block and a last partial group keep the natural order.
inline bool act32_paired(TensorType type) {
  return type == TensorType::kQ4_0 || type == TensorType::kQ4_1 || type == TensorType::kQ5_0 ||
         type == TensorType::kQ5_1;
}
// Byte of number l of block b among a row's nb blocks.
inline int64_t act32_x_offset(bool paired, int64_t nb, int64_t b, int64_t l) {
  if (!paired || b >= nb / 2 * 2) return 32 * b + l;
  return 64 * (b / 2) + 32 * (l / 16) + 16 * (b % 2) + l % 16;
}
// Slot of block b's scale and sum.
inline int64_t act32_slot(bool paired, int64_t nb, int64_t b) {
  if (!paired || b >= nb / 8 * 8) return b;
  const int64_t j = b % 8;
  return b - j + (j % 2) * 4 + j / 2;
}
inline const uint8_t* actk_bsums(const uint8_t* row, int64_t n) { return row + n; }
inline const uint8_t* actk_d(const uint8_t* row, int64_t n) { return row + n + 2 * (n / 16); }

}  // namespace eigenkv::ops::qdot_detail
#endif  // EIGENKV_OPS_QDOT_SHARED_

// ---- Per target ----
#undef EKV_QDOT_X86
#undef EKV_QDOT_VNNI
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
#define EKV_QDOT_X86 1
#else
#define EKV_QDOT_X86 0
#endif
// VPDPBUSD/VPDPWSSD on 256-bit vectors need AVX512_VNNI with AVX512VL, which Highway 1.0.3's
// AVX3_DL target does not switch on itself (it names AVX-VNNI), so only a build for such a CPU
// (-march=native there) uses them.
#if HWY_TARGET == HWY_AVX3_DL && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define EKV_QDOT_VNNI 1
#else
#define EKV_QDOT_VNNI 0
#endif

HWY_BEFORE_NAMESPACE();
namespace eigenkv::ops {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using namespace qdot_detail;  // NOLINT

// Activation rows per kernel call; more are taken in chunks of this many over tiles of rows.
constexpr int kMaxNx = 8;
constexpr int64_t kRowTile = 16;

// ---- Activation rounding ----

// Rounds count numbers (a multiple of 16) to int8 with one scale; group_sums[g] is the sum of
// q over numbers [16g, 16g + 16). Returns the scale.
float QuantizeBlock(const float* x, int64_t count, int8_t* q, int32_t* group_sums) {
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> d8;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  auto vmax = hn::Zero(df);
  for (int64_t i = 0; i < count; i += L) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, x + i)));
  const float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
  const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
  const auto vinv = hn::Set(df, inverse);
  for (int64_t g = 0; g < count / 16; ++g) {
    auto sum = hn::Zero(di);
    for (int64_t i = 16 * g; i < 16 * g + 16; i += L) {
      const auto qi = hn::NearestInt(hn::Mul(hn::LoadU(df, x + i), vinv));
      hn::StoreU(hn::DemoteTo(d8, qi), d8, q + i);
      sum = hn::Add(sum, qi);
    }
    group_sums[g] = hn::GetLane(hn::SumOfLanes(di, sum));
  }
  return amax / 127.0f;
}

void PrepareActRows(Family f, bool paired, const float* x, int64_t n_x, int64_t n,
                    size_t row_bytes, uint8_t* out) {
  for (int64_t t = 0; t < n_x; ++t) {
    const float* xr = x + t * n;
    uint8_t* row = out + static_cast<size_t>(t) * row_bytes;
    int8_t* q = reinterpret_cast<int8_t*>(row);
    size_t used = 0;
    if (f == Family::kFloat) {
      std::memcpy(row, xr, 4 * static_cast<size_t>(n));
      used = 4 * static_cast<size_t>(n);
    } else if (f == Family::kBlock32) {
      const int64_t nb = n / 32;
      uint8_t* dp = row + n;
      uint8_t* sp = row + n + 4 * nb;
      for (int64_t b = 0; b < nb; ++b) {
        int32_t sums[2];
        int8_t block[32];
        const float d = QuantizeBlock(xr + 32 * b, 32, block, sums);
        const float s = d * static_cast<float>(sums[0] + sums[1]);
        std::memcpy(q + act32_x_offset(paired, nb, b, 0), block, 16);
        std::memcpy(q + act32_x_offset(paired, nb, b, 16), block + 16, 16);
        const int64_t slot = act32_slot(paired, nb, b);
        std::memcpy(dp + 4 * slot, &d, 4);
        std::memcpy(sp + 4 * slot, &s, 4);
      }
      used = static_cast<size_t>(n + 8 * nb);
    } else {
      const int64_t nb = n / 256;
      uint8_t* bp = row + n;
      uint8_t* dp = row + n + 32 * nb;
      for (int64_t b = 0; b < nb; ++b) {
        int32_t sums[16];
        const float d = QuantizeBlock(xr + 256 * b, 256, q + 256 * b, sums);
        for (int g = 0; g < 16; ++g) {
          const int16_t s = static_cast<int16_t>(sums[g]);  // |sum| <= 16 * 127
          std::memcpy(bp + 32 * b + 2 * g, &s, 2);
        }
        std::memcpy(dp + 4 * b, &d, 4);
      }
      used = static_cast<size_t>(n + 36 * nb);
    }
    std::memset(row + used, 0, row_bytes - used);
  }
}

// ---- Float weights: every target ----

struct LoadF32 {
  template <class DF>
  static HWY_INLINE hn::Vec<DF> Load(DF df, const uint8_t* w, int64_t i) {
    return hn::LoadU(df, reinterpret_cast<const float*>(w) + i);
  }
  static float Scalar(const uint8_t* w, int64_t i) { return load_f32(w + 4 * i); }
};
struct LoadF16 {
  template <class DF>
  static HWY_INLINE hn::Vec<DF> Load(DF df, const uint8_t* w, int64_t i) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(w) + i));
  }
  static float Scalar(const uint8_t* w, int64_t i) { return load_half(w + 2 * i); }
};
struct LoadBF16 {
  template <class DF>
  static HWY_INLINE hn::Vec<DF> Load(DF df, const uint8_t* w, int64_t i) {
    const hn::RebindToUnsigned<DF> du;
    const hn::Rebind<uint16_t, DF> d16;
    const auto bits = hn::PromoteTo(du, hn::LoadU(d16, reinterpret_cast<const uint16_t*>(w) + i));
    return hn::BitCast(df, hn::ShiftLeft<16>(bits));
  }
  static float Scalar(const uint8_t* w, int64_t i) { return bf16_to_fp32(load_u16(w + 2 * i)); }
};

// Activation number i of a float row that may not be aligned.
HWY_INLINE float XAt(const float* x, int64_t i) {
  return load_f32(reinterpret_cast<const uint8_t*>(x) + 4 * i);
}

template <class W>
struct FloatRows {
  template <int NX>
  static void Run(const Args& a, int64_t r0, int64_t r1) {
    const hn::ScalableTag<float> df;
    const int64_t L = static_cast<int64_t>(hn::Lanes(df));
    // Enough independent sums to cover the multiply-add latency.
    constexpr int U = NX == 1 ? 8 : NX == 2 ? 4 : NX <= 4 ? 2 : 1;
    const float* x[NX];
    for (int t = 0; t < NX; ++t) x[t] = reinterpret_cast<const float*>(a.act + t * a.act_bytes);
    const int64_t n = a.n;
#if HWY_HAVE_SCALABLE
    // Sizeless vectors cannot be held in arrays: one activation row at a time.
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = a.w + r * a.row_bytes;
      for (int t = 0; t < NX; ++t) {
        auto acc0 = hn::Zero(df);
        auto acc1 = hn::Zero(df);
        int64_t i = 0;
        for (; i + 2 * L <= n; i += 2 * L) {
          acc0 = hn::MulAdd(W::Load(df, wr, i), hn::LoadU(df, x[t] + i), acc0);
          acc1 = hn::MulAdd(W::Load(df, wr, i + L), hn::LoadU(df, x[t] + i + L), acc1);
        }
        float sum = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
        for (; i < n; ++i) sum += W::Scalar(wr, i) * XAt(x[t], i);
        a.y[t * a.y_stride + r] = sum;
      }
    }
    (void)U;
#else
    int64_t r = r0;
    if constexpr (NX == 1) {
      // One activation row: eight weight rows side by side, so that eight streams are in
      // flight (one row at a time left single-core decode at 0.6-0.8x llama.cpp's on F16 from
      // memory; eight measured 0.9-1.0x, Xeon).
      constexpr int R = 8;
      for (; r + R <= r1 && n % (2 * L) == 0; r += R) {
        hn::Vec<decltype(df)> acc[R][2];
        for (int k = 0; k < R; ++k) acc[k][0] = acc[k][1] = hn::Zero(df);
        for (int64_t i = 0; i < n; i += 2 * L) {
          const auto x0 = hn::LoadU(df, x[0] + i), x1 = hn::LoadU(df, x[0] + i + L);
          for (int k = 0; k < R; ++k) {
            const uint8_t* wr = a.w + (r + k) * a.row_bytes;
            acc[k][0] = hn::MulAdd(W::Load(df, wr, i), x0, acc[k][0]);
            acc[k][1] = hn::MulAdd(W::Load(df, wr, i + L), x1, acc[k][1]);
          }
        }
        for (int k = 0; k < R; ++k) {
          a.y[r + k] = hn::GetLane(hn::SumOfLanes(df, hn::Add(acc[k][0], acc[k][1])));
        }
      }
    }
    for (; r < r1; ++r) {
      const uint8_t* wr = a.w + r * a.row_bytes;
      hn::Vec<decltype(df)> acc[U][NX];
      for (int u = 0; u < U; ++u)
        for (int t = 0; t < NX; ++t) acc[u][t] = hn::Zero(df);
      int64_t i = 0;
      for (; i + U * L <= n; i += U * L) {
        for (int u = 0; u < U; ++u) {
          const auto wv = W::Load(df, wr, i + u * L);
          for (int t = 0; t < NX; ++t)
            acc[u][t] = hn::MulAdd(wv, hn::LoadU(df, x[t] + i + u * L), acc[u][t]);
        }
      }
      for (; i + L <= n; i += L) {
        const auto wv = W::Load(df, wr, i);
        for (int t = 0; t < NX; ++t) acc[0][t] = hn::MulAdd(wv, hn::LoadU(df, x[t] + i), acc[0][t]);
      }
      for (int t = 0; t < NX; ++t) {
        for (int u = 1; u < U; ++u) acc[0][t] = hn::Add(acc[0][t], acc[u][t]);
        float sum = hn::GetLane(hn::SumOfLanes(df, acc[0][t]));
        for (int64_t j = i; j < n; ++j) sum += W::Scalar(wr, j) * XAt(x[t], j);
        a.y[t * a.y_stride + r] = sum;
      }
    }
#endif  // HWY_HAVE_SCALABLE
  }
};

// ---- Block weights, portable: unpack with the scalar code, integer dots with Highway ----

// sum of q[i] * x[i] for i < count (a multiple of 16).
template <typename TQ>
HWY_INLINE int32_t DotBytes(const TQ* q, const int8_t* x, int64_t count) {
  const hn::CappedTag<int16_t, 16> d16;
  const hn::Rebind<TQ, decltype(d16)> dq;
  const hn::Rebind<int8_t, decltype(d16)> d8;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  const int64_t L = static_cast<int64_t>(hn::Lanes(d16));
  auto sum0 = hn::Zero(d32);
  auto sum1 = hn::Zero(d32);
  for (int64_t i = 0; i < count; i += L) {
    const auto wq = hn::PromoteTo(d16, hn::LoadU(dq, q + i));
    const auto xq = hn::PromoteTo(d16, hn::LoadU(d8, x + i));
    sum0 = hn::ReorderWidenMulAccumulate(d32, wq, xq, sum0, sum1);
  }
  return hn::GetLane(hn::SumOfLanes(d32, hn::Add(sum0, sum1)));
}

template <void (*kUnpack)(const uint8_t*, Block32&), size_t kBytes, bool kSigned, bool kPaired>
struct Portable32 {
  template <int NX>
  static void Run(const Args& a, int64_t r0, int64_t r1) {
    const int64_t nb = a.n / 32;
    const uint8_t* xr[NX];
    for (int t = 0; t < NX; ++t) xr[t] = a.act + t * a.act_bytes;
    Block32 blk;
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = a.w + r * a.row_bytes;
      float acc[NX] = {};
      for (int64_t b = 0; b < nb; ++b) {
        kUnpack(wr + b * kBytes, blk);
        const int64_t lo = act32_x_offset(kPaired, nb, b, 0);
        const int64_t hi = act32_x_offset(kPaired, nb, b, 16);
        const int64_t slot = act32_slot(kPaired, nb, b);
        for (int t = 0; t < NX; ++t) {
          const int8_t* xq = act_q(xr[t]);
          int32_t dot;
          if (kSigned) {
            const auto* q = reinterpret_cast<const int8_t*>(blk.q);
            dot = DotBytes(q, xq + lo, 16) + DotBytes(q + 16, xq + hi, 16);
          } else {
            dot = DotBytes(blk.q, xq + lo, 16) + DotBytes(blk.q + 16, xq + hi, 16);
          }
          const float dx = load_f32(act32_d(xr[t], a.n) + 4 * slot);
          const float sx = load_f32(act32_s(xr[t], a.n) + 4 * slot);
          acc[t] += blk.d * dx * static_cast<float>(dot) + blk.c * sx;
        }
      }
      for (int t = 0; t < NX; ++t) a.y[t * a.y_stride + r] = acc[t];
    }
  }
};

template <void (*kUnpack)(const uint8_t*, BlockK&), size_t kBytes>
struct PortableK {
  template <int NX>
  static void Run(const Args& a, int64_t r0, int64_t r1) {
    const int64_t nb = a.n / 256;
    const uint8_t* xr[NX];
    for (int t = 0; t < NX; ++t) xr[t] = a.act + t * a.act_bytes;
    BlockK blk;
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = a.w + r * a.row_bytes;
      float acc[NX] = {};
      for (int64_t b = 0; b < nb; ++b) {
        kUnpack(wr + b * kBytes, blk);
        for (int t = 0; t < NX; ++t) {
          const int8_t* xq = act_q(xr[t]) + 256 * b;
          const uint8_t* bs = actk_bsums(xr[t], a.n) + 32 * b;
          int32_t isum = 0, imin = 0;
          for (int g = 0; g < 16; ++g) {
            isum += blk.sc[g] * DotBytes(blk.q + 16 * g, xq + 16 * g, 16);
            imin += blk.mn[g] * load_i16(bs + 2 * g);
          }
          const float dx = load_f32(actk_d(xr[t], a.n) + 4 * b);
          acc[t] += blk.d * dx * static_cast<float>(isum) - blk.dmin * dx * static_cast<float>(imin);
        }
      }
      for (int t = 0; t < NX; ++t) a.y[t * a.y_stride + r] = acc[t];
    }
  }
};

#if EKV_QDOT_X86
// ---- Block weights, x86 with AVX2: fused kernels ----

HWY_INLINE __m256i Load256(const void* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
HWY_INLINE __m128i Load128(const void* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
HWY_INLINE float HalfX86(const uint8_t* p) { return _cvtsh_ss(load_u16(p)); }

HWY_INLINE float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

HWY_INLINE int32_t HSumI32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}

// Sums of four products of unsigned bytes u with signed bytes s per 32-bit lane. No pair sum can
// saturate VPMADDUBSW here: u <= 128 where s is a full int8, u <= 63 elsewhere, |s| <= 127.
HWY_INLINE __m256i DotU8S8(__m256i u, __m256i s) {
#if EKV_QDOT_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// acc + pairwise products of the 16-bit lanes of a and b.
HWY_INLINE __m256i MulAddI16(__m256i acc, __m256i a, __m256i b) {
#if EKV_QDOT_VNNI
  return _mm256_dpwssd_epi32(acc, a, b);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

// Scaled dot of 32 unsigned weight bytes with 32 activation bytes into acc.
HWY_INLINE __m256i ScaledDot(__m256i acc, __m256i u, const int8_t* x, __m256i scale) {
  return MulAddI16(acc, _mm256_maddubs_epi16(u, Load256(x)), scale);
}

// 16 bytes of nibbles to 32 bytes: low nibbles first, then high nibbles.
HWY_INLINE __m256i Nibbles(const uint8_t* qs) {
  const __m128i v = Load128(qs);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(0x0F));
}

// Byte j = 0x10 where bit j of qh is set, else 0.
HWY_INLINE __m256i FifthBits(uint32_t qh) {
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(qh)),
      _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                       3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

// The f16 at p + k * stride for k < 8, as floats, in the lane order lo_first..: lanes 0-3 hold
// k = first, first + step, ..; lanes 4-7 the same from p + second * stride. The halves are packed
// with integer instructions, which leaves the vector units to the dot products.
HWY_INLINE __m256 EightHalves(const uint8_t* p, size_t stride, int first, int second, int step) {
  const auto four = [&](const uint8_t* q) {
    const size_t s = step * stride;
    return static_cast<uint64_t>(load_u16(q)) | (static_cast<uint64_t>(load_u16(q + s)) << 16) |
           (static_cast<uint64_t>(load_u16(q + 2 * s)) << 32) |
           (static_cast<uint64_t>(load_u16(q + 3 * s)) << 48);
  };
  const uint64_t lo = four(p + first * stride), hi = four(p + second * stride);
  return _mm256_cvtph_ps(_mm_set_epi64x(static_cast<int64_t>(hi), static_cast<int64_t>(lo)));
}

// Lanes (per 128-bit half) [a0 + a2, c0 + c2, a1 + a3, c1 + c3] of the 32-bit lanes of a and c.
HWY_INLINE __m256i Fold32(__m256i a, __m256i c) {
  return _mm256_add_epi32(_mm256_unpacklo_epi32(a, c), _mm256_unpackhi_epi32(a, c));
}
// Lanes (per half) [a0 + a1, a2 + a3, c0 + c1, c2 + c3] as 64-bit pairs: [a01, c01] + [a23, c23].
HWY_INLINE __m256i Fold64(__m256i a, __m256i c) {
  return _mm256_add_epi32(_mm256_unpacklo_epi64(a, c), _mm256_unpackhi_epi64(a, c));
}

// ---- Q8_0: signed weights, activations in natural order ----

// Eight blocks at a time: their integer dots are summed into the lanes of one vector (lane k =
// block k), so that the scales are applied with one multiply-add per eight blocks and activation
// row, from the activations' contiguous scales.
struct FusedQ8_0 {
  static constexpr size_t kBytes = 34;

  static HWY_INLINE __m256i BlockDot(__m256i q, __m256i u, const uint8_t* x) {
    return DotU8S8(u, _mm256_sign_epi8(Load256(x), q));
  }

  // sums[t] lane k = integer dot of block b + k with activation row t.
  template <int NX>
  static HWY_INLINE void Eight(const uint8_t* blocks, int64_t b, const uint8_t* const* xq,
                               __m256i* sums) {
    __m256i first[NX];
    for (int quad = 0; quad < 2; ++quad) {
      __m256i pair[2][NX];
      for (int pr = 0; pr < 2; ++pr) {
        const int k = 4 * quad + 2 * pr;
        const __m256i q0 = Load256(blocks + k * kBytes + 2);
        const __m256i q1 = Load256(blocks + (k + 1) * kBytes + 2);
        const __m256i u0 = _mm256_abs_epi8(q0);
        const __m256i u1 = _mm256_abs_epi8(q1);
        for (int t = 0; t < NX; ++t) {
          const uint8_t* x = xq[t] + 32 * (b + k);
          pair[pr][t] = Fold32(BlockDot(q0, u0, x), BlockDot(q1, u1, x + 32));
        }
      }
      for (int t = 0; t < NX; ++t) {
        const __m256i four = Fold64(pair[0][t], pair[1][t]);  // halves: blocks 4quad + 0..3
        if (quad == 0) {
          first[t] = four;
        } else {
          sums[t] = _mm256_add_epi32(_mm256_permute2x128_si256(first[t], four, 0x20),
                                     _mm256_permute2x128_si256(first[t], four, 0x31));
        }
      }
    }
  }

  template <int NX>
  static void Run(const Args& a, int64_t r0, int64_t r1) {
    const int64_t nb = a.n / 32;
    const uint8_t* xq[NX];
    const uint8_t* xd[NX];
    for (int t = 0; t < NX; ++t) {
      const uint8_t* row = a.act + t * a.act_bytes;
      xq[t] = row;
      xd[t] = act32_d(row, a.n);
    }
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = a.w + r * a.row_bytes;
      __m256 acc[NX];
      for (int t = 0; t < NX; ++t) acc[t] = _mm256_setzero_ps();
      int64_t b = 0;
      for (; b + 8 <= nb; b += 8) {
        const uint8_t* blocks = wr + b * kBytes;
        __m256i sums[NX];
        Eight<NX>(blocks, b, xq, sums);
        const __m256 d = EightHalves(blocks, kBytes, 0, 4, 1);
        for (int t = 0; t < NX; ++t) {
          const __m256 dx = _mm256_loadu_ps(reinterpret_cast<const float*>(xd[t] + 4 * b));
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[t]), _mm256_mul_ps(d, dx), acc[t]);
        }
      }
      float tail[NX] = {};
      for (; b < nb; ++b) {
        const uint8_t* blk = wr + b * kBytes;
        const __m256i q = Load256(blk + 2);
        const __m256i u = _mm256_abs_epi8(q);
        const float d = HalfX86(blk);
        for (int t = 0; t < NX; ++t) {
          const int32_t dot = HSumI32(BlockDot(q, u, xq[t] + 32 * b));
          tail[t] += d * load_f32(xd[t] + 4 * b) * static_cast<float>(dot);
        }
      }
      for (int t = 0; t < NX; ++t) a.y[t * a.y_stride + r] = HSum(acc[t]) + tail[t];
    }
  }
};

// ---- Q4_0, Q4_1, Q5_0, Q5_1: unsigned nibbles (plus fifth bits), paired activations ----

// Two blocks' 16 bytes of nibbles as [low nibbles of p0 | low of p1] and [high of p0 | high of p1]
// (numbers 0..15 and 16..31 of each block).
HWY_INLINE void PairNibbles(const uint8_t* p0, const uint8_t* p1, __m256i& lo, __m256i& hi) {
  const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(Load128(p0)), Load128(p1), 1);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  lo = _mm256_and_si256(v, low4);
  hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
}

// Adds the fifth bits (0x10) of two blocks, bit j of qh0 / qh1 for number j, to PairNibbles'
// vectors.
HWY_INLINE void PairFifthBits(uint32_t qh0, uint32_t qh1, __m256i& lo, __m256i& hi) {
  const __m256i v = _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_cvtsi32_si128(static_cast<int>(qh0))),
      _mm_cvtsi32_si128(static_cast<int>(qh1)), 1);
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  const __m256i five = _mm256_set1_epi8(0x10);
  const auto spread = [&](int byte0) {
    const __m256i idx = _mm256_set_epi64x(0x0101010101010101ll * (byte0 + 1),
                                          0x0101010101010101ll * byte0,
                                          0x0101010101010101ll * (byte0 + 1),
                                          0x0101010101010101ll * byte0);
    const __m256i bytes = _mm256_and_si256(_mm256_shuffle_epi8(v, idx), bit);
    return _mm256_and_si256(_mm256_cmpeq_epi8(bytes, bit), five);
  };
  lo = _mm256_or_si256(lo, spread(0));
  hi = _mm256_or_si256(hi, spread(2));
}

// Block layouts: quants at kQs, d the first f16, m the second (kMin); kOffset times d times the
// activation sum s enters for the offset types, m times s for kMin.
struct DecQ4_0 {
  static constexpr size_t kBytes = 18, kQs = 2, kQh = 0;
  static constexpr bool kMin = false, kFive = false;
  static constexpr float kOffset = -8.0f;
};
struct DecQ4_1 {
  static constexpr size_t kBytes = 20, kQs = 4, kQh = 0;
  static constexpr bool kMin = true, kFive = false;
  static constexpr float kOffset = 1.0f;
};
struct DecQ5_0 {
  static constexpr size_t kBytes = 22, kQs = 6, kQh = 2;
  static constexpr bool kMin = false, kFive = true;
  static constexpr float kOffset = -16.0f;
};
struct DecQ5_1 {
  static constexpr size_t kBytes = 24, kQs = 8, kQh = 4;
  static constexpr bool kMin = true, kFive = true;
  static constexpr float kOffset = 1.0f;
};

template <class B>
struct FusedNibbles {
  static HWY_INLINE void Pair(const uint8_t* blk, __m256i& lo, __m256i& hi) {
    PairNibbles(blk + B::kQs, blk + B::kBytes + B::kQs, lo, hi);
    if (B::kFive) PairFifthBits(load_u32(blk + B::kQh), load_u32(blk + B::kBytes + B::kQh), lo, hi);
  }

  // [block k: 4 lanes | block k + 1: 4 lanes] of partial dots with the pair's 64 activation bytes.
  // The two VPMADDUBSW results add in 16 bits: each lane is at most 2 * 2 * 31 * 127.
  static HWY_INLINE __m256i PairDot(__m256i lo, __m256i hi, const uint8_t* x) {
#if EKV_QDOT_VNNI
    return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, Load256(x)), hi,
                               Load256(x + 32));
#else
    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, Load256(x)),
                                       _mm256_maddubs_epi16(hi, Load256(x + 32)));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
#endif
  }

  // sums[t] lanes = integer dots of blocks b + 0, 2, 4, 6, 1, 3, 5, 7 with activation row t.
  template <int NX>
  static HWY_INLINE void Eight(const uint8_t* blocks, int64_t b, const uint8_t* const* xq,
                               __m256i* sums) {
    __m256i first[NX];
    for (int half = 0; half < 2; ++half) {
      __m256i pair[2][NX];
      for (int pr = 0; pr < 2; ++pr) {
        const int k = 4 * half + 2 * pr;
        __m256i lo, hi;
        Pair(blocks + k * B::kBytes, lo, hi);
        for (int t = 0; t < NX; ++t) pair[pr][t] = PairDot(lo, hi, xq[t] + 32 * (b + k));
      }
      // Halves: [blocks k, k + 2 of the first pair] then [k + 1, k + 3].
      for (int t = 0; t < NX; ++t) {
        const __m256i folded = Fold32(pair[0][t], pair[1][t]);
        if (half == 0) {
          first[t] = folded;
        } else {
          sums[t] = Fold64(first[t], folded);
        }
      }
    }
  }

  template <int NX>
  static void Run(const Args& a, int64_t r0, int64_t r1) {
    const int64_t nb = a.n / 32;
    const uint8_t* xq[NX];
    const uint8_t* xd[NX];
    const uint8_t* xs[NX];
    for (int t = 0; t < NX; ++t) {
      const uint8_t* row = a.act + t * a.act_bytes;
      xq[t] = row;
      xd[t] = act32_d(row, a.n);
      xs[t] = act32_s(row, a.n);
    }
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = a.w + r * a.row_bytes;
      __m256 acc[NX], corr[NX];  // corr: sums of d * s (offset types) or m * s (kMin)
      for (int t = 0; t < NX; ++t) acc[t] = corr[t] = _mm256_setzero_ps();
      int64_t b = 0;
      for (; b + 8 <= nb; b += 8) {
        const uint8_t* blocks = wr + b * B::kBytes;
        __m256i sums[NX];
        Eight<NX>(blocks, b, xq, sums);
        const __m256 d = EightHalves(blocks, B::kBytes, 0, 1, 2);
        const __m256 c = B::kMin ? EightHalves(blocks + 2, B::kBytes, 0, 1, 2) : d;
        for (int t = 0; t < NX; ++t) {
          const __m256 dx = _mm256_loadu_ps(reinterpret_cast<const float*>(xd[t] + 4 * b));
          const __m256 sx = _mm256_loadu_ps(reinterpret_cast<const float*>(xs[t] + 4 * b));
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[t]), _mm256_mul_ps(d, dx), acc[t]);
          corr[t] = _mm256_fmadd_ps(c, sx, corr[t]);
        }
      }
      // The rest: pairs, then a last single block, in natural order.
      float tail[NX] = {}, tail_corr[NX] = {};
      const auto scalar = [&](const uint8_t* blk, int64_t k, int t, int32_t dot) {
        const float d = HalfX86(blk);
        tail[t] += d * load_f32(xd[t] + 4 * k) * static_cast<float>(dot);
        tail_corr[t] += (B::kMin ? HalfX86(blk + 2) : d) * load_f32(xs[t] + 4 * k);
      };
      for (; b + 2 <= nb; b += 2) {
        const uint8_t* blk = wr + b * B::kBytes;
        __m256i lo, hi;
        Pair(blk, lo, hi);
        for (int t = 0; t < NX; ++t) {
          const __m256i p = PairDot(lo, hi, xq[t] + 32 * b);
          scalar(blk, b, t, HSumI32(_mm256_permute2x128_si256(p, p, 0x80)));  // low half
          scalar(blk + B::kBytes, b + 1, t, HSumI32(_mm256_permute2x128_si256(p, p, 0x81)));
        }
      }
      if (b < nb) {
        const uint8_t* blk = wr + b * B::kBytes;
        __m256i u = Nibbles(blk + B::kQs);
        if (B::kFive) u = _mm256_or_si256(u, FifthBits(load_u32(blk + B::kQh)));
        for (int t = 0; t < NX; ++t) scalar(blk, b, t, HSumI32(DotU8S8(u, Load256(xq[t] + 32 * b))));
      }
      for (int t = 0; t < NX; ++t) {
        // kOffset is -8 or -16 (exact) or 1.
        a.y[t * a.y_stride + r] =
            HSum(acc[t]) + tail[t] + B::kOffset * (HSum(corr[t]) + tail_corr[t]);
      }
    }
  }
};

// K-quants. A super-block's 256 numbers are taken 32 at a time, as 16 + 16 numbers of two
// groups; the 16-bit pair sums of VPMADDUBSW are scaled by one group's scale in the low half of
// the vector and the other's in the high half.

// Low half lane 2p, high half lane 2p + 1.
HWY_INLINE __m256i ScalePair(__m256i scales, int p) {
  const __m128i lo = _mm_set1_epi16(static_cast<int16_t>(((4 * p + 1) << 8) | (4 * p)));
  const __m128i hi = _mm_set1_epi16(static_cast<int16_t>(((4 * p + 3) << 8) | (4 * p + 2)));
  return _mm256_shuffle_epi8(scales, _mm256_set_m128i(hi, lo));
}

struct KActRows {
  const int8_t* q;
  const uint8_t* bsums;
  const uint8_t* d;
};

template <int NX>
HWY_INLINE void KActPointers(const Args& a, KActRows* x) {
  for (int t = 0; t < NX; ++t) {
    const uint8_t* row = a.act + t * a.act_bytes;
    x[t] = {act_q(row), actk_bsums(row, a.n), actk_d(row, a.n)};
  }
}

// Scales and mins of Q4_K and Q5_K: the 8 scales as 16-bit lanes in both halves, and each min
// repeated for its two groups of 16.
HWY_INLINE void K4Scales(const uint8_t* packed, __m256i& scales, __m256i& mins) {
  const uint32_t w0 = load_u32(packed), w1 = load_u32(packed + 4), w2 = load_u32(packed + 8);
  const uint32_t sc_lo = w0 & 0x3F3F3F3Fu;
  const uint32_t mn_lo = w1 & 0x3F3F3F3Fu;
  const uint32_t sc_hi = (w2 & 0x0F0F0F0Fu) | ((w0 >> 2) & 0x30303030u);
  const uint32_t mn_hi = ((w2 >> 4) & 0x0F0F0F0Fu) | ((w1 >> 2) & 0x30303030u);
  const __m128i sc8 = _mm_set_epi32(0, 0, static_cast<int>(sc_hi), static_cast<int>(sc_lo));
  const __m128i mn8 = _mm_set_epi32(0, 0, static_cast<int>(mn_hi), static_cast<int>(mn_lo));
  scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sc8));
  mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn8, mn8));
}

// Both halves of the vector: the 16-bit lane k of a 128-bit row of scales.
HWY_INLINE __m256i ScaleLane(__m256i scales, int k) {
  return _mm256_shuffle_epi8(
      scales, _mm256_set1_epi16(static_cast<int16_t>(((2 * k + 1) << 8) | (2 * k))));
}

// Q4_K (kFive false) and Q5_K (kFive true).
template <bool kFive>
struct FusedQ45K {
  static constexpr size_t kBytes = kFive ? 176 : 144;
  template <int NX>
  static void Run(const Args& a, int64_t r0, int64_t r1) {
    const int64_t nb = a.n / 256;
    KActRows x[NX];
    KActPointers<NX>(a, x);
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i bit4 = _mm256_set1_epi8(0x10);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = a.w + r * a.row_bytes;
      __m256 acc[NX];
      for (int t = 0; t < NX; ++t) acc[t] = _mm256_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = wr + b * kBytes;
        const __m128 d_dmin = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(load_u32(blk))));
        __m256i scales, mins;
        K4Scales(blk + 4, scales, mins);
        const uint8_t* qs = blk + (kFive ? 48 : 16);
        __m256i high = kFive ? Load256(blk + 16) : _mm256_setzero_si256();
        __m256i sum[NX];
        for (int t = 0; t < NX; ++t) sum[t] = _mm256_setzero_si256();
        for (int j = 0; j < 4; ++j) {
          const __m256i q = Load256(qs + 32 * j);
          __m256i lo = _mm256_and_si256(q, low4);
          __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
          if (kFive) {
            lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(high, 4), bit4));
            hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(high, 3), bit4));
            high = _mm256_srli_epi16(high, 2);
          }
          const __m256i s_lo = ScaleLane(scales, 2 * j);
          const __m256i s_hi = ScaleLane(scales, 2 * j + 1);
          for (int t = 0; t < NX; ++t) {
            const int8_t* xq = x[t].q + 256 * b + 64 * j;
            sum[t] = ScaledDot(sum[t], lo, xq, s_lo);
            sum[t] = ScaledDot(sum[t], hi, xq + 32, s_hi);
          }
        }
        for (int t = 0; t < NX; ++t) {
          const __m128 f = _mm_mul_ps(d_dmin, _mm_set1_ps(load_f32(x[t].d + 4 * b)));
          const __m256i m = _mm256_madd_epi16(Load256(x[t].bsums + 32 * b), mins);
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[t]), _mm256_broadcastss_ps(f), acc[t]);
          acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(m), _mm256_broadcastss_ps(_mm_movehdup_ps(f)),
                                    acc[t]);
        }
      }
      for (int t = 0; t < NX; ++t) a.y[t * a.y_stride + r] = HSum(acc[t]);
    }
  }
};

struct FusedQ6K {
  template <int NX>
  static void Run(const Args& a, int64_t r0, int64_t r1) {
    const int64_t nb = a.n / 256;
    KActRows x[NX];
    KActPointers<NX>(a, x);
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i top2 = _mm256_set1_epi8(0x30);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = a.w + r * a.row_bytes;
      __m256 acc[NX];
      for (int t = 0; t < NX; ++t) acc[t] = _mm256_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = wr + b * 210;
        const float d = HalfX86(blk + 208);
        const __m256i sc16 = _mm256_cvtepi8_epi16(Load128(blk + 192));
        const __m256i sc_half[2] = {_mm256_permute2x128_si256(sc16, sc16, 0x00),
                                    _mm256_permute2x128_si256(sc16, sc16, 0x11)};
        __m256i sum[NX];
        for (int t = 0; t < NX; ++t) sum[t] = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
          const __m256i sc_h = sc_half[h];
          const __m256i ql0 = Load256(blk + 64 * h);
          const __m256i ql1 = Load256(blk + 64 * h + 32);
          const __m256i qh = Load256(blk + 128 + 32 * h);
          __m256i q[4];
          q[0] = _mm256_or_si256(_mm256_and_si256(ql0, low4),
                                 _mm256_and_si256(_mm256_slli_epi16(qh, 4), top2));
          q[1] = _mm256_or_si256(_mm256_and_si256(ql1, low4),
                                 _mm256_and_si256(_mm256_slli_epi16(qh, 2), top2));
          q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4),
                                 _mm256_and_si256(qh, top2));
          q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                                 _mm256_and_si256(_mm256_srli_epi16(qh, 2), top2));
          for (int p = 0; p < 4; ++p) {
            const __m256i s = ScalePair(sc_h, p);
            for (int t = 0; t < NX; ++t) {
              sum[t] = ScaledDot(sum[t], q[p], x[t].q + 256 * b + 128 * h + 32 * p, s);
            }
          }
        }
        for (int t = 0; t < NX; ++t) {
          const float dx = load_f32(x[t].d + 4 * b);
          // The offset 32: sum_g sc[g] * 32 * bsums[g].
          const __m256i off = _mm256_madd_epi16(sc16, Load256(x[t].bsums + 32 * b));
          const __m256i total = _mm256_sub_epi32(sum[t], _mm256_slli_epi32(off, 5));
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_set1_ps(d * dx), acc[t]);
        }
      }
      for (int t = 0; t < NX; ++t) a.y[t * a.y_stride + r] = HSum(acc[t]);
    }
  }
};

struct FusedQ2K {
  template <int NX>
  static void Run(const Args& a, int64_t r0, int64_t r1) {
    const int64_t nb = a.n / 256;
    KActRows x[NX];
    KActPointers<NX>(a, x);
    const __m256i low2 = _mm256_set1_epi8(0x03);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = a.w + r * a.row_bytes;
      __m256 acc[NX];
      for (int t = 0; t < NX; ++t) acc[t] = _mm256_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = wr + b * 84;
        const float d = HalfX86(blk + 80);
        const float dmin = HalfX86(blk + 82);
        const __m128i packed = Load128(blk);
        const __m128i nib = _mm_set1_epi8(0x0F);
        const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(packed, nib));
        const __m256i mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), nib));
        const __m256i sc_half[2] = {_mm256_permute2x128_si256(sc16, sc16, 0x00),
                                    _mm256_permute2x128_si256(sc16, sc16, 0x11)};
        __m256i sum[NX];
        for (int t = 0; t < NX; ++t) sum[t] = _mm256_setzero_si256();
        for (int h = 0; h < 2; ++h) {
          const __m256i sc_h = sc_half[h];
          const __m256i qv = Load256(blk + 16 + 32 * h);
          for (int p = 0; p < 4; ++p) {
            const __m256i q = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * p), low2);
            const __m256i s = ScalePair(sc_h, p);
            for (int t = 0; t < NX; ++t) {
              sum[t] = ScaledDot(sum[t], q, x[t].q + 256 * b + 128 * h + 32 * p, s);
            }
          }
        }
        for (int t = 0; t < NX; ++t) {
          const float dx = load_f32(x[t].d + 4 * b);
          const __m256i m = _mm256_madd_epi16(mn16, Load256(x[t].bsums + 32 * b));
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[t]), _mm256_set1_ps(d * dx), acc[t]);
          acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(m), _mm256_set1_ps(dmin * dx), acc[t]);
        }
      }
      for (int t = 0; t < NX; ++t) a.y[t * a.y_stride + r] = HSum(acc[t]);
    }
  }
};

// Q3_K's sixteen 6-bit scales (biased by 32) as signed 16-bit lanes.
HWY_INLINE __m256i Q3Scales(const uint8_t* packed) {
  const uint32_t a0 = load_u32(packed), a1 = load_u32(packed + 4), a2 = load_u32(packed + 8);
  const uint32_t m4 = 0x0F0F0F0Fu, m2 = 0x03030303u;
  const uint32_t s0 = (a0 & m4) | ((a2 & m2) << 4);
  const uint32_t s1 = (a1 & m4) | (((a2 >> 2) & m2) << 4);
  const uint32_t s2 = ((a0 >> 4) & m4) | (((a2 >> 4) & m2) << 4);
  const uint32_t s3 = ((a1 >> 4) & m4) | (((a2 >> 6) & m2) << 4);
  const __m128i biased = _mm_set_epi32(static_cast<int>(s3), static_cast<int>(s2),
                                       static_cast<int>(s1), static_cast<int>(s0));
  return _mm256_cvtepi8_epi16(_mm_sub_epi8(biased, _mm_set1_epi8(32)));
}

// Bit k of each byte of v moved to bit 2.
template <int k>
HWY_INLINE __m256i BitTo2(__m256i v) {
  if constexpr (k < 2) {
    return _mm256_and_si256(_mm256_slli_epi16(v, 2 - k), _mm256_set1_epi8(0x04));
  } else {
    return _mm256_and_si256(_mm256_srli_epi16(v, k - 2), _mm256_set1_epi8(0x04));
  }
}

struct FusedQ3K {
  template <int NX, int h, int p>
  static HWY_INLINE void Group(const uint8_t* blk, __m256i hmask, __m256i sc_h, const KActRows* x,
                               int64_t b, __m256i* sum) {
    const __m256i qv = Load256(blk + 32 + 32 * h);
    const __m256i q = _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi16(qv, 2 * p), _mm256_set1_epi8(0x03)),
        BitTo2<4 * h + p>(hmask));
    const __m256i s = ScalePair(sc_h, p);
    for (int t = 0; t < NX; ++t) {
      sum[t] = ScaledDot(sum[t], q, x[t].q + 256 * b + 128 * h + 32 * p, s);
    }
  }

  template <int NX>
  static void Run(const Args& a, int64_t r0, int64_t r1) {
    const int64_t nb = a.n / 256;
    KActRows x[NX];
    KActPointers<NX>(a, x);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = a.w + r * a.row_bytes;
      __m256 acc[NX];
      for (int t = 0; t < NX; ++t) acc[t] = _mm256_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = wr + b * 110;
        const float d = HalfX86(blk + 108);
        const __m256i sc16 = Q3Scales(blk + 96);
        const __m256i hmask = Load256(blk);
        __m256i sum[NX];
        for (int t = 0; t < NX; ++t) sum[t] = _mm256_setzero_si256();
        const __m256i sc0 = _mm256_permute2x128_si256(sc16, sc16, 0x00);
        const __m256i sc1 = _mm256_permute2x128_si256(sc16, sc16, 0x11);
        Group<NX, 0, 0>(blk, hmask, sc0, x, b, sum);
        Group<NX, 0, 1>(blk, hmask, sc0, x, b, sum);
        Group<NX, 0, 2>(blk, hmask, sc0, x, b, sum);
        Group<NX, 0, 3>(blk, hmask, sc0, x, b, sum);
        Group<NX, 1, 0>(blk, hmask, sc1, x, b, sum);
        Group<NX, 1, 1>(blk, hmask, sc1, x, b, sum);
        Group<NX, 1, 2>(blk, hmask, sc1, x, b, sum);
        Group<NX, 1, 3>(blk, hmask, sc1, x, b, sum);
        for (int t = 0; t < NX; ++t) {
          const float dx = load_f32(x[t].d + 4 * b);
          // The offset 4: sum_g sc[g] * 4 * bsums[g].
          const __m256i off = _mm256_madd_epi16(sc16, Load256(x[t].bsums + 32 * b));
          const __m256i total = _mm256_sub_epi32(sum[t], _mm256_slli_epi32(off, 2));
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_set1_ps(d * dx), acc[t]);
        }
      }
      for (int t = 0; t < NX; ++t) a.y[t * a.y_stride + r] = HSum(acc[t]);
    }
  }
};

using KernelQ4_0 = FusedNibbles<DecQ4_0>;
using KernelQ4_1 = FusedNibbles<DecQ4_1>;
using KernelQ5_0 = FusedNibbles<DecQ5_0>;
using KernelQ5_1 = FusedNibbles<DecQ5_1>;
using KernelQ8_0 = FusedQ8_0;
using KernelQ2_K = FusedQ2K;
using KernelQ3_K = FusedQ3K;
using KernelQ4_K = FusedQ45K<false>;
using KernelQ5_K = FusedQ45K<true>;
using KernelQ6_K = FusedQ6K;
#else
using KernelQ4_0 = Portable32<unpack_q4_0, 18, false, true>;
using KernelQ4_1 = Portable32<unpack_q4_1, 20, false, true>;
using KernelQ5_0 = Portable32<unpack_q5_0, 22, false, true>;
using KernelQ5_1 = Portable32<unpack_q5_1, 24, false, true>;
using KernelQ8_0 = Portable32<unpack_q8_0, 34, true, false>;
using KernelQ2_K = PortableK<unpack_q2_k, 84>;
using KernelQ3_K = PortableK<unpack_q3_k, 110>;
using KernelQ4_K = PortableK<unpack_q4_k, 144>;
using KernelQ5_K = PortableK<unpack_q5_k, 176>;
using KernelQ6_K = PortableK<unpack_q6_k, 210>;
#endif  // EKV_QDOT_X86

// ---- Dispatch over the number of activation rows ----

template <class K>
void RunNx(const Args& a, int64_t n_x, int64_t r0, int64_t r1) {
  switch (n_x) {
    case 1: return K::template Run<1>(a, r0, r1);
    case 2: return K::template Run<2>(a, r0, r1);
    case 3: return K::template Run<3>(a, r0, r1);
    case 4: return K::template Run<4>(a, r0, r1);
    case 5: return K::template Run<5>(a, r0, r1);
    case 6: return K::template Run<6>(a, r0, r1);
    case 7: return K::template Run<7>(a, r0, r1);
    default: return K::template Run<8>(a, r0, r1);
  }
}

// Up to kMaxNx activation rows in one pass over the weights; more in chunks of kMaxNx over tiles
// of kRowTile weight rows, so that a tile is read from memory once and from cache for the
// other chunks.
template <class K>
void Tiled(const Args& a, int64_t n_x, int64_t r0, int64_t r1) {
  if (n_x <= kMaxNx) return RunNx<K>(a, n_x, r0, r1);
  for (int64_t rt = r0; rt < r1; rt += kRowTile) {
    const int64_t re = std::min(r1, rt + kRowTile);
    for (int64_t x0 = 0; x0 < n_x; x0 += kMaxNx) {
      Args chunk = a;
      chunk.act = a.act + static_cast<size_t>(x0) * a.act_bytes;
      chunk.y = a.y + x0 * a.y_stride;
      RunNx<K>(chunk, std::min<int64_t>(kMaxNx, n_x - x0), rt, re);
    }
  }
}

void DotRowsTarget(io::TensorType type, const Args& a, int64_t n_x, int64_t r0, int64_t r1) {
  using io::TensorType;
  switch (type) {
    case TensorType::kF32: return Tiled<FloatRows<LoadF32>>(a, n_x, r0, r1);
    case TensorType::kF16: return Tiled<FloatRows<LoadF16>>(a, n_x, r0, r1);
    case TensorType::kBF16: return Tiled<FloatRows<LoadBF16>>(a, n_x, r0, r1);
    case TensorType::kQ4_0: return Tiled<KernelQ4_0>(a, n_x, r0, r1);
    case TensorType::kQ4_1: return Tiled<KernelQ4_1>(a, n_x, r0, r1);
    case TensorType::kQ5_0: return Tiled<KernelQ5_0>(a, n_x, r0, r1);
    case TensorType::kQ5_1: return Tiled<KernelQ5_1>(a, n_x, r0, r1);
    case TensorType::kQ8_0: return Tiled<KernelQ8_0>(a, n_x, r0, r1);
    case TensorType::kQ2_K: return Tiled<KernelQ2_K>(a, n_x, r0, r1);
    case TensorType::kQ3_K: return Tiled<KernelQ3_K>(a, n_x, r0, r1);
    case TensorType::kQ4_K: return Tiled<KernelQ4_K>(a, n_x, r0, r1);
    case TensorType::kQ5_K: return Tiled<KernelQ5_K>(a, n_x, r0, r1);
    case TensorType::kQ6_K: return Tiled<KernelQ6_K>(a, n_x, r0, r1);
    default: return;  // checked by the caller
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace eigenkv::ops
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace eigenkv::ops {

HWY_EXPORT(DotRowsTarget);
HWY_EXPORT(PrepareActRows);

namespace {
using namespace qdot_detail;  // NOLINT

std::string type_name(TensorType type) {
  return io::tensor_type_name(static_cast<uint32_t>(type));
}

// The family of a supported type, after checking that n is a whole number of its blocks.
Family checked_family(const char* operation, TensorType type, int64_t n) {
  const Family f = family(type);
  EKV_CHECK(f != Family::kNone, operation, ": tensor type ", type_name(type),
            " is not supported");
  const int64_t block = f == Family::kFloat ? 1 : f == Family::kBlock32 ? 32 : 256;
  EKV_CHECK(n >= 0 && n % block == 0, operation, ": ", n, " numbers of type ", type_name(type),
            " are not a whole number of blocks of ", block);
  return f;
}

Args checked_args(const char* operation, TensorType type, const uint8_t* w, size_t row_bytes,
                  int64_t n, const uint8_t* act, int64_t n_x, int64_t r0, int64_t r1, float* y,
                  int64_t y_stride) {
  const Family f = checked_family(operation, type, n);
  EKV_CHECK(row_bytes >= io::tensor_bytes(type, n), operation, ": rows of ", row_bytes,
            " bytes cannot hold ", n, " numbers of type ", type_name(type));
  EKV_CHECK(n_x >= 0 && 0 <= r0 && r0 <= r1, operation, ": bad ranges n_x=", n_x, " rows [", r0,
            ", ", r1, ")");
  return Args{w, row_bytes, n, act, act_bytes(f, n), y, y_stride};
}

double float_weight(TensorType type, const uint8_t* row, int64_t i) {
  switch (type) {
    case TensorType::kF32: return load_f32(row + 4 * i);
    case TensorType::kF16: return portable::fp16_to_fp32(load_u16(row + 2 * i));
    default: return bf16_to_fp32(load_u16(row + 2 * i));
  }
}

}  // namespace

bool can_dot(TensorType weight_type) { return family(weight_type) != Family::kNone; }

size_t act_row_bytes(TensorType weight_type, int64_t n) {
  return act_bytes(checked_family("act_row_bytes", weight_type, n), n);
}

void prepare_act(TensorType weight_type, const float* x, int64_t n_x, int64_t n, uint8_t* out) {
  const Family f = checked_family("prepare_act", weight_type, n);
  HWY_DYNAMIC_DISPATCH(PrepareActRows)(f, act32_paired(weight_type), x, n_x, n, act_bytes(f, n),
                                       out);
}

void dot_rows(TensorType weight_type, const uint8_t* w, size_t row_bytes, int64_t n,
              const uint8_t* act, int64_t n_x, int64_t r0, int64_t r1, float* y,
              int64_t y_stride) {
  const Args a =
      checked_args("dot_rows", weight_type, w, row_bytes, n, act, n_x, r0, r1, y, y_stride);
  if (n_x == 0 || r0 == r1) return;
  HWY_DYNAMIC_DISPATCH(DotRowsTarget)(weight_type, a, n_x, r0, r1);
}

void dot_rows_reference(TensorType weight_type, const uint8_t* w, size_t row_bytes, int64_t n,
                        const uint8_t* act, int64_t n_x, int64_t r0, int64_t r1, float* y,
                        int64_t y_stride) {
  const Args a = checked_args("dot_rows_reference", weight_type, w, row_bytes, n, act, n_x, r0,
                              r1, y, y_stride);
  const Family f = family(weight_type);
  const size_t block_bytes = io::tensor_type_info(weight_type).block_bytes;
  void (*unpack32)(const uint8_t*, Block32&) = nullptr;
  void (*unpack_k)(const uint8_t*, BlockK&) = nullptr;
  switch (weight_type) {
    case TensorType::kQ4_0: unpack32 = unpack_q4_0; break;
    case TensorType::kQ4_1: unpack32 = unpack_q4_1; break;
    case TensorType::kQ5_0: unpack32 = unpack_q5_0; break;
    case TensorType::kQ5_1: unpack32 = unpack_q5_1; break;
    case TensorType::kQ8_0: unpack32 = unpack_q8_0; break;
    case TensorType::kQ2_K: unpack_k = unpack_q2_k; break;
    case TensorType::kQ3_K: unpack_k = unpack_q3_k; break;
    case TensorType::kQ4_K: unpack_k = unpack_q4_k; break;
    case TensorType::kQ5_K: unpack_k = unpack_q5_k; break;
    case TensorType::kQ6_K: unpack_k = unpack_q6_k; break;
    default: break;
  }
  const bool q_signed = weight_type == TensorType::kQ8_0;
  const bool paired = act32_paired(weight_type);
  Block32 b32;
  BlockK bk;
  for (int64_t t = 0; t < n_x; ++t) {
    const uint8_t* xr = act + static_cast<size_t>(t) * a.act_bytes;
    const int8_t* xq = act_q(xr);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = w + static_cast<size_t>(r) * row_bytes;
      double sum = 0.0;
      if (f == Family::kFloat) {
        for (int64_t i = 0; i < n; ++i) sum += float_weight(weight_type, wr, i) * load_f32(xr + 4 * i);
      } else if (f == Family::kBlock32) {
        const int64_t nb = n / 32;
        for (int64_t b = 0; b < nb; ++b) {
          unpack32(wr + b * block_bytes, b32);
          int64_t dot = 0;
          for (int l = 0; l < 32; ++l) {
            const int wq = q_signed ? static_cast<int8_t>(b32.q[l]) : b32.q[l];
            dot += wq * xq[act32_x_offset(paired, nb, b, l)];
          }
          const int64_t slot = act32_slot(paired, nb, b);
          const double dx = load_f32(act32_d(xr, n) + 4 * slot);
          const double sx = load_f32(act32_s(xr, n) + 4 * slot);
          sum += static_cast<double>(b32.d) * dx * static_cast<double>(dot) + b32.c * sx;
        }
      } else {
        for (int64_t b = 0; b < n / 256; ++b) {
          unpack_k(wr + b * block_bytes, bk);
          int64_t isum = 0, imin = 0;
          for (int g = 0; g < 16; ++g) {
            int64_t dot = 0;
            for (int l = 0; l < 16; ++l) dot += bk.q[16 * g + l] * xq[256 * b + 16 * g + l];
            isum += bk.sc[g] * dot;
            imin += bk.mn[g] * load_i16(actk_bsums(xr, n) + 32 * b + 2 * g);
          }
          const double dx = load_f32(actk_d(xr, n) + 4 * b);
          sum += static_cast<double>(bk.d) * dx * static_cast<double>(isum) -
                 static_cast<double>(bk.dmin) * dx * static_cast<double>(imin);
        }
      }
      y[t * y_stride + r] = static_cast<float>(sum);
    }
  }
}

}  // namespace eigenkv::ops
#endif  // HWY_ONCE
