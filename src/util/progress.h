// A one-line progress bar on stderr (rate and ETA), drawn only when stderr is a terminal so logs
// and pipes stay clean.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace eigenkv {

class Progress {
 public:
  // `unit` names what `done` counts ("windows"); `rate_unit` what the rate counts ("tok").
  Progress(std::string label, int64_t total, std::string unit);
  ~Progress();
  // Reports `done` of total finished and `work` units of rate work so far.
  void update(int64_t done, double work, const std::string& rate_unit);
  void finish();

 private:
  std::string label_;
  int64_t total_;
  std::string unit_;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

// Seconds since an arbitrary epoch, monotonic.
double now_seconds();

}  // namespace eigenkv
