#include "eval/zeroshot.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <optional>

#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/progress.h"

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

TokenizedRequest tokenize_request(const tok::Tokenizer& tokenizer, const Request& request) {
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
    r.continuation = tokenizer.encode(continuation, false);
    return r;
  }
  const std::vector<int32_t> whole = tokenizer.encode(context + continuation, bos);
  const std::vector<int32_t> context_ids = tokenizer.encode(context, bos);
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
      share_prefix_(options.share_prefix) {
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

TaskResult evaluate_task(const model::Model& model, const Task& task, const ScoreOptions& options) {
  TaskResult r;
  r.task = task.name;
  r.n = static_cast<int64_t>(task.items.size());
  r.has_acc_norm = task.has_acc_norm;
  r.bad_lines = task.bad_lines;
  ItemScorer scorer(model, options);
  std::vector<double> hits, hits_norm;
  std::optional<Progress> progress;
  if (options.progress) progress.emplace(task.name, r.n, "items");
  const double t0 = now_seconds();
  for (int64_t i = 0; i < r.n; ++i) {
    const McItem& item = task.items[static_cast<size_t>(i)];
    std::vector<TokenizedRequest> requests;
    for (const Request& q : item.requests)
      requests.push_back(tokenize_request(model.tokenizer(), q));
    bool truncated = false;
    for (const TokenizedRequest& q : requests) {
      if (q.boundary_merged) {
        ++r.boundary_merges;
        break;
      }
    }
    std::vector<double> ll;
    try {
      ll = scorer.score(requests, &truncated);
    } catch (const Error& e) {
      fail(task.path, ":", item.line, ": ", e.what());
    }
    r.truncated += truncated;
    std::vector<double> normed(ll.size());
    for (size_t c = 0; c < ll.size(); ++c) {
      normed[c] = ll[c] / std::max(1.0, char_length(item.norm_text[c]));
    }
    r.pred.push_back(argmax_first(ll));
    r.pred_norm.push_back(argmax_first(normed));
    hits.push_back(r.pred.back() == item.gold ? 1.0 : 0.0);
    hits_norm.push_back(r.pred_norm.back() == item.gold ? 1.0 : 0.0);
    r.loglik.push_back(std::move(ll));
    if (progress) progress->update(i + 1, static_cast<double>(i + 1), "items");
  }
  if (progress) progress->finish();
  r.seconds = now_seconds() - t0;
  r.tokens = scorer.tokens_run();
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
