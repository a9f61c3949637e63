// Dense products with weight matrices stored as [out, in] rows (the PyTorch and GGUF layout).
#pragma once

#include <cstddef>
#include <cstdint>

#include "io/tensor_type.h"

namespace eigenkv::ops {

// A weight matrix [rows, cols] in its stored type: row r at data + r * row_bytes.
struct WeightView {
  io::TensorType type = io::TensorType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* data = nullptr;
  size_t row_bytes = 0;
};

// y[t, o] = sum_i x[t, i] * w[o, i]   (x: [n_tokens, w.cols], y: [n_tokens, w.rows]) for a weight
// of any type ops::can_dot takes. Up to kDecodeRows tokens (decode) run the type's dot-product
// kernel straight off the stored blocks, with the activations rounded once to the 8-bit blocks
// the kernel takes, and the threads splitting the weight rows so each row is read once. More
// tokens (prefill) dequantize tiles of weight rows to float32 for OpenBLAS SGEMM on each thread
// (F32 weights go to SGEMM whole), so prefill computes with the exact weights and activations;
// EIGENKV_PREFILL=integer sends block types through the integer kernels instead.
inline constexpr int64_t kDecodeRows = 8;
void matmul(const float* x, int64_t n_tokens, const WeightView& w, float* y);

// The same product from the dequantized weights in plain loops with double accumulation (and
// float activations): the reference for tests.
void matmul_reference(const float* x, int64_t n_tokens, const WeightView& w, float* y);

// Dot product of two float vectors of length n.
float dot(const float* a, const float* b, int64_t n);

}  // namespace eigenkv::ops
