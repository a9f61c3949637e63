// StiefAttention (DESIGN.md §3): per layer, learn orthonormal d_h x d_h key and value bases per KV
// head that minimise the relative output error of the whole decoder layer, starting from the
// Eigen bases; measure error-rank profiles of both methods on the same candidate ranks; allot ranks
// with the same allocator as Eigen Attention; fold the learned bases into the model.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "compress/allot.h"
#include "compress/calibrate.h"
#include "compress/layer_grad.h"
#include "model/model.h"

namespace eigenkv::compress {

// How the bases are trained: Adam on the skew-symmetric generator of a Cayley rotation of each
// basis (U <- U cay(Delta)), so U stays exactly orthonormal; cosine learning-rate schedule.
struct StiefTraining {
  int64_t epochs = 10;
  double lr = 5e-3;
  uint64_t seed = 0;
  int64_t batch = 2;  // windows per step
  // One key basis for all KV heads of a layer (the paper's choice) instead of one per KV head:
  // the heads' key gradients are summed and the bases, equal at the start, stay equal.
  bool shared_key = false;
};

struct StiefOptions {
  // Key mode, allotment (kErrorBudget or kKvBudget) and its budget, ctx, token limit, source.
  // Its error_windows is ignored: train_windows and profile_windows below replace it.
  CalibrationOptions calibration;
  std::vector<double> rank_fractions = {0.5, 0.6, 0.7, 0.8, 0.9};
  StiefTraining training;
  int64_t train_windows = 64;   // calibration windows the bases are trained on
  int64_t profile_windows = 8;  // of those, windows the error-rank profiles are measured on
  int64_t heldout_windows = 8;  // held-out windows measured too, when held-out text is given
};

// Candidate ranks round(f * d_h) for the fractions, ascending. Throws Error for an empty list,
// a fraction outside (0, 1], or two fractions that give the same rank.
std::vector<int64_t> candidate_ranks(int64_t head_dim, const std::vector<double>& fractions);
// "0.5,0.6,0.7": throws Error naming the item that is not a number.
std::vector<double> parse_rank_fractions(const std::string& text);

// What a training step reports: epoch and step (from 1) and the mean loss of the epoch so far.
struct StepInfo {
  int64_t epoch = 0, step = 0, steps_per_epoch = 0;
  double epoch_loss = 0;
};
using StepCallback = std::function<void(const LayerBases&, const StepInfo&)>;

// Trains `bases` in place on the windows, the loss being the windows' relative output error
// sqrt(D_w / ||Y_w||^2) averaged over windows and over the candidate (r_K, r_V) pairs (each step
// takes the next pairs in turn, so every pair is trained on). Returns the mean training loss of
// each epoch. `on_step` sees the bases after every step. Throws Error naming `layer` when the loss
// or a gradient stops being finite. Deterministic for a seed.
std::vector<double> train_layer_bases(const LayerConstants& constants,
                                      const std::vector<WindowInputs>& windows,
                                      const std::vector<int64_t>& ranks,
                                      const StiefTraining& training, int64_t layer,
                                      LayerBases& bases, const StepCallback& on_step = {});

struct StiefLayer {
  LayerBases eigen;            // the starting point
  LayerBases stief;            // what was learnt (a copy of `eigen` when kept_eigen)
  LayerProfile eigen_profile;  // every (r_K, r_V) of the candidate ranks, calibration windows
  LayerProfile stief_profile;  // same pairs and order
  LayerProfile eigen_heldout;  // same pairs on held-out windows (empty without held-out text)
  LayerProfile stief_heldout;
  // The trained bases' own profiles, also when the layer kept Eigen's bases.
  LayerProfile trained_profile, trained_heldout;
  std::vector<double> epoch_loss;
  bool kept_eigen = false;  // training did not lower the mean profile error; Eigen's bases kept
  Candidate chosen;
  double seconds = 0;
};

struct StiefResult {
  std::vector<int64_t> ranks;  // candidate ranks
  std::vector<StiefLayer> layers;
  int64_t tokens = 0;        // calibration tokens (Gram matrices)
  int64_t train_tokens = 0;  // tokens the bases were trained on
  int64_t profile_tokens = 0;
  double seconds = 0;
  std::string metadata_json;
};

// The training half of calibrate_stief: bases and profiles; the model is not changed.
StiefResult train_stief(const model::Model& model, const std::vector<int32_t>& ids,
                        const std::vector<int32_t>& heldout_ids, const StiefOptions& options);
// The folding half: allots ranks from result's Stief profiles under options' budget, folds the
// bases into `model` (uncompressed; the one `result` was trained on) and records how. Sets
// result.layers[l].chosen and result.metadata_json. One training serves several budgets.
void apply_stief(model::Model& model, StiefResult& result, const StiefOptions& options);

// Calibrates `model` (uncompressed) on `ids`, trains the bases, allots ranks from the Stief
// profiles and folds them into the model. `heldout_ids` (may be empty) only adds held-out
// profiles. Throws Error for bad options, budgets no candidate meets (naming the nearest feasible
// one), too little text, or a loss that stops being finite (the model is left unchanged).
StiefResult calibrate_stief(model::Model& model, const std::vector<int32_t>& ids,
                            const std::vector<int32_t>& heldout_ids, const StiefOptions& options);

}  // namespace eigenkv::compress
