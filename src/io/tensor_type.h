// Element types of stored tensors, numbered as GGUF numbers them (ggml_type), with the block
// geometry that fixes how many bytes a row takes. Quantized types store `block_size` numbers in
// `block_bytes` bytes; plain types have block_size 1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace eigenkv::io {

enum class TensorType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

struct TensorTypeInfo {
  TensorType type;
  std::string_view name;  // as llama.cpp prints it: "f32", "q4_K", ...
  int64_t block_size;     // numbers per block
  size_t block_bytes;     // bytes per block
};

// The geometry of a known type, or nullopt for a number GGUF defines but eigenkv does not read.
std::optional<TensorTypeInfo> tensor_type_info(uint32_t raw_type);
const TensorTypeInfo& tensor_type_info(TensorType type);
std::string tensor_type_name(uint32_t raw_type);

// Bytes taken by `count` numbers of `type`; throws when count is not a whole number of blocks.
size_t tensor_bytes(TensorType type, int64_t count);

}  // namespace eigenkv::io
