// SentencePiece BPE as llama.cpp runs it for GGUF vocabularies of model "llama": spaces become
// "▁", a space is put before the text and after every added token, and the adjacent pair whose
// concatenation is the token of highest score merges first (leftmost on ties) until no pair
// concatenates to a token. What is left and is no token falls back to <0xNN> byte tokens (or to
// one <unk> per character where the vocabulary lacks them).
#pragma once

#include <string_view>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/piecewise.h"
#include "tokenizer/tokenizer.h"

namespace eigenkv::tok {

class SpmTokenizer : public Tokenizer {
 public:
  // `scores` has one entry per token; `added` lists the control, unknown and user-defined
  // tokens that can be written in text.
  SpmTokenizer(Vocabulary vocab, std::vector<float> scores, const std::vector<AddedToken>& added,
               bool add_space_prefix);

  std::vector<int32_t> encode(std::string_view text, bool add_bos,
                              bool parse_special = true) const override;

 private:
  void encode_escaped(std::string_view text, std::vector<int32_t>& out) const;
  void append_bytes(std::string_view text, std::vector<int32_t>& out) const;

  std::vector<float> scores_;
  TokenIdMap token_ids_;
  AddedTokenSplitter splitter_;
  bool add_space_prefix_;
  WordEdges word_edges_;
  int32_t byte_ids_[256];  // the token for each byte, or -1
};

}  // namespace eigenkv::tok
