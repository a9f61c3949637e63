#include "ops/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/elementwise.h"
#include "ops/matmul.h"

namespace eigenkv::ops {

void attend_one(const float* q, const float* keys, int64_t key_width, const float* values,
                int64_t value_width, int64_t n_keys, float scale, float* scores, float* out) {
  for (int64_t s = 0; s < n_keys; ++s) scores[s] = scale * dot(q, keys + s * key_width, key_width);
  softmax_inplace(scores, n_keys);
  std::fill(out, out + value_width, 0.0f);
  for (int64_t s = 0; s < n_keys; ++s) {
    const float a = scores[s];
    const float* v = values + s * value_width;
#pragma omp simd
    for (int64_t i = 0; i < value_width; ++i) out[i] += a * v[i];
  }
}

void attend_one_reference(const float* q, const float* keys, int64_t key_width, const float* values,
                          int64_t value_width, int64_t n_keys, float scale, float* out,
                          double alibi_slope) {
  std::vector<double> p(static_cast<size_t>(n_keys));
  double mx = -INFINITY;
  for (int64_t s = 0; s < n_keys; ++s) {
    double acc = 0.0;
    for (int64_t i = 0; i < key_width; ++i) acc += double{q[i]} * keys[s * key_width + i];
    p[s] = acc * scale + alibi_slope * static_cast<double>(s - (n_keys - 1));
    mx = std::max(mx, p[s]);
  }
  double sum = 0.0;
  for (double& x : p) sum += (x = std::exp(x - mx));
  for (int64_t i = 0; i < value_width; ++i) {
    double acc = 0.0;
    for (int64_t s = 0; s < n_keys; ++s) acc += p[s] * values[s * value_width + i];
    out[i] = static_cast<float>(acc / sum);
  }
}

}  // namespace eigenkv::ops
