// Bit allotment of a quantized low-rank KV cache by reverse water-filling (DESIGN.md §2, "KV
// quantization"). In a compressed model's cache every number is a coordinate along one basis
// direction; the directions are decorrelated and their spreads differ by orders of magnitude.
// Each direction gets its own scale sigma (its RMS on calibration text) and 8, 4 or 0 bits:
// more bits where the variance is high, zero bits where storing it costs more than losing it
// (zero bits is rank truncation). One allotment per layer and kind (K, V), shared by the layer's
// KV heads, chosen greedily by distortion removed per byte under a bytes-per-token budget.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"

namespace eigenkv::compress {

struct CacheBitsOptions {
  double budget = 0.25;      // bytes per token as a fraction of the f16 uncompressed cache, (0, 1]
  int64_t ctx = 256;         // calibration window
  int64_t max_tokens = 16384;  // calibration tokens used (0: all the text)
  bool progress = true;
};

struct KindAllotment {
  int64_t rank = 0;  // directions kept (bits > 0)
  int64_t n8 = 0;    // of which at 8 bits; the others at 4
};

struct CacheBitsResult {
  std::vector<KindAllotment> keys, values;  // per layer
  int64_t bytes_per_token = 0;              // of the allotted cache, scales included
  int64_t budget_bytes = 0;                 // the budget in bytes per token
  int64_t f16_full_bytes = 0;               // the uncompressed f16 cache's bytes per token
  double distortion = 0;                    // predicted mean squared error summed over directions
  double retained = 0;                      // predicted fraction of the cached energy kept
  int64_t tokens = 0;
};

// Measures the cached directions of `model` (Eigen/Stief-compressed, no allotment yet) on `ids`,
// allots bits under the budget, truncates the ranks to the directions kept and stores the
// allotment and scales in the model (whose caches then default to "mixed").
// Throws Error for an uncompressed model, an unmeetable budget or too little text.
CacheBitsResult water_fill_cache(model::Model& model, const std::vector<int32_t>& ids,
                                 const CacheBitsOptions& options);

// A folded layer cut to its leading key_rank / value_rank directions (what folding with fewer
// basis columns gives). Throws Error for ranks outside [1, current rank].
model::LayerWeights truncate_layer(const model::LayerWeights& layer, int64_t key_rank,
                                   int64_t value_rank);

}  // namespace eigenkv::compress
