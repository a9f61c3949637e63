// Zero-shot scoring by lm-evaluation-harness's rules: each choice scores the summed
// log-likelihood of its continuation tokens given the context; acc takes the best choice, acc_norm
// the best log-likelihood per character of the choice; both with the standard error of the mean.
// The choices of a question share their common token prefix: it runs once into a KV cache, and
// each choice runs only its own tokens after cache.truncate(prefix).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eval/tasks.h"
#include "model/model.h"

namespace eigenkv::dist {
class Comm;
}

namespace eigenkv::eval {

// Token ids of one request, encoded as the harness does: whole = enc(context + continuation),
// continuation = whole[len(enc(context)):], after moving the context's trailing whitespace onto
// the continuation. Where a token of whole spans the boundary (enc(context) is not a prefix of
// whole), the split is at their longest common prefix instead. BOS where the tokenizer adds it by
// default; an empty context without BOS is the EOS id (the harness's end-of-text context).
struct TokenizedRequest {
  std::vector<int32_t> context;
  std::vector<int32_t> continuation;
  bool boundary_merged = false;  // split at the common prefix, not at len(enc(context))
};
// parse_special: special-token strings in the text are those tokens (Hugging Face's default).
TokenizedRequest tokenize_request(const tok::Tokenizer& tokenizer, const Request& request,
                                  bool parse_special = true);

struct ScoreOptions {
  int64_t max_length = 0;    // the model's context; 0: its n_ctx_train
  bool share_prefix = true;  // false: every choice runs alone from an empty cache
  bool progress = true;      // progress bar on stderr (only drawn on a terminal)
  // Score independent items side by side, one per thread (util/threads.h), each on its own KV
  // cache; otherwise one item at a time with threaded matmuls. Twice as fast on 2 threads for
  // the small shared models, where threading one forward pass gains 1.4x (docs/ZEROSHOT.md).
  bool parallel_items = true;
  bool parse_special = true;  // special-token strings in the items are read as those tokens
  // The processes the items are split over (item i to rank i % size; the scores, gathered in
  // item order, equal one process's); null: dist::Comm::world().
  const dist::Comm* comm = nullptr;
};

// Scores the requests of one question against one model, reusing one KV cache.
class ItemScorer {
 public:
  ItemScorer(const model::Model& model, const ScoreOptions& options);
  // Log-likelihood of each request's continuation. An input longer than max_length + 1 tokens
  // is cut from the left (the harness's rule) and *truncated is set; where the continuation
  // alone is longer than max_length, only its last max_length tokens are scored.
  std::vector<double> score(const std::vector<TokenizedRequest>& requests, bool* truncated);
  int64_t tokens_run() const { return tokens_run_; }
  int64_t max_length() const { return max_length_; }
  bool parse_special() const { return parse_special_; }

 private:
  // Sum of log p(input[p + 1] | input[..p]) over p in [first, input.size() - 1), with
  // the cache already holding input[0, start) (start <= first).
  double continuation_loglik(const std::vector<int32_t>& input, int64_t start, int64_t first);

  const model::Model& model_;
  int64_t max_length_;
  bool share_prefix_;
  bool parse_special_;
  kv::KvCache cache_;
  std::vector<float> logits_;
  std::vector<double> row_;
  int64_t tokens_run_ = 0;
};

struct Metric {
  double mean = 0;
  double stderr_ = 0;  // sample standard deviation / sqrt(n), as the harness reports
};
Metric mean_and_stderr(const std::vector<double>& values);

// Index of the largest value, the first on ties (numpy's argmax).
int argmax_first(const std::vector<double>& values);

struct TaskResult {
  std::string task;
  int64_t n = 0;
  bool has_acc_norm = true;
  Metric acc;
  Metric acc_norm;
  int64_t truncated = 0;        // items whose input was cut from the left
  int64_t bad_lines = 0;        // malformed items skipped while loading
  int64_t boundary_merges = 0;  // items with a token spanning a context/continuation boundary
  int64_t tokens = 0;           // tokens run through the model
  double seconds = 0;
  std::vector<std::vector<double>> loglik;  // [item][choice]
  std::vector<int> pred;                    // acc's choice per item
  std::vector<int> pred_norm;               // acc_norm's choice per item
};

// Scores every item of `task` with `model`.
TaskResult evaluate_task(const model::Model& model, const Task& task, const ScoreOptions& options);

// Fraction of items where the two results chose the same answer (acc's choice).
double agreement(const TaskResult& a, const TaskResult& b);

}  // namespace eigenkv::eval
