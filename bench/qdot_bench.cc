// Decode matrix-vector throughput of ops::dot_rows per weight type, single-threaded: a 4096 x 4096
// weight matrix (4096 wide, `rows` rows) times n_x activation rows prepared once outside the timed loop (as llama.cpp's
// ggml_vec_dot kernels are timed). Bytes per second count the weight bytes read, so the rate
// compares directly with memory bandwidth; the label gives it in GB/s (10^9 bytes per second).
// The rows:64 runs take a 64-row slice that stays in the L2 cache: the kernels' own speed; with
// n_x 8 and 64 they time the integer prefill path (GOP/s counts two operations a weight and row).
// BM_PrepareAct times the activation rounding each call does once.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "io/tensor_type.h"
#include "ops/half.h"
#include "ops/qdot.h"
#include "ops/qgemm.h"

namespace eigenkv::ops {
namespace {

using io::TensorType;

constexpr int64_t kRows = 4096;
constexpr int64_t kWidth = 4096;

// Random bytes make valid blocks of every type; the f16 scales are set to ordinary numbers so
// that no infinities or NaNs flow through the arithmetic.
std::vector<uint8_t> random_matrix(TensorType type, int64_t rows, size_t row_bytes) {
  std::vector<uint8_t> w(static_cast<size_t>(rows) * row_bytes);
  std::mt19937 rng(1);
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  const io::TensorTypeInfo& info = io::tensor_type_info(type);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const auto put_half = [&](uint8_t* p) {
    const uint16_t h = fp32_to_fp16(uniform(rng));
    std::memcpy(p, &h, 2);
  };
  const size_t n_blocks = w.size() / info.block_bytes;
  for (size_t b = 0; b < n_blocks; ++b) {
    uint8_t* block = w.data() + b * info.block_bytes;
    switch (type) {
      case TensorType::kF16:
        put_half(block);
        break;
      case TensorType::kQ4_0:
      case TensorType::kQ8_0:
        put_half(block);
        break;
      case TensorType::kQ4_K:
        put_half(block);
        put_half(block + 2);
        break;
      case TensorType::kQ6_K:
        put_half(block + 208);
        break;
      default:
        break;
    }
  }
  return w;
}

void BM_DotRows(benchmark::State& state) {
  const auto type = static_cast<TensorType>(state.range(0));
  const int64_t n_x = state.range(1);
  const int64_t rows = state.range(2);
  const size_t row_bytes = io::tensor_bytes(type, kWidth);
  const std::vector<uint8_t> w = random_matrix(type, rows, row_bytes);
  std::vector<float> x(static_cast<size_t>(n_x * kWidth));
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& v : x) v = normal(rng);
  std::vector<uint8_t> act(static_cast<size_t>(n_x) * act_row_bytes(type, kWidth));
  prepare_act(type, x.data(), n_x, kWidth, act.data());
  std::vector<float> y(static_cast<size_t>(n_x * rows));
  for (auto _ : state) {
    dot_rows(type, w.data(), row_bytes, kWidth, act.data(), n_x, 0, rows, y.data(), rows);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const int64_t bytes = static_cast<int64_t>(w.size());
  state.SetBytesProcessed(state.iterations() * bytes);
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(bytes),
                                              benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
  state.counters["GOP/s"] =
      benchmark::Counter(2.0 * static_cast<double>(rows * kWidth * n_x),
                         benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  char label[64];
  std::snprintf(label, sizeof(label), "%s %.1f MB", std::string(io::tensor_type_info(type).name).c_str(),
                static_cast<double>(bytes) / 1e6);
  state.SetLabel(label);
}

// The packed-panel prefill kernel (ops/qgemm.h) on a 64-row tile of the same width (in L2),
// n_x activation rows; and the packing of that tile, which each prefill product does once.
void BM_QgemmTile(benchmark::State& state) {
  const auto type = static_cast<TensorType>(state.range(0));
  const int64_t n_x = state.range(1);
  const int64_t rows = 64;
  const size_t row_bytes = io::tensor_bytes(type, kWidth);
  const std::vector<uint8_t> w = random_matrix(type, rows, row_bytes);
  const size_t panel_bytes = qgemm_panel_bytes(type, kWidth);
  const int64_t n_panels = rows / kPanelRows;
  std::vector<uint8_t> tile(panel_bytes * static_cast<size_t>(n_panels));
  for (int64_t p = 0; p < n_panels; ++p) {
    qgemm_pack_panel(type, w.data() + static_cast<size_t>(p * kPanelRows) * row_bytes, row_bytes,
                     kWidth, kPanelRows, tile.data() + static_cast<size_t>(p) * panel_bytes);
  }
  std::vector<float> x(static_cast<size_t>(n_x * kWidth));
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& v : x) v = normal(rng);
  std::vector<uint8_t> act(static_cast<size_t>(n_x) * qgemm_act_row_bytes(kWidth));
  qgemm_prepare_act(x.data(), n_x, kWidth, act.data());
  std::vector<float> y(static_cast<size_t>(n_x * rows));
  for (auto _ : state) {
    qgemm_tile(type, tile.data(), n_panels, kWidth, act.data(), n_x, rows, y.data(), rows);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GOP/s"] =
      benchmark::Counter(2.0 * static_cast<double>(rows * kWidth * n_x),
                         benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.SetLabel(std::string(io::tensor_type_info(type).name) +
                 (qgemm_vnni() ? " VNNI kernel" : qgemm_fast(type) ? " AVX2 kernel" : " plain loop"));
}

void BM_QgemmPack(benchmark::State& state) {
  const auto type = static_cast<TensorType>(state.range(0));
  const size_t row_bytes = io::tensor_bytes(type, kWidth);
  const std::vector<uint8_t> w = random_matrix(type, kPanelRows, row_bytes);
  std::vector<uint8_t> panel(qgemm_panel_bytes(type, kWidth));
  for (auto _ : state) {
    qgemm_pack_panel(type, w.data(), row_bytes, kWidth, kPanelRows, panel.data());
    benchmark::DoNotOptimize(panel.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * kPanelRows * kWidth);
  state.SetLabel(std::string(io::tensor_type_info(type).name));
}

void BM_PrepareAct(benchmark::State& state) {
  const auto type = static_cast<TensorType>(state.range(0));
  std::vector<float> x(kWidth);
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& v : x) v = normal(rng);
  std::vector<uint8_t> act(act_row_bytes(type, kWidth));
  for (auto _ : state) {
    prepare_act(type, x.data(), 1, kWidth, act.data());
    benchmark::DoNotOptimize(act.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(std::string(io::tensor_type_info(type).name));
  state.SetItemsProcessed(state.iterations() * kWidth);
}

constexpr TensorType kBenchTypes[] = {TensorType::kQ4_0, TensorType::kQ8_0, TensorType::kQ4_K,
                                      TensorType::kQ6_K, TensorType::kF16};

void DotArgs(benchmark::internal::Benchmark* bench) {
  for (int64_t rows : {kRows, int64_t{64}, int64_t{8}}) {
    for (int64_t n_x : {1, 4}) {
      for (TensorType type : kBenchTypes) bench->Args({static_cast<int64_t>(type), n_x, rows});
    }
  }
  // Prefill: eight and 64 activation rows over an in-cache slice (the integer prefill path).
  for (int64_t n_x : {8, 64}) {
    for (TensorType type : kBenchTypes) bench->Args({static_cast<int64_t>(type), n_x, 64});
  }
}

void PrepareArgs(benchmark::internal::Benchmark* bench) {
  for (TensorType type : {TensorType::kQ4_0, TensorType::kQ4_K}) {
    bench->Arg(static_cast<int64_t>(type));
  }
}

BENCHMARK(BM_DotRows)->Apply(DotArgs)->ArgNames({"type", "n_x", "rows"})->Unit(benchmark::kMicrosecond);
void QgemmArgs(benchmark::internal::Benchmark* bench) {
  for (int64_t n_x : {8, 64}) {
    for (TensorType type : {TensorType::kQ4_0, TensorType::kQ8_0, TensorType::kQ4_K,
                            TensorType::kQ6_K}) {
      bench->Args({static_cast<int64_t>(type), n_x});
    }
  }
}
void PackArgs(benchmark::internal::Benchmark* bench) {
  for (TensorType type : {TensorType::kQ4_0, TensorType::kQ8_0, TensorType::kQ4_K,
                          TensorType::kQ6_K}) {
    bench->Arg(static_cast<int64_t>(type));
  }
}
BENCHMARK(BM_QgemmTile)->Apply(QgemmArgs)->ArgNames({"type", "n_x"})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_QgemmPack)->Apply(PackArgs)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_PrepareAct)->Apply(PrepareArgs)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace eigenkv::ops
