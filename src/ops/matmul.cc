#include "ops/matmul.h"

#include <cblas.h>

namespace eigenkv::ops {

float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

void matmul_transposed(const float* x, int64_t n_tokens, int64_t n_in, const float* w,
                       int64_t n_out, float* y) {
  if (n_tokens == 1) {
    // Rows in chunks large enough that a thread's share streams through memory.
#pragma omp parallel for schedule(static) if (n_out * n_in > 32768)
    for (int64_t o = 0; o < n_out; ++o) y[o] = dot(x, w + o * n_in, n_in);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n_tokens),
              static_cast<int>(n_out), static_cast<int>(n_in), 1.0f, x, static_cast<int>(n_in), w,
              static_cast<int>(n_in), 0.0f, y, static_cast<int>(n_out));
}

void matmul_transposed_reference(const float* x, int64_t n_tokens, int64_t n_in, const float* w,
                                 int64_t n_out, float* y) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t o = 0; o < n_out; ++o) {
      double acc = 0.0;
      for (int64_t i = 0; i < n_in; ++i) acc += double{x[t * n_in + i]} * w[o * n_in + i];
      y[t * n_out + o] = static_cast<float>(acc);
    }
  }
}

}  // namespace eigenkv::ops
