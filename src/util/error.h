// One error type for the whole engine. Messages name the problem: the file, the tensor or key,
// what was expected and what was found. The CLI catches it at the top and prints one line.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace eigenkv {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Concatenates any streamable values into one string.
template <typename... Args>
std::string cat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(cat(std::forward<Args>(args)...));
}

// Throws Error with the message when the condition is false.
#define EKV_CHECK(cond, ...)                   \
  do {                                         \
    if (!(cond)) ::eigenkv::fail(__VA_ARGS__); \
  } while (0)

}  // namespace eigenkv
