// Tests for ops/half.h and ops/dequant.h.
//
// The hand-made blocks below were filled in and their expected values worked out by hand from
// the block layouts (the arithmetic is in the comments), not by running the code under test.
#include "ops/dequant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "io/tensor_type.h"
#include "ops/half.h"
#include "test_util.h"
#include "util/error.h"

namespace eigenkv::ops {
namespace {

using io::TensorType;

std::vector<uint8_t> zero_block(TensorType type) {
  return std::vector<uint8_t>(io::tensor_type_info(type).block_bytes, 0);
}

void put_half(std::vector<uint8_t>& block, size_t offset, uint16_t h) {
  block[offset] = static_cast<uint8_t>(h & 0xFF);
  block[offset + 1] = static_cast<uint8_t>(h >> 8);
}

// Half bit patterns used below.
constexpr uint16_t kHalfOne = 0x3C00;
constexpr uint16_t kHalfMinusOne = 0xBC00;
constexpr uint16_t kHalfTwo = 0x4000;
constexpr uint16_t kHalfHalf = 0x3800;
constexpr uint16_t kHalfQuarter = 0x3400;

// Checks that `block` decodes to `want` on its own from an odd address (blocks carry no
// alignment), as two blocks back to back (the stride), and as many copies through
// dequantize_parallel (the chunking, with a ragged last chunk).
void expect_decodes_to(TensorType type, const std::vector<uint8_t>& block,
                       const std::vector<float>& want) {
  const auto& info = io::tensor_type_info(type);
  ASSERT_EQ(block.size(), info.block_bytes);
  ASSERT_EQ(static_cast<int64_t>(want.size()), info.block_size);
  const int64_t n = info.block_size;

  std::vector<uint8_t> unaligned(block.size() + 1);
  std::memcpy(unaligned.data() + 1, block.data(), block.size());
  std::vector<float> got(n);
  dequantize(type, unaligned.data() + 1, got.data(), n);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(got[i], want[i]) << info.name << " element " << i;

  const int64_t copies = (4 << 16) / n + 3;
  std::vector<uint8_t> many;
  for (int64_t c = 0; c < copies; ++c) many.insert(many.end(), block.begin(), block.end());
  std::vector<float> two(2 * n);
  dequantize(type, many.data(), two.data(), 2 * n);
  std::vector<float> all(copies * n);
  dequantize_parallel(type, many.data(), all.data(), copies * n);
  for (int64_t i = 0; i < 2 * n; ++i) ASSERT_EQ(two[i], want[i % n]) << info.name << " " << i;
  for (int64_t i = 0; i < copies * n; ++i) ASSERT_EQ(all[i], want[i % n]) << info.name << " " << i;
}

// ---- half.h ----

TEST(Half, KnownValues) {
  EXPECT_EQ(fp16_to_fp32(0x3C00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0xC000), -2.0f);
  EXPECT_EQ(fp16_to_fp32(0x7BFF), 65504.0f);
  EXPECT_EQ(fp16_to_fp32(0x0400), 0x1p-14f);  // smallest normal
  EXPECT_EQ(fp16_to_fp32(0x0001), 0x1p-24f);  // smallest subnormal
  EXPECT_EQ(fp16_to_fp32(0x83FF), -1023 * 0x1p-24f);
  EXPECT_TRUE(std::signbit(fp16_to_fp32(0x8000)));
  EXPECT_EQ(fp16_to_fp32(0x7C00), INFINITY);
  EXPECT_EQ(fp16_to_fp32(0xFC00), -INFINITY);
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0x7E00)));

  EXPECT_EQ(fp32_to_fp16(1.0f), 0x3C00);
  EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
  // Ties go to the even neighbour: 1 + 2^-11 lies halfway between 0x3C00 and 0x3C01.
  EXPECT_EQ(fp32_to_fp16(1.0f + 0x1p-11f), 0x3C00);
  EXPECT_EQ(fp32_to_fp16(1.0f + 3 * 0x1p-11f), 0x3C02);
  EXPECT_EQ(fp32_to_fp16(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01);
  // 65520 is halfway between 65504 (odd mantissa) and 65536, so it overflows.
  EXPECT_EQ(fp32_to_fp16(65519.0f), 0x7BFF);
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7C00);
  EXPECT_EQ(fp32_to_fp16(-1e10f), 0xFC00);
  // Subnormal results: 2^-25 ties down to zero, 3 * 2^-25 ties up to 2 * 2^-24, and a value
  // just above 2^-25 rounds up to the smallest subnormal.
  EXPECT_EQ(fp32_to_fp16(0x1p-25f), 0x0000);
  EXPECT_EQ(fp32_to_fp16(3 * 0x1p-25f), 0x0002);
  EXPECT_EQ(fp32_to_fp16(0x1.000002p-25f), 0x0001);
  EXPECT_EQ(fp32_to_fp16(-0x1p-30f), 0x8000);
  EXPECT_EQ(fp32_to_fp16(1e-45f), 0x0000);  // a float subnormal
  // Halfway between the largest subnormal (0x03FF) and the smallest normal (0x0400).
  EXPECT_EQ(fp32_to_fp16(1023.5f * 0x1p-24f), 0x0400);
  EXPECT_EQ(fp32_to_fp16(std::bit_cast<float>(0x7F800001u)), 0x7E00);  // signalling NaN, quieted
  EXPECT_EQ(fp32_to_fp16(std::bit_cast<float>(0xFFC02000u)), 0xFE01);  // payload kept

  EXPECT_EQ(bf16_to_fp32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_fp32(0xC040), -3.0f);
  EXPECT_EQ(bf16_to_fp32(0x0001), 0x1p-133f);
  EXPECT_EQ(fp32_to_bf16(1.0f + 0x1p-8f), 0x3F80);  // tie to even
  EXPECT_EQ(fp32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3F82);
  EXPECT_EQ(fp32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);
  EXPECT_EQ(fp32_to_bf16(3.4028235e38f), 0x7F80);  // rounds past the largest bf16
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x7F800001u)), 0x7FC0);
}

