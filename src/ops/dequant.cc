#include "ops/dequant.h"

#include <algorithm>
#include <bit>
#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "ops/half.h"
#include "util/error.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace eigenkv::ops {
namespace {

static_assert(std::endian::native == std::endian::little,
              "GGUF blocks are little-endian and are read here with plain loads");

// Block fields are read with memcpy: a tensor's bytes may start at any address.
float load_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return fp16_to_fp32(h);
}

void store_half(uint8_t* p, float value) {
  const uint16_t h = fp32_to_fp16(value);
  std::memcpy(p, &h, sizeof(h));
}

uint32_t load_u32(const uint8_t* p) {
  uint32_t value;
  std::memcpy(&value, p, sizeof(value));
  return value;
}

// ---- Plain element types (block size 1) ----

void decode_f32(const uint8_t* src, float* dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

void decode_f16(const uint8_t* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) dst[i] = load_half(src + 2 * i);
}

void decode_bf16(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, sizeof(h));
    dst[i] = bf16_to_fp32(h);
  }
}

void decode_f64(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    double value;
    std::memcpy(&value, src + 8 * i, sizeof(value));
    dst[i] = static_cast<float>(value);
  }
}

void encode_f32(const float* src, uint8_t* dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

void encode_f16(const float* src, uint8_t* dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * i), h);
  }
#endif
  for (; i < n; ++i) store_half(dst + 2 * i, src[i]);
}

void encode_bf16(const float* src, uint8_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = fp32_to_bf16(src[i]);
    std::memcpy(dst + 2 * i, &h, sizeof(h));
  }
}

// ---- 32-number blocks ----

// Q4_0, 18 bytes: d (f16) @0, qs[16] @2. qs[j] holds element j in its low nibble and element
// j + 16 in its high nibble. y = (nibble - 8) * d.
void decode_q4_0_block(const uint8_t* block, float* y) {
  const float d = load_half(block);
  const uint8_t* qs = block + 2;
  for (int j = 0; j < 16; ++j) y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
  for (int j = 0; j < 16; ++j) y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
}

// Q4_1, 20 bytes: d @0, m @2, qs[16] @4, nibbles as in Q4_0. y = nibble * d + m.
void decode_q4_1_block(const uint8_t* block, float* y) {
  const float d = load_half(block);
  const float m = load_half(block + 2);
  const uint8_t* qs = block + 4;
  for (int j = 0; j < 16; ++j) y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
  for (int j = 0; j < 16; ++j) y[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
}

// Q5_0, 22 bytes: d @0, qh (u32) @2, qs[16] @6. The low four bits of each element are packed as
// in Q4_0; bit j of qh is the fifth bit of element j. y = (q - 16) * d.
void decode_q5_0_block(const uint8_t* block, float* y) {
  const float d = load_half(block);
  const uint32_t qh = load_u32(block + 2);
  const uint8_t* qs = block + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = static_cast<float>(lo - 16) * d;
    y[j + 16] = static_cast<float>(hi - 16) * d;
  }
}

// Q5_1, 24 bytes: d @0, m @2, qh (u32) @4, qs[16] @8, bits as in Q5_0. y = q * d + m.
void decode_q5_1_block(const uint8_t* block, float* y) {
  const float d = load_half(block);
  const float m = load_half(block + 2);
  const uint32_t qh = load_u32(block + 4);
  const uint8_t* qs = block + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
    const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
    y[j] = static_cast<float>(lo) * d + m;
    y[j + 16] = static_cast<float>(hi) * d + m;
  }
}

// Q8_0, 34 bytes: d @0, qs (int8)[32] @2. y = q * d.
void decode_q8_0_block(const uint8_t* block, float* y) {
  const float d = load_half(block);
  const uint8_t* qs = block + 2;
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(qs[j])) * d;
}

// ---- 256-number super-blocks (K-quants) ----
//
// Q2_K, Q3_K and Q6_K split a super-block into 16 sub-blocks of 16 numbers, sub-block s holding
// elements 16s .. 16s + 15. Their quants are laid out in two halves of 128 elements, so element
// e = 128h + 32p + 16t + l (h < 2, p < 4, t < 2, l < 16) belongs to sub-block s = 8h + 2p + t;
// p picks the bit field (Q2_K, Q3_K) or nibble and bit field (Q6_K) within a byte and t picks
// which 16 bytes of the half's 32-byte row.

// Q2_K, 84 bytes: scales[16] @0, qs[64] @16, d @80, dmin @82. scales[s] holds sub-block s's
// scale (low nibble) and min (high nibble); element e is the 2-bit field p of qs[32h + 16t + l].
// y = (d * scale) * q - dmin * min.
void decode_q2_k_block(const uint8_t* block, float* y) {
  const uint8_t* scales = block;
  const uint8_t* qs = block + 16;
  const float d = load_half(block + 80);
  const float dmin = load_half(block + 82);
  for (int s = 0; s < 16; ++s) {
    const int h = s / 8, p = (s % 8) / 2, t = s % 2;
    const float dl = d * static_cast<float>(scales[s] & 0x0F);
    const float ml = dmin * static_cast<float>(scales[s] >> 4);
    const uint8_t* q = qs + 32 * h + 16 * t;
    for (int l = 0; l < 16; ++l) {
      y[16 * s + l] = dl * static_cast<float>((q[l] >> (2 * p)) & 3) - ml;
    }
  }
}

