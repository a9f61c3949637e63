// Running a test body on every SIMD target Highway compiled and this CPU supports.
#pragma once

#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <cstdint>
#include <string>

namespace eigenkv::testing {

// Runs body(target) once per target this build has and this CPU supports (a -march=native build
// has one; a dispatch build, -DEIGENKV_NATIVE=OFF, also has the SSE4/SSSE3/scalar paths), with
// Highway's dispatch pinned to that target, then restores it.
template <class Body>
void for_each_target(Body body) {
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(std::string("target ") + hwy::TargetName(target));
    body(target);
  }
  hwy::SetSupportedTargetsForTest(0);
}

}  // namespace eigenkv::testing
