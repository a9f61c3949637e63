// Splits text around added tokens written in it ("<|begin_of_text|>", MPT's runs of spaces ...),
// before any normalizer or model sees it, as both llama.cpp and Hugging Face tokenizers do.
// Matching is leftmost-longest over a byte trie, so a megabyte of text costs one table look-up
// per byte where no added token can start.
#pragma once

#include <bitset>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace eigenkv::tok {

struct AddedToken {
  std::string text;  // what is matched in the text
  int32_t id = -1;
  bool special = false;      // matched only when the caller parses specials
  bool lstrip = false;       // swallows ASCII white space before it
  bool rstrip = false;       // swallows ASCII white space after it
  bool single_word = false;  // matched only between non-word characters
};

// A piece of the input: either plain text or one added token.
struct Fragment {
  std::string_view text;  // empty for a token
  int32_t token_id = -1;  // -1 for text
  size_t offset = 0;      // where the piece starts in the input
  bool is_token() const { return token_id >= 0; }
};

class AddedTokenSplitter {
 public:
  AddedTokenSplitter() = default;
  explicit AddedTokenSplitter(const std::vector<AddedToken>& tokens);

  // Plain-text fragments are never empty.
  std::vector<Fragment> split(std::string_view text, bool parse_special) const;

 private:
  struct Match {
    size_t begin;
    size_t end;
    int32_t token_index;
  };
  bool find_at(std::string_view text, size_t pos, bool parse_special, Match& match) const;
  bool allowed(const AddedToken& token, std::string_view text, size_t begin, size_t end,
               bool parse_special) const;
  int32_t child(int32_t node, uint8_t byte) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<uint64_t, int32_t> edges_;  // (node << 8 | byte) -> child node
  std::vector<int32_t> terminal_token_;          // node -> token index, or -1
  std::bitset<256> first_bytes_;
};

}  // namespace eigenkv::tok
