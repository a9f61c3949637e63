// IEEE binary16 ("half", F16) and bfloat16 (BF16) <-> float32 conversions, inline for hot loops.
//
// Widening is exact. Narrowing rounds to nearest, ties to even; values at or beyond the half's
// range become infinity, tiny ones become half subnormals or signed zero. NaNs stay NaN with their
// sign and leading payload bits and come out quiet: the x86 F16C instructions quiet a signalling
// NaN in both directions, and the portable code does the same so that both paths agree bit for
// bit. (bf16_to_fp32 is a plain shift and passes any NaN through unchanged.)
#pragma once

#include <bit>
#include <cstdint>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace eigenkv::ops {

// Plain-integer versions, used where F16C is absent and as the reference the tests hold the
// hardware path to.
namespace portable {

inline float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) {
    // Infinity, or NaN with its payload moved to the top of float's mantissa and made quiet.
    const uint32_t quiet = mantissa != 0 ? 0x00400000u : 0u;
    return std::bit_cast<float>(sign | 0x7F800000u | quiet | (mantissa << 13));
  }
  if (exponent != 0) {
    // Normal: rebias the exponent from 15 to 127 (a difference of 112).
    return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
  }
  // Zero or subnormal, mantissa * 2^-24: both factors and the product are exact in float.
  const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
  return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(magnitude));
}

inline uint16_t fp32_to_fp16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) {  // NaN: keep the top 10 payload bits, set the quiet bit
    return static_cast<uint16_t>(sign | 0x7E00u | ((magnitude >> 13) & 0x3FFu));
  }
  // 65520 = 0x477FF000 lies halfway between the largest half, 65504, and 65536; the tie goes
  // to the even neighbour, 65536, which overflows. Infinity itself lands here too.
  if (magnitude >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);
  if (magnitude >= 0x38800000u) {
    // Normal half (>= 2^-14): round the 13 dropped mantissa bits to nearest even; a carry out
    // of the mantissa correctly bumps the exponent. Then rebias from 127 to 15.
    const uint32_t rounded = magnitude + 0x0FFFu + ((magnitude >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((rounded - (112u << 23)) >> 13));
  }
  // Subnormal half: the result is round(|f| * 2^24) as an integer in [0, 1024], where 1024 is
  // the bit pattern of the smallest normal. With |f| = m * 2^(e - 150), that is m >> (126 - e).
  const uint32_t exponent = magnitude >> 23;
  const int shift = 126 - static_cast<int>(exponent);
  // Float subnormals (exponent 0) and anything below 2^-25 round to zero; m < 2^24 means the
  // quotient stays below one half, so no tie can round up.
  if (exponent == 0 || shift > 24) return sign;
  const uint32_t m = (magnitude & 0x7FFFFFu) | 0x800000u;
  const uint32_t quotient = m >> shift;
  const uint32_t remainder = m & ((1u << shift) - 1);
  const uint32_t half_way = 1u << (shift - 1);
  const bool round_up = remainder > half_way || (remainder == half_way && (quotient & 1u) != 0);
  return static_cast<uint16_t>(sign | (quotient + (round_up ? 1u : 0u)));
}

}  // namespace portable

inline float fp16_to_fp32(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return portable::fp16_to_fp32(h);
#endif
}

inline uint16_t fp32_to_fp16(float f) {
#if defined(__F16C__)
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
#else
  return portable::fp32_to_fp16(f);
#endif
}

// bfloat16 is the top half of a float32.
inline float bf16_to_fp32(uint16_t h) {
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

inline uint16_t fp32_to_bf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  // A NaN whose payload sits only in the low 16 bits would truncate to infinity; setting the
  // quiet bit keeps it a NaN.
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  // Round to nearest even on the 16 dropped bits; finite values past the range carry into
  // the exponent and become infinity, as they should.
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace eigenkv::ops
