// Integer prefill products over packed weight panels (see qgemm.h).
//
// Highway's foreach_target compiles the panel loop once per target: AVX3_DL with AVX-512 VNNI
// compiled in gets the 512-bit kernel, every other target the plain loop over the same layout.
// Packing, the activation rounding (qdot's) and the reference are compiled once.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/qgemm.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// The includes above must come first.
#include <hwy/highway.h>
#if HWY_ARCH_X86
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "ops/dequant.h"
#include "ops/qblocks.h"
#include "ops/qdot.h"
#include "ops/qgemm.h"
#include "util/error.h"

// ---- Shared by every target (compiled once) ----
#ifndef EIGENKV_OPS_QGEMM_SHARED_
#define EIGENKV_OPS_QGEMM_SHARED_
namespace eigenkv::ops::qgemm_detail {

using io::TensorType;

// Numbers per scale group of the packed panels, or 0 for a type qgemm does not take.
inline int64_t group_size(TensorType type) {
  switch (type) {
    case TensorType::kQ4_0:
    case TensorType::kQ4_1:
    case TensorType::kQ5_0:
    case TensorType::kQ5_1:
    case TensorType::kQ8_0:
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
      return 32;
    case TensorType::kQ2_K:
    case TensorType::kQ3_K:
    case TensorType::kQ6_K:
      return 16;
    default:
      return 0;
  }
}

inline size_t group_stride(int64_t g) { return static_cast<size_t>(16 * g + 128); }

inline size_t round_up64(size_t bytes) { return (bytes + 63) / 64 * 64; }

// One prepared activation row: q, the block scales d, the scaled sums per 32 (qdot's Q8_0
// layout) and the scaled sums per 16 after it.
struct ActRow {
  const int8_t* q;
  const float* d;    // per 32
  const float* s32;  // d * sum of q, per 32
  const float* s16;  // d * sum of q, per 16
};

inline size_t act_head_bytes(int64_t n) { return act_row_bytes(TensorType::kQ8_0, n); }

inline size_t act_bytes(int64_t n) {
  return act_head_bytes(n) + round_up64(4 * static_cast<size_t>(n / 16));
}

inline ActRow act_row(const uint8_t* row, int64_t n) {
  return {reinterpret_cast<const int8_t*>(row), reinterpret_cast<const float*>(row + n),
          reinterpret_cast<const float*>(row + n + 4 * (n / 32)),
          reinterpret_cast<const float*>(row + act_head_bytes(n))};
}

inline float load_f(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}

// The plain loop over a panel: every target has it, and targets without a vector kernel run it.
inline void panel_plain(const uint8_t* panel, int64_t g_size, int64_t n_groups, const ActRow* x,
                        int64_t n_x, int64_t rows, float* y, int64_t ldy) {
  const size_t stride = group_stride(g_size);
  for (int64_t t = 0; t < n_x; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      float acc = 0.0f;
      for (int64_t g = 0; g < n_groups; ++g) {
        const uint8_t* grp = panel + g * stride;
        int32_t sum = 0;
        for (int64_t j = 0; j < g_size; ++j) {
          sum += static_cast<int32_t>(grp[64 * (j / 4) + 4 * r + j % 4]) * x[t].q[g_size * g + j];
        }
        const float s = load_f(grp + 16 * g_size + 4 * r);
        const float o = load_f(grp + 16 * g_size + 64 + 4 * r);
        const float dx = x[t].d[g_size * g / 32];
        const float corr = g_size == 32 ? x[t].s32[g] : x[t].s16[g];
        acc += static_cast<float>(sum) * (s * dx) + o * corr;
      }
      y[t * ldy + r] = acc;
    }
  }
}

}  // namespace eigenkv::ops::qgemm_detail
#endif  // EIGENKV_OPS_QGEMM_SHARED_

// ---- Per target ----
#undef EKV_QGEMM_VNNI512
#if HWY_TARGET == HWY_AVX3_DL && defined(__AVX512VNNI__) && defined(__AVX512F__)
#define EKV_QGEMM_VNNI512 1
#else
#define EKV_QGEMM_VNNI512 0
#endif
#undef EKV_QGEMM_AVX2
#if !EKV_QGEMM_VNNI512 && \
    (HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL)
