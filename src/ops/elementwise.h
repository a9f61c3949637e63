// Row-wise normalisation and activations.
#pragma once

#include <cstdint>

namespace eigenkv::ops {

// y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight   for each of n_rows rows of width n.
void rms_norm(const float* x, const float* weight, int64_t n_rows, int64_t n, double eps, float* y);

// y[t] = (x[t] - mean(x[t])) / sqrt(var(x[t]) + eps) * weight + bias (bias may be null), the
// variance the biased one, as torch's LayerNorm takes it.
void layer_norm(const float* x, const float* weight, const float* bias, int64_t n_rows, int64_t n,
                double eps, float* y);

// x[i] = max(x[i], 0).
void relu(float* x, int64_t n);

// x[i] = gelu(x[i]) = x/2 * (1 + erf(x / sqrt 2)), the exact (not tanh) form.
void gelu(float* x, int64_t n);

// gate[i] = silu(gate[i]) * up[i], silu(z) = z / (1 + exp(-z)).
void swiglu(float* gate, const float* up, int64_t n);

// Softmax of x[0..n) in place; returns log(sum(exp(x - max))) + max, the log-partition.
double softmax_inplace(float* x, int64_t n);

// log softmax(x)[target], accumulated in double.
double log_softmax_at(const float* x, int64_t n, int64_t target);

}  // namespace eigenkv::ops
