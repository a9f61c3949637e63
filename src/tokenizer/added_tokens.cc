#include "tokenizer/added_tokens.h"

namespace eigenkv::tok {
namespace {

bool is_ascii_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// Bytes of multi-byte characters count as word characters: most of them are letters.
bool is_word_byte(char c) {
  const auto b = static_cast<unsigned char>(c);
  return b >= 0x80 || b == '_' || (b >= '0' && b <= '9') || (b >= 'a' && b <= 'z') ||
         (b >= 'A' && b <= 'Z');
}

}  // namespace

AddedTokenSplitter::AddedTokenSplitter(const std::vector<AddedToken>& tokens) {
  terminal_token_.push_back(-1);  // the root
  for (const AddedToken& token : tokens) {
    if (token.text.empty()) continue;
    int32_t node = 0;
    for (const char c : token.text) {
      const uint64_t key = static_cast<uint64_t>(node) << 8 | static_cast<uint8_t>(c);
      auto [it, inserted] = edges_.try_emplace(key, static_cast<int32_t>(terminal_token_.size()));
      if (inserted) terminal_token_.push_back(-1);
      node = it->second;
    }
    // The first token of a given text wins, as the vocabulary's first id does.
    if (terminal_token_[node] < 0) {
      terminal_token_[node] = static_cast<int32_t>(tokens_.size());
      tokens_.push_back(token);
      first_bytes_.set(static_cast<uint8_t>(token.text[0]));
    }
  }
}

int32_t AddedTokenSplitter::child(int32_t node, uint8_t byte) const {
  const auto it = edges_.find(static_cast<uint64_t>(node) << 8 | byte);
  return it == edges_.end() ? -1 : it->second;
}

bool AddedTokenSplitter::allowed(const AddedToken& token, std::string_view text, size_t begin,
                                 size_t end, bool parse_special) const {
  if (token.special && !parse_special) return false;
  if (!token.single_word) return true;
  const bool word_before = begin > 0 && is_word_byte(text[begin - 1]);
  const bool word_after = end < text.size() && is_word_byte(text[end]);
  return !word_before && !word_after;
}

bool AddedTokenSplitter::find_at(std::string_view text, size_t pos, bool parse_special,
                                 Match& match) const {
  bool found = false;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    node = child(node, static_cast<uint8_t>(text[i]));
    if (node < 0) break;
    const int32_t index = terminal_token_[node];
    if (index >= 0 && allowed(tokens_[index], text, pos, i + 1, parse_special)) {
      match = {pos, i + 1, index};
      found = true;
    }
  }
  return found;
}

std::vector<Fragment> AddedTokenSplitter::split(std::string_view text, bool parse_special) const {
  std::vector<Fragment> fragments;
  const auto add_text = [&](size_t begin, size_t end) {
    if (end > begin) fragments.push_back({text.substr(begin, end - begin), -1, begin});
  };
  size_t text_start = 0;
  size_t pos = 0;
  Match match;
  while (pos < text.size()) {
    if (!first_bytes_[static_cast<uint8_t>(text[pos])] ||
        !find_at(text, pos, parse_special, match)) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[match.token_index];
    size_t text_end = match.begin;
    if (token.lstrip) {
      while (text_end > text_start && is_ascii_space(text[text_end - 1])) --text_end;
    }
    add_text(text_start, text_end);
    fragments.push_back({std::string_view(), token.id, match.begin});
    pos = match.end;
    if (token.rstrip) {
      while (pos < text.size() && is_ascii_space(text[pos])) ++pos;
    }
    text_start = pos;
  }
  add_text(text_start, text.size());
  return fragments;
}

}  // namespace eigenkv::tok
