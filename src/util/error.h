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

// Text for an error line or log: control bytes (below 0x20, and 0x7f) as \xNN, so a token
// string or a name read from a file cannot move the terminal's cursor, clear it or split the line.
inline std::string escape_control(const std::string& text) {
  static const char* const kHex = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const auto b = static_cast<unsigned char>(ch);
    if (b < 0x20 || b == 0x7f) {
      out += "\\x";
      out += kHex[b >> 4];
      out += kHex[b & 15];
    } else {
      out += ch;
    }
  }
  return out;
}

// A value quoted for an error message: at most `max_bytes` of it (then "..."), control bytes
// escaped.
inline std::string quote_for_error(const std::string& text, size_t max_bytes = 100) {
  const bool cut = text.size() > max_bytes;
  return "'" + escape_control(cut ? text.substr(0, max_bytes) : text) + (cut ? "...'" : "'");
}

// Throws Error with the message when the condition is false.
#define EKV_CHECK(cond, ...)                   \
  do {                                         \
    if (!(cond)) ::eigenkv::fail(__VA_ARGS__); \
  } while (0)

}  // namespace eigenkv