#define EKV_QGEMM_AVX2 1
#else
#define EKV_QGEMM_AVX2 0
#endif

HWY_BEFORE_NAMESPACE();
namespace eigenkv::ops {
namespace HWY_NAMESPACE {
using namespace qgemm_detail;  // NOLINT

constexpr int kMaxTokens = 8;

#if EKV_QGEMM_VNNI512
// NT activation rows times one panel of 16 rows. Per group: C = G / 4 vectors of weight bytes,
// one VPDPBUSD per vector and row with that row's four activation bytes broadcast, then the
// float scale s * dx and the offset term o * (dx * sum of q) per row.
template <int C, int NT>
HWY_INLINE void Panel512(const uint8_t* panel, int64_t n_groups, const ActRow* x, int64_t rows,
                         float* y, int64_t ldy) {
  constexpr int64_t G = 4 * C;
  constexpr size_t kStride = 16 * G + 128;
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < n_groups; ++g) {
    const uint8_t* grp = panel + g * kStride;
    __m512i w[C];
    for (int c = 0; c < C; ++c) w[c] = _mm512_loadu_si512(grp + 64 * c);
    __m512i sum[NT];
    for (int t = 0; t < NT; ++t) sum[t] = _mm512_setzero_si512();
    for (int c = 0; c < C; ++c) {
      for (int t = 0; t < NT; ++t) {
        int32_t four;
        std::memcpy(&four, x[t].q + G * g + 4 * c, 4);
        sum[t] = _mm512_dpbusd_epi32(sum[t], w[c], _mm512_set1_epi32(four));
      }
    }
    const __m512 s = _mm512_loadu_ps(grp + 16 * G);
    const __m512 o = _mm512_loadu_ps(grp + 16 * G + 64);
    for (int t = 0; t < NT; ++t) {
      const float dx = x[t].d[G * g / 32];
      const float corr = G == 32 ? x[t].s32[g] : x[t].s16[g];
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[t]), _mm512_mul_ps(s, _mm512_set1_ps(dx)),
                               acc[t]);
      acc[t] = _mm512_fmadd_ps(o, _mm512_set1_ps(corr), acc[t]);
    }
  }
  const __mmask16 mask =
      rows >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rows) - 1);
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(y + t * ldy, mask, acc[t]);
}

template <int C>
void PanelTokens(const uint8_t* panel, int64_t n_groups, const ActRow* x, int64_t nt,
                 int64_t rows, float* y, int64_t ldy) {
  switch (nt) {
    case 1: return Panel512<C, 1>(panel, n_groups, x, rows, y, ldy);
    case 2: return Panel512<C, 2>(panel, n_groups, x, rows, y, ldy);
    case 3: return Panel512<C, 3>(panel, n_groups, x, rows, y, ldy);
    case 4: return Panel512<C, 4>(panel, n_groups, x, rows, y, ldy);
    case 5: return Panel512<C, 5>(panel, n_groups, x, rows, y, ldy);
    case 6: return Panel512<C, 6>(panel, n_groups, x, rows, y, ldy);
    case 7: return Panel512<C, 7>(panel, n_groups, x, rows, y, ldy);
    default: return Panel512<C, 8>(panel, n_groups, x, rows, y, ldy);
  }
}
#endif  // EKV_QGEMM_VNNI512