// Q3_K, 110 bytes: hmask[32] @0, qs[64] @32, scales[12] @96, d @108. Element e has its low two
// bits in field p of qs[32h + 16t + l] and its high bit in bit 4h + p of hmask[16t + l]; a clear
// high bit subtracts 4, so q lies in [-4, 3]. The sixteen 6-bit scales carry a bias of 32:
// scale s takes its low nibble from scales[s] (s < 8) or the high nibble of scales[s - 8], and
// its top two bits from bits 2*(s/4) .. 2*(s/4)+1 of scales[8 + s%4]. y = (d * (scale - 32)) * q.
void decode_q3_k_block(const uint8_t* block, float* y) {
  const uint8_t* hmask = block;
  const uint8_t* qs = block + 32;
  const uint8_t* scales = block + 96;
  const float d = load_half(block + 108);
  for (int s = 0; s < 16; ++s) {
    const int h = s / 8, p = (s % 8) / 2, t = s % 2;
    const int scale_low = s < 8 ? scales[s] & 0x0F : scales[s - 8] >> 4;
    const int scale_high = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
    const float dl = d * static_cast<float>((scale_low | (scale_high << 4)) - 32);
    const uint8_t* q = qs + 32 * h + 16 * t;
    const uint8_t* hm = hmask + 16 * t;
    const int high_bit = 1 << (4 * h + p);
    for (int l = 0; l < 16; ++l) {
      const int value = ((q[l] >> (2 * p)) & 3) - ((hm[l] & high_bit) != 0 ? 0 : 4);
      y[16 * s + l] = dl * static_cast<float>(value);
    }
  }
}

// Q4_K and Q5_K have 8 sub-blocks of 32 numbers, each with a 6-bit scale and a 6-bit min
// packed into 12 bytes b[12]: for s < 4, scale = b[s] & 63 and min = b[s + 4] & 63; for s >= 4,
// b[s + 4] holds the low four bits (scale in the low nibble, min in the high one) and the
// spare top two bits of b[s - 4] (scale) and b[s] (min) hold the rest.
struct ScaleMin {
  int scale;
  int min;
};

ScaleMin k4_scale_min(const uint8_t* b, int s) {
  if (s < 4) return {b[s] & 63, b[s + 4] & 63};
  return {(b[s + 4] & 0x0F) | ((b[s - 4] >> 6) << 4), (b[s + 4] >> 4) | ((b[s] >> 6) << 4)};
}

// Q4_K, 144 bytes: d @0, dmin @2, scales[12] @4, qs[128] @16. Sub-block s reads the 32 bytes
// qs[32*(s/2) ..], low nibbles for even s and high nibbles for odd s.
// y = (d * scale) * q - dmin * min.
void decode_q4_k_block(const uint8_t* block, float* y) {
  const float d = load_half(block);
  const float dmin = load_half(block + 2);
  const uint8_t* scales = block + 4;
  const uint8_t* qs = block + 16;
  for (int s = 0; s < 8; ++s) {
    const ScaleMin sm = k4_scale_min(scales, s);
    const float dl = d * static_cast<float>(sm.scale);
    const float ml = dmin * static_cast<float>(sm.min);
    const uint8_t* q = qs + 32 * (s / 2);
    const int shift = 4 * (s % 2);
    for (int l = 0; l < 32; ++l) {
      y[32 * s + l] = dl * static_cast<float>((q[l] >> shift) & 0x0F) - ml;
    }
  }
}

// Q5_K, 176 bytes: d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48. Low four bits as in
// Q4_K; the fifth bit of element 32s + l is bit s of qh[l]. y = (d * scale) * q - dmin * min.
void decode_q5_k_block(const uint8_t* block, float* y) {
  const float d = load_half(block);
  const float dmin = load_half(block + 2);
  const uint8_t* scales = block + 4;
  const uint8_t* qh = block + 16;
  const uint8_t* qs = block + 48;
  for (int s = 0; s < 8; ++s) {
    const ScaleMin sm = k4_scale_min(scales, s);
    const float dl = d * static_cast<float>(sm.scale);
    const float ml = dmin * static_cast<float>(sm.min);
    const uint8_t* q = qs + 32 * (s / 2);
    const int shift = 4 * (s % 2);
    for (int l = 0; l < 32; ++l) {
      const int value = ((q[l] >> shift) & 0x0F) | (((qh[l] >> s) & 1) << 4);
      y[32 * s + l] = dl * static_cast<float>(value) - ml;
    }
  }
}

// Q6_K, 210 bytes: ql[128] @0, qh[64] @128, scales (int8)[16] @192, d @208. Element e has its
// low four bits in ql[64h + 32*(p%2) + 16t + l] (low nibble for p < 2, high nibble for p >= 2)
// and its top two bits in field p of qh[32h + 16t + l]; q = value - 32.
// y = (d * scale) * q.
void decode_q6_k_block(const uint8_t* block, float* y) {
  const uint8_t* ql = block;
  const uint8_t* qh = block + 128;
  const uint8_t* scales = block + 192;
  const float d = load_half(block + 208);
  for (int s = 0; s < 16; ++s) {
    const int h = s / 8, p = (s % 8) / 2, t = s % 2;
    const float ds = d * static_cast<float>(static_cast<int8_t>(scales[s]));
    const uint8_t* lo = ql + 64 * h + 32 * (p % 2) + 16 * t;
    const uint8_t* hi = qh + 32 * h + 16 * t;
    const int nibble_shift = p < 2 ? 0 : 4;
    for (int l = 0; l < 16; ++l) {
      const int value = ((lo[l] >> nibble_shift) & 0x0F) | (((hi[l] >> (2 * p)) & 3) << 4);
      y[16 * s + l] = ds * static_cast<float>(value - 32);
    }
  }
}

// ---- Quantizers (llama.cpp's reference quantizers, quantize_row_*_ref) ----
//
// Each encoder computes the float32 expressions of llama.cpp's reference quantizer in the same
// order, with one rounding per operation: this region is compiled without floating-point
// contraction, so no product is fused with the addition that follows it into an FMA (GCC fuses
// across statements under its default -ffp-contract=fast wherever the target has FMA). That is
// what reproduces llama-quantize's bytes. Its reference quantizers live in ggml's base library,
// which is built for the baseline instruction set, so they round every product: quantizing the
// F32 tinystories-c4-gqa weights with contraction off reproduces every Q6_K and Q4_K block of
// the shared llama-quantize files, while fusing only the round-to-integer step (x * s + 1.5*2^23)
// changes 1 Q4_K block in 20, fusing only the sum-of-products loops changes 1 Q6_K block in 60.
// Block encoders are independent of each other, so any split of a tensor gives the same bytes.

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