// Every half survives half -> float -> half unchanged; NaNs keep sign and payload and come
// back quiet. The hardware path (F16C, where compiled in) and the portable one agree on all.
TEST(Half, AllHalvesRoundTrip) {
  for (uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
    const auto h = static_cast<uint16_t>(bits);
    const float f = fp16_to_fp32(h);
    ASSERT_EQ(std::bit_cast<uint32_t>(f), std::bit_cast<uint32_t>(portable::fp16_to_fp32(h)))
        << std::hex << bits;
    const bool is_nan = (h & 0x7C00) == 0x7C00 && (h & 0x03FF) != 0;
    ASSERT_EQ(std::isnan(f), is_nan) << std::hex << bits;
    const uint16_t want = is_nan ? static_cast<uint16_t>(h | 0x0200) : h;
    ASSERT_EQ(fp32_to_fp16(f), want) << std::hex << bits;
    ASSERT_EQ(portable::fp32_to_fp16(f), want) << std::hex << bits;
  }
}

TEST(Half, AllBfloat16RoundTrip) {
  for (uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
    const auto h = static_cast<uint16_t>(bits);
    const float f = bf16_to_fp32(h);
    ASSERT_EQ(std::bit_cast<uint32_t>(f), bits << 16);
    const bool is_nan = (h & 0x7F80) == 0x7F80 && (h & 0x007F) != 0;
    ASSERT_EQ(fp32_to_bf16(f), is_nan ? static_cast<uint16_t>(h | 0x0040) : h) << std::hex << bits;
  }
}

// Narrowing on a sweep of float bit patterns: hardware and portable agree, and the result lies
// within half a step of the input (KnownValues checks which way ties go).
TEST(Half, NarrowingMatchesReferenceOnFloatSweep) {
  for (uint64_t bits = 0; bits <= 0xFFFFFFFFu; bits += 251) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(bits));
    const uint16_t h = fp32_to_fp16(f);
    ASSERT_EQ(h, portable::fp32_to_fp16(f)) << std::hex << bits;
    if (std::isnan(f) || std::fabs(f) >= 65520.0f) continue;
    const float got = fp16_to_fp32(h);
    const double error = std::fabs(static_cast<double>(got) - f);
    const double ulp = std::fabs(got) < 0x1p-14f ? 0x1p-24 : std::ldexp(1.0, std::ilogb(got) - 10);
    ASSERT_LE(error, ulp / 2) << std::hex << bits;
  }
}

// ---- Plain element types ----

TEST(Dequantize, PlainTypes) {
  std::vector<uint8_t> f32(4);
  const float one_and_half = 1.5f;
  std::memcpy(f32.data(), &one_and_half, 4);
  expect_decodes_to(TensorType::kF32, f32, {1.5f});

  expect_decodes_to(TensorType::kF16, {0x00, 0xC0}, {-2.0f});
  expect_decodes_to(TensorType::kF16, {0x01, 0x00}, {0x1p-24f});
  expect_decodes_to(TensorType::kF16, {0xFF, 0xFB}, {-65504.0f});
  expect_decodes_to(TensorType::kBF16, {0x40, 0xC0}, {-3.0f});
  expect_decodes_to(TensorType::kBF16, {0x01, 0x00}, {0x1p-133f});

  std::vector<uint8_t> f64(8);
  const double tenth = 0.1;
  std::memcpy(f64.data(), &tenth, 8);
  expect_decodes_to(TensorType::kF64, f64, {0.1f});  // rounded to the nearest float
  const double huge = 1e300;
  std::memcpy(f64.data(), &huge, 8);
  expect_decodes_to(TensorType::kF64, f64, {INFINITY});
}

// The F16 and BF16 bulk paths (vectorised with F16C) agree with the scalar conversions on
// every half, NaNs included.
TEST(Dequantize, HalfTensorsMatchScalarConversion) {
  std::vector<uint8_t> all(2 * 65536);
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    all[2 * h] = static_cast<uint8_t>(h & 0xFF);
    all[2 * h + 1] = static_cast<uint8_t>(h >> 8);
  }
  std::vector<float> out(65536);
  dequantize(TensorType::kF16, all.data(), out.data(), 65536);
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    ASSERT_EQ(std::bit_cast<uint32_t>(out[h]),
              std::bit_cast<uint32_t>(portable::fp16_to_fp32(static_cast<uint16_t>(h))));
  }
  dequantize_parallel(TensorType::kBF16, all.data(), out.data(), 65536);
  for (uint32_t h = 0; h <= 0xFFFF; ++h) ASSERT_EQ(std::bit_cast<uint32_t>(out[h]), h << 16);

  std::vector<uint8_t> back(2 * 65536);
  quantize(TensorType::kF16, out.data(), back.data(), 65536);  // out now holds bf16 values
  for (uint32_t i = 0; i < 65536; ++i) {
    uint16_t h;
    std::memcpy(&h, back.data() + 2 * i, 2);
    ASSERT_EQ(h, portable::fp32_to_fp16(out[i])) << i;
  }
  quantize(TensorType::kBF16, out.data(), back.data(), 65536);
  for (uint32_t i = 0; i < 65536; ++i) {
    uint16_t h;
    std::memcpy(&h, back.data() + 2 * i, 2);
    ASSERT_EQ(h, fp32_to_bf16(out[i])) << i;
  }
}

// ---- 32-number blocks ----

TEST(Dequantize, Q4_0) {
  // d = 0.5 @0; qs @2, qs[j] = element j (low nibble) and j + 16 (high); y = (nibble - 8) * d.
  auto block = zero_block(TensorType::kQ4_0);
  put_half(block, 0, kHalfHalf);
  for (int j = 0; j < 16; ++j) block[2 + j] = 0x88;  // all zero
  block[2 + 0] = 0x0F;  // y0 = (15 - 8) * 0.5 = 3.5, y16 = (0 - 8) * 0.5 = -4
  block[2 + 1] = 0x98;  // y1 = 0, y17 = (9 - 8) * 0.5 = 0.5
  std::vector<float> want(32, 0.0f);
  want[0] = 3.5f;
  want[16] = -4.0f;
  want[17] = 0.5f;
  expect_decodes_to(TensorType::kQ4_0, block, want);
}

