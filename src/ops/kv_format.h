// How one cached vector (the key or value of one KV head at one position) is stored: float32,
// float16, or quantized with 8 and/or 4 bits per number. A quantized row holds its first `n8`
// numbers at 8 bits and the rest at 4 bits, each run cut into groups of kQuantGroup numbers with
// one float16 scale per group (symmetric, round to nearest): int8 is n8 = width, int4 is n8 = 0,
// and a water-filled eigenbasis cache (DESIGN.md §2, "KV quantization") mixes the two, its
// high-variance leading directions at 8 bits. Any width works (a last partial group is fine).
//
// Byte layout of a quantized row of width w, g8 = ceil(n8/32) and g4 = ceil((w-n8)/32) groups:
//   [g8 + g4 float16 scales][n8 int8][4-bit groups: a group of m numbers takes ceil(m/2) bytes,
//   byte i holding number i in its low nibble and number i + ceil(m/2) in its high nibble, each
//   stored as q + 8 with q in [-8, 7]]
// Optional per-direction scales sigma divide a row before it is quantized and multiply it back
// after: in an eigenbasis the directions' spreads differ by orders of magnitude, and dividing
// them out lets one group scale fit all the directions of a group.
#pragma once

#include <cstdint>
#include <string>

namespace eigenkv::ops {

enum class KvType { kF32, kF16, kInt8, kInt4, kMixed };

// "f32", "f16", "int8", "int4", "mixed".
const char* kv_type_name(KvType type);
// Accepts the names above and llama.cpp's "q8_0" / "q4_0" for int8 / int4; "mixed" only where
// `allow_mixed` (it comes from a model file, not from a user). Throws Error naming the choices.
KvType kv_type_from_name(const std::string& name, bool allow_mixed = false);

inline constexpr int64_t kQuantGroup = 32;
// Bytes a buffer of rows must have after its last row: the SIMD decoders read whole vectors.
inline constexpr int64_t kKvRowSlack = 64;

struct RowFormat {
  KvType type = KvType::kF32;
  int64_t width = 0;  // numbers per row
  int64_t n8 = 0;     // quantized types: numbers [0, n8) at 8 bits, [n8, width) at 4 bits

  // A row of `width` numbers of a uniform type (not kMixed).
  static RowFormat uniform(KvType type, int64_t width);
  // A water-filled row: `n8` numbers at 8 bits, then width - n8 at 4 bits.
  static RowFormat mixed(int64_t width, int64_t n8);

  bool quantized() const { return type == KvType::kInt8 || type == KvType::kInt4 || type == KvType::kMixed; }
  int64_t groups8() const { return (n8 + kQuantGroup - 1) / kQuantGroup; }
  int64_t groups4() const { return (width - n8 + kQuantGroup - 1) / kQuantGroup; }
  int64_t bytes() const;  // bytes per row
  std::string describe() const;  // e.g. "int8", "mixed(8-bit 24, 4-bit 16)"
};

// Stores x[0..width) (divided by sigma[i] first when sigma is given) as one row at `out`.
void encode_row(const RowFormat& format, const float* x, const float* sigma, uint8_t* out);
// The numbers one row holds (times sigma[i] when given): scalar code, the reference for kernels.
void decode_row_reference(const RowFormat& format, const uint8_t* row, const float* sigma,
                          float* x);

}  // namespace eigenkv::ops