// llama.cpp's nearest_int: adding 1.5 * 2^23 leaves round-to-nearest-even of v in the low
// mantissa bits. Valid for |v| < 2^22, which every caller's scaled value satisfies.
int round_nearest(float v) {
  const float shifted = v + 12582912.0f;
  return static_cast<int>(std::bit_cast<uint32_t>(shifted) & 0x007FFFFFu) - 0x00400000;
}

// Below this largest magnitude a group counts as all zeros (llama.cpp's GROUP_MAX_EPS).
constexpr float kGroupMaxEps = 1e-15f;

// The element of largest magnitude, the first one where several tie: the symmetric types
// scale so that it lands exactly on their most negative level.
float signed_absmax(const float* x, int n) {
  float amax = 0.0f;
  float signed_max = 0.0f;
  for (int j = 0; j < n; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      signed_max = x[j];
    }
  }
  return signed_max;
}

struct ValueRange {
  float min;
  float max;
};

ValueRange value_range(const float* x, int n) {
  ValueRange r{std::numeric_limits<float>::max(), -std::numeric_limits<float>::max()};
  for (int j = 0; j < n; ++j) {
    if (x[j] < r.min) r.min = x[j];
    if (x[j] > r.max) r.max = x[j];
  }
  return r;
}

// Q8_0: d = max|x| / 127 and q = x * (1/d) rounded half away from zero, with the unrounded d;
// d is stored as f16.
void encode_q8_0_block(const float* x, uint8_t* block) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
  store_half(block, d);
  for (int j = 0; j < 32; ++j) {
    block[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::round(x[j] * inverse)));
  }
}

// Q4_0 and Q5_0: d = -m / 2^(bits-1) where m is the first element of largest magnitude, so m
// itself maps to level 0 and the other side of zero gets one level more; the level is
// trunc(x * (1/d) + 2^(bits-1) + 0.5) capped at 2^bits - 1, the product rounded before the
// addition like every other here (this used to be one FMA; on the shared Q4_0 file both give the
// same bytes, so the K-quants above decided it). Returns d's inverse.
template <int kBits>
float symmetric_scale(const float* x, uint8_t* d_field) {
  const float d = signed_absmax(x, 32) / -static_cast<float>(1 << (kBits - 1));
  store_half(d_field, d);
  return d != 0.0f ? 1.0f / d : 0.0f;
}

template <int kBits>
int symmetric_level(float v, float inverse) {
  constexpr float kOffset = static_cast<float>(1 << (kBits - 1)) + 0.5f;
  return std::min((1 << kBits) - 1, static_cast<int>(v * inverse + kOffset));
}

void encode_q4_0_block(const float* x, uint8_t* block) {
  const float inverse = symmetric_scale<4>(x, block);
  for (int j = 0; j < 16; ++j) {
    block[2 + j] = static_cast<uint8_t>(symmetric_level<4>(x[j], inverse) |
                                        (symmetric_level<4>(x[j + 16], inverse) << 4));
  }
}

// Q5_0: as Q4_0 with 32 levels; the fifth bit of element j goes to bit j of qh.
void encode_q5_0_block(const float* x, uint8_t* block) {
  const float inverse = symmetric_scale<5>(x, block);
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    const int lo = symmetric_level<5>(x[j], inverse);
    const int hi = symmetric_level<5>(x[j + 16], inverse);
    block[6 + j] = static_cast<uint8_t>((lo & 0x0F) | ((hi & 0x0F) << 4));
    qh |= static_cast<uint32_t>(lo >> 4) << j;
    qh |= static_cast<uint32_t>(hi >> 4) << (j + 16);
  }
  std::memcpy(block + 2, &qh, sizeof(qh));
}

// Q4_1 and Q5_1: m = min x, d = (max x - m) / (2^bits - 1), both stored as f16; the level is
// trunc((x - m) * (1/d) + 0.5), from the unrounded m and d. Q4_1 caps it at 15; Q5_1's
// cannot pass 31 (llama.cpp does not cap it). Returns d's inverse and m.
template <int kBits>
std::pair<float, float> affine_scale(const float* x, uint8_t* fields) {
  const ValueRange r = value_range(x, 32);
  const float d = (r.max - r.min) / static_cast<float>((1 << kBits) - 1);
  store_half(fields, d);
  store_half(fields + 2, r.min);
  return {d != 0.0f ? 1.0f / d : 0.0f, r.min};
}

void encode_q4_1_block(const float* x, uint8_t* block) {
  const auto [inverse, min] = affine_scale<4>(x, block);
  const auto level = [&](float v) {
    return std::min(15, static_cast<int>((v - min) * inverse + 0.5f));
  };
  for (int j = 0; j < 16; ++j) {
    block[4 + j] = static_cast<uint8_t>(level(x[j]) | (level(x[j + 16]) << 4));
  }
}

void encode_q5_1_block(const float* x, uint8_t* block) {
  const auto [inverse, min] = affine_scale<5>(x, block);
  const auto level = [&](float v) {
    return static_cast<int>(static_cast<uint8_t>((v - min) * inverse + 0.5f));
  };
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    const int lo = level(x[j]);
    const int hi = level(x[j + 16]);
    block[8 + j] = static_cast<uint8_t>((lo & 0x0F) | ((hi & 0x0F) << 4));
    qh |= static_cast<uint32_t>((lo >> 4) & 1) << j;
    qh |= static_cast<uint32_t>((hi >> 4) & 1) << (j + 16);
  }
  std::memcpy(block + 4, &qh, sizeof(qh));
}

