#include "eval/zeroshot.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <optional>

#include "dist/comm.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/progress.h"
#include "util/threads.h"

namespace eigenkv::eval {
namespace {

// log softmax(logits)[target] in double precision.
double log_prob(const float* logits, int64_t n_vocab, int32_t target) {
  const double mx = *std::max_element(logits, logits + n_vocab);
  double sum = 0.0;
  for (int64_t i = 0; i < n_vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  return static_cast<double>(logits[target]) - mx - std::log(sum);
}

// Characters of UTF-8 text (code points), as Python's len() counts the harness's choices.
double char_length(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return static_cast<double>(n);
}

// A request ready to run: whole = context + continuation (cut from the left to max_length + 1
// tokens); the model runs whole[0, size - 1) and logit rows first.. score the continuation.
struct Prepared {
  std::vector<int32_t> whole;
  int64_t first = 0;
};

Prepared prepare(const TokenizedRequest& r, int64_t max_length, bool* truncated) {
  const int64_t k = static_cast<int64_t>(r.continuation.size());
  EKV_CHECK(k > 0, "a request has an empty continuation (nothing to score)");
  Prepared p;
  p.whole = r.context;
  p.whole.insert(p.whole.end(), r.continuation.begin(), r.continuation.end());
  const int64_t excess = static_cast<int64_t>(p.whole.size()) - (max_length + 1);
  if (excess > 0) {
    p.whole.erase(p.whole.begin(), p.whole.begin() + excess);
    *truncated = true;
  }
  // A continuation longer than the context keeps only its last max_length tokens scored.
  p.first = std::max<int64_t>(0, static_cast<int64_t>(p.whole.size()) - 1 - k);
  return p;
}

// Tokens that every input starts with, short of each input's first scored position (so that
// every choice still runs the token whose logits score its first continuation token).
int64_t shared_prefix(const std::vector<Prepared>& ps) {
  int64_t s = ps[0].first;
  for (const Prepared& p : ps) s = std::min(s, p.first);
  for (const Prepared& p : ps) {
    int64_t i = 0;
    while (i < s && p.whole[i] == ps[0].whole[i]) ++i;
    s = i;
  }
  return s;
}

}  // namespace

TokenizedRequest tokenize_request(const tok::Tokenizer& tokenizer, const Request& request,
                                  bool parse_special) {
  std::string context = request.context;
  std::string continuation = request.continuation;
  size_t keep = context.size();
  while (keep > 0 && std::isspace(static_cast<unsigned char>(context[keep - 1]))) --keep;
  continuation = context.substr(keep) + continuation;
  context.resize(keep);
  const bool bos = tokenizer.add_bos_by_default() && tokenizer.bos_id() >= 0;
  TokenizedRequest r;
  if (context.empty() && !bos) {
    EKV_CHECK(tokenizer.eos_id() >= 0,
              "an empty context needs a BOS or EOS token, and this vocabulary has neither");
    r.context = {tokenizer.eos_id()};
    r.continuation = tokenizer.encode(continuation, false, parse_special);
    return r;
  }
  const std::vector<int32_t> whole = tokenizer.encode(context + continuation, bos, parse_special);
  const std::vector<int32_t> context_ids = tokenizer.encode(context, bos, parse_special);
  // The harness takes whole[len(enc(context)):]. Where a token of `whole` spans the boundary
  // (vocabularies with pieces like "with the " merge across it), that would drop part of the
  // continuation or leave it empty; splitting at the longest common prefix instead gives the
  // same ids whenever `whole` starts with enc(context), and scores the merged token otherwise.
  size_t n = 0;
  while (n < context_ids.size() && n < whole.size() && context_ids[n] == whole[n]) ++n;
  r.boundary_merged = n < context_ids.size();
  r.context.assign(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(n));
  r.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(n), whole.end());
  return r;
}

ItemScorer::ItemScorer(const model::Model& model, const ScoreOptions& options)
    : model_(model),
      max_length_(options.max_length > 0 ? options.max_length : model.config().n_ctx_train),
      share_prefix_(options.share_prefix),
      parse_special_(options.parse_special) {
  EKV_CHECK(max_length_ >= 2, "the context must hold at least 2 tokens, found ", max_length_);
  cache_ = model.new_cache(max_length_);
}

double ItemScorer::continuation_loglik(const std::vector<int32_t>& whole, int64_t start,
                                       int64_t first) {
  const int64_t n_vocab = model_.config().n_vocab;
  const int64_t n_input = static_cast<int64_t>(whole.size()) - 1;
  const int64_t n_run = n_input - start;
  // logits_: [n_run, n_vocab], row i for position start + i
  logits_.resize(static_cast<size_t>(n_run * n_vocab));
  model_.forward(std::span<const int32_t>(whole.data() + start, static_cast<size_t>(n_run)), cache_,
                 logits_.data(), true);
  tokens_run_ += n_run;
  double sum = 0.0;
  for (int64_t p = first; p < n_input; ++p) {
    const int32_t target = whole[static_cast<size_t>(p + 1)];
    EKV_CHECK(target >= 0 && target < n_vocab, "token id ", target, " is outside the vocabulary");
    sum += log_prob(logits_.data() + (p - start) * n_vocab, n_vocab, target);
  }
  return sum;
}

std::vector<double> ItemScorer::score(const std::vector<TokenizedRequest>& requests,
                                      bool* truncated) {
  EKV_CHECK(!requests.empty(), "an item has no choices");
  *truncated = false;
  std::vector<Prepared> ps;
  for (const TokenizedRequest& r : requests) ps.push_back(prepare(r, max_length_, truncated));
  const int64_t start = share_prefix_ ? shared_prefix(ps) : 0;
  cache_.clear();
  if (start > 0) {
    logits_.resize(static_cast<size_t>(model_.config().n_vocab));
    model_.forward(std::span<const int32_t>(ps[0].whole.data(), static_cast<size_t>(start)), cache_,
                   logits_.data(), false);
    tokens_run_ += start;
  }
  std::vector<double> ll;
  for (const Prepared& p : ps) {
    cache_.truncate(start);
    ll.push_back(continuation_loglik(p.whole, start, p.first));
  }
  return ll;
}

Metric mean_and_stderr(const std::vector<double>& values) {
  Metric m;
  const double n = static_cast<double>(values.size());
  if (values.empty()) return m;
  double sum = 0.0;
  for (double v : values) sum += v;
  m.mean = sum / n;
  if (values.size() > 1) {
    double ss = 0.0;
    for (double v : values) ss += (v - m.mean) * (v - m.mean);
    m.stderr_ = std::sqrt(ss / (n - 1) / n);
  }
  return m;
}

int argmax_first(const std::vector<double>& values) {
  return static_cast<int>(std::max_element(values.begin(), values.end()) - values.begin());
}

namespace {

// What one item gives: its log-likelihoods and how its input was handled.
struct ItemScore {
  std::vector<double> loglik;
  bool truncated = false;
  bool boundary_merged = false;
};

ItemScore score_item(const model::Model& model, const Task& task, const McItem& item,
                     ItemScorer& scorer) {
  ItemScore s;
  std::vector<TokenizedRequest> requests;
  for (const Request& q : item.requests) {
    requests.push_back(tokenize_request(model.tokenizer(), q, scorer.parse_special()));
    s.boundary_merged = s.boundary_merged || requests.back().boundary_merged;
  }
  try {
    s.loglik = scorer.score(requests, &s.truncated);
  } catch (const Error& e) {
    fail(task.path, ":", item.line, ": ", e.what());
  }
  return s;
}

// Scores every item; with workers > 1 independent items run side by side, each thread on its
// own KV cache (the model's forward pass is const and may be shared; inside a worker its own
// OpenMP loops and BLAS calls run on that one thread).
std::vector<ItemScore> score_items(const model::Model& model, const Task& task,
                                   const ScoreOptions& options, int workers, int64_t* tokens) {
  const int64_t n = static_cast<int64_t>(task.items.size());
  std::vector<ItemScore> scores(static_cast<size_t>(n));
  std::optional<Progress> progress;
  if (options.progress) progress.emplace(task.name, n, "items");
  if (workers <= 1) {
    ItemScorer scorer(model, options);
    for (int64_t i = 0; i < n; ++i) {
      scores[i] = score_item(model, task, task.items[i], scorer);
      if (progress) progress->update(i + 1, static_cast<double>(i + 1), "items");
    }
    *tokens = scorer.tokens_run();
    return scores;
  }
  ItemScorer check(model, options);  // throws here, outside the parallel region, on bad options
  std::atomic<int64_t> done{0}, run{0};
  std::string error;
#pragma omp parallel num_threads(workers)
  {
    ItemScorer scorer(model, options);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) {
      try {
        scores[i] = score_item(model, task, task.items[i], scorer);
      } catch (const std::exception& e) {
#pragma omp critical
        if (error.empty()) error = e.what();
      }
      const int64_t d = ++done;
      if (progress && omp_get_thread_num() == 0)
        progress->update(d, static_cast<double>(d), "items");
    }
    run += scorer.tokens_run();
  }
  EKV_CHECK(error.empty(), error);
  *tokens = run;
  return scores;
}

// Threads for side-by-side items: each holds a KV cache and a logits buffer of the whole
// context, so large models (where threading one forward pass pays anyway) get fewer workers.
int item_workers(const model::Model& model, const ScoreOptions& options, int64_t n_items) {
  constexpr int64_t kWorkerBytes = int64_t{2} << 30;  // all workers' buffers together
  const int64_t ctx = options.max_length > 0 ? options.max_length : model.config().n_ctx_train;
  const int64_t per_worker =
      ctx * (model.kv_bytes_per_token() + model.config().n_vocab * int64_t{sizeof(float)});
  const int64_t fit = std::max<int64_t>(1, kWorkerBytes / std::max<int64_t>(1, per_worker));
  return static_cast<int>(std::min({int64_t{thread_count()}, n_items, fit}));
}

}  // namespace

