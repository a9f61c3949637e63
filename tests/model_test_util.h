// Helpers shared by the tests that run a model: a bundled text's tokens, whole-sequence logits,
// and how far two logit arrays are apart.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "model/model.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace eigenkv::testing {

// The tokens (with BOS) of a text file in the repository, e.g. "data/tinystories-calib.txt".
inline std::vector<int32_t> repo_text_ids(const model::Model& m, const std::string& rel) {
  std::ifstream in(source_path(rel));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return m.tokenizer().encode(text, true);
}

// Logits of every position of `ids` run as one sequence from an empty cache: [n, n_vocab].
inline std::vector<float> logits_of(const model::Model& m, const std::vector<int32_t>& ids) {
  std::vector<float> logits(ids.size() * static_cast<size_t>(m.config().n_vocab));
  kv::KvCache cache = m.new_cache(static_cast<int64_t>(ids.size()));
  m.forward(ids, cache, logits.data(), true);
  return logits;
}

// Largest |a - b| relative to the largest |b| (floored at 1e-6).
inline double max_relative_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 1e-6;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(double{a[i]} - b[i]));
    scale = std::max(scale, std::abs(double{b[i]}));
  }
  return diff / scale;
}

}  // namespace eigenkv::testing
