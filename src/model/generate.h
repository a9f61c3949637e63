// The generation loop: prefill the prompt, then sample one token at a time through the KV cache.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/sampler.h"

namespace eigenkv::model {

struct GenerateOptions {
  int64_t max_tokens = 128;
  int64_t ctx = 0;  // KV capacity; 0: prompt + max_tokens, at most the training context
  SamplerOptions sampler;
  bool stop_at_eos = true;
};

struct GenerateResult {
  std::vector<int32_t> ids;  // generated tokens only
  std::string stop_reason;   // "eos", "length" (max_tokens), "context" or "callback"
  double prefill_seconds = 0;
  double decode_seconds = 0;  // from the first sampled token on
};

// Calls on_token for each new token as it is chosen; returning false stops generation.
// Throws Error when the prompt is empty or does not fit the context.
GenerateResult generate(const Model& model, const std::vector<int32_t>& prompt,
                        const GenerateOptions& options,
                        const std::function<bool(int32_t)>& on_token = nullptr);

}  // namespace eigenkv::model