// ---- K-quant searches (llama.cpp's make_qx_quants, make_q3_quants, make_qkx2_quants) ----

// Symmetric levels in [-nmax, nmax) for n numbers, as make_qx_quants with rmse_type 1 and no
// importance weights: each number is weighted by x^2, and the scale -max/nmax is tried against
// -max/(nmax + 0.1 i) for i = -9..9 (not 0), keeping the one whose least-squares fit
// sum(w x l) / sum(w l^2) explains the most (largest sum(w x l)^2 / sum(w l^2)). Writes
// levels + nmax into `levels` and returns the fitted scale (0 for an all-zero group).
float fit_symmetric_levels(int n, int nmax, const float* x, int8_t* levels) {
  const float max = signed_absmax(x, n);
  if (std::fabs(max) < kGroupMaxEps) {
    std::fill(levels, levels + n, int8_t{0});
    return 0.0f;
  }
  const auto level = [nmax](float scaled) {
    return std::clamp(round_nearest(scaled), -nmax, nmax - 1);
  };
  float inverse = static_cast<float>(-nmax) / max;
  float sum_xl = 0.0f;
  float sum_l2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = level(inverse * x[i]);
    levels[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sum_xl += w * x[i] * static_cast<float>(l);
    sum_l2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  float scale = sum_l2 != 0.0f ? sum_xl / sum_l2 : 0.0f;
  float best = scale * sum_xl;
  for (int step = -9; step <= 9; ++step) {
    if (step == 0) continue;
    inverse = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(step)) / max;
    sum_xl = 0.0f;
    sum_l2 = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = level(inverse * x[i]);
      const float w = x[i] * x[i];
      sum_xl += w * x[i] * static_cast<float>(l);
      sum_l2 += w * static_cast<float>(l) * static_cast<float>(l);
    }
    if (sum_l2 > 0.0f && sum_xl * sum_xl > best * sum_l2) {
      for (int i = 0; i < n; ++i) levels[i] = static_cast<int8_t>(level(inverse * x[i]) + nmax);
      scale = sum_xl / sum_l2;
      best = scale * sum_xl;
    }
  }
  return scale;
}

// Q3_K's per-16 search (make_q3_quants with do_rmse): levels in [-nmax, nmax) from the scale
// -max/nmax, weights x^2, then up to five passes that move single levels to the one their
// number would take under the fit of all the others, keeping a move when it raises
// sum(w x l)^2 / sum(w l^2). Writes levels + nmax; returns sum(w x l) / sum(w l^2).
float fit_q3_levels(int n, int nmax, const float* x, int8_t* levels) {
  const float max = signed_absmax(x, n);
  if (std::fabs(max) < kGroupMaxEps) {
    std::fill(levels, levels + n, int8_t{0});
    return 0.0f;
  }
  const float inverse = static_cast<float>(-nmax) / max;
  float sum_xl = 0.0f;
  float sum_l2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(round_nearest(inverse * x[i]), -nmax, nmax - 1);
    levels[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sum_xl += w * x[i] * static_cast<float>(l);
    sum_l2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  for (int pass = 0; pass < 5; ++pass) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      const float old_l = static_cast<float>(levels[i]);
      float others_xl = sum_xl - w * x[i] * old_l;
      if (others_xl > 0.0f) {
        float others_l2 = sum_l2 - w * old_l * old_l;
        const int l = std::clamp(round_nearest(x[i] * others_l2 / others_xl), -nmax, nmax - 1);
        if (l != levels[i]) {
          others_xl += w * x[i] * static_cast<float>(l);
          others_l2 += w * static_cast<float>(l) * static_cast<float>(l);
          if (others_l2 > 0.0f && others_xl * others_xl * sum_l2 > sum_xl * sum_xl * others_l2) {
            levels[i] = static_cast<int8_t>(l);
            sum_xl = others_xl;
            sum_l2 = others_l2;
            ++changed;
          }
        }
      }
    }
    if (changed == 0) break;
  }
  for (int i = 0; i < n; ++i) levels[i] = static_cast<int8_t>(levels[i] + nmax);
  return sum_l2 > 0.0f ? sum_xl / sum_l2 : 0.0f;
}

// Levels in [0, nmax] with a scale and a min, y = scale * l + min, min <= 0 (make_qkx2_quants).
// Starts from the grid spanning [min(min x, 0), max x], then for each of nstep + 1 grids
// (nmax + rmin + rdelta * i) / (max - min) refits scale and min by weighted least squares
// (min clamped to 0) and keeps the fit of least weighted error, squared or absolute.
struct AffineFit {
  float scale;
  float neg_min;  // -min, >= 0
};

AffineFit fit_affine_levels(int n, int nmax, const float* x, const float* weights, uint8_t* levels,
                            float rmin, float rdelta, int nstep, bool absolute_error) {
  float min = x[0];
  float max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += weights[i];
    sum_x += weights[i] * x[i];
  }
  if (min > 0.0f) min = 0.0f;
  if (max == min) {
    std::fill(levels, levels + n, uint8_t{0});
    return {0.0f, -min};
  }
  const auto error = [&](float scale, float offset, const uint8_t* l) {
    float total = 0.0f;
    for (int i = 0; i < n; ++i) {
      float diff = scale * static_cast<float>(l[i]) + offset - x[i];
      diff = absolute_error ? std::fabs(diff) : diff * diff;
      total += weights[i] * diff;
    }
    return total;
  };
  float inverse = static_cast<float>(nmax) / (max - min);
  float scale = 1.0f / inverse;
  for (int i = 0; i < n; ++i) {
    levels[i] = static_cast<uint8_t>(std::clamp(round_nearest(inverse * (x[i] - min)), 0, nmax));
  }
  float best_error = error(scale, min, levels);
  uint8_t trial[32];
  for (int step = 0; step <= nstep; ++step) {
    inverse = (rmin + rdelta * static_cast<float>(step) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0.0f;
    float sum_l2 = 0.0f;
    float sum_xl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(round_nearest(inverse * (x[i] - min)), 0, nmax);
      trial[i] = static_cast<uint8_t>(l);
      const float wl = weights[i] * static_cast<float>(l);
      sum_l += wl;
      sum_l2 += wl * static_cast<float>(l);
      sum_xl += wl * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (det > 0.0f) {
      float trial_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
      float trial_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
      if (trial_min > 0.0f) {
        trial_min = 0.0f;
        trial_scale = sum_xl / sum_l2;
      }
      const float trial_error = error(trial_scale, trial_min, trial);
      if (trial_error < best_error) {
        std::copy(trial, trial + n, levels);
        best_error = trial_error;
        scale = trial_scale;
        min = trial_min;
      }
    }
  }
  return {scale, -min};
}

