// Text to token ids and back, for the vocabularies inside GGUF files (tokenizer.ggml.*) and for
// Hugging Face tokenizer.json files. Encoding reproduces llama.cpp's ids for GGUF vocabularies
// and the Hugging Face tokenizers library's ids for tokenizer.json (where the library matches
// added tokens, call encode with parse_special = true). Tokenizers are immutable after loading,
// so one may encode and decode from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/gguf.h"
#include "tokenizer/vocabulary.h"

namespace eigenkv::tok {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Text -> ids. add_bos prepends the BOS id when the vocabulary has one. Added tokens marked
  // special (e.g. "<|begin_of_text|>", "<unk>") written in the text are matched as tokens unless
  // parse_special is false, as Hugging Face tokenizers and llama.cpp's tokenizer and server do;
  // false spells them letter by letter. User-defined added tokens are always matched.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos,
                                      bool parse_special = true) const = 0;

  // The bytes `id` stands for in decoded text: "<0x0A>" gives "\n", "▁the" gives " the", a
  // byte-level "Ġthe" gives " the". Control and unknown tokens (BOS, EOS, chat markers) give
  // nothing. Throws Error when `id` is out of range.
  std::string token_to_piece(int32_t id) const;
  // The vocabulary's own string for `id`, e.g. "<|eot_id|>" or "▁the".
  const std::string& token_text(int32_t id) const;
  // What kind of token `id` is (normal, control, byte, ...).
  TokenKind token_kind(int32_t id) const;
  // The id whose vocabulary string is `text`.
  std::optional<int32_t> find_token(std::string_view text) const;

  // Concatenated pieces of `ids`. Where the vocabulary puts a space before the text (the
  // SentencePiece prefix), one leading space of the result is removed, as Hugging Face's decoders
  // do with special tokens skipped, so decode(encode(text, ...)) == text for lossless
  // vocabularies. Throws Error naming the first id out of range.
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t bos_id() const { return vocab_.bos_id; }  // -1 when the vocabulary has none
  int32_t eos_id() const { return vocab_.eos_id; }
  int32_t unk_id() const { return vocab_.unk_id; }  // what text with no token becomes, or -1
  size_t vocab_size() const { return vocab_.size(); }
  // Whether the model expects BOS before a prompt (GGUF add_bos_token, tokenizer_config.json).
  bool add_bos_by_default() const { return vocab_.add_bos; }
  // EOS and end-of-turn tokens such as <|eot_id|>: generation stops on any of them.
  bool is_end_of_generation(int32_t id) const;
  // True when decoding drops the SentencePiece prefix space (see decode).
  bool strips_leading_space() const { return vocab_.strip_leading_space; }

 protected:
  explicit Tokenizer(Vocabulary vocab);
  const Vocabulary& vocab() const { return vocab_; }

 private:
  void check_id(int32_t id) const;

  Vocabulary vocab_;
  TokenIdMap ids_by_text_;
};

// Turns ids into text as a model generates them, one at a time. A token may end inside a UTF-8
// character (byte-fallback and byte-level tokens split characters), so the bytes of an
// incomplete character are held back until the tokens completing it arrive; every string
// returned is whole UTF-8 as far as the tokens' bytes were valid.
class StreamingDecoder {
 public:
  // `at_text_start`: the ids begin the text (no prompt before them), so the SentencePiece prefix
  // space is dropped as decode() drops it.
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool at_text_start = false);

  // The text that `id` completes; may be empty.
  std::string push(int32_t id);
  // Whatever is still held back (an incomplete character at the end of generation).
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;
  bool strip_space_;
};

// From the tokenizer.ggml.* keys of a GGUF file (model "llama" or "gpt2").
std::unique_ptr<Tokenizer> tokenizer_from_gguf(const io::GgufFile& gguf);

// From a Hugging Face tokenizer.json; tokenizer_config.json beside it, when present, names BOS
// and EOS and says whether BOS is added by default.
std::unique_ptr<Tokenizer> tokenizer_from_json(const std::string& path);

}  // namespace eigenkv::tok
