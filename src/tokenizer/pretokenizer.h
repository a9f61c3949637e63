// Cuts normalized text into the words a BPE model encodes one at a time: regex splits (GPT-2,
// Llama-3 ...), GPT-2's byte-level alphabet, SentencePiece's metaspace. Steps run in order, each
// over every piece the previous ones produced, as Hugging Face's pre-tokenizer Sequence does.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace eigenkv::tok {

// What happens to the delimiters a split finds (Hugging Face's SplitDelimiterBehavior).
enum class SplitBehavior {
  kRemoved,             // dropped
  kIsolated,            // pieces of their own
  kMergedWithPrevious,  // appended to the piece before
  kMergedWithNext,      // prepended to the piece after
  kContiguous,          // runs of delimiters become one piece
};

// When Metaspace puts the replacement character before a piece.
enum class PrependScheme { kAlways, kFirst, kNever };

// GPT-2's own split pattern, used by byte-level pre-tokenizers that ask for a regex.
extern const char kGpt2SplitPattern[];
// Llama-3's split pattern (also that of many later byte-level BPE vocabularies).
extern const char kLlama3SplitPattern[];
// Qwen2's split pattern (single digits, unlike Llama 3's runs of up to three).
extern const char kQwen2SplitPattern[];

class PreTokenizer {
 public:
  class Step;

  PreTokenizer();
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // Matches of `pattern` are the delimiters; with `invert` the text between them is (so
  // kRemoved with `invert` keeps only the matches).
  void add_split(std::string_view pattern, SplitBehavior behavior, bool invert);
  // Maps every byte to GPT-2's printable alphabet, after an optional prefix space and split.
  void add_byte_level(bool add_prefix_space, bool use_regex);
  // Replaces spaces with `replacement`, prepends it per `scheme`, and optionally splits before
  // each occurrence.
  void add_metaspace(std::string replacement, PrependScheme scheme, bool split);

  bool empty() const { return steps_.empty(); }

  // `at_input_start`: the text begins the whole input (Metaspace's "first" scheme).
  std::vector<std::string> split(std::string_view text, bool at_input_start) const;

 private:
  std::vector<std::unique_ptr<const Step>> steps_;
};

}  // namespace eigenkv::tok
