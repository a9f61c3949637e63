#include "eval/bench.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "util/error.h"
#include "util/progress.h"

namespace eigenkv::eval {

double median(std::vector<double> v) {
  EKV_CHECK(!v.empty(), "median of an empty list");
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double measure_copy_bandwidth(int repeats) {
  constexpr size_t kBytes = size_t{256} << 20;
  const size_t n = kBytes / sizeof(float);
  std::vector<float> src(n), dst(n);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) {
    src[i] = static_cast<float>(i & 1023);
    dst[i] = 0.0f;
  }
  std::vector<double> rates;
  for (int r = 0; r < repeats + 1; ++r) {
    const double t0 = now_seconds();
#pragma omp parallel
    {
      const size_t threads = static_cast<size_t>(omp_get_num_threads());
      const size_t id = static_cast<size_t>(omp_get_thread_num());
      const size_t chunk = (n + threads - 1) / threads;
      const size_t begin = std::min(n, id * chunk);
      const size_t end = std::min(n, begin + chunk);
      std::memcpy(dst.data() + begin, src.data() + begin, (end - begin) * sizeof(float));
    }
    const double dt = now_seconds() - t0;
    if (r > 0) rates.push_back(2.0 * kBytes / dt);  // the first pass only warms the pages
  }
  EKV_CHECK(dst[n - 1] == src[n - 1], "copy bandwidth check failed");
  return median(rates);
}

namespace {

struct DecodeTiming {
  double tokens_per_s = 0;
  double attention_us_per_token = 0;
};

// Greedy decode of n_gen tokens from the cache's current end; logits: room for one row.
DecodeTiming time_decode(const model::Model& model, kv::KvCache& cache, int64_t n_gen,
                         float* logits) {
  const int64_t n_vocab = model.config().n_vocab;
  int32_t token = 1;
  model.reset_attention_seconds();
  const double t0 = now_seconds();
  for (int64_t i = 0; i < n_gen; ++i) {
    const int32_t one[1] = {token};
    model.forward(one, cache, logits, false);
    token = static_cast<int32_t>(std::max_element(logits, logits + n_vocab) - logits);
  }
  const double dt = now_seconds() - t0;
  return {n_gen / dt, 1e6 * model.attention_seconds() / n_gen};
}

std::vector<int32_t> random_tokens(int64_t n, int64_t n_vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(n_vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = pick(rng);
  return ids;
}

BenchRow summarize(const std::string& test, int64_t n, int64_t depth, std::vector<double> rates) {
  BenchRow row;
  row.test = test;
  row.n_tokens = n;
  row.depth = depth;
  row.tokens_per_s = median(rates);
  row.tokens_per_s_min = *std::min_element(rates.begin(), rates.end());
  row.tokens_per_s_max = *std::max_element(rates.begin(), rates.end());
  return row;
}

}  // namespace

std::vector<BenchRow> run_bench(const model::Model& model, const BenchOptions& o,
                                double copy_bandwidth) {
  EKV_CHECK(o.repeats > 0, "repeats must be positive, found ", o.repeats);
  EKV_CHECK(o.n_prompt > 0 || o.n_gen > 0, "nothing to measure: prompt and generation sizes are 0");
  const int64_t n_vocab = model.config().n_vocab;
  int64_t capacity = 1;
  for (int64_t depth : o.depths) {
    EKV_CHECK(depth >= 0, "depth must be >= 0, found ", depth);
    capacity = std::max(capacity, depth + std::max(o.n_prompt, o.n_gen));
  }
  kv::KvCache cache = model.new_cache(capacity);
  std::vector<float> logits(static_cast<size_t>(std::max<int64_t>(o.n_prompt, 1) * n_vocab));
  std::vector<BenchRow> rows;
  auto fill_to_depth = [&](int64_t depth) {
    cache.clear();
    if (depth > 0) model.forward(random_tokens(depth, n_vocab, 7), cache, logits.data(), false);
  };
  for (int64_t depth : o.depths) {
    if (o.n_prompt > 0) {
      const std::vector<int32_t> prompt = random_tokens(o.n_prompt, n_vocab, 11);
      std::vector<double> rates;
      for (int r = 0; r < o.repeats + 1; ++r) {
        fill_to_depth(depth);
        const double t0 = now_seconds();
        model.forward(prompt, cache, logits.data(), false);
        const double dt = now_seconds() - t0;
        if (r > 0) rates.push_back(o.n_prompt / dt);  // the first run warms caches and pages
      }
      rows.push_back(summarize("pp", o.n_prompt, depth, rates));
    }
    if (o.n_gen > 0) {
      std::vector<double> rates, attention_us;
      for (int r = 0; r < o.repeats + 1; ++r) {
        fill_to_depth(depth);
        const DecodeTiming timing = time_decode(model, cache, o.n_gen, logits.data());
        if (r > 0) {  // the first run warms caches and pages
          rates.push_back(timing.tokens_per_s);
          attention_us.push_back(timing.attention_us_per_token);
        }
      }
      BenchRow row = summarize("tg", o.n_gen, depth, rates);
      row.attention_us_per_token = median(attention_us);
      const double mean_kv_tokens = depth + 0.5 * (o.n_gen + 1);
      row.bytes_per_token = static_cast<double>(model.weights().decode_bytes_read()) +
                            mean_kv_tokens * static_cast<double>(model.kv_bytes_per_token());
      row.bandwidth_fraction = row.bytes_per_token * row.tokens_per_s / copy_bandwidth;
      rows.push_back(row);
    }
  }
  return rows;
}

std::vector<KvSweepRow> run_kv_sweep(const model::Model& model, kv::CacheTypes types,
                                     std::vector<int64_t> depths, int64_t n_gen, int repeats) {
  EKV_CHECK(!depths.empty() && n_gen > 0 && repeats > 0, "a KV sweep needs depths, tokens to "
            "generate and repeats");
  std::sort(depths.begin(), depths.end());
  EKV_CHECK(depths.front() >= 1, "sweep depths must be >= 1, found ", depths.front());
  const int64_t n_vocab = model.config().n_vocab;
  kv::KvCache cache = model.new_cache(depths.back() + n_gen, types);
  const std::vector<int32_t> filler = random_tokens(depths.back(), n_vocab, 7);
  std::vector<float> logits(static_cast<size_t>(n_vocab));
  constexpr int64_t kFillChunk = 512;
  std::vector<KvSweepRow> rows;
  for (int64_t depth : depths) {
    cache.truncate(std::min(cache.size(), depth));
    while (cache.size() < depth) {
      const int64_t n = std::min(kFillChunk, depth - cache.size());
      model.forward(std::span<const int32_t>(filler.data() + cache.size(), n), cache,
                    logits.data(), false);
    }
    std::vector<double> rates, attention_us;
    for (int r = 0; r < repeats + 1; ++r) {
      cache.truncate(depth);
      const DecodeTiming timing = time_decode(model, cache, n_gen, logits.data());
      if (r > 0) {  // the first run warms caches and pages
        rates.push_back(timing.tokens_per_s);
        attention_us.push_back(timing.attention_us_per_token);
      }
    }
    rows.push_back(KvSweepRow{depth, cache.bytes_per_token(), median(attention_us),
                              median(rates)});
  }
  return rows;
}

}  // namespace eigenkv::eval
