// Dense products with weight matrices stored as [out, in] rows (the PyTorch and GGUF layout).
#pragma once

#include <cstdint>

namespace eigenkv::ops {

// y[t, o] = sum_i x[t, i] * w[o, i]   (x: [n_tokens, n_in], w: [n_out, n_in], y: [n_tokens, n_out])
// Several tokens go through OpenBLAS SGEMM; one token through a threaded matrix-vector kernel,
// since decode is bound by reading w once.
void matmul_transposed(const float* x, int64_t n_tokens, int64_t n_in, const float* w,
                       int64_t n_out, float* y);

// The same product in plain loops with double accumulation: the reference for tests.
void matmul_transposed_reference(const float* x, int64_t n_tokens, int64_t n_in, const float* w,
                                 int64_t n_out, float* y);

// Dot product of two float vectors of length n.
float dot(const float* a, const float* b, int64_t n);

}  // namespace eigenkv::ops
