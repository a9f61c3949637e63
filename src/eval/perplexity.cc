#include "eval/perplexity.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "dist/comm.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/progress.h"

namespace eigenkv::eval {
namespace {

// Log-softmax of one row in double precision, written into out.
void log_softmax(const float* logits, int64_t n, std::vector<double>& out) {
  out.resize(static_cast<size_t>(n));
  const double mx = *std::max_element(logits, logits + n);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(logits[i] - mx);
  const double log_z = mx + std::log(sum);
  for (int64_t i = 0; i < n; ++i) out[i] = logits[i] - log_z;
}

}  // namespace

PerplexityResult perplexity(const model::Model& model, const std::vector<int32_t>& ids,
                            const PerplexityOptions& options, const model::Model* base) {
  const int64_t ctx = options.ctx;
  const int64_t n_vocab = model.config().n_vocab;
  EKV_CHECK(ctx >= 2, "perplexity needs a context of at least 2 tokens, found ", ctx);
  EKV_CHECK(options.max_windows >= 0, "max-windows must be >= 0, found ", options.max_windows);
  const int64_t available = static_cast<int64_t>(ids.size()) / ctx;
  EKV_CHECK(available > 0, "the text has ", ids.size(), " tokens, fewer than one window of ", ctx,
            " (use a longer text or a smaller --ctx)");
  if (base) {
    EKV_CHECK(base->config().n_vocab == n_vocab, "the base model's vocabulary (",
              base->config().n_vocab, ") differs from the model's (", n_vocab, ")");
  }
  const int64_t windows =
      options.max_windows > 0 ? std::min(available, options.max_windows) : available;

  PerplexityResult r;
  r.windows = windows;
  std::vector<float> logits(static_cast<size_t>(ctx * n_vocab));
  std::vector<float> base_logits(base ? static_cast<size_t>(ctx * n_vocab) : 0);
  kv::KvCache cache = model.new_cache(ctx);
  kv::KvCache base_cache = base ? base->new_cache(ctx) : kv::KvCache();
  std::vector<double> nll;
  std::vector<double> kld;
  int64_t agree = 0;
  std::vector<double> lp, lq;
  const tok::Tokenizer& tokenizer = model.tokenizer();
  const bool replace_bos = options.llamacpp_protocol && tokenizer.add_bos_by_default() &&
                           tokenizer.bos_id() >= 0;
  const int64_t first_scored = options.llamacpp_protocol ? ctx / 2 : 0;
  std::vector<int32_t> window_ids(static_cast<size_t>(ctx));
  // Under mpirun each rank scores windows w % size == rank; the per-token numbers are gathered
  // in window order below, so every sum sees the same numbers in the same order as one process.
  const dist::Comm& comm = options.comm ? *options.comm : dist::Comm::world();
  const bool show = comm.root();
  std::optional<Progress> progress;  // rank 0's only
  if (show) progress.emplace("perplexity", windows, "windows");
  const double start = now_seconds();
  int64_t done = 0;
  for (int64_t w = 0; w < windows; ++w) {
    if (!comm.owns(w)) continue;
    std::copy(ids.begin() + w * ctx, ids.begin() + (w + 1) * ctx, window_ids.begin());
    if (replace_bos) window_ids[0] = tokenizer.bos_id();
    std::span<const int32_t> window(window_ids);
    cache.clear();
    if (base) base_cache.clear();
    if (options.decode) {
      for (int64_t t = 0; t + 1 < ctx; ++t) {
        model.forward(window.subspan(t, 1), cache, logits.data() + t * n_vocab, false);
        if (base) base->forward(window.subspan(t, 1), base_cache, base_logits.data() + t * n_vocab, false);
      }
    } else {
      model.forward(window, cache, logits.data(), true);
      if (base) base->forward(window, base_cache, base_logits.data(), true);
    }
    for (int64_t t = first_scored; t + 1 < ctx; ++t) {
      const float* row = logits.data() + t * n_vocab;
      log_softmax(row, n_vocab, lq);
      nll.push_back(-lq[window[t + 1]]);
      if (base) {
        const float* base_row = base_logits.data() + t * n_vocab;
        log_softmax(base_row, n_vocab, lp);
        double k = 0.0;
        for (int64_t i = 0; i < n_vocab; ++i) k += std::exp(lp[i]) * (lp[i] - lq[i]);
        kld.push_back(std::max(0.0, k));
        agree += std::max_element(row, row + n_vocab) - row ==
                 std::max_element(base_row, base_row + n_vocab) - base_row;
      }
    }
    // Rank 0's bar stands for the job: its windows times the ranks.
    ++done;
    const int64_t shown = std::min(windows, done * comm.size());
    if (progress) progress->update(shown, static_cast<double>(shown * ctx), "tok");
  }
  if (progress) progress->finish();
  if (comm.distributed()) {
    const int64_t per_window = ctx - 1 - first_scored;
    nll = dist::interleave(comm.allgather(nll), windows, per_window);
    if (base) kld = dist::interleave(comm.allgather(kld), windows, per_window);
    agree = comm.sum(agree);
  }
  r.seconds = comm.max(now_seconds() - start);
  r.tokens_scored = static_cast<int64_t>(nll.size());
  double sum = 0.0, sum_sq = 0.0;
  for (double x : nll) {
    sum += x;
    sum_sq += x * x;
  }
  const double n = static_cast<double>(nll.size());
  r.nll_mean = sum / n;
  r.nll_stderr =
      n > 1 ? std::sqrt(std::max(0.0, sum_sq / n - r.nll_mean * r.nll_mean) / (n - 1)) : 0;
  r.ppl = std::exp(r.nll_mean);
  if (options.keep_token_nll) r.token_nll = nll;
  if (base) {
    r.has_kld = true;
    double ks = 0.0;
    for (double x : kld) ks += x;
    r.kld_mean = ks / n;
    std::vector<double> sorted = kld;
    const size_t idx = static_cast<size_t>(std::ceil(0.99 * n)) - 1;
    std::nth_element(sorted.begin(), sorted.begin() + idx, sorted.end());
    r.kld_p99 = sorted[idx];
    r.top1_agree = static_cast<double>(agree) / n;
  }
  return r;
}

}  // namespace eigenkv::eval