// ---- K-quant encoders ----

// Element e of a Q2_K/Q3_K super-block: its 2-bit field is field (e % 128) / 32 of byte
// 32 * (e / 128) + e % 32, the layout decode_q2_k_block reads.
void pack_2bit_fields(const uint8_t* levels, uint8_t* qs) {
  for (int half = 0; half < 2; ++half) {
    const uint8_t* l = levels + 128 * half;
    for (int j = 0; j < 32; ++j) {
      qs[32 * half + j] =
          static_cast<uint8_t>(l[j] | (l[j + 32] << 2) | (l[j + 64] << 4) | (l[j + 96] << 6));
    }
  }
}

// Q2_K: each sub-block of 16 gets levels 0..3 with a scale and min from fit_affine_levels
// (weights |x|, least absolute error, grids -0.5 + 0.1 i for i <= 15); the sixteen scales and
// mins are stored as 4-bit multiples of d = max scale / 15 and dmin = max min / 15, and every
// number is then requantized against the stored scale and min (sub-blocks whose stored scale is
// 0 keep the search's levels).
void encode_q2_k_block(const float* x, uint8_t* block) {
  uint8_t levels[256];
  float weights[16];
  float scales[16];
  float mins[16];
  float max_scale = 0.0f;
  float max_min = 0.0f;
  for (int s = 0; s < 16; ++s) {
    for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * s + l]);
    const AffineFit fit = fit_affine_levels(16, 3, x + 16 * s, weights, levels + 16 * s, -0.5f,
                                            0.1f, 15, /*absolute_error=*/true);
    scales[s] = fit.scale;
    mins[s] = fit.neg_min;
    max_scale = std::max(max_scale, scales[s]);
    max_min = std::max(max_min, mins[s]);
  }
  uint8_t* packed = block;  // scales[16]: scale low nibble, min high nibble
  if (max_scale > 0.0f) {
    const float inverse = 15.0f / max_scale;
    for (int s = 0; s < 16; ++s)
      packed[s] = static_cast<uint8_t>(round_nearest(inverse * scales[s]));
    store_half(block + 80, max_scale / 15.0f);
  } else {
    std::fill(packed, packed + 16, uint8_t{0});
    store_half(block + 80, 0.0f);
  }
  if (max_min > 0.0f) {
    const float inverse = 15.0f / max_min;
    for (int s = 0; s < 16; ++s) {
      packed[s] = static_cast<uint8_t>(packed[s] | (round_nearest(inverse * mins[s]) << 4));
    }
    store_half(block + 82, max_min / 15.0f);
  } else {
    store_half(block + 82, 0.0f);
  }
  const float d = load_half(block + 80);
  const float dmin = load_half(block + 82);
  for (int s = 0; s < 16; ++s) {
    const float dl = d * static_cast<float>(packed[s] & 0x0F);
    if (dl == 0.0f) continue;
    const float ml = dmin * static_cast<float>(packed[s] >> 4);
    for (int l = 0; l < 16; ++l) {
      levels[16 * s + l] =
          static_cast<uint8_t>(std::clamp(round_nearest((x[16 * s + l] + ml) / dl), 0, 3));
    }
  }
  pack_2bit_fields(levels, block + 16);
}

// Q3_K: each sub-block of 16 gets levels -4..3 from fit_q3_levels; the scales are stored as
// 6-bit multiples (bias 32) of d = -(scale of largest magnitude) / 32, and every number is then
// requantized against its stored scale (sub-blocks whose stored scale is 0 keep the search's
// levels). High bits of the levels + 4 go to hmask, bit e / 32 of byte e % 32.
void encode_q3_k_block(const float* x, uint8_t* block) {
  int8_t levels[256];
  float scales[16];
  float max_scale = 0.0f;
  float amax = 0.0f;
  for (int s = 0; s < 16; ++s) {
    scales[s] = fit_q3_levels(16, 4, x + 16 * s, levels + 16 * s);
    if (std::fabs(scales[s]) > amax) {
      amax = std::fabs(scales[s]);
      max_scale = scales[s];
    }
  }
  uint8_t* packed = block + 96;
  std::fill(packed, packed + 12, uint8_t{0});
  if (max_scale != 0.0f) {
    const float inverse = -32.0f / max_scale;
    for (int s = 0; s < 16; ++s) {
      // llama.cpp holds the rounded scale in an int8_t before clamping it.
      const int8_t rounded = static_cast<int8_t>(round_nearest(inverse * scales[s]));
      const int l = std::clamp<int>(rounded, -32, 31) + 32;
      if (s < 8) {
        packed[s] = static_cast<uint8_t>(l & 0x0F);
      } else {
        packed[s - 8] = static_cast<uint8_t>(packed[s - 8] | ((l & 0x0F) << 4));
      }
      packed[8 + s % 4] = static_cast<uint8_t>(packed[8 + s % 4] | ((l >> 4) << (2 * (s / 4))));
    }
    store_half(block + 108, 1.0f / inverse);
  } else {
    store_half(block + 108, 0.0f);
  }
  const float d = load_half(block + 108);
  for (int s = 0; s < 16; ++s) {
    const int scale_low = s < 8 ? packed[s] & 0x0F : packed[s - 8] >> 4;
    const int scale_high = (packed[8 + s % 4] >> (2 * (s / 4))) & 3;
    const float dl = d * static_cast<float>((scale_low | (scale_high << 4)) - 32);
    if (dl == 0.0f) continue;
    for (int l = 0; l < 16; ++l) {
      levels[16 * s + l] =
          static_cast<int8_t>(std::clamp(round_nearest(x[16 * s + l] / dl), -4, 3) + 4);
    }
  }
  uint8_t* hmask = block;
  std::fill(hmask, hmask + 32, uint8_t{0});
  uint8_t low[256];
  for (int e = 0; e < 256; ++e) {
    int l = levels[e];
    if (l > 3) {
      hmask[e % 32] = static_cast<uint8_t>(hmask[e % 32] | (1 << (e / 32)));
      l -= 4;
    }
    low[e] = static_cast<uint8_t>(l);
  }
  pack_2bit_fields(low, block + 32);
}

