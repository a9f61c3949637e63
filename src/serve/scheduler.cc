#include "serve/scheduler.h"

#include <algorithm>

#include "tokenizer/tokenizer.h"
#include "util/progress.h"
#include "util/threads.h"

namespace eigenkv::serve {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

Chunk error_chunk(int status, const std::string& message, const std::string& type) {
  Chunk c;
  c.error_status = status;
  c.error_message = message;
  c.error_type = type;
  return c;
}

}  // namespace

std::optional<Chunk> Sequence::next(std::chrono::milliseconds wait) {
  std::unique_lock lock(mutex_);
  if (!ready_.wait_for(lock, wait, [&] { return !chunks_.empty(); })) return std::nullopt;
  Chunk c = std::move(chunks_.front());
  chunks_.pop_front();
  return c;
}

void Sequence::cancel(const std::string& reason) {
  std::lock_guard lock(mutex_);
  if (cancel_reason_.empty()) cancel_reason_ = reason;
}

void Sequence::deliver(Chunk chunk) {
  {
    std::lock_guard lock(mutex_);
    chunks_.push_back(std::move(chunk));
  }
  ready_.notify_all();
}

Scheduler::Scheduler(const model::Model& model, SchedulerOptions options, Metrics& metrics)
    : model_(model),
      options_(options),
      metrics_(metrics),
      bytes_per_token_(model.kv_bytes_per_token()) {
  engine_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() { shutdown(0); }

std::shared_ptr<Sequence> Scheduler::submit(std::vector<int32_t> prompt,
                                            const GenerationParams& params,
                                            std::shared_ptr<Sequence> share_prefill_with) {
  auto s = std::make_shared<Sequence>();
  if (share_prefill_with && share_prefill_with->prompt_ == prompt && !params.echo) {
    s->prefill_from_ = std::move(share_prefill_with);
  }
  // The last sampled token is never run through the model, so it needs no cache row.
  s->capacity_ = static_cast<int64_t>(prompt.size()) + std::max<int64_t>(params.max_tokens - 1, 0);
  const int64_t need = s->capacity_ * bytes_per_token_;
  if (need > options_.kv_budget_bytes) {
    throw ApiError(400,
                   cat("the request needs ", need, " bytes of KV cache (", s->capacity_,
                       " tokens), more than the server's whole KV budget of ",
                       options_.kv_budget_bytes, " bytes (--kv-mem); lower max_tokens"),
                   "max_tokens");
  }
  s->prompt_ = std::move(prompt);
  s->params_ = params;
  s->submitted_ = Clock::now();
  s->deadline_ = s->submitted_ + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(options_.timeout_seconds));
  {
    std::lock_guard lock(mutex_);
    if (stopping_) throw ApiError(503, "the server is shutting down", "", "server_error");
    queue_.push_back(s);
  }
  wake_.notify_all();
  return s;
}

void Scheduler::shutdown(double drain_seconds) {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    if (!drain_deadline_) {
      drain_deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(drain_seconds));
    }
  }
  wake_.notify_all();
  if (engine_.joinable()) engine_.join();
}

EngineGauges Scheduler::gauges() const {
  std::lock_guard lock(mutex_);
  EngineGauges g;
  g.kv_budget_bytes = options_.kv_budget_bytes;
  g.kv_reserved_bytes = reserved_bytes_;
  g.kv_used_bytes = filled_bytes_;
  g.kv_bytes_per_token = bytes_per_token_;
  g.sequences_active = active_count_;
  g.sequences_active_peak = active_peak_;
  g.queue_length = static_cast<int64_t>(queue_.size());
  g.parallel = options_.parallel;
  return g;
}

void Scheduler::run() {
  // OpenMP keeps the thread count per thread, and a new std::thread starts from the default (all
  // cores): without this the engine would ignore -t and oversubscribe a shared machine.
  set_thread_count(thread_count());
  while (true) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait_for(lock, std::chrono::milliseconds(50),
                     [&] { return stopping_ || !active_.empty() || !queue_.empty(); });
      if (stopping_) {
        for (auto& s : queue_) {
          s->deliver(error_chunk(503, "the server is shutting down", "server_error"));
          metrics_.count_finished("shutdown");
        }
        queue_.clear();
        if (active_.empty()) return;
      }
      admit_locked();
    }
    drop_cancelled();
    if (!active_.empty()) step_or_fail();
    publish_filled();
  }
}

void Scheduler::step_or_fail() {
  try {
    step();
  } catch (const std::exception& e) {
    for (auto& s : active_) {
      if (!s->ended_) fail(*s, 500, cat("generation failed: ", e.what()), "server_error", "error");
    }
    active_.clear();
  }
}