TaskResult evaluate_task(const model::Model& model, const Task& task, const ScoreOptions& options) {
  TaskResult r;
  r.task = task.name;
  r.n = static_cast<int64_t>(task.items.size());
  r.has_acc_norm = task.has_acc_norm;
  r.bad_lines = task.bad_lines;
  const dist::Comm& comm = options.comm ? *options.comm : dist::Comm::world();
  const double t0 = now_seconds();
  std::vector<ItemScore> scores;
  if (!comm.distributed()) {
    const int workers = options.parallel_items ? item_workers(model, options, r.n) : 1;
    scores = score_items(model, task, options, workers, &r.tokens);
  } else {
    // Under mpirun item i is rank i % size's; each rank's scores come back into item order, so
    // the metrics below see what one process would.
    Task mine = task;
    mine.items.clear();
    for (int64_t i = comm.rank(); i < r.n; i += comm.size()) mine.items.push_back(task.items[i]);
    ScoreOptions local = options;
    local.progress = options.progress && comm.root();
    const int workers =
        options.parallel_items ? item_workers(model, local, static_cast<int64_t>(mine.items.size())) : 1;
    int64_t tokens = 0;
    const std::vector<ItemScore> own =
        mine.items.empty() ? std::vector<ItemScore>{}
                           : score_items(model, mine, local, std::max(workers, 1), &tokens);
    std::vector<double> packed;  // per item: choices, their log-likelihoods, truncated, merged
    for (const ItemScore& s : own) {
      packed.push_back(static_cast<double>(s.loglik.size()));
      packed.insert(packed.end(), s.loglik.begin(), s.loglik.end());
      packed.push_back(s.truncated ? 1.0 : 0.0);
      packed.push_back(s.boundary_merged ? 1.0 : 0.0);
    }
    const std::vector<std::vector<double>> all = comm.allgather(packed);
    scores.resize(static_cast<size_t>(r.n));
    for (int rank = 0; rank < comm.size(); ++rank) {
      size_t at = 0;
      for (int64_t i = rank; i < r.n; i += comm.size()) {
        const std::vector<double>& v = all[rank];
        EKV_CHECK(at < v.size(), "rank ", rank, " returned too few item scores");
        const size_t choices = static_cast<size_t>(v[at++]);
        EKV_CHECK(at + choices + 2 <= v.size(), "rank ", rank, " returned a cut item score");
        ItemScore& s = scores[static_cast<size_t>(i)];
        s.loglik.assign(v.begin() + at, v.begin() + at + choices);
        at += choices;
        s.truncated = v[at++] != 0;
        s.boundary_merged = v[at++] != 0;
      }
    }
    r.tokens = comm.sum(tokens);
  }
  r.seconds = comm.max(now_seconds() - t0);
  std::vector<double> hits, hits_norm;
  for (int64_t i = 0; i < r.n; ++i) {
    const McItem& item = task.items[static_cast<size_t>(i)];
    ItemScore& s = scores[static_cast<size_t>(i)];
    r.truncated += s.truncated;
    r.boundary_merges += s.boundary_merged;
    std::vector<double> normed(s.loglik.size());
    for (size_t c = 0; c < s.loglik.size(); ++c) {
      normed[c] = s.loglik[c] / std::max(1.0, char_length(item.norm_text[c]));
    }
    r.pred.push_back(argmax_first(s.loglik));
    r.pred_norm.push_back(argmax_first(normed));
    hits.push_back(r.pred.back() == item.gold ? 1.0 : 0.0);
    hits_norm.push_back(r.pred_norm.back() == item.gold ? 1.0 : 0.0);
    r.loglik.push_back(std::move(s.loglik));
  }
  r.acc = mean_and_stderr(hits);
  r.acc_norm = mean_and_stderr(hits_norm);
  return r;
}

double agreement(const TaskResult& a, const TaskResult& b) {
  EKV_CHECK(a.pred.size() == b.pred.size() && !a.pred.empty(), "task ", a.task,
            ": the two results scored different items (", a.pred.size(), " vs ", b.pred.size(),
            ")");
  int64_t same = 0;
  for (size_t i = 0; i < a.pred.size(); ++i) same += a.pred[i] == b.pred[i];
  return static_cast<double>(same) / static_cast<double>(a.pred.size());
}

}  // namespace eigenkv::eval