// The scales and mins of Q4_K/Q5_K: eight 6-bit pairs, packed as k4_scale_min reads them.
void pack_k4_scale_min(const uint8_t* scale, const uint8_t* min, uint8_t* b) {
  for (int s = 0; s < 8; ++s) {
    if (s < 4) {
      b[s] = scale[s];
      b[s + 4] = min[s];
    } else {
      b[s + 4] = static_cast<uint8_t>((scale[s] & 0x0F) | ((min[s] & 0x0F) << 4));
      b[s - 4] = static_cast<uint8_t>(b[s - 4] | ((scale[s] >> 4) << 6));
      b[s] = static_cast<uint8_t>(b[s] | ((min[s] >> 4) << 6));
    }
  }
}

// Q4_K and Q5_K: each sub-block of 32 gets levels 0..nmax with a scale and min from
// fit_affine_levels (weights rms(sub-block) + |x|, least squared error; grids -1 + 0.1 i,
// i <= 20, for Q4_K and -0.5 + 0.1 i, i <= 15, for Q5_K); scales and mins are stored as 6-bit
// multiples of d = max scale / 63 and dmin = max min / 63, and every number is then requantized
// against them (sub-blocks whose stored scale is 0 keep the search's levels). Writes d, dmin
// and the 12 scale bytes at block[0, 16) and the levels into `levels`.
template <int kNmax>
void k4_scales_and_levels(const float* x, uint8_t* block, uint8_t* levels) {
  constexpr float kRmin = kNmax == 15 ? -1.0f : -0.5f;
  constexpr int kSteps = kNmax == 15 ? 20 : 15;
  float weights[32];
  float scales[8];
  float mins[8];
  float max_scale = 0.0f;
  float max_min = 0.0f;
  for (int s = 0; s < 8; ++s) {
    const float* xs = x + 32 * s;
    float sum_x2 = 0.0f;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float rms = std::sqrt(sum_x2 / 32.0f);
    for (int l = 0; l < 32; ++l) weights[l] = rms + std::fabs(xs[l]);
    const AffineFit fit = fit_affine_levels(32, kNmax, xs, weights, levels + 32 * s, kRmin, 0.1f,
                                            kSteps, /*absolute_error=*/false);
    scales[s] = fit.scale;
    mins[s] = fit.neg_min;
    max_scale = std::max(max_scale, scales[s]);
    max_min = std::max(max_min, mins[s]);
  }
  const float inverse_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
  const float inverse_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
  uint8_t stored_scale[8];
  uint8_t stored_min[8];
  for (int s = 0; s < 8; ++s) {
    // llama.cpp holds the rounded values in a uint8_t before capping them at 63.
    stored_scale[s] =
        std::min<uint8_t>(63, static_cast<uint8_t>(round_nearest(inverse_scale * scales[s])));
    stored_min[s] =
        std::min<uint8_t>(63, static_cast<uint8_t>(round_nearest(inverse_min * mins[s])));
  }
  pack_k4_scale_min(stored_scale, stored_min, block + 4);
  store_half(block, max_scale / 63.0f);
  store_half(block + 2, max_min / 63.0f);
  const float d = load_half(block);
  const float dmin = load_half(block + 2);
  for (int s = 0; s < 8; ++s) {
    const ScaleMin sm = k4_scale_min(block + 4, s);
    const float dl = d * static_cast<float>(sm.scale);
    if (dl == 0.0f) continue;
    const float ml = dmin * static_cast<float>(sm.min);
    for (int l = 0; l < 32; ++l) {
      levels[32 * s + l] =
          static_cast<uint8_t>(std::clamp(round_nearest((x[32 * s + l] + ml) / dl), 0, kNmax));
    }
  }
}

void encode_q4_k_block(const float* x, uint8_t* block) {
  uint8_t levels[256];
  k4_scales_and_levels<15>(x, block, levels);
  uint8_t* qs = block + 16;
  for (int pair = 0; pair < 4; ++pair) {
    const uint8_t* l = levels + 64 * pair;
    for (int j = 0; j < 32; ++j) qs[32 * pair + j] = static_cast<uint8_t>(l[j] | (l[j + 32] << 4));
  }
}

void encode_q5_k_block(const float* x, uint8_t* block) {
  uint8_t levels[256];
  k4_scales_and_levels<31>(x, block, levels);
  uint8_t* qh = block + 16;
  uint8_t* qs = block + 48;
  std::fill(qh, qh + 32, uint8_t{0});
  for (int pair = 0; pair < 4; ++pair) {
    const uint8_t* l = levels + 64 * pair;
    for (int j = 0; j < 32; ++j) {
      qs[32 * pair + j] = static_cast<uint8_t>((l[j] & 0x0F) | ((l[j + 32] & 0x0F) << 4));
      qh[j] = static_cast<uint8_t>(qh[j] | ((l[j] >> 4) << (2 * pair)) |
                                   ((l[j + 32] >> 4) << (2 * pair + 1)));
    }
  }
}

