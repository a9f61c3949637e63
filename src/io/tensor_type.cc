#include "io/tensor_type.h"

#include <array>

#include "util/error.h"

namespace eigenkv::io {
namespace {

constexpr std::array<TensorTypeInfo, 20> kTypes = {{
    {TensorType::kF32, "f32", 1, 4},       {TensorType::kF16, "f16", 1, 2},
    {TensorType::kQ4_0, "q4_0", 32, 18},   {TensorType::kQ4_1, "q4_1", 32, 20},
    {TensorType::kQ5_0, "q5_0", 32, 22},   {TensorType::kQ5_1, "q5_1", 32, 24},
    {TensorType::kQ8_0, "q8_0", 32, 34},   {TensorType::kQ8_1, "q8_1", 32, 36},
    {TensorType::kQ2_K, "q2_K", 256, 84},  {TensorType::kQ3_K, "q3_K", 256, 110},
    {TensorType::kQ4_K, "q4_K", 256, 144}, {TensorType::kQ5_K, "q5_K", 256, 176},
    {TensorType::kQ6_K, "q6_K", 256, 210}, {TensorType::kQ8_K, "q8_K", 256, 292},
    {TensorType::kI8, "i8", 1, 1},         {TensorType::kI16, "i16", 1, 2},
    {TensorType::kI32, "i32", 1, 4},       {TensorType::kI64, "i64", 1, 8},
    {TensorType::kF64, "f64", 1, 8},       {TensorType::kBF16, "bf16", 1, 2},
}};

}  // namespace

std::optional<TensorTypeInfo> tensor_type_info(uint32_t raw_type) {
  for (const auto& info : kTypes) {
    if (static_cast<uint32_t>(info.type) == raw_type) return info;
  }
  return std::nullopt;
}

const TensorTypeInfo& tensor_type_info(TensorType type) {
  for (const auto& info : kTypes) {
    if (info.type == type) return info;
  }
  fail("unknown tensor type ", static_cast<uint32_t>(type));
}

std::string tensor_type_name(uint32_t raw_type) {
  auto info = tensor_type_info(raw_type);
  return info ? std::string(info->name) : cat("type#", raw_type);
}

size_t tensor_bytes(TensorType type, int64_t count) {
  const auto& info = tensor_type_info(type);
  EKV_CHECK(count >= 0 && count % info.block_size == 0, "tensor of type ", info.name, " holds ",
            count, " numbers, not a whole number of blocks of ", info.block_size);
  return static_cast<size_t>(count / info.block_size) * info.block_bytes;
}

}  // namespace eigenkv::io
