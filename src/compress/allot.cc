#include "compress/allot.h"

#include <algorithm>
#include <limits>

#include "util/error.h"

namespace eigenkv::compress {

std::vector<Candidate> allot_error_budget(const std::vector<LayerProfile>& profiles,
                                          double budget) {
  EKV_CHECK(budget > 0 && budget <= 1, "the error budget must be in (0, 1], found ", budget);
  std::vector<Candidate> chosen;
  for (size_t l = 0; l < profiles.size(); ++l) {
    const Candidate* best = nullptr;
    double smallest = std::numeric_limits<double>::infinity();
    for (const Candidate& c : profiles[l]) {
      smallest = std::min(smallest, c.error);
      if (c.error > budget) continue;
      const int64_t size = c.key_rank + c.value_rank;
      if (!best || size < best->key_rank + best->value_rank ||
          (size == best->key_rank + best->value_rank && c.error < best->error)) {
        best = &c;
      }
    }
    EKV_CHECK(best, "layer ", l, ": no candidate rank meets the error budget ", budget,
              "; the smallest error this layer reaches is ", smallest,
              " (raise the budget to at least that)");
    chosen.push_back(*best);
  }
  return chosen;
}

std::vector<Candidate> allot_kv_budget(const std::vector<LayerProfile>& profiles,
                                       int64_t budget_numbers) {
  const size_t n = profiles.size();
  EKV_CHECK(n > 0, "no layers to allot");
  int64_t min_total = 0, max_total = 0;
  for (size_t l = 0; l < n; ++l) {
    EKV_CHECK(!profiles[l].empty(), "layer ", l, " has no candidate ranks");
    int64_t lo = std::numeric_limits<int64_t>::max(), hi = 0;
    for (const Candidate& c : profiles[l]) {
      lo = std::min(lo, c.key_rank + c.value_rank);
      hi = std::max(hi, c.key_rank + c.value_rank);
    }
    min_total += lo;
    max_total += hi;
  }
  EKV_CHECK(budget_numbers >= min_total, "the KV budget of ", budget_numbers,
            " cached numbers per KV head and token summed over layers cannot be met: the "
            "smallest candidate ranks need ",
            min_total);
  const int64_t cap = std::min(budget_numbers, max_total);
  constexpr double kInf = std::numeric_limits<double>::infinity();
  // best[l][s]: least summed error of layers < l using exactly s numbers; choice[l][s] the pick.
  std::vector<std::vector<double>> best(n + 1,
                                        std::vector<double>(static_cast<size_t>(cap + 1), kInf));
  std::vector<std::vector<int>> choice(n, std::vector<int>(static_cast<size_t>(cap + 1), -1));
  best[0][0] = 0;
  for (size_t l = 0; l < n; ++l) {
    for (int64_t s = 0; s <= cap; ++s) {
      if (best[l][s] == kInf) continue;
      for (size_t i = 0; i < profiles[l].size(); ++i) {
        const Candidate& c = profiles[l][i];
        const int64_t t = s + c.key_rank + c.value_rank;
        if (t > cap) continue;
        const double e = best[l][s] + c.error;
        if (e < best[l + 1][t]) {
          best[l + 1][t] = e;
          choice[l][t] = static_cast<int>(i);
        }
      }
    }
  }
  int64_t end = -1;
  for (int64_t s = 0; s <= cap; ++s) {
    if (best[n][s] < kInf && (end < 0 || best[n][s] < best[n][end])) end = s;
  }
  EKV_CHECK(end >= 0, "no combination of candidate ranks fits the KV budget");
  std::vector<Candidate> chosen(n);
  for (size_t l = n; l-- > 0;) {
    const Candidate& c = profiles[l][static_cast<size_t>(choice[l][end])];
    chosen[l] = c;
    end -= c.key_rank + c.value_rank;
  }
  return chosen;
}

}  // namespace eigenkv::compress