TEST(Dequantize, Q4_1) {
  // d = 0.25 @0, m = -1 @2, qs @4; y = nibble * d + m.
  auto block = zero_block(TensorType::kQ4_1);
  put_half(block, 0, kHalfQuarter);
  put_half(block, 2, kHalfMinusOne);
  block[4 + 0] = 0x0F;  // y0 = 15 * 0.25 - 1 = 2.75, y16 = -1
  block[4 + 2] = 0x41;  // y2 = 0.25 - 1 = -0.75, y18 = 4 * 0.25 - 1 = 0
  std::vector<float> want(32, -1.0f);
  want[0] = 2.75f;
  want[2] = -0.75f;
  want[18] = 0.0f;
  expect_decodes_to(TensorType::kQ4_1, block, want);
}

TEST(Dequantize, Q5_0) {
  // d = 0.5 @0, qh @2 (bit j = fifth bit of element j), qs @6; y = (q - 16) * d.
  auto block = zero_block(TensorType::kQ5_0);
  put_half(block, 0, kHalfHalf);
  // qh = bits 3 and 20: 0x00100008, little-endian.
  block[2] = 0x08;
  block[4] = 0x10;
  block[6 + 3] = 0x2F;                 // y3 = (15 | 16) - 16 = 15 -> 7.5; y19 = 2 - 16 = -14 -> -7
  block[6 + 4] = 0x30;                 // y4 = -16 -> -8; y20 = (3 | 16) - 16 = 3 -> 1.5
  std::vector<float> want(32, -8.0f);  // every other element is 0 - 16
  want[3] = 7.5f;
  want[19] = -7.0f;
  want[20] = 1.5f;
  expect_decodes_to(TensorType::kQ5_0, block, want);
}

TEST(Dequantize, Q5_1) {
  // d = 2 @0, m = 0.5 @2, qh @4, qs @8; y = q * d + m.
  auto block = zero_block(TensorType::kQ5_1);
  put_half(block, 0, kHalfTwo);
  put_half(block, 2, kHalfHalf);
  // qh = bits 0 and 31: 0x80000001.
  block[4] = 0x01;
  block[7] = 0x80;
  block[8 + 15] = 0x5F;  // y15 = 15 -> 30.5; y31 = 5 | 16 = 21 -> 42.5
  // qs[0] = 0: y0 = 0 | 16 = 16 -> 32.5; y16 = 0 -> 0.5
  std::vector<float> want(32, 0.5f);
  want[0] = 32.5f;
  want[15] = 30.5f;
  want[31] = 42.5f;
  expect_decodes_to(TensorType::kQ5_1, block, want);
}

TEST(Dequantize, Q8_0) {
  // d = 0.25 @0, qs (int8) @2; y = q * d.
  auto block = zero_block(TensorType::kQ8_0);
  put_half(block, 0, kHalfQuarter);
  block[2 + 0] = 0x7F;   // 127 -> 31.75
  block[2 + 1] = 0x80;   // -128 -> -32
  block[2 + 5] = 0x03;   // 3 -> 0.75
  block[2 + 31] = 0xFF;  // -1 -> -0.25
  std::vector<float> want(32, 0.0f);
  want[0] = 31.75f;
  want[1] = -32.0f;
  want[5] = 0.75f;
  want[31] = -0.25f;
  expect_decodes_to(TensorType::kQ8_0, block, want);
}

// ---- K-quants: element e = 128h + 32p + 16t + l lies in 16-number sub-block 8h + 2p + t ----

TEST(Dequantize, Q2_K) {
  // scales @0, qs @16, d = 0.5 @80, dmin = 0.25 @82. scales[s]: scale low nibble, min high.
  // y = (d * scale) * q - dmin * min, q = field p (bits 2p) of qs[32h + 16t + l].
  auto block = zero_block(TensorType::kQ2_K);
  put_half(block, 80, kHalfHalf);
  put_half(block, 82, kHalfQuarter);
  block[0] = 0x21;        // s0: dl = 0.5, ml = 0.5
  block[1] = 0x0F;        // s1: dl = 7.5, ml = 0
  block[6] = 0x13;        // s6 (h0 p3 t0): dl = 1.5, ml = 0.25
  block[15] = 0xF3;       // s15 (h1 p3 t1): dl = 1.5, ml = 3.75
  block[16 + 0] = 0xC2;   // field 0 = 2 -> y0 = 1 - 0.5 = 0.5; field 3 = 3 -> y96 = 4.5 - 0.25
  block[16 + 16] = 0x03;  // field 0 of byte 16 (t = 1) = 3 -> y16 = 22.5
  block[16 + 63] = 0x40;  // field 3 of byte 63 (h1 t1 l15) = 1 -> y255 = 1.5 - 3.75
  std::vector<float> want(256, 0.0f);
  for (int l = 0; l < 16; ++l) {
    want[l] = -0.5f;
    want[96 + l] = -0.25f;
    want[240 + l] = -3.75f;
  }
  want[0] = 0.5f;
  want[16] = 22.5f;
  want[96] = 4.25f;
  want[255] = -2.25f;
  expect_decodes_to(TensorType::kQ2_K, block, want);
}

TEST(Dequantize, Q3_K) {
  // hmask @0, qs @32, scales @96, d = 0.5 @108. q = field p of qs[32h + 16t + l], minus 4
  // unless bit 4h + p of hmask[16t + l] is set; y = (d * (scale - 32)) * q.
  auto block = zero_block(TensorType::kQ3_K);
  put_half(block, 108, kHalfHalf);
  for (int i = 0; i < 32; ++i) block[i] = 0xFF;  // high bits set: q = low bits, default 0
  // Scales, 6 bits with bias 32: low nibbles in bytes 0-7 (s < 8 low, s >= 8 high nibble of
  // byte s - 8), top two bits in byte 8 + s%4 at bit 2*(s/4). Every scale starts at 32 (top
  // bits 0b10 everywhere: bytes 8-11 = 0xAA), then:
  //   s0 = 33 (low 1)                -> byte 0 = 0x01; dl = 0.5 * 1 = 0.5
  //   s5 = 30 = 0b01'1110            -> byte 5 = 0x0E, byte 9 bits 2-3 = 01; dl = -1
  //   s9 = 0                         -> byte 9 bits 4-5 = 00; dl = 0.5 * -32 = -16
  //   s15 = 63 = 0b11'1111           -> byte 7 = 0xF0, byte 11 bits 6-7 = 11; dl = 15.5
  const uint8_t scales[12] = {0x01, 0, 0, 0, 0, 0x0E, 0, 0xF0, 0xAA, 0x86, 0xAA, 0xEA};
  std::memcpy(block.data() + 96, scales, 12);
  block[32 + 0] = 0x03;   // y0 (s0, field 0) = 3 -> 1.5
  block[1] = 0xFE;        // y1 (s0): high bit 0 clear -> q = -4 -> -2
  block[32 + 18] = 0x10;  // y82 (s5 = h0 p2 t1, l = 2): field 2 = 1 ...
  block[18] = 0xFB;       // ... with bit 2 clear -> q = -3 -> 3
  block[32 + 63] = 0x02;  // y159 (s9 = h1 p0 t1, l = 15): field 0 = 2 ...
  block[31] = 0xEF;       // ... with bit 4 clear -> q = -2 -> 32
  block[32 + 48] = 0xC0;  // y240 (s15 = h1 p3 t1, l = 0): field 3 = 3 -> 46.5
  block[17] = 0x7F;       // y241 (s15, l = 1): bit 7 clear -> q = -4 -> -62
  std::vector<float> want(256, 0.0f);
  want[0] = 1.5f;
  want[1] = -2.0f;
  want[82] = 3.0f;
  want[159] = 32.0f;
  want[240] = 46.5f;
  want[241] = -62.0f;
  expect_decodes_to(TensorType::kQ3_K, block, want);
}

