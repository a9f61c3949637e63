// Eigen Attention calibration (DESIGN.md §2): stream the uncompressed model over calibration
// windows, accumulate Gram matrices, take eigenbases, measure each layer's output error at
// candidate ranks, allot ranks, and fold the bases into the model.
#pragma once

#include <Eigen/Dense>
#include <cstdint>
#include <string>
#include <vector>

#include "compress/allot.h"
#include "compress/eigen_basis.h"
#include "model/model.h"

namespace eigenkv::compress {

enum class Allotment { kThreshold, kErrorBudget, kKvBudget };

struct CalibrationOptions {
  model::KeyMode key_mode = model::KeyMode::kPre;  // kPre or kPost; kNoRope for models without RoPE
  RankRule rule = RankRule::kEnergy;
  Allotment allotment = Allotment::kThreshold;
  double threshold = 0.05;       // kThreshold: the error threshold eps in [0, 1)
  double error_budget = 0.05;    // kErrorBudget: per-layer relative output error, (0, 1]
  double kv_budget = 0.5;        // kKvBudget: fraction of the uncompressed cache, (0, 1]
  double threshold_step = 0.02;  // eps grid of the error-rank profiles (the authors' step)
  double threshold_max = 0.6;
  int64_t ctx = 256;          // calibration window
  int64_t max_tokens = 0;     // 0: all the text
  int64_t error_windows = 8;  // windows kept to measure layer-output errors
  std::string source;         // name of the calibration text, recorded in the model
  bool progress = true;
};

// What calibration learnt, per layer: the bases (full d_h columns, strongest first), the error
// profile over the eps grid, and the candidate chosen.
struct LayerCalibration {
  std::vector<EigenBasis> key;    // per KV head
  std::vector<EigenBasis> value;  // per KV head
  LayerProfile profile;
  Candidate chosen;
};

struct CalibrationResult {
  std::vector<LayerCalibration> layers;
  int64_t tokens = 0;
  double seconds = 0;
  std::string metadata_json;  // what the compressed model records under eigenkv.*
};

// The fewest calibration tokens accepted for a window size.
int64_t min_calibration_tokens(const model::ModelConfig& config, int64_t ctx);

// Calibrates `model` (uncompressed) on `ids` and folds the chosen ranks into it.
// Throws Error for a compressed model, too little text, or options out of range.
CalibrationResult calibrate_eigen(model::Model& model, const std::vector<int32_t>& ids,
                                  const CalibrationOptions& options);

// Layer-output samples of the uncompressed model on a few windows: inputs and outputs of every
// decoder layer, [windows][layer] -> [ctx, d_model].
struct LayerSamples {
  int64_t ctx = 0;
  std::vector<std::vector<std::vector<float>>> inputs;
  std::vector<std::vector<std::vector<float>>> outputs;
};

// One pass of the uncompressed model over calibration text: eigenbases per layer and KV head,
// and the layer inputs/outputs of the first `error_windows` windows. Checks the model and
// options as calibrate_eigen does.
struct CalibrationData {
  std::vector<std::vector<EigenBasis>> key;    // [layer][KV head]
  std::vector<std::vector<EigenBasis>> value;  // [layer][KV head]
  LayerSamples samples;
  int64_t tokens = 0;
};
CalibrationData collect_calibration(const model::Model& model, const std::vector<int32_t>& ids,
                                    const CalibrationOptions& options);

// Relative Frobenius error and mean row cosine of layer `layer` with weights `candidate` against
// the uncompressed outputs in `samples`.
Candidate measure_layer(const model::Model& model, int64_t layer,
                        const model::LayerWeights& candidate, const LayerSamples& samples);

}  // namespace eigenkv::compress
