#include "ops/kv_format.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "ops/half.h"
#include "util/error.h"

namespace eigenkv::ops {

const char* kv_type_name(KvType type) {
  switch (type) {
    case KvType::kF32: return "f32";
    case KvType::kF16: return "f16";
    case KvType::kInt8: return "int8";
    case KvType::kInt4: return "int4";
    case KvType::kMixed: return "mixed";
  }
  return "?";
}

KvType kv_type_from_name(const std::string& name, bool allow_mixed) {
  if (name == "f32") return KvType::kF32;
  if (name == "f16") return KvType::kF16;
  if (name == "int8" || name == "q8_0") return KvType::kInt8;
  if (name == "int4" || name == "q4_0") return KvType::kInt4;
  if (name == "mixed" && allow_mixed) return KvType::kMixed;
  fail("unknown KV cache type '", name, "' (choose f32, f16, int8 or int4)");
}

RowFormat RowFormat::uniform(KvType type, int64_t width) {
  EKV_CHECK(type != KvType::kMixed, "a mixed row format needs its 8-bit count");
  EKV_CHECK(width >= 1, "a KV row needs at least one number, got width ", width);
  RowFormat f;
  f.type = type;
  f.width = width;
  f.n8 = type == KvType::kInt8 ? width : 0;
  return f;
}

RowFormat RowFormat::mixed(int64_t width, int64_t n8) {
  EKV_CHECK(width >= 1 && n8 >= 0 && n8 <= width, "mixed KV row: 8-bit count ", n8,
            " outside [0, ", width, "]");
  RowFormat f;
  f.type = KvType::kMixed;
  f.width = width;
  f.n8 = n8;
  return f;
}

int64_t RowFormat::bytes() const {
  switch (type) {
    case KvType::kF32: return 4 * width;
    case KvType::kF16: return 2 * width;
    default: break;
  }
  int64_t bytes = 2 * (groups8() + groups4()) + n8;
  for (int64_t start = n8; start < width; start += kQuantGroup) {
    const int64_t m = std::min(kQuantGroup, width - start);
    bytes += (m + 1) / 2;
  }
  return bytes;
}

std::string RowFormat::describe() const {
  if (type != KvType::kMixed) return kv_type_name(type);
  return "mixed(8-bit " + std::to_string(n8) + ", 4-bit " + std::to_string(width - n8) + ")";
}

namespace {

// The group's scale: the largest magnitude maps to q_max. Stored as float16 and used as stored,
// so that encoding and decoding agree on it exactly.
float group_scale(const float* y, int64_t m, float q_max, uint16_t* stored) {
  float amax = 0.0f;
  for (int64_t i = 0; i < m; ++i) amax = std::max(amax, std::fabs(y[i]));
  *stored = fp32_to_fp16(amax / q_max);
  return fp16_to_fp32(*stored);
}

int quantize(float y, float inv_scale, int lo, int hi) {
  const float q = std::nearbyint(y * inv_scale);
  return static_cast<int>(std::clamp(q, static_cast<float>(lo), static_cast<float>(hi)));
}

}  // namespace

void encode_row(const RowFormat& f, const float* x, const float* sigma, uint8_t* out) {
  thread_local std::vector<float> y;
  const float* src = x;
  if (sigma) {
    y.resize(static_cast<size_t>(f.width));
    for (int64_t i = 0; i < f.width; ++i) y[i] = sigma[i] > 0 ? x[i] / sigma[i] : 0.0f;
    src = y.data();
  }
  if (f.type == KvType::kF32) {
    std::memcpy(out, src, sizeof(float) * f.width);
    return;
  }
  if (f.type == KvType::kF16) {
    for (int64_t i = 0; i < f.width; ++i) {
      const uint16_t h = fp32_to_fp16(src[i]);
      std::memcpy(out + 2 * i, &h, 2);
    }
    return;
  }
  uint8_t* scales = out;
  uint8_t* q8 = out + 2 * (f.groups8() + f.groups4());
  uint8_t* q4 = q8 + f.n8;
  int64_t g = 0;
  for (int64_t start = 0; start < f.n8; start += kQuantGroup, ++g) {
    const int64_t m = std::min(kQuantGroup, f.n8 - start);
    uint16_t stored;
    const float scale = group_scale(src + start, m, 127.0f, &stored);
    std::memcpy(scales + 2 * g, &stored, 2);
    const float inv = scale > 0 ? 1.0f / scale : 0.0f;
    for (int64_t i = 0; i < m; ++i)
      q8[start + i] = static_cast<uint8_t>(static_cast<int8_t>(quantize(src[start + i], inv, -127, 127)));
  }
  for (int64_t start = f.n8; start < f.width; start += kQuantGroup, ++g) {
    const int64_t m = std::min(kQuantGroup, f.width - start);
    const int64_t half = (m + 1) / 2;
    uint16_t stored;
    const float scale = group_scale(src + start, m, 7.0f, &stored);
    std::memcpy(scales + 2 * g, &stored, 2);
    const float inv = scale > 0 ? 1.0f / scale : 0.0f;
    for (int64_t i = 0; i < half; ++i) {
      const int lo = quantize(src[start + i], inv, -8, 7) + 8;
      const int hi = i + half < m ? quantize(src[start + i + half], inv, -8, 7) + 8 : 8;
      q4[i] = static_cast<uint8_t>(lo | (hi << 4));
    }
    q4 += half;
  }
}

void decode_row_reference(const RowFormat& f, const uint8_t* row, const float* sigma, float* x) {
  if (f.type == KvType::kF32) {
    std::memcpy(x, row, sizeof(float) * f.width);
  } else if (f.type == KvType::kF16) {
    for (int64_t i = 0; i < f.width; ++i) {
      uint16_t h;
      std::memcpy(&h, row + 2 * i, 2);
      x[i] = fp16_to_fp32(h);
    }
  } else {
    const uint8_t* scales = row;
    const uint8_t* q8 = row + 2 * (f.groups8() + f.groups4());
    const uint8_t* q4 = q8 + f.n8;
    int64_t g = 0;
    auto scale_of = [&](int64_t group) {
      uint16_t h;
      std::memcpy(&h, scales + 2 * group, 2);
      return fp16_to_fp32(h);
    };
    for (int64_t start = 0; start < f.n8; start += kQuantGroup, ++g) {
      const int64_t m = std::min(kQuantGroup, f.n8 - start);
      const float scale = scale_of(g);
      for (int64_t i = 0; i < m; ++i)
        x[start + i] = scale * static_cast<float>(static_cast<int8_t>(q8[start + i]));
    }
    for (int64_t start = f.n8; start < f.width; start += kQuantGroup, ++g) {
      const int64_t m = std::min(kQuantGroup, f.width - start);
      const int64_t half = (m + 1) / 2;
      const float scale = scale_of(g);
      for (int64_t i = 0; i < half; ++i) {
        x[start + i] = scale * static_cast<float>((q4[i] & 0x0F) - 8);
        if (i + half < m) x[start + i + half] = scale * static_cast<float>((q4[i] >> 4) - 8);
      }
      q4 += half;
    }
  }
  if (sigma) {
    for (int64_t i = 0; i < f.width; ++i) x[i] *= sigma[i];
  }
}

}  // namespace eigenkv::ops
