#include "ops/dequant.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>

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

// ---- Quantizers (llama.cpp's reference rounding) ----

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

// Q4_0: d = -m / 8 where m is the first element of largest magnitude, so m itself maps to
// nibble 0 and the other side of zero gets the 16th level; q = trunc(x / d + 8.5) capped at 15.
// x * (1/d) + 8.5 is one fused multiply-add, as llama.cpp's reference gives it when its compiler
// contracts the expression; spelling out the FMA keeps the rare ties the same on every compiler.
void encode_q4_0_block(const float* x, uint8_t* block) {
  float amax = 0.0f;
  float signed_max = 0.0f;
  for (int j = 0; j < 32; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      signed_max = x[j];
    }
  }
  const float d = signed_max / -8.0f;
  const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
  store_half(block, d);
  const auto level = [inverse](float v) {
    return std::clamp(static_cast<int>(std::fma(v, inverse, 8.5f)), 0, 15);
  };
  for (int j = 0; j < 16; ++j) {
    block[2 + j] = static_cast<uint8_t>(level(x[j]) | (level(x[j + 16]) << 4));
  }
}

// ---- Dispatch ----

template <int64_t kBlockSize, size_t kBlockBytes, void (*kDecodeBlock)(const uint8_t*, float*)>
void decode_blocks(const uint8_t* src, float* dst, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) kDecodeBlock(src + i * kBlockBytes, dst + i * kBlockSize);
}

template <int64_t kBlockSize, size_t kBlockBytes, void (*kEncodeBlock)(const float*, uint8_t*)>
void encode_blocks(const float* src, uint8_t* dst, int64_t n_blocks) {
  for (int64_t i = 0; i < n_blocks; ++i) kEncodeBlock(src + i * kBlockSize, dst + i * kBlockBytes);
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
    {TensorType::kQ4_1, decode_blocks<32, 20, decode_q4_1_block>, nullptr},
    {TensorType::kQ5_0, decode_blocks<32, 22, decode_q5_0_block>, nullptr},
    {TensorType::kQ5_1, decode_blocks<32, 24, decode_q5_1_block>, nullptr},
    {TensorType::kQ8_0, decode_blocks<32, 34, decode_q8_0_block>,
     encode_blocks<32, 34, encode_q8_0_block>},
    {TensorType::kQ2_K, decode_blocks<256, 84, decode_q2_k_block>, nullptr},
    {TensorType::kQ3_K, decode_blocks<256, 110, decode_q3_k_block>, nullptr},
    {TensorType::kQ4_K, decode_blocks<256, 144, decode_q4_k_block>, nullptr},
    {TensorType::kQ5_K, decode_blocks<256, 176, decode_q5_k_block>, nullptr},
    {TensorType::kQ6_K, decode_blocks<256, 210, decode_q6_k_block>, nullptr},
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

// Handing a thread a chunk of fewer numbers than this costs more than it saves.
constexpr int64_t kMinNumbersPerChunk = 1 << 16;

}  // namespace

bool can_dequantize(TensorType type) { return find_codec(type) != nullptr; }

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
  const int64_t blocks_per_chunk = std::max<int64_t>(1, kMinNumbersPerChunk / info.block_size);
  const int64_t n_chunks = (n_blocks + blocks_per_chunk - 1) / blocks_per_chunk;
  if (n_chunks <= 1) {
    decode(src, dst, n_blocks);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
    const int64_t first = chunk * blocks_per_chunk;
    const int64_t n = std::min(blocks_per_chunk, n_blocks - first);
    decode(src + first * static_cast<int64_t>(info.block_bytes), dst + first * info.block_size, n);
  }
}

void quantize(TensorType type, const float* src, uint8_t* dst, int64_t count) {
  const int64_t n_blocks = checked_blocks("quantize", type, can_quantize(type), count);
  find_codec(type)->encode(src, dst, n_blocks);
}

}  // namespace eigenkv::ops
