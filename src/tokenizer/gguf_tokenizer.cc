// tokenizer_from_gguf: the vocabulary stored under tokenizer.ggml.* keys, read as llama.cpp
// reads it, for models "llama" (SentencePiece) and "gpt2" (byte-level BPE).
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/spm_tokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace eigenkv::tok {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581

// The split patterns llama.cpp applies for each tokenizer.ggml.pre value, in order.
struct PreTokenizerType {
  std::vector<std::string_view> names;
  std::vector<std::string_view> patterns;
  bool ignore_merges = false;
  bool add_bos = false;
};

const std::vector<PreTokenizerType>& pre_tokenizer_types() {
  static const std::vector<PreTokenizerType> types = {
      {{"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe"},
       {kLlama3SplitPattern},
       /*ignore_merges=*/true,
       /*add_bos=*/true},
      {{"gpt-2", "phi-2", "mpt", "olmo", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de"},
       {kGpt2SplitPattern}},
      {{"qwen2", "stablelm2", "deepseek-r1-qwen", "hunyuan"}, {kQwen2SplitPattern}},
      {{"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"},
       {R"(\p{N})", kGpt2SplitPattern}},
      {{"default", ""},
       {R"([\p{P}\$\+<=>\^~\|]+)",
        R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))", R"(\p{N}+)",
        "[0-9][0-9][0-9]"}},
  };
  return types;
}

const PreTokenizerType& find_pre_tokenizer_type(const io::GgufFile& gguf) {
  const std::string name = gguf.find_string("tokenizer.ggml.pre").value_or("");
  for (const PreTokenizerType& type : pre_tokenizer_types()) {
    for (const std::string_view known : type.names) {
      if (name == known) return type;
    }
  }
  fail(gguf.path(), ": tokenizer.ggml.pre '", name, "' is not a supported pre-tokenizer type");
}

TokenKind kind_from_gguf(double type) {
  if (type >= 1 && type <= 6 && type == std::floor(type)) return static_cast<TokenKind>(type);
  return TokenKind::kUnused;  // undefined types are neither matched nor shown
}

// Special ids from their keys; ids outside the vocabulary (such as 0xFFFFFFFF for "none") are
// ignored as llama.cpp ignores them.
int32_t special_id(const io::GgufFile& gguf, const std::string& key, int32_t fallback,
                   size_t vocab_size) {
  const std::optional<int64_t> id = gguf.find_int(key);
  const int64_t chosen = id && *id >= 0 && static_cast<size_t>(*id) < vocab_size ? *id : fallback;
  return chosen >= 0 && static_cast<size_t>(chosen) < vocab_size ? static_cast<int32_t>(chosen)
                                                                 : -1;
}

bool flag(const io::GgufFile& gguf, const std::string& key, bool fallback) {
  return gguf.has(key) ? gguf.get_bool(key) : fallback;
}

// Texts, kinds and special ids, common to both models; `default_*` are llama.cpp's defaults.
Vocabulary read_vocabulary(const io::GgufFile& gguf, int32_t default_bos, int32_t default_eos,
                           int32_t default_unk) {
  Vocabulary vocab;
  vocab.texts = gguf.get_string_array("tokenizer.ggml.tokens");
  const size_t n = vocab.size();
  EKV_CHECK(n > 0, gguf.path(), ": tokenizer.ggml.tokens is empty");
  vocab.kinds.assign(n, TokenKind::kNormal);
  if (gguf.has("tokenizer.ggml.token_type")) {
    const std::vector<double>& types = gguf.get_number_array("tokenizer.ggml.token_type");
    EKV_CHECK(types.size() >= n, gguf.path(), ": tokenizer.ggml.token_type has ", types.size(),
              " entries for ", n, " tokens");
    for (size_t i = 0; i < n; ++i) vocab.kinds[i] = kind_from_gguf(types[i]);
  }
  TokenIdMap seen;
  for (size_t i = 0; i < n; ++i) {
    if (vocab.texts[i].empty()) continue;  // some converters leave holes; they match nothing
    const auto [it, inserted] = seen.try_emplace(vocab.texts[i], static_cast<int32_t>(i));
    EKV_CHECK(inserted, gguf.path(), ": tokenizer.ggml.tokens has '", vocab.texts[i],
              "' twice (ids ", it->second, " and ", i, ")");
  }
  vocab.bos_id = special_id(gguf, "tokenizer.ggml.bos_token_id", default_bos, n);
  vocab.eos_id = special_id(gguf, "tokenizer.ggml.eos_token_id", default_eos, n);
  vocab.unk_id = special_id(gguf, "tokenizer.ggml.unknown_token_id", default_unk, n);
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    const int32_t id = special_id(gguf, key, -1, n);
    if (id >= 0) vocab.end_of_generation_ids.push_back(id);
  }
  collect_end_of_generation_ids(vocab);
  return vocab;
}

// Control and unknown tokens are matched in text when parsing specials, user-defined ones always.
std::vector<AddedToken> added_tokens(const Vocabulary& vocab) {
  std::vector<AddedToken> added;
  for (int32_t id = 0; static_cast<size_t>(id) < vocab.size(); ++id) {
    const TokenKind kind = vocab.kinds[id];
    if (kind == TokenKind::kControl || kind == TokenKind::kUnknown) {
      added.push_back({vocab.texts[id], id, /*special=*/true});
    } else if (kind == TokenKind::kUserDefined) {
      added.push_back({vocab.texts[id], id, /*special=*/false});
    }
  }
  return added;
}