#if EKV_QGEMM_AVX2
// Without VNNI: 256-bit vectors, rows 0-7 of a chunk then rows 8-15. VPMADDUBSW's 16-bit pair
// sums u0 x0 + u1 x1 of kAdd16 chunks are added in 16 bits before VPMADDWD widens them: at most
// 2 * kAdd16 * umax * 127 <= 32767 (kAdd16 8, 4, 2 for umax 15, 31, 63), so nothing saturates.
// kAdd16 1 is Q8_0, whose u = q + 128 reach 255 (one pair alone could saturate): the kernel
// takes q = u ^ 0x80 back and multiplies |q| by x with q's sign (VPSIGNB), pair sums at most
// 2 * 128 * 127, and sum q x needs no offset term.
template <int C, int NT, int kAdd16>
HWY_INLINE void Panel256(const uint8_t* panel, int64_t n_groups, const ActRow* x, int64_t rows,
                         float* y, int64_t ldy) {
  constexpr int64_t G = 4 * C;
  constexpr size_t kStride = 16 * G + 128;
  constexpr int kStep = kAdd16 < C ? kAdd16 : C;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int half = 0; half < 2; ++half) {
    const int64_t r = std::min<int64_t>(8, rows - 8 * half);
    if (r <= 0) break;
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t g = 0; g < n_groups; ++g) {
      const uint8_t* grp = panel + g * kStride;
      __m256i sum[NT];
      for (int t = 0; t < NT; ++t) sum[t] = _mm256_setzero_si256();
      for (int c0 = 0; c0 < C; c0 += kStep) {
        __m256i p16[NT];
        for (int c = c0; c < c0 + kStep; ++c) {
          const __m256i w =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(grp + 64 * c + 32 * half));
          if constexpr (kAdd16 == 1) {
            const __m256i q = _mm256_xor_si256(w, _mm256_set1_epi8(static_cast<char>(0x80)));
            const __m256i aq = _mm256_abs_epi8(q);
            for (int t = 0; t < NT; ++t) {
              int32_t four;
              std::memcpy(&four, x[t].q + G * g + 4 * c, 4);
              p16[t] = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(_mm256_set1_epi32(four), q));
            }
          } else {
            for (int t = 0; t < NT; ++t) {
              int32_t four;
              std::memcpy(&four, x[t].q + G * g + 4 * c, 4);
              const __m256i p = _mm256_maddubs_epi16(w, _mm256_set1_epi32(four));
              p16[t] = c == c0 ? p : _mm256_add_epi16(p16[t], p);
            }
          }
        }
        for (int t = 0; t < NT; ++t) sum[t] = _mm256_add_epi32(sum[t], _mm256_madd_epi16(p16[t], ones));
      }
      const __m256 s = _mm256_loadu_ps(reinterpret_cast<const float*>(grp + 16 * G) + 8 * half);
      const __m256 o =
          _mm256_loadu_ps(reinterpret_cast<const float*>(grp + 16 * G + 64) + 8 * half);
      for (int t = 0; t < NT; ++t) {
        const float dx = x[t].d[G * g / 32];
        const float corr = G == 32 ? x[t].s32[g] : x[t].s16[g];
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[t]),
                                 _mm256_mul_ps(s, _mm256_set1_ps(dx)), acc[t]);
        if constexpr (kAdd16 != 1) acc[t] = _mm256_fmadd_ps(o, _mm256_set1_ps(corr), acc[t]);
      }
    }
    float* yh = y + 8 * half;
    if (r == 8) {
      for (int t = 0; t < NT; ++t) _mm256_storeu_ps(yh + t * ldy, acc[t]);
    } else {
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(r)), lane);
      for (int t = 0; t < NT; ++t) _mm256_maskstore_ps(yh + t * ldy, mask, acc[t]);
    }
  }
}

// Four tokens at a time: accumulators, sums and pair sums for more would not fit 16 registers.
template <int C, int kAdd16>
void PanelTokens256(const uint8_t* panel, int64_t n_groups, const ActRow* x, int64_t nt,
                    int64_t rows, float* y, int64_t ldy) {
  for (int64_t t0 = 0; t0 < nt; t0 += 4) {
    const ActRow* xt = x + t0;
    float* yt = y + t0 * ldy;
    switch (std::min<int64_t>(4, nt - t0)) {
      case 1: Panel256<C, 1, kAdd16>(panel, n_groups, xt, rows, yt, ldy); break;
      case 2: Panel256<C, 2, kAdd16>(panel, n_groups, xt, rows, yt, ldy); break;
      case 3: Panel256<C, 3, kAdd16>(panel, n_groups, xt, rows, yt, ldy); break;
      default: Panel256<C, 4, kAdd16>(panel, n_groups, xt, rows, yt, ldy); break;
    }
  }
}

