// Decode attention over a cache of each row type: one KV head, a GQA group of four queries
// (tinystories-c4-gqa's, Llama-3-8B's, Mistral-7B's) or eight (TinyLlama-1.1B's, Llama-3-70B's),
// the whole context in one range (one thread). Counters: cache bytes read
// per second and nanoseconds per cached position; `eigenkv bench --kv-sweep` gives the
// whole-model figures with ratios. Depths 1024-16384 are the decode depths compared across row
// types (int8/int4 against f16); 65536 is a long context (keys and values of width 64: 9 MB as
// int8, 17 MB as f16). The label says which path ran: "integer AVX2", "integer AVX3_DL", "float".
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "ops/attention_kernel.h"
#include "ops/kv_format.h"

namespace eigenkv::ops {
namespace {

void BM_Attention(benchmark::State& state) {
  const KvType type = static_cast<KvType>(state.range(0));
  const int64_t width = state.range(1), n = state.range(2), queries = state.range(3);
  const RowFormat f = type == KvType::kMixed ? RowFormat::mixed(width, width / 4)
                                             : RowFormat::uniform(type, width);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> x(static_cast<size_t>(width)), sigma(static_cast<size_t>(width), 1.0f);
  std::vector<uint8_t> keys(static_cast<size_t>(n * f.bytes() + kKvRowSlack));
  std::vector<uint8_t> values(keys.size());
  for (int64_t t = 0; t < n; ++t) {
    for (float& v : x) v = normal(rng);
    encode_row(f, x.data(), nullptr, keys.data() + t * f.bytes());
    for (float& v : x) v = normal(rng);
    encode_row(f, x.data(), nullptr, values.data() + t * f.bytes());
  }
  std::vector<float> q(static_cast<size_t>(queries * width)), out(q.size());
  for (float& v : q) v = normal(rng);
  const std::vector<int64_t> limit(queries, n);
  const float* s = type == KvType::kMixed ? sigma.data() : nullptr;
  AttentionPartial part;
  for (auto _ : state) {
    part.reset(queries, width);
    attend_range(QueryBlock{q.data(), queries, width, limit.data()}, KvRows{keys.data(), f, s},
                 nullptr, KvRows{values.data(), f, s}, 0.125f, 0, n, part);
    finish_partial(part, out.data(), width);
    benchmark::DoNotOptimize(out.data());
  }
  const double bytes = 2.0 * n * f.bytes();
  state.counters["cache_bytes/s"] =
      benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["ns/position"] = benchmark::Counter(
      static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate |
                                  benchmark::Counter::kInvert);
  const std::string path = integer_key_path(f, queries)
                               ? std::string(" integer ") + integer_attention_target()
                               : std::string(" float");
  state.SetLabel(f.describe() + " width " + std::to_string(width) + ", " + std::to_string(queries) +
                 " queries" + path);
}

void Shapes(benchmark::internal::Benchmark* b) {
  for (KvType t : {KvType::kF32, KvType::kF16, KvType::kInt8, KvType::kInt4, KvType::kMixed}) {
    for (int64_t w : {64, 32}) {
      for (int64_t n : {1024, 4096, 16384, 65536}) {
        for (int64_t queries : {4, 8}) b->Args({static_cast<int64_t>(t), w, n, queries});
      }
    }
  }
}

BENCHMARK(BM_Attention)->Apply(Shapes)->ArgNames({"type", "width", "depth", "queries"})->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace eigenkv::ops
