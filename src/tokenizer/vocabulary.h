// What every tokenizer knows about its tokens, whatever file it came from: the vocabulary strings,
// what kind each token is, the bytes each decodes to, and the special ids.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace eigenkv::tok {

// Token kinds as GGUF numbers them in tokenizer.ggml.token_type (1 normal ... 6 byte).
enum class TokenKind : uint8_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,      // BOS, EOS, chat markers: matched in text only when parsing specials
  kUserDefined = 4,  // added tokens always matched in text before the model runs
  kUnused = 5,
  kByte = 6,  // <0xNN> byte fallback
};

// Hashes std::string keys and looks them up by std::string_view without a copy.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct Vocabulary {
  std::vector<std::string> texts;   // id -> the vocabulary's string
  std::vector<TokenKind> kinds;     // id -> kind
  std::vector<std::string> pieces;  // id -> decoded bytes (empty for control and unknown tokens)
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  bool add_bos = false;              // whether the model expects BOS before a prompt
  bool strip_leading_space = false;  // decode drops the space an SPM-style prefix added
  std::vector<int32_t> end_of_generation_ids;

  size_t size() const { return texts.size(); }
  bool contains(int32_t id) const { return id >= 0 && static_cast<size_t>(id) < texts.size(); }
};

// Adds to `vocab.end_of_generation_ids` its EOS and the tokens whose text is a well-known end of
// turn or end of text marker, so generation stops on them as it does with the model's own tools.
void collect_end_of_generation_ids(Vocabulary& vocab);

// "<0x0A>" for byte 10: SentencePiece's byte-fallback token spelling.
std::string byte_token_text(uint8_t byte);
// The byte of a "<0xNN>" token text, or -1 when the text is not of that form.
int parse_byte_token_text(std::string_view text);

}  // namespace eigenkv::tok