TEST(Dequantize, Q4_K) {
  // d = 0.5 @0, dmin = 0.25 @2, scales @4, qs @16. Sub-block s (32 numbers) reads qs[32*(s/2)..],
  // low nibbles for even s, high for odd. y = (d * scale) * q - dmin * min.
  auto block = zero_block(TensorType::kQ4_K);
  put_half(block, 0, kHalfHalf);
  put_half(block, 2, kHalfQuarter);
  // 6-bit scale/min b[12]: s < 4 -> b[s] & 63, b[s+4] & 63; s >= 4 -> low nibbles of b[s+4]
  // (scale low, min high), top bits from b[s-4] >> 6 (scale) and b[s] >> 6 (min).
  //   s0: scale 3, min 2    -> b0 = 3, b4 = 2;                dl = 1.5,  ml = 0.5
  //   s1: scale 63, min 0   -> b1 = 0x3F, b5 = 0;             dl = 31.5, ml = 0
  //   s5: scale 37 = 0b10'0101, min 50 = 0b11'0010 -> b9 = 0x25, b1 |= 0x80, b5 |= 0xC0;
  //                                                           dl = 18.5, ml = 12.5
  //   s7: scale 0, min 63   -> b11 = 0xF0, b7 = 0xC0;         dl = 0,    ml = 15.75
  const uint8_t scales[12] = {3, 0xBF, 0, 0, 2, 0xC0, 0, 0xC0, 0, 0x25, 0, 0xF0};
  std::memcpy(block.data() + 4, scales, 12);
  block[16 + 0] = 0xF4;   // y0 = 1.5 * 4 - 0.5 = 5.5; y32 (s1) = 31.5 * 15 = 472.5
  block[16 + 31] = 0x10;  // y31 = -0.5; y63 = 31.5
  block[16 + 67] = 0xA0;  // s5 reads bytes 64.. high nibbles: y(160 + 3) = 18.5 * 10 - 12.5
  std::vector<float> want(256, 0.0f);
  for (int l = 0; l < 32; ++l) {
    want[l] = -0.5f;
    want[160 + l] = -12.5f;
    want[224 + l] = -15.75f;
  }
  want[0] = 5.5f;
  want[32] = 472.5f;
  want[63] = 31.5f;
  want[163] = 172.5f;
  expect_decodes_to(TensorType::kQ4_K, block, want);
}

TEST(Dequantize, Q5_K) {
  // d = 1 @0, dmin = 0.5 @2, scales @4 (as Q4_K), qh @16, qs @48. Fifth bit of element
  // 32s + l is bit s of qh[l]. y = (d * scale) * q - dmin * min.
  auto block = zero_block(TensorType::kQ5_K);
  put_half(block, 0, kHalfOne);
  put_half(block, 2, kHalfHalf);
  //   s0: scale 2, min 1                                  -> b0 = 2, b4 = 1; dl = 2, ml = 0.5
  //   s6: scale 20 = 0b01'0100, min 33 = 0b10'0001 -> b10 = 0x14, b2 = 0x40, b6 = 0x80;
  //                                                         dl = 20, ml = 16.5
  const uint8_t scales[12] = {2, 0, 0x40, 0, 1, 0, 0x80, 0, 0, 0, 0x14, 0};
  std::memcpy(block.data() + 4, scales, 12);
  block[48 + 0] = 0x0F;  // y0: 15 | 16 (qh[0] bit 0) = 31 -> 61.5
  block[16 + 0] = 0x01;
  block[16 + 1] = 0x01;    // y1: 0 | 16 = 16 -> 31.5
  block[48 + 2] = 0x07;    // y2: 7 -> 13.5
  block[48 + 101] = 0x03;  // s6 reads bytes 96.. low nibbles: y(192 + 5) = 3 | 16 (qh[5] bit 6)
  block[16 + 5] = 0x40;    //   = 19 -> 20 * 19 - 16.5 = 363.5
  std::vector<float> want(256, 0.0f);
  for (int l = 0; l < 32; ++l) {
    want[l] = -0.5f;
    want[192 + l] = -16.5f;
  }
  want[0] = 61.5f;
  want[1] = 31.5f;
  want[2] = 13.5f;
  want[197] = 363.5f;
  expect_decodes_to(TensorType::kQ5_K, block, want);
}

