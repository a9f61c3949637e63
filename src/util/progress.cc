#include "util/progress.h"

#include <unistd.h>

#include <cstdio>

namespace eigenkv {

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      enabled_(::isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() { finish(); }

void Progress::update(int64_t done, double work, const std::string& rate_unit) {
  if (!enabled_ || finished_) return;
  auto now = std::chrono::steady_clock::now();
  if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? work / elapsed : 0.0;
  const double eta = done > 0 ? elapsed * static_cast<double>(total_ - done) / done : 0.0;
  constexpr int kWidth = 30;
  const int filled = total_ > 0 ? static_cast<int>(kWidth * done / total_) : kWidth;
  std::string bar(static_cast<size_t>(filled), '=');
  bar.resize(kWidth, ' ');
  std::fprintf(stderr, "\r%s [%s] %lld/%lld %s  %.0f %s/s  ETA %.0fs   ", label_.c_str(),
               bar.c_str(), static_cast<long long>(done), static_cast<long long>(total_),
               unit_.c_str(), rate, rate_unit.c_str(), eta);
  std::fflush(stderr);
}

void Progress::finish() {
  if (enabled_ && !finished_) {
    std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }
  finished_ = true;
}

}  // namespace eigenkv