template <int C>
void PanelAvx2(int add16, const uint8_t* panel, int64_t n_groups, const ActRow* x, int64_t nt,
               int64_t rows, float* y, int64_t ldy) {
  switch (add16) {
    case 8: return PanelTokens256<C, 8>(panel, n_groups, x, nt, rows, y, ldy);
    case 4: return PanelTokens256<C, 4>(panel, n_groups, x, nt, rows, y, ldy);
    case 2: return PanelTokens256<C, 2>(panel, n_groups, x, nt, rows, y, ldy);
    default: return PanelTokens256<C, 1>(panel, n_groups, x, nt, rows, y, ldy);
  }
}
#endif  // EKV_QGEMM_AVX2

// 0: no vector kernel for this type here; 1: the 512-bit VNNI kernel; 2: the 256-bit one.
int FastTarget(int add16) {
  if (EKV_QGEMM_VNNI512) return 1;
  return EKV_QGEMM_AVX2 && add16 > 0 ? 2 : 0;
}

// For each block of up to kMaxTokens activation rows, every panel of the tile: the rows stay in
// L1 while the tile's panels stream from L2.
void TileTarget(int64_t g_size, int add16, const uint8_t* tile, size_t panel_bytes, int64_t n_panels,
                int64_t cols, const uint8_t* act, size_t act_stride, int64_t n_x, int64_t rows,
                float* y, int64_t ldy) {
  const int64_t n_groups = cols / g_size;
  ActRow x[kMaxTokens];
  for (int64_t t0 = 0; t0 < n_x; t0 += kMaxTokens) {
    const int64_t nt = std::min<int64_t>(kMaxTokens, n_x - t0);
    for (int64_t t = 0; t < nt; ++t) x[t] = act_row(act + static_cast<size_t>(t0 + t) * act_stride, cols);
    for (int64_t p = 0; p < n_panels && p * kPanelRows < rows; ++p) {
      const uint8_t* panel = tile + static_cast<size_t>(p) * panel_bytes;
      const int64_t r = std::min(kPanelRows, rows - p * kPanelRows);
      float* yp = y + t0 * ldy + p * kPanelRows;
#if EKV_QGEMM_VNNI512
      if (g_size == 32) {
        PanelTokens<8>(panel, n_groups, x, nt, r, yp, ldy);
      } else {
        PanelTokens<4>(panel, n_groups, x, nt, r, yp, ldy);
      }
#elif EKV_QGEMM_AVX2
      if (add16 == 0) {
        panel_plain(panel, g_size, n_groups, x, nt, r, yp, ldy);
      } else if (g_size == 32) {
        PanelAvx2<8>(add16, panel, n_groups, x, nt, r, yp, ldy);
      } else {
        PanelAvx2<4>(add16, panel, n_groups, x, nt, r, yp, ldy);
      }
#else
      (void)add16;
      panel_plain(panel, g_size, n_groups, x, nt, r, yp, ldy);
#endif
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace eigenkv::ops
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace eigenkv::ops {

HWY_EXPORT(FastTarget);
HWY_EXPORT(TileTarget);

namespace {
using namespace qgemm_detail;  // NOLINT
using namespace blocks;        // NOLINT

int64_t checked_group(const char* operation, TensorType type, int64_t cols) {
  const int64_t g = group_size(type);
  EKV_CHECK(g > 0, operation, ": weight type ", io::tensor_type_name(static_cast<uint32_t>(type)),
            " has no integer prefill kernel");
  const int64_t block = io::tensor_type_info(type).block_size;
  EKV_CHECK(cols > 0 && cols % block == 0, operation, ": a row of ", cols,
            " numbers is not a whole number of ", block, "-number blocks");
  return g;
}

inline void put_scales(uint8_t* panel, size_t stride, int64_t g_size, int64_t g, int64_t r,
                       float s, float o) {
  std::memcpy(panel + g * stride + 16 * g_size + 4 * r, &s, 4);
  std::memcpy(panel + g * stride + 16 * g_size + 64 + 4 * r, &o, 4);
}

// Writes the G / 8 words u (8 numbers each, little-endian) of group g of panel row r.
inline void put_words(uint8_t* panel, size_t stride, int64_t g_size, int64_t g, int64_t r,
                      const uint64_t* u) {
  uint8_t* dst = panel + g * stride + 4 * r;
  for (int64_t i = 0; i < g_size / 8; ++i) {
    const uint32_t lo = static_cast<uint32_t>(u[i]), hi = static_cast<uint32_t>(u[i] >> 32);
    std::memcpy(dst + 64 * (2 * i), &lo, 4);
    std::memcpy(dst + 64 * (2 * i + 1), &hi, 4);
  }
}

// Byte j of the result = 0x10 where bit j of the byte is set: the fifth bits of Q5_0 / Q5_1.
constexpr std::array<uint64_t, 256> kFifthBits = [] {
  std::array<uint64_t, 256> t{};
  for (int v = 0; v < 256; ++v) {
    for (int j = 0; j < 8; ++j) {
      if ((v >> j) & 1) t[v] |= uint64_t{0x10} << (8 * j);
    }
  }
  return t;
}();

inline uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// The 32-number types, with 64-bit word operations: numbers 0..15 of a block are the low
// nibbles of its 16 bytes, 16..31 the high nibbles (Q8_0: the bytes, offset by 128).
// Blocks [b0, b1) of one row.
void pack_row32(TensorType type, const uint8_t* row, int64_t b0, int64_t b1, uint8_t* panel,
               int64_t r) {
  const size_t stride = group_stride(32);
  const size_t bytes = io::tensor_type_info(type).block_bytes;
  constexpr uint64_t kLow = 0x0F0F0F0F0F0F0F0Full;
  const bool has_min = type == TensorType::kQ4_1 || type == TensorType::kQ5_1;
  const bool five = type == TensorType::kQ5_0 || type == TensorType::kQ5_1;
  const size_t qs_at = type == TensorType::kQ4_0   ? 2
                       : type == TensorType::kQ4_1 ? 4
                       : type == TensorType::kQ5_0 ? 6
                       : type == TensorType::kQ5_1 ? 8
                                                   : 2;
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* p = row + b * bytes;
    const float d = load_half(p);
    uint64_t u[4];  // numbers 0-7, 8-15, 16-23, 24-31
    float o;
    if (type == TensorType::kQ8_0) {
      for (int k = 0; k < 4; ++k) u[k] = load_u64(p + 2 + 8 * k) ^ 0x8080808080808080ull;
      o = -128.0f * d;
    } else {
      const uint64_t a = load_u64(p + qs_at), c = load_u64(p + qs_at + 8);
      u[0] = a & kLow;
      u[1] = c & kLow;
      u[2] = (a >> 4) & kLow;
      u[3] = (c >> 4) & kLow;
      if (five) {
        const uint32_t qh = load_u32(p + (has_min ? 4 : 2));
        for (int k = 0; k < 4; ++k) u[k] |= kFifthBits[(qh >> (8 * k)) & 0xFF];
      }
      o = has_min ? load_half(p + 2) : (five ? -16.0f : -8.0f) * d;
    }
    put_words(panel, stride, 32, b, r, u);
    put_scales(panel, stride, 32, b, r, d, o);
  }
}

// The numbers of scale group k of a K-quant super-block p, as 64-bit words (the bit layouts
// of ops/qblocks.h, eight numbers at a time: a shift then a per-byte mask).
inline void k_group_words(TensorType type, const uint8_t* p, int k, uint64_t* u) {
  constexpr uint64_t k01 = 0x0101010101010101ull, k03 = 0x0303030303030303ull,
                     kLow = 0x0F0F0F0F0F0F0F0Full;
  const int h = k / 8, f = (k % 8) / 2, t = k % 2;  // the 16-groups' s = 8h + 2f + t
  switch (type) {
    case TensorType::kQ4_K:
      for (int i = 0; i < 4; ++i) u[i] = (load_u64(p + 16 + 32 * (k / 2) + 8 * i) >> (4 * (k % 2))) & kLow;
      return;
    case TensorType::kQ5_K:
      for (int i = 0; i < 4; ++i) {
        u[i] = ((load_u64(p + 48 + 32 * (k / 2) + 8 * i) >> (4 * (k % 2))) & kLow) |
               (((load_u64(p + 16 + 8 * i) >> k) & k01) << 4);
      }
      return;
    case TensorType::kQ2_K:
      for (int i = 0; i < 2; ++i) u[i] = (load_u64(p + 16 + 32 * h + 16 * t + 8 * i) >> (2 * f)) & k03;
      return;
    case TensorType::kQ3_K:
      for (int i = 0; i < 2; ++i) {
        u[i] = ((load_u64(p + 32 + 32 * h + 16 * t + 8 * i) >> (2 * f)) & k03) |
               (((load_u64(p + 16 * t + 8 * i) >> (4 * h + f)) & k01) << 2);
      }
      return;
    default: {  // Q6_K
      const uint8_t* lo = p + 64 * h + 32 * (f % 2) + 16 * t;
      const uint8_t* hi = p + 128 + 32 * h + 16 * t;
      const int shift = f < 2 ? 0 : 4;
      for (int i = 0; i < 2; ++i) {
        u[i] = ((load_u64(lo + 8 * i) >> shift) & kLow) |
               (((load_u64(hi + 8 * i) >> (2 * f)) & k03) << 4);
      }
      return;
    }
  }
}

// K-quants: the value of number l of scale group s is d * sc[s] * u - dmin * mn[s], both
// products exact in float32 (an f16 times an integer of at most 13 bits).
void pack_row_k(TensorType type, const uint8_t* row, int64_t b0, int64_t b1, int64_t g_size,
                uint8_t* panel, int64_t r) {
  const size_t stride = group_stride(g_size);
  const size_t bytes = io::tensor_type_info(type).block_bytes;
  const int per_block = static_cast<int>(256 / g_size);
  for (int64_t b = b0; b < b1; ++b) {
    BlockK blk;  // scales only
    const uint8_t* p = row + b * bytes;
    switch (type) {
      case TensorType::kQ2_K: k_scales_q2_k(p, blk); break;
      case TensorType::kQ3_K: k_scales_q3_k(p, blk); break;
      case TensorType::kQ4_K:
      case TensorType::kQ5_K: k_scales_q4_k(p, blk); break;
      default: k_scales_q6_k(p, blk); break;
    }
    for (int k = 0; k < per_block; ++k) {
      const int64_t g = b * per_block + k;
      const int s = static_cast<int>(k * g_size / 16);  // the 16-group's scales (G=32: equal pair)
      uint64_t u[4];
      k_group_words(type, p, k, u);
      put_words(panel, stride, g_size, g, r, u);
      put_scales(panel, stride, g_size, g, r, blk.d * static_cast<float>(blk.sc[s]),
                 -(blk.dmin * static_cast<float>(blk.mn[s])));
    }
  }
}

// Chunks of four numbers whose 16-bit pair sums the 256-bit kernel may add before widening, by
// the type's largest unsigned number (1: Q8_0's 255, run as signed numbers one chunk at a time).
int add16_chunks(TensorType type) {
  switch (type) {
    case TensorType::kQ8_0: return 1;
    case TensorType::kQ5_0:
    case TensorType::kQ5_1:
    case TensorType::kQ5_K: return 4;
    case TensorType::kQ6_K: return 2;
    default: return 8;  // Q4_0, Q4_1, Q4_K (15), Q3_K (7), Q2_K (3)
  }
}

}  // namespace

bool can_qgemm(io::TensorType weight_type) { return group_size(weight_type) > 0; }

bool qgemm_fast(io::TensorType weight_type) {
  return can_qgemm(weight_type) && HWY_DYNAMIC_DISPATCH(FastTarget)(add16_chunks(weight_type)) > 0;
}

bool qgemm_vnni() { return HWY_DYNAMIC_DISPATCH(FastTarget)(0) == 1; }

size_t qgemm_act_row_bytes(int64_t n) { return act_bytes(n); }

void qgemm_prepare_act(const float* x, int64_t n_x, int64_t n, uint8_t* out) {
  EKV_CHECK(n > 0 && n % 32 == 0, "qgemm_prepare_act: a row of ", n,
            " numbers is not a whole number of 32-number blocks");
  const size_t head = act_head_bytes(n), row_bytes = act_bytes(n);
  for (int64_t t = 0; t < n_x; ++t) {
    uint8_t* row = out + static_cast<size_t>(t) * row_bytes;
    prepare_act(TensorType::kQ8_0, x + t * n, 1, n, row);
    const ActRow a = act_row(row, n);
    float* s16 = reinterpret_cast<float*>(row + head);
    for (int64_t g = 0; g < n / 16; ++g) {
      int32_t sum = 0;
      for (int64_t j = 0; j < 16; ++j) sum += a.q[16 * g + j];
      s16[g] = a.d[g / 2] * static_cast<float>(sum);
    }
    std::memset(row + head + 4 * (n / 16), 0, row_bytes - head - 4 * static_cast<size_t>(n / 16));
  }
}

size_t qgemm_panel_bytes(io::TensorType weight_type, int64_t cols) {
  const int64_t g = checked_group("qgemm_panel_bytes", weight_type, cols);
  return static_cast<size_t>(cols / g) * group_stride(g);
}

void qgemm_pack_panel(io::TensorType weight_type, const uint8_t* w, size_t row_bytes,
                      int64_t cols, int64_t rows, uint8_t* panel) {
  const int64_t g = checked_group("qgemm_pack_panel", weight_type, cols);
  EKV_CHECK(rows >= 0 && rows <= kPanelRows, "qgemm_pack_panel: ", rows,
            " rows do not fit a panel of ", kPanelRows);
  if (rows < kPanelRows) std::memset(panel, 0, qgemm_panel_bytes(weight_type, cols));
  // A few kilobytes of the panel at a time, all rows, so each of its cache lines is filled
  // while it is in L1.
  const int64_t block = io::tensor_type_info(weight_type).block_size;
  const int64_t n_blocks = cols / block, step = block == 32 ? 8 : 1;
  for (int64_t b0 = 0; b0 < n_blocks; b0 += step) {
    const int64_t b1 = std::min(n_blocks, b0 + step);
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* row = w + static_cast<size_t>(r) * row_bytes;
      if (block == 32) {
        pack_row32(weight_type, row, b0, b1, panel, r);
      } else {
        pack_row_k(weight_type, row, b0, b1, g, panel, r);
      }
    }
  }
}

void qgemm_tile(io::TensorType weight_type, const uint8_t* tile, int64_t n_panels, int64_t cols,
                const uint8_t* act, int64_t n_x, int64_t rows, float* y, int64_t ldy) {
  const int64_t g = checked_group("qgemm_tile", weight_type, cols);
  if (n_x <= 0 || rows <= 0) return;
  HWY_DYNAMIC_DISPATCH(TileTarget)(g, add16_chunks(weight_type), tile, qgemm_panel_bytes(weight_type, cols), n_panels, cols,
                                   act, act_bytes(cols), n_x, rows, y, ldy);
}

void qgemm_reference(io::TensorType weight_type, const uint8_t* w, size_t row_bytes, int64_t cols,
                     int64_t rows, const uint8_t* act, int64_t n_x, float* y, int64_t ldy) {
  checked_group("qgemm_reference", weight_type, cols);
  std::vector<float> wr(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    dequantize(weight_type, w + static_cast<size_t>(r) * row_bytes, wr.data(), cols);
    for (int64_t t = 0; t < n_x; ++t) {
      const ActRow a = act_row(act + static_cast<size_t>(t) * act_bytes(cols), cols);
      double acc = 0.0;
      for (int64_t i = 0; i < cols; ++i) {
        acc += double{wr[i]} * (double{a.d[i / 32]} * a.q[i]);
      }
      y[t * ldy + r] = static_cast<float>(acc);
    }
  }
}

}  // namespace eigenkv::ops
#endif  // HWY_ONCE
