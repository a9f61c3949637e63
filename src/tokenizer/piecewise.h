// Encoding long text word by word. Merge-based tokenizers (SentencePiece BPE, BPE without a
// pre-tokenizer) see a whole fragment at once, so a megabyte of text would be one merge problem of
// a million symbols. But where no token spans the edge of a run of "▁" (the word boundary of
// SentencePiece vocabularies), no merge can cross it either, and each side's merges happen in the
// same relative order alone as together (priority is by score or rank, then position). Cutting
// the text there therefore gives exactly the same ids, and repeated words are merged only once.
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/vocabulary.h"

namespace eigenkv::tok {

// Where a vocabulary's words can be cut apart.
enum class WordEdges {
  kNone,             // some token has "▁" inside: keep the text whole
  kBeforeSpaceRuns,  // "▁" only at the start of tokens ("▁the"): cut before each run
  kAfterSpaceRuns,   // "▁" only at the end of tokens ("the▁"): cut after each run
};

WordEdges find_word_edges(const TokenIdMap& token_ids);

// Cuts `text` at the word edges (for kNone, returns the text whole).
std::vector<std::string_view> split_words(std::string_view text, WordEdges edges);

// The ids of the short words one encode call has already seen. It lives for a single call,
// which keeps tokenizers free of mutable state and safe to share between threads.
class WordCache {
 public:
  // Appends the ids of `word`, from the cache or from encode_word(word, out).
  template <typename EncodeWord>
  void encode(std::string_view word, const EncodeWord& encode_word, std::vector<int32_t>& out) {
    if (word.size() > kMaxCachedWordBytes) {
      encode_word(word, out);
      return;
    }
    auto [it, inserted] = ids_.try_emplace(std::string(word));
    if (inserted) encode_word(word, it->second);
    out.insert(out.end(), it->second.begin(), it->second.end());
  }

 private:
  static constexpr size_t kMaxCachedWordBytes = 64;
  std::unordered_map<std::string, std::vector<int32_t>> ids_;
};

}  // namespace eigenkv::tok
