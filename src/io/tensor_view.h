// A borrowed view of one stored tensor: bytes inside a mapped file, never owned.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "io/tensor_type.h"

namespace eigenkv::io {

struct TensorView {
  std::string name;
  TensorType type = TensorType::kF32;
  // Outer dimension first, as PyTorch and safetensors write it: a [rows, cols] matrix has
  // shape {rows, cols} and its rows are contiguous. (GGUF lists dimensions innermost first;
  // its reader reverses them.)
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  std::string shape_string() const;
};

}  // namespace eigenkv::io
