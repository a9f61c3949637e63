// Rank allotment over per-layer error profiles (DESIGN.md §2 "Layer-wise rank allotment" and §3
// "Error-rank profile"). A profile lists, for one layer, candidate (r_K, r_V) pairs with the
// relative decoder-layer output error each gives; Eigen and Stief bases produce the same kind of
// profile, so one allocator compares both methods at identical KV bytes.
#pragma once

#include <cstdint>
#include <vector>

namespace eigenkv::compress {

struct Candidate {
  int64_t key_rank = 0;
  int64_t value_rank = 0;
  double error = 0;      // relative layer-output error ||Y - Y^||_F / ||Y||_F
  double cosine = 1;     // mean cosine similarity of output rows
  double threshold = 0;  // the energy threshold that produced it (Eigen), or -1
};

using LayerProfile = std::vector<Candidate>;

// Per layer, the candidate with the fewest cached numbers (r_K + r_V) whose error is at most
// `budget`; ties go to the smaller error. Throws Error naming the layer and its smallest
// achievable error when no candidate meets the budget.
std::vector<Candidate> allot_error_budget(const std::vector<LayerProfile>& profiles, double budget);

// The candidates, one per layer, that minimise the summed error subject to
// sum_l weight * (r_K + r_V) <= budget_numbers (exact, by dynamic programming over the
// integer sums). Throws Error giving the smallest feasible budget when none fits.
std::vector<Candidate> allot_kv_budget(const std::vector<LayerProfile>& profiles,
                                       int64_t budget_numbers);

}  // namespace eigenkv::compress
