// Dot products of stored weight rows with activation rows, for decode (matrix times a few
// vectors): each weight row is read once, straight from its stored blocks, and multiplied with
// every activation row of the call.
//
// Float weights (F32, F16, BF16) dot against float32 activations with fused multiply-adds.
// Block-quantized weights dot against activations rounded once per call to 8-bit blocks, as
// llama.cpp does: blocks of 32 with a float32 scale (and the block's sum, for the types whose
// numbers are offset by a min) for Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0; blocks of 256 with a float32
// scale and the sums of each group of 16 for the K-quants, so that their mins and offsets are
// applied from the sums instead of to every number. The integer products are exact; the
// activation rounding (at most half an activation block's scale per number) is the only
// approximation beyond float32 accumulation.
//
// Activations must be finite. Buffers may have any alignment; rows of act_row_bytes() are
// multiples of 64 bytes, so an activation buffer aligned to 64 keeps every row aligned. The
// prepared layout is private to this module (it differs by weight type).
//
// On x86 with AVX2 the block types run fused kernels per type; AVX-512 targets use the same
// 256-bit kernels, with VPDPBUSD/VPDPWSSD where AVX512_VNNI is compiled in; other targets unpack
// blocks with the reference's scalar code and take the integer dots with Highway.
#pragma once

#include <cstddef>
#include <cstdint>

#include "io/tensor_type.h"

namespace eigenkv::ops {

// True for every weight type dot_rows takes: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K,
// Q3_K, Q4_K, Q5_K, Q6_K.
bool can_dot(io::TensorType weight_type);

// Bytes of one activation row of n numbers prepared for weights of `weight_type` (n a whole
// number of the type's blocks).
size_t act_row_bytes(io::TensorType weight_type, int64_t n);

// Prepares n_x activation rows x [n_x, n] (float, row stride n) for dot_rows: out holds n_x rows
// of act_row_bytes each, back to back.
// (float types keep float32 copies; block types get int8 blocks with scales, plus block sums
// where the type needs them.)
void prepare_act(io::TensorType weight_type, const float* x, int64_t n_x, int64_t n, uint8_t* out);

// y[t * y_stride + r] = dot(weight row r, activation row t) for weight rows r in [r0, r1) and t in
// [0, n_x).
// w: the weight matrix's bytes (row r starts at w + r * row_bytes), n: numbers per row, act: from
// prepare_act. Single-threaded; callers split the rows over threads.
void dot_rows(io::TensorType weight_type, const uint8_t* w, size_t row_bytes, int64_t n,
              const uint8_t* act, int64_t n_x, int64_t r0, int64_t r1, float* y, int64_t y_stride);

// The same in plain scalar loops (the reference for tests; same activation quantization).
void dot_rows_reference(io::TensorType weight_type, const uint8_t* w, size_t row_bytes, int64_t n,
                        const uint8_t* act, int64_t n_x, int64_t r0, int64_t r1, float* y,
                        int64_t y_stride);

}  // namespace eigenkv::ops