TEST(Dequantize, Q6_K) {
  // ql @0, qh @128, scales (int8) @192, d = 0.5 @208. Low four bits from
  // ql[64h + 32(p%2) + 16t + l] (low nibble for p < 2, high for p >= 2), top two from field p of
  // qh[32h + 16t + l]; q = value - 32; y = (d * scale) * q.
  auto block = zero_block(TensorType::kQ6_K);
  put_half(block, 208, kHalfHalf);
  block[192 + 0] = 1;      // s0: 0.5
  block[192 + 3] = 0xFE;   // s3 = -2: -1
  block[192 + 6] = 4;      // s6: 2
  block[192 + 13] = 0x7F;  // s13 = 127: 63.5
  block[192 + 15] = 0x80;  // s15 = -128: -64
  // Elements left at value 0 have q = -32.
  block[0] = 0x05;         // y0 (s0): low 5 ...
  block[128 + 0] = 0x42;   // ... field 0 = 2 -> 37 - 32 = 5 -> 2.5; field 3 = 1 for y96
  block[50] = 0x0F;        // y50 (s3 = h0 p1 t1, l = 2): ql[32 + 16 + 2] low = 15 ...
  block[128 + 18] = 0x0C;  // ... field 1 of qh[18] = 3 -> 63 - 32 = 31 -> -31
  block[32] = 0x80;        // y96 (s6 = h0 p3 t0, l = 0): ql[32] high = 8, qh[0] field 3 = 1
                           //   -> 24 - 32 = -8 -> -16
  block[87] = 0xF0;        // y215 (s13 = h1 p2 t1, l = 7): ql[64 + 16 + 7] high = 15 ...
  block[128 + 55] = 0x30;  // ... qh[32 + 16 + 7] field 2 = 3 -> 31 -> 1968.5
  block[127] = 0x10;       // y255 (s15 = h1 p3 t1, l = 15): ql[64 + 32 + 16 + 15] high = 1 ...
  block[128 + 63] = 0x80;  // ... qh[63] field 3 = 2 -> 33 - 32 = 1 -> -64
  std::vector<float> want(256, 0.0f);
  for (int l = 0; l < 16; ++l) {
    want[l] = -16.0f;
    want[48 + l] = 32.0f;
    want[96 + l] = -64.0f;
    want[208 + l] = -2032.0f;
    want[240 + l] = 2048.0f;
  }
  want[0] = 2.5f;
  want[50] = -31.0f;
  want[96] = -16.0f;
  want[215] = 1968.5f;
  want[255] = -64.0f;
  expect_decodes_to(TensorType::kQ6_K, block, want);
}

// ---- Quantizers ----

std::vector<float> random_normal(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  return x;
}

// Q8_0 rounds x / d to the nearest integer with d = amax / 127 (error d / 2) and stores d as f16
// (relative error 2^-11, times |q| <= 127): |x - y| <= d * (0.5 + 127 / 2048) < 0.57 d.
// Q4_0 and Q5_0 have step |d| = amax / 8 (amax / 16) and cap the far side one step short, so
// |x - y| <= |d| (plus the same f16 term, 8 or 16 * 2^-11 of it).
// Q4_1 and Q5_1 round (x - min) / d to nearest with d = (max - min) / 15 (31): d / 2, plus the
// f16 rounding of d (2^-11 relative, times q <= 15 or 31) and of min (2^-11 |min|).
TEST(Quantize, RoundTripWithinBlockBound) {
  const int64_t n = 32 * 2048;
  auto x = random_normal(n, 7);
  for (int64_t i = 0; i < n; i += 97) x[i] *= 30.0f;  // outliers, as real weights have
  x[5] = 0.0f;
  for (int j = 32; j < 64; ++j) x[j] = 0.0f;   // an all-zero block decodes to zeros
  for (int j = 64; j < 96; ++j) x[j] = 0.75f;  // a constant block

  for (TensorType type : {TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ5_0,
                          TensorType::kQ4_1, TensorType::kQ5_1}) {
    SCOPED_TRACE(std::string(io::tensor_type_info(type).name));
    std::vector<uint8_t> q(io::tensor_bytes(type, n));
    quantize(type, x.data(), q.data(), n);
    std::vector<float> y(n);
    dequantize(type, q.data(), y.data(), n);
    for (int64_t b = 0; b < n / 32; ++b) {
      float amax = 0.0f, min = x[32 * b], max = x[32 * b];
      for (int j = 0; j < 32; ++j) {
        const float v = x[32 * b + j];
        amax = std::max(amax, std::fabs(v));
        min = std::min(min, v);
        max = std::max(max, v);
      }
      float bound = 0.0f;
      switch (type) {
        case TensorType::kQ8_0:
          bound = 0.57f * amax / 127.0f;
          break;
        case TensorType::kQ4_0:
          bound = 1.01f * amax / 8.0f;
          break;
        case TensorType::kQ5_0:
          bound = 1.01f * amax / 16.0f;
          break;
        case TensorType::kQ4_1:
          bound = (max - min) / 15.0f * (0.5f + 15.0f / 2048) + std::fabs(min) / 2048;
          break;
        default:
          bound = (max - min) / 31.0f * (0.5f + 31.0f / 2048) + std::fabs(min) / 2048;
          break;
      }
      bound = bound * 1.0001f + 1e-7f;  // the float arithmetic of decoding
      for (int j = 0; j < 32; ++j) {
        const int64_t i = 32 * b + j;
        ASSERT_LE(std::fabs(x[i] - y[i]), bound) << "element " << i;
      }
    }
    for (int j = 32; j < 64; ++j) EXPECT_EQ(y[j], 0.0f);
  }
}

