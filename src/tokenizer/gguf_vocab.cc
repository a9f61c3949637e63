#include "tokenizer/gguf_vocab.h"

#include <nlohmann/json.hpp>
#include <unordered_map>
#include <unordered_set>

#include "tokenizer/pretokenizer.h"
#include "tokenizer/vocabulary.h"
#include "util/error.h"

namespace eigenkv::tok {
namespace {

using nlohmann::json;

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// The split patterns llama.cpp knows by a tokenizer.ggml.pre name, and whether it ignores merges
// for that name (looks a whole pre-token up in the vocabulary first).
struct NamedPattern {
  const char* pre;
  const char* pattern;
  bool ignore_merges;
};
const NamedPattern kNamedPatterns[] = {
    {"gpt-2", kGpt2SplitPattern, false},
    {"llama-bpe", kLlama3SplitPattern, true},
    {"qwen2", kQwen2SplitPattern, false},
};

[[noreturn]] void refuse(const std::string& what) {
  fail("the tokenizer cannot be written as GGUF tokenizer.ggml keys: ", what);
}

std::string type_of(const json& component) {
  return component.is_object() ? component.value("type", std::string()) : std::string();
}

// "pattern": {"Regex": "..."} or {"String": "..."}: the regex text (a literal is not a split
// pattern llama.cpp names).
std::string regex_of(const json& split) {
  const json pattern = split.value("pattern", json::object());
  if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string()) {
    return pattern["Regex"].get<std::string>();
  }
  refuse("a Split pre-tokenizer without a regex pattern");
}

// A flat list of the pre-tokenizer's steps (a Sequence's parts, in order).
std::vector<json> pre_steps(const json& root) {
  std::vector<json> steps;
  const json pre = root.value("pre_tokenizer", json());
  if (pre.is_null()) return steps;
  if (type_of(pre) == "Sequence") {
    for (const json& s : pre.value("pretokenizers", json::array())) steps.push_back(s);
  } else {
    steps.push_back(pre);
  }
  return steps;
}

// The name of a byte-level tokenizer's split pattern, checking llama.cpp splits the same way.
std::string byte_level_pre(const json& root, bool ignore_merges) {
  const std::vector<json> steps = pre_steps(root);
  if (steps.empty() || type_of(steps.back()) != "ByteLevel") {
    refuse("a BPE model without byte_fallback needs a ByteLevel pre-tokenizer");
  }
  const json& byte_level = steps.back();
  if (byte_level.value("add_prefix_space", false)) {
    refuse("ByteLevel add_prefix_space (llama.cpp adds no space before the text)");
  }
  std::string pattern;
  if (steps.size() == 1) {
    if (!byte_level.value("use_regex", true)) refuse("ByteLevel without a split pattern");
    pattern = kGpt2SplitPattern;
  } else if (steps.size() == 2 && type_of(steps[0]) == "Split") {
    const json& split = steps[0];
    if (split.value("behavior", std::string()) != "Isolated" || split.value("invert", false)) {
      refuse("a Split pre-tokenizer that does not isolate its matches");
    }
    if (byte_level.value("use_regex", true)) refuse("a Split followed by a splitting ByteLevel");
    pattern = regex_of(split);
  } else {
    std::string names;
    for (const json& s : steps) names += (names.empty() ? "" : ", ") + type_of(s);
    refuse("the pre-tokenizer sequence [" + names + "]");
  }
  for (const NamedPattern& named : kNamedPatterns) {
    if (pattern != named.pattern) continue;
    if (ignore_merges != named.ignore_merges) {
      refuse(std::string("model.ignore_merges is ") + (ignore_merges ? "true" : "false") +
             " but llama.cpp's '" + named.pre + "' pre-tokenizer has it " +
             (named.ignore_merges ? "true" : "false"));
    }
    return named.pre;
  }
  refuse("the split pattern " + pattern + " is not one llama.cpp names (gpt-2, llama-bpe, qwen2)");
}

// Whether text becomes SentencePiece pieces: spaces replaced by ▁, with or without one
// prepended. Refuses any other normalizer or pre-tokenizer.
bool sentencepiece_space_prefix(const json& root) {
  bool prepend = false, replace = false;
  const json normalizer = root.value("normalizer", json());
  std::vector<json> parts;
  if (type_of(normalizer) == "Sequence") {
    for (const json& n : normalizer.value("normalizers", json::array())) parts.push_back(n);
  } else if (!normalizer.is_null()) {
    parts.push_back(normalizer);
  }
  for (const json& n : parts) {
    const std::string type = type_of(n);
    if (type == "Prepend" && n.value("prepend", std::string()) == kSpaceMark) {
      prepend = true;
    } else if (type == "Replace" && n.value("content", std::string()) == kSpaceMark &&
               n.value("pattern", json::object()).value("String", std::string()) == " ") {
      replace = true;
    } else {
      refuse("the normalizer '" + type + "' (llama.cpp's SentencePiece model only puts ▁ for " +
             "spaces)");
    }
  }
  const std::vector<json> steps = pre_steps(root);
  if (steps.empty()) {
    if (!replace) refuse("a byte_fallback BPE model whose spaces do not become ▁");
    return prepend;
  }
  if (steps.size() != 1 || type_of(steps[0]) != "Metaspace" || replace) {
    refuse("the pre-tokenizer '" + type_of(steps[0]) + "' of a byte_fallback BPE model");
  }
  const json& meta = steps[0];
  if (meta.value("replacement", std::string(kSpaceMark)) != kSpaceMark) {
    refuse("a Metaspace replacement other than ▁");
  }
  if (meta.value("split", true)) refuse("Metaspace split (llama.cpp does not split at spaces)");
  if (meta.contains("prepend_scheme")) return meta.value("prepend_scheme", "") != "never";
  return meta.value("add_prefix_space", true);
}

struct Merge {
  std::string left, right;
};

std::vector<Merge> read_merges(const json& model) {
  std::vector<Merge> merges;
  for (const json& m : model.value("merges", json::array())) {
    if (m.is_string()) {
      const std::string line = m.get<std::string>();
      const size_t space = line.find(' ');
      merges.push_back({line.substr(0, space), line.substr(space + 1)});
    } else {
      merges.push_back({m.at(0).get<std::string>(), m.at(1).get<std::string>()});
    }
  }
  return merges;
}

// SentencePiece scores that make llama.cpp's highest-score-first merging follow the BPE ranks:
// a token's score is -(rank of its first merge); tokens no merge makes are never scored.
std::vector<float> sentencepiece_scores(const Tokenizer& tokenizer, const json& model,
                                        const std::vector<Merge>& merges, size_t n) {
  std::unordered_set<std::string> merge_set;
  std::vector<float> scores(n, -static_cast<float>(merges.size() + 1));
  std::vector<bool> scored(n, false);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const Merge& m = merges[rank];
    merge_set.insert(m.left + ' ' + m.right);
    const std::optional<int32_t> id = tokenizer.find_token(m.left + m.right);
    if (id && static_cast<size_t>(*id) < n && !scored[*id]) {
      scores[*id] = -static_cast<float>(rank);
      scored[*id] = true;
    }
  }
  // llama.cpp merges any two neighbours whose concatenation is a token: that is BPE's order only
  // when every such split of every token is a merge.
  const json& vocab = model.at("vocab");
  for (const auto& [text, id] : vocab.items()) {
    (void)id;
    for (size_t cut = 1; cut < text.size(); ++cut) {
      if ((static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) continue;  // inside a char
      const std::string left = text.substr(0, cut), right = text.substr(cut);
      if (vocab.contains(left) && vocab.contains(right) &&
          !merge_set.contains(left + ' ' + right)) {
        refuse("token '" + text + "' splits into '" + left + "' + '" + right +
               "', which is not a merge: the vocabulary was not converted from SentencePiece, "
               "and llama.cpp's SentencePiece model would merge differently");
      }
    }
  }
  return scores;
}

int32_t config_token_id(const Tokenizer& tokenizer, const json& config, const char* key) {
  const json value = config.value(key, json());
  std::string text;
  if (value.is_string()) {
    text = value.get<std::string>();
  } else if (value.is_object() && value.value("content", json()).is_string()) {
    text = value["content"].get<std::string>();
  } else {
    return -1;
  }
  return tokenizer.find_token(text).value_or(-1);
}

GgufVocab build(const Tokenizer& tokenizer, std::string_view tokenizer_json,
                std::string_view config_json, int64_t n_vocab) {
  const json root = json::parse(tokenizer_json);
  const json config = config_json.empty() ? json::object() : json::parse(config_json);
  const json& model = root.at("model");
  const std::string model_type = model.value("type", std::string("BPE"));
  if (model_type != "BPE") refuse("model type " + model_type + " (GGUF has BPE and SentencePiece)");
  if (!model.value("continuing_subword_prefix", json()).is_null() ||
      !model.value("end_of_word_suffix", json()).is_null()) {
    refuse("continuing_subword_prefix / end_of_word_suffix");
  }
  const size_t n = tokenizer.vocab_size();
  if (static_cast<int64_t>(n) > n_vocab) {
    refuse("the tokenizer has " + std::to_string(n) + " tokens but the model only " +
           std::to_string(n_vocab) + " embedding rows");
  }
  GgufVocab v;
  v.tokens.resize(static_cast<size_t>(n_vocab));
  v.types.resize(static_cast<size_t>(n_vocab));
  for (size_t id = 0; id < static_cast<size_t>(n_vocab); ++id) {
    const TokenKind kind = id < n ? tokenizer.token_kind(static_cast<int32_t>(id))
                                  : TokenKind::kUnused;
    if (kind == TokenKind::kUnused) {
      v.tokens[id] = "[PAD" + std::to_string(id) + "]";
    } else {
      v.tokens[id] = tokenizer.token_text(static_cast<int32_t>(id));
    }
    v.types[id] = static_cast<int32_t>(kind);
  }
  const std::vector<Merge> merges = read_merges(model);
  const bool ignore_merges = model.value("ignore_merges", false);
  if (model.value("byte_fallback", false)) {
    if (ignore_merges) refuse("model.ignore_merges with byte_fallback");
    v.model = "llama";
    v.add_space_prefix = sentencepiece_space_prefix(root);
    v.scores = sentencepiece_scores(tokenizer, model, merges, static_cast<size_t>(n_vocab));
  } else {
    v.model = "gpt2";
    if (!root.value("normalizer", json()).is_null()) {
      refuse("the normalizer '" + type_of(root["normalizer"]) +
             "' of a byte-level tokenizer (llama.cpp normalizes nothing)");
    }
    v.pre = byte_level_pre(root, ignore_merges);
    v.merges.reserve(merges.size());
    for (const Merge& m : merges) {
      if (m.left.find(' ') != std::string::npos || m.right.find(' ') != std::string::npos) {
        refuse("merge ('" + m.left + "', '" + m.right + "') has a space in a token");
      }
      v.merges.push_back(m.left + ' ' + m.right);
    }
  }
  v.bos_id = tokenizer.bos_id();
  v.eos_id = tokenizer.eos_id();
  v.unk_id = tokenizer.unk_id();
  v.pad_id = config_token_id(tokenizer, config, "pad_token");
  v.add_bos = tokenizer.add_bos_by_default();
  v.add_eos = config.value("add_eos_token", json(false)).is_boolean() &&
              config.value("add_eos_token", false);
  const json chat = config.value("chat_template", json());
  if (chat.is_string()) v.chat_template = chat.get<std::string>();
  return v;
}

}  // namespace

