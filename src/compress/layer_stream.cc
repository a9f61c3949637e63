#include "compress/layer_stream.h"

#include <algorithm>

#include "util/error.h"
#include "util/memory.h"

namespace eigenkv::compress {

LayerStream::LayerStream(const model::Model& model, std::span<const int32_t> ids, int64_t ctx,
                         int64_t windows)
    : model_(model), ctx_(ctx) {
  const model::ModelConfig& config = model.config();
  EKV_CHECK(ctx >= 1, "a calibration window needs at least one token, found ", ctx);
  EKV_CHECK(windows >= 0 && windows * ctx <= static_cast<int64_t>(ids.size()), "the text has ",
            ids.size(), " tokens, not ", windows, " windows of ", ctx);
  // The streams, and one layer's copies of a window (its input and the cache) beside them.
  const int64_t bytes = (windows + 3) * ctx * config.d_model * static_cast<int64_t>(sizeof(float));
  check_fits_in_memory(bytes, "the calibration's residual streams (" + std::to_string(windows) +
                                  " windows of " + std::to_string(ctx) +
                                  " tokens; --max-tokens takes fewer)");
  const int64_t d = config.d_model;
  streams_.resize(static_cast<size_t>(windows));
  for (int64_t w = 0; w < windows; ++w) {
    std::vector<float>& x = streams_[w];
    x.resize(static_cast<size_t>(ctx * d));
    // Each window starts at position 0, as the perplexity windows do.
    model.embed(ids.subspan(static_cast<size_t>(w * ctx), static_cast<size_t>(ctx)), 0, x.data());
  }
}

void LayerStream::run_layer(model::ForwardTap* tap, int64_t keep, LayerSamples* samples) {
  const model::ModelConfig& config = model_.config();
  EKV_CHECK(layer_ < config.n_layers, "every one of the model's ", config.n_layers,
            " layers has run already");
  const int64_t l = layer_;
  const model::LayerWeights& w = model_.weights().layers[l];
  model_.rope().reserve(ctx_);
  kv::KvCache cache({model_.cache_shape()[l]}, ctx_, model_.cache_types());
  const size_t kept = static_cast<size_t>(std::clamp<int64_t>(keep, 0, windows()));
  if (samples) {
    samples->ctx = ctx_;
    samples->inputs.assign(streams_.begin(), streams_.begin() + kept);
    samples->outputs.clear();
  }
  for (size_t i = 0; i < streams_.size(); ++i) {
    cache.clear();
    std::vector<float>& x = streams_[i];
    model_.layer_forward(l, w, x.data(), ctx_, cache, 0, tap);
    if (samples && i < kept) samples->outputs.push_back(x);
  }
  ++layer_;
}

}  // namespace eigenkv::compress
