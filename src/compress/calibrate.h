// Eigen Attention calibration (DESIGN.md §2): stream the uncompressed model over calibration
// windows one layer at a time, accumulate that layer's Gram matrices, take its eigenbases,
// measure its output error at candidate ranks; then allot ranks and fold the bases in.
#pragma once

#include <Eigen/Dense>
#include <cstdint>
#include <string>
#include <vector>

#include "compress/allot.h"
#include "compress/eigen_basis.h"
#include "compress/layer_stream.h"
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

// What calibration gathers of one decoder layer: its eigenbases per KV head and its input and
// output on the first `error_windows` windows.
struct LayerData {
  std::vector<EigenBasis> key;    // per KV head
  std::vector<EigenBasis> value;  // per KV head
  LayerSamples samples;
};

// The pass of the uncompressed model over calibration text, one layer at a time, so that only
// one layer's float64 statistics and samples exist at once. The constructor checks the model
// and options as calibrate_eigen does; next() runs layers 0, 1, ... over every window.
class CalibrationStream {
 public:
  CalibrationStream(const model::Model& model, const std::vector<int32_t>& ids,
                    const CalibrationOptions& options);
  int64_t tokens() const { return stream_.windows() * stream_.ctx(); }
  LayerData next();

 private:
  const model::Model& model_;
  CalibrationOptions options_;
  LayerStream stream_;
};

// Relative Frobenius error and mean row cosine of layer `layer` with weights `candidate` against
// the uncompressed outputs in `samples`.
Candidate measure_layer(const model::Model& model, int64_t layer,
                        const model::LayerWeights& candidate, const LayerSamples& samples);

}  // namespace eigenkv::compress
