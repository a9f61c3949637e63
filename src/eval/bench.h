// Speed measurement in the manner of llama-bench: prefill (pp) and decode (tg) tokens/s at given
// context depths, medians of repeats, and decode's achieved memory traffic against the machine's
// copy bandwidth measured in the same run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"

namespace eigenkv::eval {

struct BenchOptions {
  int64_t n_prompt = 128;  // tokens per prefill test
  int64_t n_gen = 32;      // tokens per decode test
  std::vector<int64_t> depths = {0};
  int repeats = 5;
};

struct BenchRow {
  std::string test;  // "pp" or "tg"
  int64_t n_tokens = 0;
  int64_t depth = 0;
  double tokens_per_s = 0;  // median over repeats
  double tokens_per_s_min = 0;
  double tokens_per_s_max = 0;
  double bytes_per_token = 0;         // tg: weights + mean KV read per token
  double bandwidth_fraction = 0;      // tg: bytes_per_token * tokens_per_s / copy bandwidth
  double attention_us_per_token = 0;  // median over repeats: time in attention proper per token
};

// STREAM-style copy bandwidth (bytes read + bytes written per second), median of `repeats`,
// over buffers far larger than the caches, with every thread copying its share.
double measure_copy_bandwidth(int repeats = 5);

std::vector<BenchRow> run_bench(const model::Model& model, const BenchOptions& options,
                                double copy_bandwidth);

// One point of the KV context sweep: decode at a context depth with one cache type.
struct KvSweepRow {
  int64_t depth = 0;
  int64_t kv_bytes_per_token = 0;
  double attention_us_per_token = 0;  // median over repeats
  double tokens_per_s = 0;            // median over repeats
};

// Decode speed of `model` with caches of `types` at each depth (ascending; the cache is filled
// with random tokens once and extended from depth to depth). Depths past the model's trained
// context are allowed: the weights run past it, which changes nothing of the speed.
std::vector<KvSweepRow> run_kv_sweep(const model::Model& model, kv::CacheTypes types,
                                     std::vector<int64_t> depths, int64_t n_gen, int repeats);

// The median of a non-empty list.
double median(std::vector<double> values);

}  // namespace eigenkv::eval
