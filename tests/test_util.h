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
#define EKV_REQUIRE_SHARED(rel)                                         \
  do {                                                                  \
    if (!std::filesystem::exists(::eigenkv::testing::shared_path(rel))) \
      GTEST_SKIP() << "skipped: ../shared/" << (rel) << " is absent";   \
  } while (0)

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <memory>

namespace eigenkv::testing {

// Runs a shell command; returns its stdout and sets *status to its exit status.
inline std::string run_command(const std::string& command, int* status = nullptr) {
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) {
    if (status) *status = -1;
    return out;
  }
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  const int rc = ::pclose(pipe);
  if (status) *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return out;
}

// Debian's python3 with numpy runs the float64 reference (scripts/reference/).
inline bool have_reference_python() {
  int status = 0;
  run_command("/usr/bin/python3 -c 'import numpy' 2>/dev/null", &status);
  return status == 0;
}

inline std::string reference_script() {
  return "/usr/bin/python3 " + source_path("scripts/reference/eigenkv_ref.py");
}

inline std::string eigenkv_binary() { return EIGENKV_BINARY; }

// An eigenkv command's exit status and its stdout and stderr together.
struct CliOutcome {
  int status = 0;
  std::string out;
};

// Runs `eigenkv ARGS` (a shell command line after the binary).
inline CliOutcome run_eigenkv(const std::string& args) {
  CliOutcome o;
  o.out = run_command(eigenkv_binary() + " " + args + " 2>&1", &o.status);
  return o;
}

// The same with one environment setting, NAME=value (no spaces or shell characters).
inline CliOutcome run_eigenkv_env(const std::string& setting, const std::string& args) {
  CliOutcome o;
  o.out = run_command("env " + setting + " " + eigenkv_binary() + " " + args + " 2>&1", &o.status);
  return o;
}

inline std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("eigenkv_test_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

}  // namespace eigenkv::testing

#define EKV_REQUIRE_REFERENCE()                                                         \
  do {                                                                                  \
    if (!::eigenkv::testing::have_reference_python())                                   \
      GTEST_SKIP() << "skipped: /usr/bin/python3 with numpy (python3-numpy) is absent"; \
  } while (0)
