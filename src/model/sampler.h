// Next-token choice from logits: greedy at temperature 0, else temperature, top-k, top-p
// sampling with a seeded generator (the same seed gives the same tokens).
#pragma once

#include <cstdint>
#include <random>

namespace eigenkv::model {

struct SamplerOptions {
  double temperature = 0.8;  // 0: greedy
  int64_t top_k = 40;        // 0: no limit
  double top_p = 0.95;       // 1: no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Throws Error when an option is out of range (negative temperature or top_k, top_p not in
  // (0,1]).
  explicit Sampler(const SamplerOptions& options);
  int32_t sample(const float* logits, int64_t n_vocab);

 private:
  SamplerOptions options_;
  std::mt19937_64 rng_;
};

// Index of the largest logit (the first one on ties).
int32_t argmax(const float* logits, int64_t n);

}  // namespace eigenkv::model
