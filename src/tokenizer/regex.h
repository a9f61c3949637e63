// A small backtracking regular-expression matcher over code points, for the pre-tokenizer
// patterns of tokenizer.json files and GGUF pre-tokenizer types (GPT-2, Llama-3, Qwen-2 ...).
// std::regex has no Unicode classes, so this one is written for exactly what those patterns use:
//   literals and escapes (\r \n \t \f \v \xHH \x{H..} \uHHHH, escaped punctuation), `.`,
//   classes [...] and [^...] with ranges, \s \S \d \D \w \W, \p{..} / \P{..} for general
//   categories (L, Lu, N, Nd, P, S, M, Z, C and the rest), alternation, (...), (?:...),
//   (?i:...) (ASCII case folding), lookahead (?=...) (?!...), anchors ^ $, and the quantifiers
//   ? * + {n} {n,} {n,m} with their lazy forms.
// Semantics are Perl's and Oniguruma's (the engine Hugging Face tokenizers uses): leftmost match,
// alternatives tried in order, greedy quantifiers backtracking. Anything else is rejected with an
// Error naming the construct, never silently mismatched.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace eigenkv::tok {

class Regex {
 public:
  explicit Regex(std::string_view pattern);

  // Finds the leftmost match starting at or after `from`; sets [begin, end) and returns true.
  bool search(std::u32string_view text, size_t from, size_t& begin, size_t& end) const;

  const std::string& pattern() const { return pattern_; }

  // A pattern matching `literal` exactly.
  static std::string escape(std::string_view literal);

  struct ClassItem;
  struct CharClass {
    std::vector<ClassItem> items;
    bool negated = false;
    bool case_insensitive = false;
    bool matches(char32_t cp) const;
  };
  struct Instruction;

 private:
  struct SearchState {
    std::u32string_view text;
    size_t steps = 0;
    std::vector<std::pair<size_t, size_t>> backtrack;  // (pc, pos) of alternatives left to try
  };
  // Runs the program from `pc` at `pos`; true with `end` set when it reaches a match.
  bool run(size_t pc, size_t pos, SearchState& state, size_t& end) const;

  std::string pattern_;
  std::vector<CharClass> classes_;
  std::vector<Instruction> program_;
};

// One element of a character class: a code point range, a set of general categories, or the
// \s / \w sets, possibly negated (as \S or \P{L} inside a class).
struct Regex::ClassItem {
  enum class Kind : uint8_t { kRange, kCategories, kWhiteSpace, kWord };
  Kind kind = Kind::kRange;
  bool negated = false;
  char32_t first = 0;
  char32_t last = 0;
  uint32_t category_mask = 0;  // bit i: GeneralCategory i
  bool matches(char32_t cp) const;
};

struct Regex::Instruction {
  enum class Op : uint8_t { kClass, kSplit, kJump, kMatch, kAssertStart, kAssertEnd, kLookahead };
  Op op = Op::kMatch;
  bool negated = false;  // kLookahead: (?!...)
  size_t arg = 0;        // kClass: class index; kSplit, kJump: preferred target; kLookahead: next
  size_t alt = 0;        // kSplit: the other target
};

}  // namespace eigenkv::tok