// The K-quants on the same kind of numbers: relative RMS error within about 1.5 times what was
// measured (in brackets); the outliers dominate it. The step sizes order the types, so a
// layout error (which sends the error towards 100%) or a search that picks poor scales shows.
//   q6_K [3.4%] 5%, q5_K [5.0%] 7.5%, q4_K [9.3%] 14%, q3_K [11.6%] 17.5%, q2_K [22.3%] 33%
// Every type must also decode an all-zero super-block to zeros and quantize the same bytes
// whole, in pieces of one block, and through quantize_parallel.
TEST(Quantize, KQuantRoundTrip) {
  const int64_t n = 256 * 512;
  auto x = random_normal(n, 11);
  for (int64_t i = 0; i < n; i += 97) x[i] *= 30.0f;
  for (int j = 256; j < 512; ++j) x[j] = 0.0f;
  for (int j = 512 + 32; j < 512 + 48; ++j) x[j] = 0.0f;  // a zero sub-block
  for (int j = 768; j < 1024; ++j) x[j] = -0.5f;          // a constant super-block
  const std::pair<TensorType, double> bounds[] = {{TensorType::kQ6_K, 0.05},
                                                  {TensorType::kQ5_K, 0.075},
                                                  {TensorType::kQ4_K, 0.14},
                                                  {TensorType::kQ3_K, 0.175},
                                                  {TensorType::kQ2_K, 0.33}};
  double previous = 0.0;
  for (const auto& [type, bound] : bounds) {
    SCOPED_TRACE(std::string(io::tensor_type_info(type).name));
    const size_t bytes = io::tensor_bytes(type, n);
    std::vector<uint8_t> whole(bytes), pieces(bytes), parallel(bytes);
    quantize(type, x.data(), whole.data(), n);
    const size_t block_bytes = io::tensor_type_info(type).block_bytes;
    for (int64_t b = 0; b < n / 256; ++b) {
      quantize(type, x.data() + 256 * b, pieces.data() + block_bytes * b, 256);
    }
    quantize_parallel(type, x.data(), parallel.data(), n);
    EXPECT_EQ(whole, pieces);
    EXPECT_EQ(whole, parallel);

    std::vector<float> y(n);
    dequantize(type, whole.data(), y.data(), n);
    double error2 = 0.0, norm2 = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      error2 += (static_cast<double>(y[i]) - x[i]) * (static_cast<double>(y[i]) - x[i]);
      norm2 += static_cast<double>(x[i]) * x[i];
    }
    const double relative_rms = std::sqrt(error2 / norm2);
    EXPECT_LE(relative_rms, bound);
    EXPECT_GT(relative_rms, previous);  // fewer bits, more error
    previous = relative_rms;
    for (int j = 256; j < 512; ++j) ASSERT_EQ(y[j], 0.0f) << j;
    for (int j = 768; j < 1024; ++j) ASSERT_NEAR(y[j], -0.5f, 0.5f * bound) << j;
    std::cout << "  " << io::tensor_type_info(type).name << " relative RMS error " << relative_rms
              << "\n";
  }
}

TEST(Quantize, HandComputedBlocks) {
  // Q8_0: amax = 31.75 -> d = 31.75 / 127 = 0.25, 1/d = 4; x * 4 rounds half away from zero.
  std::vector<float> x(32, 0.0f);
  x[0] = -31.75f;  // -127
  x[1] = -1.125f;  // -4.5 -> -5
  x[2] = 0.125f;   // 0.5 -> 1
  x[3] = 0.0625f;  // 0.25 -> 0
  x[4] = 0.375f;   // 1.5 -> 2
  std::vector<uint8_t> q8(34);
  quantize(TensorType::kQ8_0, x.data(), q8.data(), 32);
  EXPECT_EQ(q8[0] | (q8[1] << 8), kHalfQuarter);
  const int8_t want_q8[6] = {-127, -5, 1, 0, 2, 0};
  for (int j = 0; j < 6; ++j) EXPECT_EQ(static_cast<int8_t>(q8[2 + j]), want_q8[j]) << j;

  // Q4_0: the largest magnitude is -4, so d = -4 / -8 = 0.5 and q = trunc(x / 0.5 + 8.5):
  // -4 -> 0, 1 -> 10, 3.9 -> 16.3 capped at 15, 0 -> 8.
  std::fill(x.begin(), x.end(), 0.0f);
  x[0] = -4.0f;
  x[16] = 1.0f;
  x[1] = 3.9f;
  std::vector<uint8_t> q4(18);
  quantize(TensorType::kQ4_0, x.data(), q4.data(), 32);
  EXPECT_EQ(q4[0] | (q4[1] << 8), kHalfHalf);
  EXPECT_EQ(q4[2], 0xA0);  // element 0 low, element 16 high
  EXPECT_EQ(q4[3], 0x8F);
  EXPECT_EQ(q4[4], 0x88);
}

TEST(Quantize, HandComputedBlocksAffineAndFiveBit) {
  // Q4_1: min = -1, max = 2 -> d = 3 / 15 = 0.2 (f16 0x3266: 1.6 * 2^-3, mantissa 614.4 -> 614),
  // 1/d = 5 (1 / 0.2f = 4.99999993 rounds to 5); q = trunc((x + 1) * 5 + 0.5): -1 -> 0,
  // 2 -> 15, 0 -> 5, 0.1 -> 6 (0.1f + 1 rounds to 1.10000002, times 5 rounds to 5.5, + 0.5 = 6),
  // 0.09 -> 5 (5.45 + 0.5).
  std::vector<float> x(32, 0.0f);
  x[0] = -1.0f;
  x[16] = 2.0f;
  x[1] = 0.1f;
  x[17] = 0.09f;
  std::vector<uint8_t> q(20);
  quantize(TensorType::kQ4_1, x.data(), q.data(), 32);
  EXPECT_EQ(q[0] | (q[1] << 8), 0x3266);         // 0.2 in f16
  EXPECT_EQ(q[2] | (q[3] << 8), kHalfMinusOne);  // min
  EXPECT_EQ(q[4], 0xF0);                         // element 0 -> 0, element 16 -> 15
  EXPECT_EQ(q[5], 0x56);                         // element 1 -> 6, element 17 -> 5
  EXPECT_EQ(q[6], 0x55);                         // zeros -> 5

  // Q5_0: the largest magnitude is 8 (positive), d = 8 / -16 = -0.5, 1/d = -2;
  // q = trunc(x * -2 + 16.5) capped at 31: 8 -> 0, -8 -> 32 capped at 31, 1.2 -> 14, 0 -> 16.
  std::fill(x.begin(), x.end(), 0.0f);
  x[0] = 8.0f;
  x[16] = -8.0f;
  x[3] = 1.2f;
  q.assign(22, 0);
  quantize(TensorType::kQ5_0, x.data(), q.data(), 32);
  EXPECT_EQ(q[0] | (q[1] << 8), 0xB800);  // -0.5
  uint32_t qh;
  std::memcpy(&qh, q.data() + 2, 4);
  // Fifth bits: set for every 16 (elements other than 0, 3, 16) and for 31 (element 16).
  EXPECT_EQ(qh, 0xFFFFFFFFu & ~(1u << 0) & ~(1u << 3));
  EXPECT_EQ(q[6 + 0], 0xF0);  // element 0 -> 0, element 16 -> 31 (low nibble 15)
  EXPECT_EQ(q[6 + 3], 0x0E);  // element 3 -> 14, element 19 -> 16 (low nibble 0)

  // Q5_1: min = 0, max = 31 -> d = 1, q = trunc(x + 0.5): 31 -> 31, 17.4 -> 17, 2.5 -> 3.
  std::fill(x.begin(), x.end(), 0.0f);
  x[31] = 31.0f;
  x[1] = 17.4f;
  x[2] = 2.5f;
  q.assign(24, 0);
  quantize(TensorType::kQ5_1, x.data(), q.data(), 32);
  EXPECT_EQ(q[0] | (q[1] << 8), kHalfOne);
  EXPECT_EQ(q[2] | (q[3] << 8), 0x0000);
  std::memcpy(&qh, q.data() + 4, 4);
  EXPECT_EQ(qh, (1u << 1) | (1u << 31));
  EXPECT_EQ(q[8 + 1], 0x01);  // 17 -> low nibble 1
  EXPECT_EQ(q[8 + 2], 0x03);
  EXPECT_EQ(q[8 + 15], 0xF0);  // element 31 -> 31: low nibble 15 in the high half
}

