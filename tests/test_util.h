// Paths and helpers shared by the tests.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

namespace eigenkv::testing {

inline std::string shared_path(const std::string& rel) {
  return std::string(EIGENKV_SHARED_DIR) + "/" + rel;
}
inline std::string source_path(const std::string& rel) {
  return std::string(EIGENKV_SOURCE_DIR) + "/" + rel;
}

}  // namespace eigenkv::testing

// Skips the current test, naming the file, when a file from ../shared is absent.
#define EKV_REQUIRE_SHARED(rel)                                                       \
  do {                                                                                \
    if (!std::filesystem::exists(::eigenkv::testing::shared_path(rel)))               \
      GTEST_SKIP() << "skipped: ../shared/" << (rel) << " is absent";                \
  } while (0)
