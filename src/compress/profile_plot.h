// The error-rank profiles of StiefAttention and Eigen Attention as an SVG line plot a person can
// read: one colour per layer, relative layer-output error (log scale) against KV fraction, Eigen
// dashed and Stief solid, on the diagonal candidates r_K = r_V.
#pragma once

#include <cstdint>
#include <string>

#include "compress/stief.h"

namespace eigenkv::compress {

// The SVG text; held-out profiles are drawn when present, else the calibration ones.
std::string profile_svg(const StiefResult& result, int64_t head_dim, const std::string& title);

// Writes profile_svg to `path`; throws Error naming the file when it cannot be written.
void write_profile_svg(const StiefResult& result, int64_t head_dim, const std::string& path);

}  // namespace eigenkv::compress