// Q4_K and Q5_K on numbers that lie on their grids: sub-block s holds l % 16 (Q4_K) or l
// (Q5_K) at position l, so min = 0, the first grid (scale 1) fits exactly with error 0 and no
// later grid can do better. Every sub-block's scale is 1 and min 0, so the stored scale is
// round(63 * 1 / 1) = 63, d = 1/63 in f16 = 0x2410 (1.015625 * 2^-6), dmin = 0, and every
// number x requantizes to round(x / (63 d)) = x (63 d = 0.99976). Scale bytes, as
// k4_scale_min reads them: b[0..3] = 63 | (63 >> 4) << 6 = 0xFF, b[4..7] = 0, b[8..11] = 0x0F.
TEST(Quantize, HandComputedKBlocksOnTheirGrid) {
  const uint8_t want_scales[12] = {0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0x0F, 0x0F, 0x0F, 0x0F};
  std::vector<float> x(256);
  for (int e = 0; e < 256; ++e) x[e] = static_cast<float>(e % 16);
  std::vector<uint8_t> q4(144);
  quantize(TensorType::kQ4_K, x.data(), q4.data(), 256);
  EXPECT_EQ(q4[0] | (q4[1] << 8), 0x2410);
  EXPECT_EQ(q4[2] | (q4[3] << 8), 0x0000);
  for (int b = 0; b < 12; ++b) EXPECT_EQ(q4[4 + b], want_scales[b]) << b;
  // qs[32 * pair + j] = level of element 64 pair + j (low) and 64 pair + 32 + j (high).
  for (int j = 0; j < 128; ++j) EXPECT_EQ(q4[16 + j], (j % 16) * 0x11) << j;

  for (int e = 0; e < 256; ++e) x[e] = static_cast<float>(e % 32);
  std::vector<uint8_t> q5(176);
  quantize(TensorType::kQ5_K, x.data(), q5.data(), 256);
  EXPECT_EQ(q5[0] | (q5[1] << 8), 0x2410);
  EXPECT_EQ(q5[2] | (q5[3] << 8), 0x0000);
  for (int b = 0; b < 12; ++b) EXPECT_EQ(q5[4 + b], want_scales[b]) << b;
  // qh[l]: bit s set when element 32 s + l has its fifth bit, i.e. l >= 16, in every sub-block.
  for (int l = 0; l < 32; ++l) EXPECT_EQ(q5[16 + l], l >= 16 ? 0xFF : 0x00) << l;
  for (int j = 0; j < 128; ++j) EXPECT_EQ(q5[48 + j], (j % 32 % 16) * 0x11) << j;

  // All zeros: every type writes an all-zero block (d = 0; Q3_K's search leaves its levels at
  // 0, not at the biased zero 4, as llama.cpp's does, so even its hmask is clear).
  std::fill(x.begin(), x.end(), 0.0f);
  for (TensorType type : {TensorType::kQ2_K, TensorType::kQ3_K, TensorType::kQ4_K,
                          TensorType::kQ5_K, TensorType::kQ6_K}) {
    std::vector<uint8_t> block(io::tensor_type_info(type).block_bytes, 0xAB);
    quantize(type, x.data(), block.data(), 256);
    for (size_t i = 0; i < block.size(); ++i) {
      ASSERT_EQ(block[i], 0) << io::tensor_type_info(type).name << " byte " << i;
    }
  }
}

// ---- Errors ----

std::string error_message(const std::function<void()>& call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Dequantize, ErrorsNameTheType) {
  std::vector<uint8_t> bytes(1024);
  std::vector<float> floats(1024);
  auto message =
      error_message([&] { dequantize(TensorType::kQ4_0, bytes.data(), floats.data(), 33); });
  EXPECT_NE(message.find("q4_0"), std::string::npos) << message;
  EXPECT_NE(message.find("33"), std::string::npos) << message;
  message = error_message(
      [&] { dequantize_parallel(TensorType::kQ6_K, bytes.data(), floats.data(), 300); });
  EXPECT_NE(message.find("q6_K"), std::string::npos) << message;
  message = error_message([&] { dequantize(TensorType::kQ8_0, bytes.data(), floats.data(), -32); });
  EXPECT_NE(message.find("q8_0"), std::string::npos) << message;

  for (TensorType type : {TensorType::kQ8_K, TensorType::kQ8_1, TensorType::kI32}) {
    EXPECT_FALSE(can_dequantize(type));
    const std::string name(io::tensor_type_info(type).name);
    message = error_message([&] { dequantize(type, bytes.data(), floats.data(), 256); });
    EXPECT_NE(message.find(name), std::string::npos) << message;
    EXPECT_NE(message.find("not supported"), std::string::npos) << message;
  }
  message = error_message(
      [&] { dequantize(static_cast<TensorType>(99), bytes.data(), floats.data(), 1); });
  EXPECT_NE(message.find("type#99"), std::string::npos) << message;

  EXPECT_FALSE(can_quantize(TensorType::kQ8_K));
  message = error_message([&] { quantize(TensorType::kQ8_K, floats.data(), bytes.data(), 256); });
  EXPECT_NE(message.find("q8_K"), std::string::npos) << message;
  message = error_message([&] { quantize(TensorType::kQ4_K, floats.data(), bytes.data(), 300); });
  EXPECT_NE(message.find("q4_K"), std::string::npos) << message;
  message = error_message([&] { quantize(TensorType::kQ8_0, floats.data(), bytes.data(), 31); });
  EXPECT_NE(message.find("q8_0"), std::string::npos) << message;
}

