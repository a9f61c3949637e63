// Perplexity by the protocol of DESIGN.md §5: consecutive non-overlapping windows of `ctx` tokens
// (the last partial one dropped); every token of a window but its first is scored from its
// predecessors inside the window (or llama-perplexity's protocol, below). With a base model, also the KL divergence of the model's
// next-token distribution from the base's, and how often their top-1 choices agree.
#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"

namespace eigenkv::dist {
class Comm;
}

namespace eigenkv::eval {

struct PerplexityOptions {
  int64_t ctx = 256;
  int64_t max_windows = 0;  // 0: all windows
  bool keep_token_nll = false;
  bool progress = true;
  // Feed each window one token at a time, as generation runs (the decode attention kernels,
  // which for int8/int4 caches score with integer dot products), instead of one prefill.
  bool decode = false;
  // llama-perplexity's protocol instead, for comparing with llama.cpp on the same file: the
  // model's BOS (when it adds one) replaces each window's first token, and only the positions
  // from ctx/2 on predict (ctx - 1 - ctx/2 tokens scored per window).
  bool llamacpp_protocol = false;
  // The processes the windows are split over (window w to rank w % size; the results, gathered
  // in window order, equal one process's); null: dist::Comm::world(), one process without mpirun.
  const dist::Comm* comm = nullptr;
};

struct PerplexityResult {
  double ppl = 0;
  double nll_mean = 0;
  double nll_stderr = 0;  // standard error of the mean NLL
  int64_t tokens_scored = 0;
  int64_t windows = 0;
  double seconds = 0;
  bool has_kld = false;
  double kld_mean = 0;
  double kld_p99 = 0;
  double top1_agree = 0;          // fraction of scored positions where both argmaxes agree
  std::vector<double> token_nll;  // per scored token, window by window (keep_token_nll)
};

// Throws Error when `ids` holds fewer than ctx tokens (no whole window), ctx < 2, or the base
// model's vocabulary differs.
PerplexityResult perplexity(const model::Model& model, const std::vector<int32_t>& ids,
                            const PerplexityOptions& options, const model::Model* base = nullptr);

}  // namespace eigenkv::eval
