// Dense products with weight matrices stored as [out, in] rows (the PyTorch and GGUF layout).
#pragma once

#include <cstddef>
#include <cstdint>

#include "io/tensor_type.h"

namespace eigenkv::ops {

// A weight matrix [rows, cols] in its stored type: row r at data + r * row_bytes.
struct WeightView {
  io::TensorType type = io::TensorType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* data = nullptr;
  size_t row_bytes = 0;
};

// y[t, o] = sum_i x[t, i] * w[o, i]   (x: [n_tokens, w.cols], y: [n_tokens, w.rows]) for a weight
// of any type ops::can_dot takes. Up to kDecodeRows tokens (decode) run the type's dot-product
// kernel straight off the stored blocks, with the activations rounded once to the 8-bit blocks
// the kernel takes, and the threads splitting the weight rows so each row is read once. More
// tokens (prefill): float weights go to OpenBLAS SGEMM (F16/BF16 in dequantized tiles); block
// types follow the prefill mode below.
inline constexpr int64_t kDecodeRows = 8;
void matmul(const float* x, int64_t n_tokens, const WeightView& w, float* y);

// How prefill multiplies block-quantized weights.
//   kInteger: the activations are rounded to 8-bit blocks as in decode (llama.cpp's way) and the
//             products run in integers: packed weight panels (ops/qgemm.h) where this CPU has
//             the vector kernel, else the decode kernels over L2-sized tiles.
//   kExact:   tiles of weight rows dequantized to float32 into SGEMM on each thread, with float
//             activations: prefill logits equal the float64 reference of the dequantized weights.
//   kAuto:    kInteger where the panels have a vector kernel (AVX-512 VNNI: measured 1.9-2.3x
//             faster than kExact on a Xeon; AVX2: 1.2-1.6x on a Zen 3), else kExact.
// The mode starts from EIGENKV_PREFILL (auto, exact or integer; anything else throws Error at the
// first prefill) and is process-wide.
enum class PrefillMode { kAuto, kExact, kInteger };
void set_prefill_mode(PrefillMode mode);
PrefillMode prefill_mode();
// Whether prefill of block types rounds activations under the current mode on this CPU.
bool prefill_rounds_activations();
// The path block-type prefill takes now, in words (for benchmark reports).
const char* prefill_path_name();

// The same product from the dequantized weights in plain loops with double accumulation (and
// float activations): the reference for tests.
void matmul_reference(const float* x, int64_t n_tokens, const WeightView& w, float* y);

// Dot product of two float vectors of length n.
float dot(const float* a, const float* b, int64_t n);

}  // namespace eigenkv::ops
