// Continuous batching. One engine thread owns the model: every step it admits queued sequences
// while the KV memory budget lasts, runs one Model::forward_batch over all admitted sequences
// (prompts prefill, the others decode one token), samples, and hands each sequence's new text
// to its client through the sequence's channel. A sequence reserves its whole cache up front
// (prompt + max_tokens tokens at the model's bytes per token), so an admitted sequence never
// runs out of memory, and a compressed model, with fewer bytes per token, admits more of them.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kv/kv_cache.h"
#include "model/model.h"
#include "model/sampler.h"
#include "serve/completion_text.h"
#include "serve/metrics.h"
#include "serve/request.h"

namespace eigenkv::serve {

// A piece of one sequence's output. The last piece has finish_reason or an error set.
struct Chunk {
  std::string text;
  std::vector<TokenLogprob> tokens;  // prompt tokens (echo) and generated ones, when asked for
  std::string finish_reason;         // "stop" or "length" on the last piece
  int error_status = 0;              // non-zero: the sequence failed (timeout, shutdown, ...)
  std::string error_message;
  std::string error_type;
  int64_t prompt_tokens = 0;      // on the last piece
  int64_t completion_tokens = 0;  // on the last piece
  bool last() const { return !finish_reason.empty() || error_status != 0; }
};

class Scheduler;

// One prompt's generation. The HTTP handler reads its chunks and may cancel it; everything
// under "engine state" is touched only by the engine thread.
class Sequence {
 public:
  // Waits up to `wait` for the next chunk.
  std::optional<Chunk> next(std::chrono::milliseconds wait);
  // Asks the engine to end the sequence and free its cache (client gone); idempotent.
  void cancel(const std::string& reason);

 private:
  friend class Scheduler;
  void deliver(Chunk chunk);

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Chunk> chunks_;
  std::string cancel_reason_;  // guarded by mutex_; non-empty once cancelled

  // Engine state.
  std::vector<int32_t> prompt_;
  GenerationParams params_;
  int64_t capacity_ = 0;  // tokens reserved
  std::chrono::steady_clock::time_point submitted_;
  std::chrono::steady_clock::time_point deadline_;
  kv::KvCache cache_;
  std::optional<model::Sampler> sampler_;
  std::optional<CompletionText> text_;
  bool prefilled_ = false;
  bool ended_ = false;  // finished or failed; its cache is freed
  // Another choice of the same prompt whose prefill this one copies (cache and last logits)
  // instead of running its own; cleared when that cannot happen (it ended first, or this one
  // was not admitted in time) and this one prefills itself.
  std::shared_ptr<Sequence> prefill_from_;
  bool copied_prefill_ = false;
  int32_t next_token_ = 0;
  int64_t generated_ = 0;
  std::vector<float> logits_;
};

struct SchedulerOptions {
  int64_t parallel = 4;          // most sequences decoded together
  int64_t kv_budget_bytes = 0;   // KV memory for all admitted sequences
  double timeout_seconds = 600;  // per sequence, from submission
};

class Scheduler {
 public:
  Scheduler(const model::Model& model, SchedulerOptions options, Metrics& metrics);
  ~Scheduler();

  // Queues a prompt; throws ApiError(400) when its cache could never fit the budget, and
  // ApiError(503) when the server is shutting down.
  // `share_prefill_with`: an earlier submitted sequence of the same prompt (another of its n
  // choices) whose prefill this one reuses when both are admitted by then.
  std::shared_ptr<Sequence> submit(std::vector<int32_t> prompt, const GenerationParams& params,
                                   std::shared_ptr<Sequence> share_prefill_with = nullptr);
  // Stops admitting; queued sequences fail with 503; active ones finish (or are cut off with
  // 503 after `drain_seconds`); then the engine thread ends.
  void shutdown(double drain_seconds);

  EngineGauges gauges() const;
  int64_t kv_bytes_per_token() const { return bytes_per_token_; }

 private:
  void run();
  void admit_locked();
  void drop_cancelled();
  void step_or_fail();  // a failed step fails its sequences, not the server
  void step();
  void publish_filled();  // KV bytes holding tokens, for the metrics
  void after_step(Sequence& s);
  void emit_prompt(Sequence& s, const float* logits);
  void emit_token(Sequence& s, int32_t id, const float* logits);
  void finish(Sequence& s, Chunk last, const std::string& reason);
  void release(Sequence& s, const std::string& reason);
  void fail(Sequence& s, int status, const std::string& message, const std::string& type,
            const std::string& reason);

  const model::Model& model_;
  const SchedulerOptions options_;
  Metrics& metrics_;
  const int64_t bytes_per_token_;

  mutable std::mutex mutex_;  // guards queue_, reserved_, stopping_, drain_deadline_, counts
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Sequence>> queue_;
  int64_t reserved_bytes_ = 0;
  int64_t active_count_ = 0;
  int64_t active_peak_ = 0;
  int64_t filled_bytes_ = 0;
  bool stopping_ = false;
  std::optional<std::chrono::steady_clock::time_point> drain_deadline_;

  std::vector<std::shared_ptr<Sequence>> active_;  // engine thread only
  std::thread engine_;
};

}  // namespace eigenkv::serve