// The bytes a token shows: `decode_normal` turns a normal token's text into bytes.
template <typename DecodeNormal>
void fill_pieces(Vocabulary& vocab, DecodeNormal decode_normal) {
  vocab.pieces.resize(vocab.size());
  for (size_t id = 0; id < vocab.size(); ++id) {
    const std::string& text = vocab.texts[id];
    switch (vocab.kinds[id]) {
      case TokenKind::kNormal:
        vocab.pieces[id] = decode_normal(text);
        break;
      case TokenKind::kByte: {
        const int byte = parse_byte_token_text(text);
        vocab.pieces[id] = byte >= 0 ? std::string(1, static_cast<char>(byte)) : text;
        break;
      }
      case TokenKind::kUserDefined:
        vocab.pieces[id] = text;
        break;
      default:
        break;  // control, unknown and unused tokens show nothing
    }
  }
}

std::unique_ptr<Tokenizer> load_sentencepiece(const io::GgufFile& gguf) {
  Vocabulary vocab = read_vocabulary(gguf, 1, 2, 0);
  std::vector<float> scores(vocab.size(), 0.0f);
  if (gguf.has("tokenizer.ggml.scores")) {
    const std::vector<double>& raw = gguf.get_number_array("tokenizer.ggml.scores");
    EKV_CHECK(raw.size() >= vocab.size(), gguf.path(), ": tokenizer.ggml.scores has ", raw.size(),
              " entries for ", vocab.size(), " tokens");
    for (size_t i = 0; i < scores.size(); ++i) scores[i] = static_cast<float>(raw[i]);
  }
  const bool add_space_prefix = flag(gguf, "tokenizer.ggml.add_space_prefix", true);
  vocab.add_bos = flag(gguf, "tokenizer.ggml.add_bos_token", true);
  vocab.strip_leading_space = add_space_prefix;
  fill_pieces(vocab, [](const std::string& text) { return replace_all(text, kSpaceMark, " "); });
  const std::vector<AddedToken> added = added_tokens(vocab);
  return std::make_unique<SpmTokenizer>(std::move(vocab), std::move(scores), added,
                                        add_space_prefix);
}

// Merges are "left right" strings; a rule whose parts or result are not tokens can never fire
// on symbols that are tokens, so it is left out.
std::vector<BpeMerge> read_merges(const io::GgufFile& gguf, const TokenIdMap& ids) {
  const std::vector<std::string>& lines = gguf.get_string_array("tokenizer.ggml.merges");
  std::vector<BpeMerge> merges;
  merges.reserve(lines.size());
  for (const std::string& line : lines) {
    const size_t space = line.find(' ', 1);
    if (space == std::string::npos) continue;
    const std::string_view left = std::string_view(line).substr(0, space);
    const std::string_view right = std::string_view(line).substr(space + 1);
    const auto l = ids.find(left);
    const auto r = ids.find(right);
    const auto m = ids.find(std::string(left) + std::string(right));
    if (l == ids.end() || r == ids.end() || m == ids.end()) continue;
    merges.push_back({l->second, r->second, m->second});
  }
  return merges;
}

std::unique_ptr<Tokenizer> load_byte_level_bpe(const io::GgufFile& gguf) {
  Vocabulary vocab = read_vocabulary(gguf, -1, -1, -1);
  const PreTokenizerType& type = find_pre_tokenizer_type(gguf);
  vocab.add_bos = flag(gguf, "tokenizer.ggml.add_bos_token", type.add_bos);
  fill_pieces(vocab, [](const std::string& text) { return level_text_to_bytes(text); });

  TokenIdMap ids;
  for (int32_t id = 0; static_cast<size_t>(id) < vocab.size(); ++id) {
    if (!vocab.texts[id].empty()) ids.try_emplace(vocab.texts[id], id);
  }
  const std::vector<BpeMerge> merges = read_merges(gguf, ids);
  BpeOptions options;
  options.ignore_merges = type.ignore_merges;

  BpePipeline pipeline;
  pipeline.raw_tokens = AddedTokenSplitter(added_tokens(vocab));
  for (const std::string_view pattern : type.patterns) {
    pipeline.pre_tokenizer.add_split(pattern, SplitBehavior::kIsolated, false);
  }
  pipeline.pre_tokenizer.add_byte_level(/*add_prefix_space=*/false, /*use_regex=*/false);
  BpeModel model(std::move(ids), merges, std::move(options));
  return std::make_unique<BpeTokenizer>(std::move(vocab), std::move(model), std::move(pipeline));
}

}  // namespace

std::unique_ptr<Tokenizer> tokenizer_from_gguf(const io::GgufFile& gguf) {
  const std::optional<std::string> model = gguf.find_string("tokenizer.ggml.model");
  EKV_CHECK(model.has_value(), gguf.path(), ": no tokenizer.ggml.model key (no vocabulary)");
  if (*model == "llama") return load_sentencepiece(gguf);
  if (*model == "gpt2") return load_byte_level_bpe(gguf);
  fail(gguf.path(), ": tokenizer model '", *model,
       "' is not supported (eigenkv reads 'llama' and 'gpt2')");
}

}  // namespace eigenkv::tok
