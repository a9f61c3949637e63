// The Hugging Face tokenizer pipeline around a BPE model: added tokens are cut out of the text,
// the rest is normalized, pre-tokenized into words, and each word is byte-pair encoded. The same
// class runs GGUF "gpt2" vocabularies, whose pipeline is a regex split plus GPT-2's byte-level
// alphabet.
#pragma once

#include <string_view>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/piecewise.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace eigenkv::tok {

struct BpePipeline {
  AddedTokenSplitter raw_tokens;         // matched in the text as written
  AddedTokenSplitter normalized_tokens;  // matched in normalized text (HF "normalized": true)
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  // Without a pre-tokenizer, the text is still cut at these edges, which cannot change the ids
  // (see piecewise.h) and keeps long texts fast.
  WordEdges word_edges = WordEdges::kNone;
};

class BpeTokenizer : public Tokenizer {
 public:
  BpeTokenizer(Vocabulary vocab, BpeModel model, BpePipeline pipeline);

  std::vector<int32_t> encode(std::string_view text, bool add_bos,
                              bool parse_special = true) const override;

 private:
  void encode_normalized(std::string_view text, bool at_input_start, bool parse_special,
                         WordCache& cache, std::vector<int32_t>& out) const;

  BpeModel model_;
  BpePipeline pipeline_;
};

}  // namespace eigenkv::tok
