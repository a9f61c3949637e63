// Counters and histograms the server keeps, rendered as Prometheus text (GET /metrics).
// Thread-safe: HTTP handlers and the engine thread record concurrently.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace eigenkv::serve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  // Appends the _bucket, _sum and _count lines of `name` with extra `labels` ("" or "a=\"b\"").
  void render(std::string& out, const std::string& name, const std::string& labels) const;

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bucket, not cumulative; the last one is +Inf
  double sum_ = 0;
  int64_t count_ = 0;
};

// The scheduler's state at the moment /metrics is read.
struct EngineGauges {
  int64_t kv_budget_bytes = 0;
  int64_t kv_reserved_bytes = 0;  // allocated to admitted sequences
  int64_t kv_used_bytes = 0;      // holding tokens now
  int64_t kv_bytes_per_token = 0;
  int64_t sequences_active = 0;
  int64_t sequences_active_peak = 0;
  int64_t queue_length = 0;
  int64_t parallel = 0;
  int64_t ctx = 0;
};

// What the server runs, for an info metric.
struct ServerInfo {
  std::string model_id;
  bool compressed = false;
  std::string chat_template;
};

class Metrics {
 public:
  Metrics();
  void count_request(const std::string& endpoint, int status);
  void observe_latency(const std::string& endpoint, double seconds);
  void observe_first_token(double seconds);
  void add_tokens(int64_t prompt_tokens, int64_t generated_tokens);
  void count_finished(const std::string& reason);  // stop, length, disconnect, timeout, error
  void count_step(int64_t sequences, int64_t rows, double seconds);

  std::string render(const EngineGauges& gauges, const ServerInfo& info) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, int64_t> requests_;
  std::map<std::string, Histogram> latency_;
  Histogram first_token_;
  Histogram step_seconds_;
  std::map<std::string, int64_t> finished_;
  int64_t prompt_tokens_ = 0;
  int64_t generated_tokens_ = 0;
  int64_t steps_ = 0;
  int64_t step_sequences_ = 0;
  int64_t step_rows_ = 0;
};

}  // namespace eigenkv::serve
