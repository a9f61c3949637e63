#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "util/error.h"

namespace eigenkv::model {

int32_t argmax(const float* logits, int64_t n) {
  return static_cast<int32_t>(std::max_element(logits, logits + n) - logits);
}

Sampler::Sampler(const SamplerOptions& options) : options_(options), rng_(options.seed) {
  EKV_CHECK(options.temperature >= 0 && std::isfinite(options.temperature),
            "temperature must be >= 0, found ", options.temperature);
  EKV_CHECK(options.top_k >= 0, "top-k must be >= 0, found ", options.top_k);
  EKV_CHECK(options.top_p > 0 && options.top_p <= 1, "top-p must be in (0, 1], found ",
            options.top_p);
}

int32_t Sampler::sample(const float* logits, int64_t n_vocab) {
  if (options_.temperature == 0) return argmax(logits, n_vocab);
  std::vector<int32_t> ids(static_cast<size_t>(n_vocab));
  std::iota(ids.begin(), ids.end(), 0);
  int64_t keep = n_vocab;
  if (options_.top_k > 0 && options_.top_k < n_vocab) keep = options_.top_k;
  std::partial_sort(ids.begin(), ids.begin() + keep, ids.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  ids.resize(static_cast<size_t>(keep));
  std::vector<double> p(ids.size());
  const double mx = logits[ids[0]];
  double sum = 0.0;
  for (size_t i = 0; i < ids.size(); ++i) {
    p[i] = std::exp((logits[ids[i]] - mx) / options_.temperature);
    sum += p[i];
  }
  // Nucleus: the smallest prefix (by probability) whose mass reaches top_p.
  double mass = 0.0;
  size_t cut = ids.size();
  for (size_t i = 0; i < ids.size(); ++i) {
    mass += p[i] / sum;
    if (mass >= options_.top_p) {
      cut = i + 1;
      break;
    }
  }
  std::discrete_distribution<size_t> pick(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(cut));
  return ids[pick(rng_)];
}

}  // namespace eigenkv::model
