// Decode and prefill attention over a KV cache stored in any RowFormat (float32, float16, int8,
// int4, water-filled mixed), written once with Highway for every x86 and ARM target and chosen at
// run time. The cache is read in tiles of kAttentionTile rows that are decoded into a small float
// buffer (it stays in L1) and used by every query of the block, so no dequantized copy of the cache
// is ever made. Softmax is online (running max and sum), so a key range can be split across
// threads and the partial results merged (flash-decoding).
#pragma once

#include <cstdint>
#include <vector>

#include "ops/kv_format.h"
#include "ops/rope.h"

namespace eigenkv::ops {

inline constexpr int64_t kAttentionTile = 64;

// One KV head's cached rows of one kind: row s at data + s * format.bytes(), the buffer
// followed by at least kKvRowSlack readable bytes (the decoders read whole vectors).
struct KvRows {
  const uint8_t* data = nullptr;
  RowFormat format;
  const float* sigma = nullptr;  // per-direction scales [format.width], or null
};

// Keys cached as r_K numbers before RoPE (KeyMode kPre): each is rebuilt as U_K k' (d_h numbers)
// and rotated with its own position before it is scored.
struct KeyRebuild {
  const float* basis_t = nullptr;  // U_K^T: [r_K, d_h]
  int64_t head_dim = 0;
  const RopeTable* rope = nullptr;  // null: no rotation
};

// n query vectors of one KV head; query i is q + i * width, stands at position limit[i] - 1 and
// sees keys [0, limit[i]).
struct QueryBlock {
  const float* q = nullptr;
  int64_t n = 0;
  int64_t width = 0;
  const int64_t* limit = nullptr;
  // The per-query score hook, applied after scaling and before the softmax: ALiBi adds
  // alibi_slope[i] * (s - (limit[i] - 1)) to query i's score of key s. Null: no bias.
  const float* alibi_slope = nullptr;
};

// Online-softmax state of n queries over the keys accumulated so far.
struct AttentionPartial {
  int64_t n = 0;
  int64_t width = 0;       // value width
  int64_t stride = 0;      // row stride of `out` (width rounded up for SIMD)
  std::vector<float> max;  // [n] running max of the scaled scores
  std::vector<float> sum;  // [n] running sum of exp(score - max)
  std::vector<float> out;  // [n, stride] running sum of exp(score - max) * value
  // The values' per-direction scales, applied when finishing (empty: none).
  std::vector<float> value_scale;
  void reset(int64_t n_queries, int64_t value_width);
};

// Adds keys [begin, end) to `partial` (reset for this block and value width).
void attend_range(const QueryBlock& queries, const KvRows& keys, const KeyRebuild* rebuild,
                  const KvRows& values, float scale, int64_t begin, int64_t end,
                  AttentionPartial& partial);
// Folds `other` (the same queries over another key range) into `into`.
void merge_partial(AttentionPartial& into, const AttentionPartial& other);
// out row i (at out + i * out_stride) = the attention output of query i.
void finish_partial(const AttentionPartial& partial, float* out, int64_t out_stride);

// Whether attend_range scores `n_queries` queries against such keys with integer dot products
// (x86 AVX-512 VNNI or AVX2; int8/int4 rows of any width, decode-sized query blocks): each query
// is then rounded per group of 32 numbers with round_query_group first. Values of such rows are
// then summed with integer weights too.
bool integer_key_path(const RowFormat& keys, int64_t n_queries);
// The SIMD target whose integer path attend_range runs on this CPU, in Highway's names: "AVX3_DL"
// (AVX-512 VNNI) or "AVX2"; "none" where the chosen target has none (int8/int4 rows then take
// the float path).
const char* integer_attention_target();
// Rounds x[0, kQuantGroup) to q8 * step with q8 in [-127, 127], step = max |x| / 127; returns
// the step (0 for an all-zero group).
float round_query_group(const float* x, int8_t* q8);

// The rows [begin, begin + n) decoded to float32 (times sigma), SIMD path: [n, format.width].
void decode_rows(const KvRows& rows, int64_t begin, int64_t n, float* out);

}  // namespace eigenkv::ops
