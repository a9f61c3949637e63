#include "serve/metrics.h"

#include <cstdio>

namespace eigenkv::serve {
namespace {

const std::vector<double> kLatencyBounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                            1,     2.5,  5,     10,   30,  60,   300};
const std::vector<double> kStepBounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                         0.05,   0.1,   0.25,   0.5,   1};

std::string number(double v) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.15g", v);
  return buf;
}

// Label values escape backslash, quote and newline (Prometheus text format).
std::string label_value(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void header(std::string& out, const std::string& name, const char* type, const char* help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void sample(std::string& out, const std::string& name, const std::string& labels, double v) {
  out += name + (labels.empty() ? "" : "{" + labels + "}") + " " + number(v) + "\n";
}

void gauge(std::string& out, const std::string& name, const char* help, double v) {
  header(out, name, "gauge", help);
  sample(out, name, "", v);
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  size_t b = 0;
  while (b < bounds_.size() && value > bounds_[b]) ++b;
  ++counts_[b];
  sum_ += value;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  const std::string sep = labels.empty() ? "" : labels + ",";
  int64_t cumulative = 0;
  for (size_t b = 0; b <= bounds_.size(); ++b) {
    cumulative += counts_[b];
    const std::string le = b < bounds_.size() ? number(bounds_[b]) : "+Inf";
    sample(out, name + "_bucket", sep + "le=\"" + le + "\"", static_cast<double>(cumulative));
  }
  sample(out, name + "_sum", labels, sum_);
  sample(out, name + "_count", labels, static_cast<double>(count_));
}

Metrics::Metrics() : first_token_(kLatencyBounds), step_seconds_(kStepBounds) {}

void Metrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard lock(mutex_);
  ++requests_[{endpoint, status}];
}

void Metrics::observe_latency(const std::string& endpoint, double seconds) {
  std::lock_guard lock(mutex_);
  latency_.try_emplace(endpoint, kLatencyBounds).first->second.observe(seconds);
}

void Metrics::observe_first_token(double seconds) {
  std::lock_guard lock(mutex_);
  first_token_.observe(seconds);
}

void Metrics::add_tokens(int64_t prompt_tokens, int64_t generated_tokens) {
  std::lock_guard lock(mutex_);
  prompt_tokens_ += prompt_tokens;
  generated_tokens_ += generated_tokens;
}

void Metrics::count_finished(const std::string& reason) {
  std::lock_guard lock(mutex_);
  ++finished_[reason];
}

void Metrics::count_step(int64_t sequences, int64_t rows, double seconds) {
  std::lock_guard lock(mutex_);
  ++steps_;
  step_sequences_ += sequences;
  step_rows_ += rows;
  step_seconds_.observe(seconds);
}

std::string Metrics::render(const EngineGauges& g, const ServerInfo& info) const {
  std::lock_guard lock(mutex_);
  std::string out;
  header(out, "eigenkv_info", "gauge", "What the server runs (value 1).");
  sample(out, "eigenkv_info",
         "model=\"" + label_value(info.model_id) + "\",compressed=\"" +
             (info.compressed ? "true" : "false") + "\",chat_template=\"" +
             label_value(info.chat_template) + "\"",
         1);
  header(out, "eigenkv_requests_total", "counter", "HTTP requests by endpoint and status.");
  for (const auto& [key, n] : requests_) {
    sample(
        out, "eigenkv_requests_total",
        "endpoint=\"" + label_value(key.first) + "\",code=\"" + std::to_string(key.second) + "\"",
        static_cast<double>(n));
  }
  header(out, "eigenkv_sequences_finished_total", "counter",
         "Sequences ended, by reason (stop, length, disconnect, timeout, shutdown, error).");
  for (const auto& [reason, n] : finished_) {
    sample(out, "eigenkv_sequences_finished_total", "reason=\"" + reason + "\"",
           static_cast<double>(n));
  }
  header(out, "eigenkv_prompt_tokens_total", "counter", "Prompt tokens prefilled.");
  sample(out, "eigenkv_prompt_tokens_total", "", static_cast<double>(prompt_tokens_));
  header(out, "eigenkv_generated_tokens_total", "counter", "Tokens generated.");
  sample(out, "eigenkv_generated_tokens_total", "", static_cast<double>(generated_tokens_));
  header(out, "eigenkv_engine_steps_total", "counter", "Batched forward steps.");
  sample(out, "eigenkv_engine_steps_total", "", static_cast<double>(steps_));
  header(out, "eigenkv_engine_step_sequences_total", "counter",
         "Sequences summed over steps (divide by steps for the mean batch).");
  sample(out, "eigenkv_engine_step_sequences_total", "", static_cast<double>(step_sequences_));
  header(out, "eigenkv_engine_step_rows_total", "counter", "Token rows summed over steps.");
  sample(out, "eigenkv_engine_step_rows_total", "", static_cast<double>(step_rows_));
  gauge(out, "eigenkv_kv_budget_bytes", "KV cache memory budget (--kv-mem).",
        static_cast<double>(g.kv_budget_bytes));
  gauge(out, "eigenkv_kv_bytes_in_use", "KV cache bytes allocated to admitted sequences.",
        static_cast<double>(g.kv_reserved_bytes));
  gauge(out, "eigenkv_kv_bytes_free", "KV cache budget not allocated.",
        static_cast<double>(g.kv_budget_bytes - g.kv_reserved_bytes));
  gauge(out, "eigenkv_kv_bytes_filled", "KV cache bytes holding tokens now.",
        static_cast<double>(g.kv_used_bytes));
  gauge(out, "eigenkv_kv_bytes_per_token", "KV cache bytes one token takes (all layers).",
        static_cast<double>(g.kv_bytes_per_token));
  const int64_t per_seq = g.kv_bytes_per_token * g.ctx;
  gauge(out, "eigenkv_kv_sequences_at_full_context",
        "Sequences of --ctx tokens the KV budget admits at once.",
        per_seq > 0 ? static_cast<double>(g.kv_budget_bytes / per_seq) : 0.0);
  gauge(out, "eigenkv_sequences_active", "Sequences admitted and decoding.",
        static_cast<double>(g.sequences_active));
  gauge(out, "eigenkv_sequences_active_peak", "Most sequences admitted at once so far.",
        static_cast<double>(g.sequences_active_peak));
  gauge(out, "eigenkv_queue_length", "Sequences waiting for KV memory or a slot.",
        static_cast<double>(g.queue_length));
  gauge(out, "eigenkv_parallel", "Most sequences decoded together (--parallel).",
        static_cast<double>(g.parallel));
  header(out, "eigenkv_request_latency_seconds", "histogram",
         "Time from request to last byte, by endpoint.");
  for (const auto& [endpoint, h] : latency_) {
    h.render(out, "eigenkv_request_latency_seconds", "endpoint=\"" + label_value(endpoint) + "\"");
  }
  header(out, "eigenkv_time_to_first_token_seconds", "histogram",
         "Time from admission request to the first generated token.");
  first_token_.render(out, "eigenkv_time_to_first_token_seconds", "");
  header(out, "eigenkv_engine_step_seconds", "histogram", "Time of one batched forward step.");
  step_seconds_.render(out, "eigenkv_engine_step_seconds", "");
  return out;
}

}  // namespace eigenkv::serve
