// Stored weight blocks unpacked to integers with their scales: the layouts of GGUF's block types
// (Q4_0 .. Q8_0 in blocks of 32, the K-quants in super-blocks of 256) written once, for the scalar
// reference and portable kernels of the decode dot products (ops/qdot.cc) and for the weight
// panels of the prefill products (ops/qgemm.cc).
#pragma once

#include <cstdint>
#include <cstring>

#include "ops/half.h"

namespace eigenkv::ops::blocks {

// A T stored (little-endian, any alignment) at p.
template <typename T>
inline T load_as(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
inline float load_f32(const uint8_t* p) { return load_as<float>(p); }
inline uint16_t load_u16(const uint8_t* p) { return load_as<uint16_t>(p); }
inline int16_t load_i16(const uint8_t* p) { return load_as<int16_t>(p); }
inline uint32_t load_u32(const uint8_t* p) { return load_as<uint32_t>(p); }
inline float load_half(const uint8_t* p) { return fp16_to_fp32(load_u16(p)); }

// ---- Blocks unpacked to integers (the reference and the portable kernels) ----

// A block of 32: its dot with an activation block (scale dx, sum s = dx * sum of q) is
// d * dx * sum(q * xq) + c * s. q is unsigned, except for Q8_0, whose bytes are int8.
struct Block32 {
  uint8_t q[32];
  float d;
  float c;
};

// A K-quant super-block: its dot is
//   d * dx * sum_g sc[g] * sum_{l<16} q[16g + l] * xq[16g + l] - dmin * dx * sum_g mn[g] * bsums[g].
struct BlockK {
  uint8_t q[256];
  int16_t sc[16];
  int16_t mn[16];
  float d;
  float dmin;
};

inline void unpack_nibbles(const uint8_t* qs, uint8_t* q) {
  for (int j = 0; j < 16; ++j) {
    q[j] = qs[j] & 0x0F;
    q[j + 16] = qs[j] >> 4;
  }
}

inline void unpack_fifth_bits(uint32_t qh, uint8_t* q) {
  for (int j = 0; j < 32; ++j) q[j] |= static_cast<uint8_t>(((qh >> j) & 1u) << 4);
}

// Q4_0, 18 bytes: d, qs[16]. y = (u - 8) * d.
inline void unpack_q4_0(const uint8_t* b, Block32& o) {
  o.d = load_half(b);
  o.c = -8.0f * o.d;
  unpack_nibbles(b + 2, o.q);
}
// Q4_1, 20 bytes: d, m, qs[16]. y = u * d + m.
inline void unpack_q4_1(const uint8_t* b, Block32& o) {
  o.d = load_half(b);
  o.c = load_half(b + 2);
  unpack_nibbles(b + 4, o.q);
}
// Q5_0, 22 bytes: d, qh (u32), qs[16]. y = (u - 16) * d.
inline void unpack_q5_0(const uint8_t* b, Block32& o) {
  o.d = load_half(b);
  o.c = -16.0f * o.d;
  unpack_nibbles(b + 6, o.q);
  unpack_fifth_bits(load_u32(b + 2), o.q);
}
// Q5_1, 24 bytes: d, m, qh (u32), qs[16]. y = u * d + m.
inline void unpack_q5_1(const uint8_t* b, Block32& o) {
  o.d = load_half(b);
  o.c = load_half(b + 2);
  unpack_nibbles(b + 8, o.q);
  unpack_fifth_bits(load_u32(b + 4), o.q);
}
// Q8_0, 34 bytes: d, qs (int8)[32]. y = q * d.
inline void unpack_q8_0(const uint8_t* b, Block32& o) {
  o.d = load_half(b);
  o.c = 0.0f;
  std::memcpy(o.q, b + 2, 32);
}

// The K-quants are unpacked in two steps, so that callers with their own way of extracting the
// numbers (ops/qgemm.cc, a 64-bit word at a time) share the scale decoding: k_scales_* fill d,
// dmin, sc and mn; unpack_* add the numbers q.

// Q2_K, 84 bytes: scales[16] (scale | min << 4), qs[64], d, dmin. Sub-block s = 8h + 2p + t
// holds 2-bit field p of qs[32h + 16t + l].
inline void k_scales_q2_k(const uint8_t* b, BlockK& o) {
  o.d = load_half(b + 80);
  o.dmin = load_half(b + 82);
  for (int s = 0; s < 16; ++s) {
    o.sc[s] = b[s] & 0x0F;
    o.mn[s] = b[s] >> 4;
  }
}
inline void unpack_q2_k(const uint8_t* b, BlockK& o) {
  k_scales_q2_k(b, o);
  const uint8_t* qs = b + 16;
  for (int s = 0; s < 16; ++s) {
    const int h = s / 8, p = (s % 8) / 2, t = s % 2;
    for (int l = 0; l < 16; ++l) o.q[16 * s + l] = (qs[32 * h + 16 * t + l] >> (2 * p)) & 3;
  }
}

// Q3_K, 110 bytes: hmask[32], qs[64], scales[12], d. u = low two bits | high bit << 2 and
// y = d * (scale - 32) * (u - 4): the offset 4 goes to the mins, mn = 4 * sc, with dmin = d.
// Sub-block s = 8h + 2p + t: low bits as Q2_K's, high bit 4h + p of hmask[16t + l].
inline void k_scales_q3_k(const uint8_t* b, BlockK& o) {
  const uint8_t* scales = b + 96;
  o.d = load_half(b + 108);
  o.dmin = o.d;
  for (int s = 0; s < 16; ++s) {
    const int low = s < 8 ? scales[s] & 0x0F : scales[s - 8] >> 4;
    const int high = (scales[8 + s % 4] >> (2 * (s / 4))) & 3;
    o.sc[s] = static_cast<int16_t>((low | (high << 4)) - 32);
    o.mn[s] = static_cast<int16_t>(4 * o.sc[s]);
  }
}
inline void unpack_q3_k(const uint8_t* b, BlockK& o) {
  k_scales_q3_k(b, o);
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  for (int s = 0; s < 16; ++s) {
    const int h = s / 8, p = (s % 8) / 2, t = s % 2;
    for (int l = 0; l < 16; ++l) {
      const int u = ((qs[32 * h + 16 * t + l] >> (2 * p)) & 3) |
                    (((hmask[16 * t + l] >> (4 * h + p)) & 1) << 2);
      o.q[16 * s + l] = static_cast<uint8_t>(u);
    }
  }
}

// Q4_K and Q5_K: 6-bit scale and min of sub-block s (of 32) from the 12 packed bytes.
inline void k4_scale_min(const uint8_t* b, int s, int& scale, int& min) {
  if (s < 4) {
    scale = b[s] & 63;
    min = b[s + 4] & 63;
  } else {
    scale = (b[s + 4] & 0x0F) | ((b[s - 4] >> 6) << 4);
    min = (b[s + 4] >> 4) | ((b[s] >> 6) << 4);
  }
}

// Q4_K, 144 bytes: d, dmin, scales[12], qs[128]; sub-block s reads qs[32 * (s / 2) ..], low
// nibbles for even s. y = d * scale * u - dmin * min. Q5_K's d, dmin and scales sit where
// Q4_K has them.
inline void k_scales_q4_k(const uint8_t* b, BlockK& o) {
  o.d = load_half(b);
  o.dmin = load_half(b + 2);
  for (int s = 0; s < 8; ++s) {
    int scale, min;
    k4_scale_min(b + 4, s, scale, min);
    o.sc[2 * s] = o.sc[2 * s + 1] = static_cast<int16_t>(scale);
    o.mn[2 * s] = o.mn[2 * s + 1] = static_cast<int16_t>(min);
  }
}
inline void unpack_q4_k(const uint8_t* b, BlockK& o) {
  k_scales_q4_k(b, o);
  const uint8_t* qs = b + 16;
  for (int s = 0; s < 8; ++s) {
    for (int l = 0; l < 32; ++l) o.q[32 * s + l] = (qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0F;
  }
}

// Q5_K, 176 bytes: d, dmin, scales[12], qh[32], qs[128]; bit s of qh[l] is the fifth bit of
// element 32s + l.
inline void unpack_q5_k(const uint8_t* b, BlockK& o) {
  k_scales_q4_k(b, o);
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int s = 0; s < 8; ++s) {
    for (int l = 0; l < 32; ++l) {
      o.q[32 * s + l] = static_cast<uint8_t>(((qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0F) |
                                             (((qh[l] >> s) & 1) << 4));
    }
  }
}

// Q6_K, 210 bytes: ql[128], qh[64], scales (int8)[16], d. y = d * scale * (u - 32): the offset
// goes to the mins, mn = 32 * sc, with dmin = d. Sub-block s = 8h + 2p + t: low nibbles of
// ql[64h + 32(p % 2) + 16t + l] (high nibbles for p >= 2), two high bits 2p of qh[32h + 16t + l].
inline void k_scales_q6_k(const uint8_t* b, BlockK& o) {
  const uint8_t* scales = b + 192;
  o.d = load_half(b + 208);
  o.dmin = o.d;
  for (int s = 0; s < 16; ++s) {
    o.sc[s] = static_cast<int8_t>(scales[s]);
    o.mn[s] = static_cast<int16_t>(32 * o.sc[s]);
  }
}
inline void unpack_q6_k(const uint8_t* b, BlockK& o) {
  k_scales_q6_k(b, o);
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  for (int s = 0; s < 16; ++s) {
    const int h = s / 8, p = (s % 8) / 2, t = s % 2;
    const uint8_t* lo = ql + 64 * h + 32 * (p % 2) + 16 * t;
    const uint8_t* hi = qh + 32 * h + 16 * t;
    const int shift = p < 2 ? 0 : 4;
    for (int l = 0; l < 16; ++l) {
      o.q[16 * s + l] =
          static_cast<uint8_t>(((lo[l] >> shift) & 0x0F) | (((hi[l] >> (2 * p)) & 3) << 4));
    }
  }
}

}  // namespace eigenkv::ops::blocks