TEST(Dequantize, SupportedTypes) {
  for (TensorType type :
       {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kF64, TensorType::kQ4_0,
        TensorType::kQ4_1, TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kQ8_0,
        TensorType::kQ2_K, TensorType::kQ3_K, TensorType::kQ4_K, TensorType::kQ5_K,
        TensorType::kQ6_K}) {
    EXPECT_TRUE(can_dequantize(type)) << io::tensor_type_info(type).name;
  }
  for (TensorType type :
       {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kQ4_0, TensorType::kQ4_1,
        TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kQ8_0, TensorType::kQ2_K,
        TensorType::kQ3_K, TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K}) {
    EXPECT_TRUE(can_quantize(type)) << io::tensor_type_info(type).name;
  }
  for (TensorType type : {TensorType::kF64, TensorType::kQ8_1, TensorType::kQ8_K}) {
    EXPECT_FALSE(can_quantize(type)) << io::tensor_type_info(type).name;
  }
}

// ---- Real files made by llama-quantize ----

constexpr const char* kF32Model = "models/tinystories-c4-gqa.gguf";

// Relative RMS error of each type against the F32 weights it was made from. Each bound is about
// twice what the step size predicts for these weights (uniform rounding error is step/sqrt(12)),
// with the largest error seen over the tensors of the shared files in brackets:
//   q8_0: step amax/127 per 32 numbers; amax is ~3 sigma in a block, so ~0.7%: bound 1.5% (0.60%)
//   q6_K: 6-bit quants, 8-bit scale per 16 numbers, step ~amax/32, ~3%: bound 6% (1.9%)
//   q4_K: 4-bit quants, scale and min per 32 numbers, step (max-min)/15, ~9%: bound 15% (7.3%)
//   q4_0: step amax/8 and a one-sided 16th level, ~11%: bound 20% (9.1%)
// A block read with a wrong layout gives errors near 100% or more.
double error_bound(TensorType type) {
  switch (type) {
    case TensorType::kF32:
      return 0.0;
    case TensorType::kQ8_0:
      return 0.015;
    case TensorType::kQ6_K:
      return 0.06;
    case TensorType::kQ4_K:
      return 0.15;
    case TensorType::kQ4_0:
      return 0.20;
    default:
      ADD_FAILURE() << "no error bound for " << io::tensor_type_info(type).name;
      return 0.0;
  }
}

class RealFile : public ::testing::TestWithParam<const char*> {};

TEST_P(RealFile, DequantizesCloseToF32Model) {
  const std::string quantized = std::string("models/quantized/") + GetParam();
  EKV_REQUIRE_SHARED(kF32Model);
  EKV_REQUIRE_SHARED(quantized);
  const io::GgufFile reference(testing::shared_path(kF32Model));
  const io::GgufFile file(testing::shared_path(quantized));
  ASSERT_EQ(file.tensors().size(), reference.tensors().size());
  std::map<std::string, double> worst;    // type name -> largest relative RMS error
  std::map<std::string, int> byte_exact;  // type name -> tensors compared with our encoder
  for (const io::TensorView& tensor : file.tensors()) {
    SCOPED_TRACE(tensor.name + " (" + std::string(io::tensor_type_info(tensor.type).name) + ")");
    const io::TensorView& original = reference.tensor(tensor.name);
    ASSERT_EQ(original.type, TensorType::kF32);
    ASSERT_EQ(tensor.shape, original.shape);
    const int64_t n = tensor.numel();
    ASSERT_EQ(tensor.nbytes, io::tensor_bytes(tensor.type, n));
    std::vector<float> x(n);
    std::memcpy(x.data(), original.data, original.nbytes);

    std::vector<float> y(n);
    dequantize_parallel(tensor.type, tensor.data, y.data(), n);
    double error2 = 0.0, norm2 = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      error2 += (static_cast<double>(y[i]) - x[i]) * (static_cast<double>(y[i]) - x[i]);
      norm2 += static_cast<double>(x[i]) * x[i];
    }
    const double relative_rms = std::sqrt(error2 / norm2);
    EXPECT_LE(relative_rms, error_bound(tensor.type));
    double& type_worst = worst[std::string(io::tensor_type_info(tensor.type).name)];
    type_worst = std::max(type_worst, relative_rms);

    // llama-quantize was given no importance matrix, so it wrote every tensor with the
    // reference quantizers: quantizing the F32 weights must reproduce its bytes exactly, for
    // every type these files hold (Q8_0, Q4_0, Q6_K, Q4_K). Compared block by block so that a
    // failure says how many blocks differ.
    if (tensor.type != TensorType::kF32) {
      ASSERT_TRUE(can_quantize(tensor.type));
      std::vector<uint8_t> ours(tensor.nbytes);
      quantize_parallel(tensor.type, x.data(), ours.data(), n);
      const size_t block_bytes = io::tensor_type_info(tensor.type).block_bytes;
      int64_t differing = 0;
      for (size_t offset = 0; offset < tensor.nbytes; offset += block_bytes) {
        differing += std::memcmp(ours.data() + offset, tensor.data + offset, block_bytes) != 0;
      }
      EXPECT_EQ(differing, 0) << "of " << tensor.nbytes / block_bytes << " blocks";
      ++byte_exact[std::string(io::tensor_type_info(tensor.type).name)];
    }
  }
  for (const auto& [type, error] : worst) {
    std::cout << "  " << GetParam() << ": " << type << " worst relative RMS error " << error
              << (type == "f32"
                      ? ""
                      : ", " + std::to_string(byte_exact[type]) + " tensors compared byte for byte")
              << "\n";
  }
}

INSTANTIATE_TEST_SUITE_P(Quantized, RealFile,
                         ::testing::Values("tinystories-c4-gqa-Q8_0.gguf",
                                           "tinystories-c4-gqa-Q6_K.gguf",
                                           "tinystories-c4-gqa-Q4_K_M.gguf",
                                           "tinystories-c4-gqa-Q4_0.gguf"),
                         [](const auto& info) {
                           std::string name = info.param;
                           name = name.substr(name.rfind('-') + 1);
                           return name.substr(0, name.find('.'));
                         });

}  // namespace
}  // namespace eigenkv::ops