GgufVocab gguf_vocab_from_json(const Tokenizer& tokenizer, std::string_view tokenizer_json,
                               std::string_view tokenizer_config_json, int64_t n_vocab) {
  try {
    return build(tokenizer, tokenizer_json, tokenizer_config_json, n_vocab);
  } catch (const json::exception& e) {
    fail("the tokenizer cannot be written as GGUF tokenizer.ggml keys: unexpected JSON: ",
         e.what());
  }
}

void write_gguf_vocab(const GgufVocab& v, io::GgufWriter& w) {
  using io::GgufValueType;
  w.set_string("tokenizer.ggml.model", v.model);
  if (!v.pre.empty()) w.set_string("tokenizer.ggml.pre", v.pre);
  w.set_string_array("tokenizer.ggml.tokens", v.tokens);
  w.set_number_array("tokenizer.ggml.token_type",
                     std::vector<double>(v.types.begin(), v.types.end()), GgufValueType::kInt32);
  if (!v.scores.empty()) {
    w.set_number_array("tokenizer.ggml.scores",
                       std::vector<double>(v.scores.begin(), v.scores.end()),
                       GgufValueType::kFloat32);
  }
  if (!v.merges.empty()) w.set_string_array("tokenizer.ggml.merges", v.merges);
  const auto id = [&](const char* key, int32_t value) {
    if (value >= 0) w.set_int(key, value);
  };
  id("tokenizer.ggml.bos_token_id", v.bos_id);
  id("tokenizer.ggml.eos_token_id", v.eos_id);
  id("tokenizer.ggml.unknown_token_id", v.unk_id);
  id("tokenizer.ggml.padding_token_id", v.pad_id);
  w.set_bool("tokenizer.ggml.add_bos_token", v.add_bos);
  w.set_bool("tokenizer.ggml.add_eos_token", v.add_eos);
  if (v.model == "llama") w.set_bool("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
  if (!v.chat_template.empty()) w.set_string("tokenizer.chat_template", v.chat_template);
}

}  // namespace eigenkv::tok
