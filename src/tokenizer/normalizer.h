// The text rewrites a tokenizer.json applies before pre-tokenizing: the Llama-2 family prepends
// "▁" and replaces spaces with it. Only rewrites that need no Unicode normalization tables are
// supported; the loader rejects the others by name.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace eigenkv::tok {

// `text` with every occurrence of `from` (non-empty) replaced by `to`.
std::string replace_all(std::string_view text, std::string_view from, std::string_view to);

class Normalizer {
 public:
  // Prefixes non-empty text with `prefix` (Hugging Face's Prepend).
  void add_prepend(std::string prefix);
  // Replaces every occurrence of `literal` with `content`.
  void add_replace(std::string literal, std::string content);
  // Replaces every non-empty match of `pattern` with `content`.
  void add_replace_regex(std::string_view pattern, std::string content);

  std::string apply(std::string_view text) const;

 private:
  struct Step {
    enum class Kind { kPrepend, kReplace, kReplaceRegex };
    Kind kind;
    std::string text;  // the prefix, or the literal to replace
    std::string content;
    std::shared_ptr<const Regex> regex;
  };
  std::vector<Step> steps_;
};

}  // namespace eigenkv::tok
