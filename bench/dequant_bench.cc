// Dequantization throughput per tensor type, single-threaded and through dequantize_parallel.
// Bytes per second count the float32 output written (4 bytes a number), the same for every type,
// so the rates compare directly; items per second are numbers decoded.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "io/tensor_type.h"
#include "ops/dequant.h"

namespace eigenkv::ops {
namespace {

using io::TensorType;

// 4 Mi numbers: 16 MiB of output, larger than the caches, like a real weight matrix.
constexpr int64_t kCount = int64_t{1} << 22;

// Random bytes make valid blocks of every type. Their f16 scales may be huge, NaN or infinite;
// that does not change the speed of the arithmetic (no float subnormals can arise).
std::vector<uint8_t> random_tensor(TensorType type) {
  std::vector<uint8_t> bytes(io::tensor_bytes(type, kCount));
  std::mt19937 rng(1);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  if (type == TensorType::kF64) {
    // Doubles beyond float's range would all become infinity; keep them ordinary.
    std::uniform_real_distribution<double> uniform(-1.0, 1.0);
    for (int64_t i = 0; i < kCount; ++i) {
      const double value = uniform(rng);
      std::memcpy(bytes.data() + 8 * i, &value, 8);
    }
  }
  return bytes;
}

template <bool kParallel>
void BM_Dequantize(benchmark::State& state) {
  const auto type = static_cast<TensorType>(state.range(0));
  const std::vector<uint8_t> src = random_tensor(type);
  std::vector<float> dst(kCount);
  for (auto _ : state) {
    if (kParallel) {
      dequantize_parallel(type, src.data(), dst.data(), kCount);
    } else {
      dequantize(type, src.data(), dst.data(), kCount);
    }
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(std::string(io::tensor_type_info(type).name));
  state.SetItemsProcessed(state.iterations() * kCount);
  state.SetBytesProcessed(state.iterations() * kCount * static_cast<int64_t>(sizeof(float)));
}

void AllTypes(benchmark::internal::Benchmark* bench) {
  for (TensorType type :
       {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kF64, TensorType::kQ4_0,
        TensorType::kQ4_1, TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kQ8_0,
        TensorType::kQ2_K, TensorType::kQ3_K, TensorType::kQ4_K, TensorType::kQ5_K,
        TensorType::kQ6_K}) {
    bench->Arg(static_cast<int64_t>(type));
  }
}

BENCHMARK(BM_Dequantize<false>)->Apply(AllTypes)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Dequantize<true>)->Apply(AllTypes)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
}  // namespace eigenkv::ops