// Q6_K: each sub-block of 16 gets levels -32..31 from fit_symmetric_levels; the scales are
// stored as int8 multiples of d = -(scale of largest magnitude) / 128, and every number is
// then requantized against its stored scale (sub-blocks whose stored scale is 0 keep the
// search's levels). A super-block whose scales are all below kGroupMaxEps is stored as zeros.
void encode_q6_k_block(const float* x, uint8_t* block) {
  int8_t levels[256];
  float scales[16];
  float max_scale = 0.0f;
  float max_abs_scale = 0.0f;
  for (int s = 0; s < 16; ++s) {
    scales[s] = fit_symmetric_levels(16, 32, x + 16 * s, levels + 16 * s);
    if (std::fabs(scales[s]) > max_abs_scale) {
      max_abs_scale = std::fabs(scales[s]);
      max_scale = scales[s];
    }
  }
  std::fill(block, block + 210, uint8_t{0});
  if (max_abs_scale < kGroupMaxEps) return;
  const float inverse = -128.0f / max_scale;
  store_half(block + 208, 1.0f / inverse);
  uint8_t* stored = block + 192;
  for (int s = 0; s < 16; ++s) {
    stored[s] = static_cast<uint8_t>(
        static_cast<int8_t>(std::min(127, round_nearest(inverse * scales[s]))));
  }
  const float d = load_half(block + 208);
  for (int s = 0; s < 16; ++s) {
    const float dl = d * static_cast<float>(static_cast<int8_t>(stored[s]));
    if (dl == 0.0f) continue;
    for (int l = 0; l < 16; ++l) {
      levels[16 * s + l] =
          static_cast<int8_t>(std::clamp(round_nearest(x[16 * s + l] / dl), -32, 31) + 32);
    }
  }
  // Element 128h + 32p + l: low nibble in ql[64h + 32(p%2) + l] (low half for p < 2), top two
  // bits in field p of qh[32h + l].
  uint8_t* ql = block;
  uint8_t* qh = block + 128;
  for (int h = 0; h < 2; ++h) {
    const int8_t* l = levels + 128 * h;
    for (int j = 0; j < 32; ++j) {
      ql[64 * h + j] = static_cast<uint8_t>((l[j] & 0x0F) | ((l[j + 64] & 0x0F) << 4));
      ql[64 * h + 32 + j] = static_cast<uint8_t>((l[j + 32] & 0x0F) | ((l[j + 96] & 0x0F) << 4));
      qh[32 * h + j] = static_cast<uint8_t>((l[j] >> 4) | ((l[j + 32] >> 4) << 2) |
                                            ((l[j + 64] >> 4) << 4) | ((l[j + 96] >> 4) << 6));
    }
  }
}

// Inside the region too, so that the block encoders inlined into it stay uncontracted.
template <int64_t kBlockSize, size_t kBlockBytes, void (*kEncodeBlock)(const float*, uint8_t*)>
void encode_blocks(const float* src, uint8_t* dst, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) kEncodeBlock(src + i * kBlockSize, dst + i * kBlockBytes);
}

#if defined(__clang__)
#pragma clang fp contract(on)
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

// ---- Dispatch ----

template <int64_t kBlockSize, size_t kBlockBytes, void (*kDecodeBlock)(const uint8_t*, float*)>
void decode_blocks(const uint8_t* src, float* dst, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) kDecodeBlock(src + i * kBlockBytes, dst + i * kBlockSize);
}

using Decoder = void (*)(const uint8_t* src, float* dst, int64_t n_blocks);
using Encoder = void (*)(const float* src, uint8_t* dst, int64_t n_blocks);

struct Codec {
  io::TensorType type;
  Decoder decode;
  Encoder encode;  // null where eigenkv does not write the type
};

using io::TensorType;
// Block geometry here must agree with io::tensor_type_info(), which the dispatch uses to count
// blocks and bytes; the tests decode blocks back to back, which a mismatch would garble.
constexpr Codec kCodecs[] = {
    {TensorType::kF32, decode_f32, encode_f32},
    {TensorType::kF16, decode_f16, encode_f16},
    {TensorType::kBF16, decode_bf16, encode_bf16},
    {TensorType::kF64, decode_f64, nullptr},
    {TensorType::kQ4_0, decode_blocks<32, 18, decode_q4_0_block>,
     encode_blocks<32, 18, encode_q4_0_block>},
    {TensorType::kQ4_1, decode_blocks<32, 20, decode_q4_1_block>,
     encode_blocks<32, 20, encode_q4_1_block>},
    {TensorType::kQ5_0, decode_blocks<32, 22, decode_q5_0_block>,
     encode_blocks<32, 22, encode_q5_0_block>},
    {TensorType::kQ5_1, decode_blocks<32, 24, decode_q5_1_block>,
     encode_blocks<32, 24, encode_q5_1_block>},
    {TensorType::kQ8_0, decode_blocks<32, 34, decode_q8_0_block>,
     encode_blocks<32, 34, encode_q8_0_block>},
    {TensorType::kQ2_K, decode_blocks<256, 84, decode_q2_k_block>,
     encode_blocks<256, 84, encode_q2_k_block>},
    {TensorType::kQ3_K, decode_blocks<256, 110, decode_q3_k_block>,
     encode_blocks<256, 110, encode_q3_k_block>},
    {TensorType::kQ4_K, decode_blocks<256, 144, decode_q4_k_block>,
     encode_blocks<256, 144, encode_q4_k_block>},
    {TensorType::kQ5_K, decode_blocks<256, 176, decode_q5_k_block>,
     encode_blocks<256, 176, encode_q5_k_block>},
    {TensorType::kQ6_K, decode_blocks<256, 210, decode_q6_k_block>,
     encode_blocks<256, 210, encode_q6_k_block>},
};

