// Byte-pair encoding of one word by merge rank, as Hugging Face's BPE model and llama.cpp's "gpt2"
// vocabularies do: the word starts as one symbol per character, and the adjacent pair with the
// lowest merge rank (leftmost on ties) is merged until no pair has a merge. A priority queue over
// a linked list of symbols makes a word of n characters cost O(n log n).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/vocabulary.h"

namespace eigenkv::tok {

struct BpeOptions {
  int32_t unk_id = -1;                    // for characters with no token; -1 drops them
  bool fuse_unk = false;                  // consecutive unknown characters give one unk
  bool byte_fallback = false;             // characters with no token become <0xNN> tokens
  bool ignore_merges = false;             // a word that is a token is that token, merges or not
  std::string continuing_subword_prefix;  // prefixed to every character but the first
  std::string end_of_word_suffix;         // appended to the last character
};

// One merge rule: the pair (left, right) becomes `merged`. Rules are ranked by their order.
struct BpeMerge {
  int32_t left;
  int32_t right;
  int32_t merged;
};

class BpeModel {
 public:
  // `token_ids` is the model's own vocabulary (added tokens excluded).
  BpeModel(TokenIdMap token_ids, const std::vector<BpeMerge>& merges, BpeOptions options);

  // Appends the ids of `word`.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  const TokenIdMap& token_ids() const { return token_ids_; }

 private:
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  struct RankedMerge {
    int32_t rank;
    int32_t merged;
  };

  std::vector<Symbol> initial_symbols(std::string_view word) const;
  const RankedMerge* find_merge(int32_t left, int32_t right) const;
  void merge_symbols(std::vector<Symbol>& symbols) const;

  TokenIdMap token_ids_;
  std::unordered_map<uint64_t, RankedMerge> merges_;  // (left << 32 | right) -> rule
  BpeOptions options_;
  int32_t byte_ids_[256];  // <0xNN> token per byte, or -1
};

}  // namespace eigenkv::tok
