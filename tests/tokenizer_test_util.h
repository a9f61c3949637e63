// Helpers shared by the tokenizer tests: llama.cpp's .inp/.out vocabulary tests, loading each
// tokenizer once per test binary, and printing ids.
#pragma once

#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "io/gguf.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace eigenkv::testing {

struct VocabCase {
  std::string text;
  std::vector<int32_t> ids;
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// llama.cpp's test-tokenizer-0 format: the .inp file holds the texts separated by lines
// "__ggml_vocab_test__" (text after the last separator, if any, is one more case); the .out file
// one line of space-separated ids per text, without BOS.
inline std::vector<VocabCase> read_vocab_cases(const std::string& inp_path,
                                               const std::string& out_path) {
  const std::string raw = read_file(inp_path);
  const std::string separator = "\n__ggml_vocab_test__\n";
  std::vector<VocabCase> cases;
  for (size_t pos = 0; pos < raw.size();) {
    const size_t next = raw.find(separator, pos);
    if (next == std::string::npos) {
      cases.push_back({raw.substr(pos), {}});
      break;
    }
    cases.push_back({raw.substr(pos, next - pos), {}});
    pos = next + separator.size();
  }
  std::ifstream out(out_path);
  size_t index = 0;
  for (std::string line; std::getline(out, line); ++index) {
    if (index >= cases.size()) return {};  // the files disagree; the caller reports it
    std::istringstream numbers(line);
    for (int32_t id; numbers >> id;) cases[index].ids.push_back(id);
  }
  if (index != cases.size()) return {};
  return cases;
}

inline std::string ids_to_string(const std::vector<int32_t>& ids) {
  std::ostringstream s;
  for (size_t i = 0; i < ids.size(); ++i) s << (i ? " " : "") << ids[i];
  return s.str();
}

// Each tokenizer file loads once per test binary (the Llama-3 one takes a moment).
inline const tok::Tokenizer& shared_json_tokenizer(const std::string& rel) {
  static std::map<std::string, std::unique_ptr<tok::Tokenizer>> cache;
  auto& slot = cache[rel];
  if (!slot) slot = tok::tokenizer_from_json(shared_path(rel));
  return *slot;
}

inline const tok::Tokenizer& shared_gguf_tokenizer(const std::string& rel) {
  static std::map<std::string, std::unique_ptr<tok::Tokenizer>> cache;
  auto& slot = cache[rel];
  if (!slot) slot = tok::tokenizer_from_gguf(io::GgufFile(shared_path(rel)));
  return *slot;
}

}  // namespace eigenkv::testing