void Scheduler::admit_locked() {
  // Queued sequences whose client left or whose time ran out never take memory.
  for (auto it = queue_.begin(); it != queue_.end();) {
    Sequence& s = **it;
    std::string reason;
    {
      std::lock_guard lock(s.mutex_);
      reason = s.cancel_reason_;
    }
    if (reason.empty() && Clock::now() > s.deadline_) reason = "timeout";
    if (reason.empty()) {
      ++it;
      continue;
    }
    s.deliver(reason == "timeout"
                  ? error_chunk(504, "the request timed out in the queue", "timeout_error")
                  : error_chunk(499, "cancelled: " + reason, "cancelled"));
    metrics_.count_finished(reason);
    it = queue_.erase(it);
  }
  // First come, first served: a large request at the head waits rather than being overtaken.
  while (!queue_.empty() && active_count_ < options_.parallel) {
    Sequence& s = *queue_.front();
    const int64_t need = s.capacity_ * bytes_per_token_;
    if (reserved_bytes_ + need > options_.kv_budget_bytes) break;
    s.cache_ = model_.new_cache(s.capacity_);
    reserved_bytes_ += need;
    active_peak_ = std::max(active_peak_, ++active_count_);
    s.sampler_.emplace(s.params_.sampler);
    PieceCursor cursor(model_.tokenizer(), /*at_text_start=*/true, 0);
    for (const int32_t id : s.prompt_) cursor.next(id);
    s.text_.emplace(model_.tokenizer(), /*at_text_start=*/cursor.offset() == 0, cursor.offset(),
                    s.params_.stop, s.params_.logprobs >= 0);
    active_.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
}

void Scheduler::drop_cancelled() {
  bool draining_over = false;
  {
    std::lock_guard lock(mutex_);
    draining_over = stopping_ && drain_deadline_ && Clock::now() > *drain_deadline_;
  }
  std::erase_if(active_, [&](const std::shared_ptr<Sequence>& s) {
    std::string reason;
    {
      std::lock_guard lock(s->mutex_);
      reason = s->cancel_reason_;
    }
    if (!reason.empty()) {
      fail(*s, 499, "cancelled: " + reason, "cancelled", reason);
    } else if (Clock::now() > s->deadline_) {
      fail(*s, 504,
           cat("the request took longer than the server's timeout of ", options_.timeout_seconds,
               " s"),
           "timeout_error", "timeout");
    } else if (draining_over) {
      fail(*s, 503, "the server is shutting down", "server_error", "shutdown");
    } else {
      return false;
    }
    return true;
  });
}

void Scheduler::step() {
  const int64_t nv = model_.config().n_vocab;
  std::vector<model::BatchSequence> batch;
  int64_t rows = 0;
  std::vector<Sequence*> ran, prefilling;
  for (auto& sp : active_) {
    Sequence& s = *sp;
    if (!s.prefilled_ && s.prefill_from_) {
      const Sequence* from = s.prefill_from_.get();
      // Waits for its source's prefill in this step, which copies into it; if that source is
      // not running (ended, or cancelled in the queue) or has moved on, it prefills itself.
      const bool source_runs = std::any_of(active_.begin(), active_.end(),
                                           [&](const auto& a) { return a.get() == from; });
      if (source_runs && !from->prefilled_ && !from->ended_) continue;
      s.prefill_from_.reset();
    }
    model::BatchSequence b;
    b.cache = &s.cache_;
    ran.push_back(&s);
    if (!s.prefilled_) {
      prefilling.push_back(&s);
      b.tokens = s.prompt_;
      b.all_logits = s.params_.echo && s.params_.logprobs >= 0;
    } else {
      b.tokens = std::span<const int32_t>(&s.next_token_, 1);
    }
    s.logits_.resize(static_cast<size_t>((b.all_logits ? b.tokens.size() : 1) * nv));
    b.logits = s.logits_.data();
    rows += static_cast<int64_t>(b.tokens.size());
    batch.push_back(b);
  }
  if (batch.empty()) return;
  const double t0 = now_seconds();
  model_.forward_batch(batch);
  metrics_.count_step(static_cast<int64_t>(batch.size()), rows, now_seconds() - t0);
  // Choices waiting on a prompt prefilled just now take its cache and last logits (before its
  // own sampling touches them) and sample their own first token from there.
  std::vector<Sequence*> copied;
  for (auto& sp : active_) {
    Sequence& s = *sp;
    if (s.prefilled_ || !s.prefill_from_) continue;
    Sequence* from = s.prefill_from_.get();
    if (std::find(prefilling.begin(), prefilling.end(), from) == prefilling.end()) continue;
    s.cache_.copy_prefix_from(from->cache_, static_cast<int64_t>(s.prompt_.size()));
    s.logits_.assign(from->logits_.end() - nv, from->logits_.end());
    s.prefill_from_.reset();
    s.copied_prefill_ = true;
    copied.push_back(&s);
  }
  for (Sequence* s : ran) after_step(*s);
  for (Sequence* s : copied) after_step(*s);
  std::vector<std::shared_ptr<Sequence>> still;
  for (auto& sp : active_) {
    if (!sp->ended_) still.push_back(sp);
  }
  active_.swap(still);
}

void Scheduler::publish_filled() {
  int64_t filled = 0;
  for (const auto& s : active_) filled += s->cache_.bytes_in_use();
  std::lock_guard lock(mutex_);
  filled_bytes_ = filled;
}

void Scheduler::after_step(Sequence& s) {
  const int64_t nv = model_.config().n_vocab;
  const float* last = s.logits_.data() + s.logits_.size() - nv;
  const GenerationParams& p = s.params_;
  if (!s.prefilled_) {
    s.prefilled_ = true;
    if (!s.copied_prefill_) metrics_.add_tokens(static_cast<int64_t>(s.prompt_.size()), 0);
    if (p.echo) emit_prompt(s, s.logits_.data());
    if (p.max_tokens == 0) {
      Chunk c;
      c.finish_reason = "length";
      finish(s, std::move(c), "length");
      return;
    }
  }
  if (!p.logit_bias.empty()) {  // the sampler and the reported log-probabilities see the bias
    float* row = s.logits_.data() + s.logits_.size() - nv;
    for (const auto& [token, bias] : p.logit_bias) row[token] += bias;
  }
  const int32_t id = s.sampler_->sample(last, nv);
  if (s.generated_ == 0) metrics_.observe_first_token(seconds_since(s.submitted_));
  // The end-of-sequence token is reported like any other (its text is empty), as OpenAI's API
  // does: lm-evaluation-harness drops the last echoed token, assuming it is the generated one.
  const bool eos = !p.ignore_eos && model_.tokenizer().is_end_of_generation(id);
  ++s.generated_;
  metrics_.add_tokens(0, 1);
  emit_token(s, id, last);
  if (eos || s.text_->stopped() || s.generated_ == p.max_tokens) {
    const std::string reason = eos || s.text_->stopped() ? "stop" : "length";
    Chunk c;
    c.finish_reason = reason;
    finish(s, std::move(c), reason);
    return;
  }
  s.next_token_ = id;
}

void Scheduler::emit_prompt(Sequence& s, const float* logits) {
  const int64_t nv = model_.config().n_vocab;
  const tok::Tokenizer& tokenizer = model_.tokenizer();
  const bool scored = s.params_.logprobs >= 0;
  Chunk c;
  tok::StreamingDecoder decoder(tokenizer, /*at_text_start=*/true);
  PieceCursor cursor(tokenizer, /*at_text_start=*/true, 0);
  for (size_t t = 0; t < s.prompt_.size(); ++t) {
    c.text += decoder.push(s.prompt_[t]);
    if (!scored) continue;
    // Row t-1 of the prompt's logits predicts token t; the first token has no prediction.
    TokenLogprob tl;
    if (t > 0) {
      tl = score_token(logits + (t - 1) * nv, nv, s.prompt_[t], s.params_.logprobs);
    } else {
      tl.id = s.prompt_[0];
      tl.scored = false;
    }
    tl.text_offset = cursor.offset();
    tl.piece = cursor.next(s.prompt_[t]);
    c.tokens.push_back(std::move(tl));
  }
  c.text += decoder.finish();
  s.deliver(std::move(c));
}

void Scheduler::emit_token(Sequence& s, int32_t id, const float* logits) {
  TokenLogprob tl;
  tl.id = id;
  if (s.params_.logprobs >= 0) {
    tl = score_token(logits, model_.config().n_vocab, id, s.params_.logprobs);
  }
  Release r = s.text_->push(id, std::move(tl));
  if (r.text.empty() && r.tokens.empty()) return;
  Chunk c;
  c.text = std::move(r.text);
  c.tokens = std::move(r.tokens);
  s.deliver(std::move(c));
}

void Scheduler::finish(Sequence& s, Chunk last, const std::string& reason) {
  Release r = s.text_->finish();
  last.text = std::move(r.text);
  last.tokens = std::move(r.tokens);
  last.prompt_tokens = static_cast<int64_t>(s.prompt_.size());
  last.completion_tokens = s.generated_;
  release(s, reason);
  s.deliver(std::move(last));
}

void Scheduler::fail(Sequence& s, int status, const std::string& message, const std::string& type,
                     const std::string& reason) {
  release(s, reason);
  s.deliver(error_chunk(status, message, type));
}

void Scheduler::release(Sequence& s, const std::string& reason) {
  metrics_.count_finished(reason);
  {
    std::lock_guard lock(mutex_);
    reserved_bytes_ -= s.capacity_ * bytes_per_token_;
    --active_count_;
  }
  s.cache_ = kv::KvCache();
  s.ended_ = true;
}

}  // namespace eigenkv::serve
