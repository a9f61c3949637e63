// Conversion of stored tensor elements (plain floats and llama.cpp's quantized blocks) to and
// from float32.
//
// Dequantization reproduces llama.cpp's reference dequantizers bit for bit, computing the same
// float32 expressions in the same order (for example Q4_K forms d*scale and dmin*min, then
// y = (d*scale)*q - dmin*min). Every product in these formulas is exact in float32: an f16 has
// 11 significant bits and the integers it is multiplied by (scale times quant) need at most 12
// more. Each output is therefore its exact value rounded at most once, by the final addition of
// the min, so neither the grouping of the products nor a compiler fusing that multiply-add into
// an FMA can change it.
// Quantization follows llama.cpp's reference quantizers (quantize_row_*_ref, what llama-quantize
// runs when it is given no importance matrix), computing their float32 expressions in the same
// order with every product rounded before it is added (no FMA contraction), so a file eigenkv
// writes holds the blocks llama-quantize writes for the same numbers. Checked against files
// llama-quantize made (tests/dequant_test.cc): Q8_0, Q4_0, Q6_K and Q4_K byte for byte on every
// block. Q4_1, Q5_0, Q5_1, Q2_K, Q3_K and Q5_K follow the same reference code (Q5_K shares
// Q4_K's search) but no llama-quantize output of those types was at hand to compare with.
// Inputs to quantize must be finite.
//
// `count` is the number of elements and must be a whole number of the type's blocks; buffers
// may have any alignment.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "io/tensor_type.h"

namespace eigenkv::ops {

// True for F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
bool can_dequantize(io::TensorType type);

// Converts `count` numbers stored as `type` at `src` into float32 at `dst`. Throws Error naming
// the type when it is not supported or count is not a whole number of blocks.
void dequantize(io::TensorType type, const uint8_t* src, float* dst, int64_t count);

// dequantize() split into block-aligned chunks over the OpenMP threads; for whole tensors.
void dequantize_parallel(io::TensorType type, const uint8_t* src, float* dst, int64_t count);

// True for the types eigenkv writes: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K,
// Q4_K, Q5_K, Q6_K.
bool can_quantize(io::TensorType type);

// The types can_quantize accepts, by the lower-case names llama.cpp prints ("q8_0", "q4_k", ...).
std::map<std::string, io::TensorType> writable_types();

// Converts `count` float32 numbers at `src` into `type` at `dst`, which must hold
// io::tensor_bytes(type, count) bytes. Throws like dequantize(). Every block is encoded on its
// own, so quantizing a tensor in pieces gives the same bytes as quantizing it whole.
void quantize(io::TensorType type, const float* src, uint8_t* dst, int64_t count);

// quantize() split into block-aligned chunks over the OpenMP threads; the same bytes.
void quantize_parallel(io::TensorType type, const float* src, uint8_t* dst, int64_t count);

// Converts `rows` rows of `width` numbers from type `from` at `src` to type `to` at `dst` (which
// holds io::tensor_bytes(to, rows * width) bytes), in chunks of whole rows over the OpenMP
// threads, each dequantized into a small float buffer and quantized from it: no float32 copy of
// the whole tensor. The same bytes as dequantize() then quantize() of the whole. Throws Error
// naming the types when either cannot be read or written or `width` is not whole blocks of both.
void convert_rows(io::TensorType from, const uint8_t* src, io::TensorType to, uint8_t* dst,
                  int64_t rows, int64_t width);

}  // namespace eigenkv::ops
