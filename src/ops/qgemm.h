// Prefill products of block-quantized weights with many activation rows, in 8-bit integers.
//
// The weights are taken in tiles of panels of kPanelRows rows. Packing a panel writes every
// number of its rows as an unsigned byte u with a float scale s and offset o per group of G
// numbers (the weight is exactly s * u + o), the rows interleaved four bytes at a time, so that
// one 64-byte vector holds numbers [4c, 4c + 4) of a group for all 16 rows: one VPDPBUSD with
// four activation bytes broadcast to every lane adds a step of 16 dot products. G is 32 for
// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K and Q5_K and 16 for Q2_K, Q3_K and Q6_K (their scale
// groups). Q8_0 bytes are offset by 128 (o = -128 d).
//
// The activations are rounded as for decode (ops/qdot.h): blocks of 32 int8 with one scale each,
// plus the scaled sums of each 16 and 32 numbers that the offsets multiply. The integer products
// are exact; the activation rounding is the only approximation beyond float32 accumulation, the
// same as the decode kernels'.
//
// Panel of 16 rows, per group g (stride 16 G + 128 bytes):
//   u8 [G / 4][16 rows][4] | float32 s[16] | float32 o[16]
// Activation row (act_row_bytes): qdot's Q8_0 row (int8 q[n] | d[n/32] | d * sum per 32) then
// float32 d * sum per 16, rounded up to 64 bytes.
//
// Where the CPU has AVX-512 VNNI (and the build compiles it in) the panels run on 512-bit
// VPDPBUSD; on other x86 CPUs with AVX2 a 256-bit kernel runs them with VPMADDUBSW and VPMADDWD
// (Q8_0, whose bytes reach 255, as signed numbers with VPSIGNB); elsewhere qgemm_fast() is false
// and callers take another path (the tiles still run, on a plain loop).
#pragma once

#include <cstddef>
#include <cstdint>

#include "io/tensor_type.h"

namespace eigenkv::ops {

inline constexpr int64_t kPanelRows = 16;

// True for the block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K .. Q6_K).
bool can_qgemm(io::TensorType weight_type);

// True where this CPU runs packed panels of this type with a vector kernel.
bool qgemm_fast(io::TensorType weight_type);
// True where that kernel is the 512-bit VNNI one (every block type).
bool qgemm_vnni();

// Bytes of one prepared activation row of n numbers (n a multiple of 32).
size_t qgemm_act_row_bytes(int64_t n);
// Rounds n_x rows x [n_x, n] into out (n_x rows of qgemm_act_row_bytes each).
void qgemm_prepare_act(const float* x, int64_t n_x, int64_t n, uint8_t* out);

// Bytes of one packed panel of a weight with `cols` numbers per row.
size_t qgemm_panel_bytes(io::TensorType weight_type, int64_t cols);
// Packs weight rows [0, rows) (rows <= kPanelRows; the rest of the panel is zero) starting at w
// (row stride row_bytes) into panel.
void qgemm_pack_panel(io::TensorType weight_type, const uint8_t* w, size_t row_bytes,
                      int64_t cols, int64_t rows, uint8_t* panel);

// y[t * ldy + p * kPanelRows + r] = dot(row r of panel p, activation row t) for the n_panels
// panels at `tile` (back to back), t < n_x, and p * kPanelRows + r < rows.
void qgemm_tile(io::TensorType weight_type, const uint8_t* tile, int64_t n_panels, int64_t cols,
                const uint8_t* act, int64_t n_x, int64_t rows, float* y, int64_t ldy);

// The same products from the stored rows (dequantized) and the rounded activations in double:
// the reference for tests. w holds `rows` rows of row_bytes.
void qgemm_reference(io::TensorType weight_type, const uint8_t* w, size_t row_bytes, int64_t cols,
                     int64_t rows, const uint8_t* act, int64_t n_x, float* y, int64_t ldy);

}  // namespace eigenkv::ops
