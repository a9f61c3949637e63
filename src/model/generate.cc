#include "model/generate.h"

#include <algorithm>

#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/progress.h"

namespace eigenkv::model {

GenerateResult generate(const Model& model, const std::vector<int32_t>& prompt,
                        const GenerateOptions& options,
                        const std::function<bool(int32_t)>& on_token) {
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  // The cache holds what this run needs, not the model's whole context (a 128k-context model
  // would otherwise allocate gigabytes for a short reply).
  const int64_t ctx = options.ctx > 0 ? options.ctx
                                      : std::min(model.config().n_ctx_train,
                                                 n_prompt + std::max<int64_t>(options.max_tokens, 0) + 1);
  EKV_CHECK(n_prompt > 0, "the prompt is empty (no tokens to start from)");
  EKV_CHECK(options.max_tokens >= 0, "the number of tokens to generate must be >= 0, found ",
            options.max_tokens);
  EKV_CHECK(n_prompt < ctx, "the prompt has ", n_prompt, " tokens, more than the context of ", ctx,
            " allows (raise --ctx or shorten the prompt)");
  Sampler sampler(options.sampler);
  kv::KvCache cache = model.new_cache(ctx);
  const int64_t n_vocab = model.config().n_vocab;
  std::vector<float> logits(static_cast<size_t>(n_vocab));
  GenerateResult result;
  result.stop_reason = "length";
  double t0 = now_seconds();
  model.forward(prompt, cache, logits.data(), false);
  result.prefill_seconds = now_seconds() - t0;
  t0 = now_seconds();
  for (int64_t i = 0; i < options.max_tokens; ++i) {
    const int32_t next = sampler.sample(logits.data(), n_vocab);
    if (options.stop_at_eos && model.tokenizer().is_end_of_generation(next)) {
      result.stop_reason = "eos";
      break;
    }
    result.ids.push_back(next);
    if (on_token && !on_token(next)) {
      result.stop_reason = "callback";
      break;
    }
    if (i + 1 == options.max_tokens) break;
    if (cache.size() >= ctx) {
      result.stop_reason = "context";
      break;
    }
    const int32_t one[1] = {next};
    model.forward(one, cache, logits.data(), false);
  }
  result.decode_seconds = now_seconds() - t0;
  return result;
}

}  // namespace eigenkv::model
