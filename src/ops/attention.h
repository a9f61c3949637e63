// Causal scaled-dot-product attention for one query vector against a run of cached keys.
#pragma once

#include <cstdint>

namespace eigenkv::ops {

// out[0..value_width) = sum_s softmax_s(scale * q . keys[s]) * values[s], s in [0, n_keys).
// keys: [n_keys, key_width], values: [n_keys, value_width]; scores: scratch of n_keys floats.
void attend_one(const float* q, const float* keys, int64_t key_width, const float* values,
                int64_t value_width, int64_t n_keys, float scale, float* scores, float* out);

// The same in double precision with no shortcuts: the reference for tests. With alibi_slope, the
// query stands at position n_keys - 1 and key s's score gains alibi_slope * (s - (n_keys - 1)).
void attend_one_reference(const float* q, const float* keys, int64_t key_width, const float* values,
                          int64_t value_width, int64_t n_keys, float scale, float* out,
                          double alibi_slope = 0);

}  // namespace eigenkv::ops
