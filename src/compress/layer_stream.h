// The uncompressed model run over calibration windows one decoder layer at a time (DESIGN.md
// §2, "Calibration"): the residual stream of every window is kept between layers, so a pass
// holds windows x ctx x d_model floats plus one layer's statistics and samples, whatever the
// number of layers (a 7B model's 32 layers of error windows would be gigabytes).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/model.h"

namespace eigenkv::compress {

// One decoder layer's input and output on some windows: [window] -> [ctx, d_model].
struct LayerSamples {
  int64_t ctx = 0;
  std::vector<std::vector<float>> inputs;
  std::vector<std::vector<float>> outputs;
};

class LayerStream {
 public:
  // The first `windows` whole windows of `ctx` tokens of `ids`, embedded. Throws Error for a
  // token outside the vocabulary or when the streams cannot fit in memory.
  LayerStream(const model::Model& model, std::span<const int32_t> ids, int64_t ctx,
              int64_t windows);

  int64_t windows() const { return static_cast<int64_t>(streams_.size()); }
  int64_t ctx() const { return ctx_; }
  int64_t next_layer() const { return layer_; }

  // Runs layer next_layer() of the model over every window (positions 0.. of a fresh cache, as
  // Model::forward does, so the values are the same), `tap` seeing its attention; copies its
  // input and output on the first `keep` windows into `samples` when given; then moves on.
  void run_layer(model::ForwardTap* tap, int64_t keep, LayerSamples* samples);

 private:
  const model::Model& model_;
  int64_t ctx_;
  int64_t layer_ = 0;
  std::vector<std::vector<float>> streams_;  // [window] -> [ctx, d_model]
};

}  // namespace eigenkv::compress