const Codec* find_codec(TensorType type) {
  for (const Codec& codec : kCodecs) {
    if (codec.type == type) return &codec;
  }
  return nullptr;
}

// Checks that `operation` can handle `count` numbers of `type`; returns the number of blocks.
int64_t checked_blocks(const char* operation, TensorType type, bool supported, int64_t count) {
  const std::string name = io::tensor_type_name(static_cast<uint32_t>(type));
  EKV_CHECK(supported, operation, ": tensor type ", name, " is not supported");
  const int64_t block_size = io::tensor_type_info(type).block_size;
  EKV_CHECK(count >= 0 && count % block_size == 0, operation, ": ", count, " numbers of type ",
            name, " are not a whole number of blocks of ", block_size);
  return count / block_size;
}

// Handing a thread a chunk of fewer numbers than this costs more than it saves. Encoding the
// K-quants costs a few hundred operations per number (their scale searches), so their chunks
// can be smaller.
constexpr int64_t kMinNumbersPerDecodeChunk = 1 << 16;
constexpr int64_t kMinNumbersPerEncodeChunk = 1 << 14;

// Runs work(first_block, n_blocks) over block-aligned chunks on the OpenMP threads.
template <typename Work>
void for_block_chunks(int64_t n_blocks, int64_t block_size, int64_t min_numbers, Work&& work) {
  const int64_t blocks_per_chunk = std::max<int64_t>(1, min_numbers / block_size);
  const int64_t n_chunks = (n_blocks + blocks_per_chunk - 1) / blocks_per_chunk;
  if (n_chunks <= 1) {
    work(int64_t{0}, n_blocks);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
    const int64_t first = chunk * blocks_per_chunk;
    work(first, std::min(blocks_per_chunk, n_blocks - first));
  }
}

}  // namespace

bool can_dequantize(TensorType type) { return find_codec(type) != nullptr; }

std::map<std::string, TensorType> writable_types() {
  std::map<std::string, TensorType> types;
  for (uint32_t raw = 0; raw < 64; ++raw) {
    const auto info = io::tensor_type_info(raw);
    if (!info || !can_quantize(info->type)) continue;
    std::string name(info->name);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    types[name] = info->type;
  }
  return types;
}

bool can_quantize(TensorType type) {
  const Codec* codec = find_codec(type);
  return codec != nullptr && codec->encode != nullptr;
}

void dequantize(TensorType type, const uint8_t* src, float* dst, int64_t count) {
  const int64_t n_blocks = checked_blocks("dequantize", type, can_dequantize(type), count);
  find_codec(type)->decode(src, dst, n_blocks);
}

void dequantize_parallel(TensorType type, const uint8_t* src, float* dst, int64_t count) {
  const int64_t n_blocks = checked_blocks("dequantize", type, can_dequantize(type), count);
  const Decoder decode = find_codec(type)->decode;
  const io::TensorTypeInfo& info = io::tensor_type_info(type);
  const auto bytes = static_cast<int64_t>(info.block_bytes);
  for_block_chunks(n_blocks, info.block_size, kMinNumbersPerDecodeChunk,
                   [&](int64_t first, int64_t n) {
                     decode(src + first * bytes, dst + first * info.block_size, n);
                   });
}

void quantize(TensorType type, const float* src, uint8_t* dst, int64_t count) {
  const int64_t n_blocks = checked_blocks("quantize", type, can_quantize(type), count);
  find_codec(type)->encode(src, dst, n_blocks);
}

void quantize_parallel(TensorType type, const float* src, uint8_t* dst, int64_t count) {
  const int64_t n_blocks = checked_blocks("quantize", type, can_quantize(type), count);
  const Encoder encode = find_codec(type)->encode;
  const io::TensorTypeInfo& info = io::tensor_type_info(type);
  const auto bytes = static_cast<int64_t>(info.block_bytes);
  for_block_chunks(n_blocks, info.block_size, kMinNumbersPerEncodeChunk,
                   [&](int64_t first, int64_t n) {
                     encode(src + first * info.block_size, dst + first * bytes, n);
                   });
}

void convert_rows(TensorType from, const uint8_t* src, TensorType to, uint8_t* dst, int64_t rows,
                  int64_t width) {
  const io::TensorTypeInfo& in = io::tensor_type_info(from);
  const io::TensorTypeInfo& out = io::tensor_type_info(to);
  EKV_CHECK(can_dequantize(from), "cannot read ", in.name, " to convert it");
  EKV_CHECK(can_quantize(to), "cannot write ", out.name);
  EKV_CHECK(rows >= 0 && width > 0 && width % in.block_size == 0 && width % out.block_size == 0,
            "rows of ", width, " numbers are not whole blocks of ", in.name, " (",
            in.block_size, ") and ", out.name, " (", out.block_size, ")");
  const size_t in_row = io::tensor_bytes(from, width);
  const size_t out_row = io::tensor_bytes(to, width);
  const int64_t rows_per_chunk = std::max<int64_t>(1, kMinNumbersPerEncodeChunk / width);
  const int64_t n_chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  const Decoder decode = find_codec(from)->decode;
  const Encoder encode = find_codec(to)->encode;
#pragma omp parallel
  {
    std::vector<float> buffer;
#pragma omp for schedule(dynamic)
    for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
      const int64_t first = chunk * rows_per_chunk;
      const int64_t n = std::min(rows_per_chunk, rows - first) * width;
      buffer.resize(static_cast<size_t>(n));
      decode(src + static_cast<size_t>(first) * in_row, buffer.data(), n / in.block_size);
      encode(buffer.data(), dst + static_cast<size_t>(first) * out_row, n / out.block_size);
    }
  }
}

}  // namespace eigenkv::ops
