// A Hugging Face tokenizer.json written as GGUF's tokenizer.ggml.* keys, so that llama.cpp (and
// eigenkv's own GGUF tokenizer) tokenize a converted model exactly as the tokenizers library
// does. Two kinds of tokenizer.json have a GGUF equivalent:
//   - SentencePiece converted to BPE (byte_fallback, "▁" for spaces by a Prepend + Replace
//     normalizer or a Metaspace pre-tokenizer): written as the "llama" model, whose merges
//     llama.cpp orders by token score. Each token that merges make gets the score -rank of its
//     first merge, which gives the BPE order exactly when every split of a token into two tokens
//     is a merge (true of SentencePiece conversions; checked, since a vocabulary trained as BPE
//     is not and would tokenize differently).
//   - Byte-level BPE (GPT-2, GPT-NeoX/MPT, Llama 3, Qwen2): written as the "gpt2" model with its
//     merges, and tokenizer.ggml.pre naming the split pattern (gpt-2, llama-bpe or qwen2).
// Anything else (Unigram, WordPiece, another split pattern, a normalizer llama.cpp does not run)
// is refused with an Error naming the part.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "io/gguf_writer.h"
#include "tokenizer/tokenizer.h"

namespace eigenkv::tok {

struct GgufVocab {
  std::string model;                // "llama" or "gpt2"
  std::string pre;                  // gpt2 only: the split pattern's name
  std::vector<std::string> tokens;  // id -> text, n_vocab of them
  std::vector<int32_t> types;       // id -> TokenKind number
  std::vector<float> scores;        // llama only
  std::vector<std::string> merges;  // gpt2 only: "left right" in rank order
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  bool add_bos = false, add_eos = false;
  bool add_space_prefix = false;  // llama only
  std::string chat_template;      // empty when tokenizer_config.json has none
};

// The keys for `tokenizer` (loaded from `tokenizer_json`; its special ids and BOS rule are
// taken from it) and a model with `n_vocab` embedding rows: ids the tokenizer does not name, up
// to n_vocab, become unused "[PAD<id>]" tokens as llama.cpp's converter writes them. Throws Error
// naming what GGUF cannot express, or when the tokenizer has more tokens than the model.
GgufVocab gguf_vocab_from_json(const Tokenizer& tokenizer, std::string_view tokenizer_json,
                               std::string_view tokenizer_config_json, int64_t n_vocab);

// Sets the tokenizer.ggml.* keys (and tokenizer.chat_template when there is one).
void write_gguf_vocab(const GgufVocab& vocab, io::GgufWriter& writer);

}  // namespace eigenkv::tok
