// tokenizer_from_json: a Hugging Face tokenizer.json with a BPE model, both the Llama-2 family
// (byte fallback, "▁" normalizer or Metaspace) and the byte-level family (GPT-2, Llama-3).
// Components this reader does not implement are refused with an Error that names them.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/piecewise.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "util/error.h"
#include "util/files.h"

namespace eigenkv::tok {
namespace {

using nlohmann::json;

// Guards the id -> text table against absurd ids in corrupt files.
constexpr int64_t kMaxTokenId = 1 << 24;

// Error context: which file, and where in it.
class Source {
 public:
  explicit Source(std::string path) : path_(std::move(path)) {}

  template <typename... Args>
  [[noreturn]] void fail(Args&&... args) const {
    eigenkv::fail(path_, ": ", std::forward<Args>(args)...);
  }

  // obj[key] when present and not null, else nullptr. `obj` must be an object.
  const json* find(const json& obj, const std::string& key, std::string_view where) const {
    if (!obj.is_object()) fail(where, " is not a JSON object");
    const auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }
  const json& get(const json& obj, const std::string& key, std::string_view where) const {
    const json* value = find(obj, key, where);
    if (value == nullptr) fail(where, " has no \"", key, "\"");
    return *value;
  }
  std::string get_string(const json& obj, const std::string& key, std::string_view where) const {
    const json& value = get(obj, key, where);
    if (!value.is_string()) fail(where, ".", key, " is not a string");
    return value.get<std::string>();
  }
  bool get_bool(const json& obj, const std::string& key, bool fallback,
                std::string_view where) const {
    const json* value = find(obj, key, where);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) fail(where, ".", key, " is not a boolean");
    return value->get<bool>();
  }
  int32_t get_id(const json& value, std::string_view where) const {
    if (!value.is_number_integer()) fail(where, " is not an integer id");
    const int64_t id = value.get<int64_t>();
    if (id < 0 || id >= kMaxTokenId) {
      fail(where, " has id ", id, ", outside [0, ", kMaxTokenId, ")");
    }
    return static_cast<int32_t>(id);
  }
  // The component's "type" string.
  std::string type_of(const json& component, std::string_view where) const {
    return get_string(component, "type", where);
  }

 private:
  std::string path_;
};

json parse_file(const std::string& path) {
  const std::string text = read_regular_file(path, uint64_t{1} << 30);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail(path, ": malformed JSON: ", e.what());
  }
}

// A "pattern" object: {"String": "..."} or {"Regex": "..."}; returns a regex pattern.
std::string pattern_of(const Source& src, const json& component, std::string_view where) {
  const json& pattern = src.get(component, "pattern", where);
  if (const json* literal = src.find(pattern, "String", where); literal && literal->is_string()) {
    return Regex::escape(literal->get<std::string>());
  }
  if (const json* regex = src.find(pattern, "Regex", where); regex && regex->is_string()) {
    return regex->get<std::string>();
  }
  src.fail(where, ".pattern is neither {\"String\": ...} nor {\"Regex\": ...}");
}

// The model's vocabulary plus added tokens, indexed by id.
struct TokenTable {
  Vocabulary vocab;
  TokenIdMap model_ids;  // the BPE model's own tokens
  std::vector<json> added;
};

TokenTable read_tokens(const Source& src, const json& root, const json& model) {
  TokenTable table;
  const json& vocab_json = src.get(model, "vocab", "model");
  if (!vocab_json.is_object()) src.fail("model.vocab is not an object");
  int32_t max_id = -1;
  table.model_ids.reserve(vocab_json.size());
  for (const auto& [text, id_json] : vocab_json.items()) {
    const int32_t id = src.get_id(id_json, "model.vocab[\"" + text + "\"]");
    table.model_ids.try_emplace(text, id);
    max_id = std::max(max_id, id);
  }
  if (const json* added = src.find(root, "added_tokens", "the top level")) {
    if (!added->is_array()) src.fail("added_tokens is not an array");
    for (const json& token : *added) {
      max_id = std::max(max_id, src.get_id(src.get(token, "id", "an added token"), "added token"));
      table.added.push_back(token);
    }
  }
  if (max_id < 0) src.fail("the vocabulary is empty");

  Vocabulary& vocab = table.vocab;
  vocab.texts.resize(static_cast<size_t>(max_id) + 1);
  vocab.kinds.assign(vocab.texts.size(), TokenKind::kUnused);  // ids nobody names stay unused
  for (const auto& [text, id] : table.model_ids) {
    vocab.texts[id] = text;
    vocab.kinds[id] = TokenKind::kNormal;
  }
  for (const json& token : table.added) {
    const int32_t id = src.get_id(src.get(token, "id", "an added token"), "added token");
    vocab.texts[id] = src.get_string(token, "content", "added token " + std::to_string(id));
    vocab.kinds[id] = src.get_bool(token, "special", false, "added token")
                          ? TokenKind::kControl
                          : TokenKind::kUserDefined;
  }
  return table;
}

// Merges are "left right" strings or ["left", "right"] pairs.
std::vector<BpeMerge> read_merges(const Source& src, const json& model, const TokenIdMap& ids,
                                  const std::string& continuing_prefix) {
  const json* merges_json = src.find(model, "merges", "model");
  std::vector<BpeMerge> merges;
  if (merges_json == nullptr) return merges;
  if (!merges_json->is_array()) src.fail("model.merges is not an array");
  merges.reserve(merges_json->size());
  for (size_t i = 0; i < merges_json->size(); ++i) {
    const json& entry = (*merges_json)[i];
    std::string left;
    std::string right;
    if (entry.is_string()) {
      const std::string& line = entry.get_ref<const std::string&>();
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        src.fail("model.merges[", i, "] '", line, "' is not two tokens separated by a space");
      }
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
               entry[1].is_string()) {
      left = entry[0].get<std::string>();
      right = entry[1].get<std::string>();
    } else {
      src.fail("model.merges[", i, "] is neither \"a b\" nor [\"a\", \"b\"]");
    }
    std::string merged = left;
    merged += right.starts_with(continuing_prefix) ? right.substr(continuing_prefix.size()) : right;
    const auto l = ids.find(left);
    const auto r = ids.find(right);
    const auto m = ids.find(merged);
    if (l == ids.end() || r == ids.end() || m == ids.end()) {
      src.fail("model.merges[", i, "] ('", left, "', '", right,
               "') uses a token that is not in model.vocab");
    }
    merges.push_back({l->second, r->second, m->second});
  }
  return merges;
}

void add_normalizer(const Source& src, const json& component, Normalizer& normalizer) {
  const std::string type = src.type_of(component, "normalizer");
  if (type == "Sequence") {
    const json& steps = src.get(component, "normalizers", "normalizer Sequence");
    if (!steps.is_array()) src.fail("normalizer Sequence.normalizers is not an array");
    for (const json& step : steps) add_normalizer(src, step, normalizer);
  } else if (type == "Prepend") {
    normalizer.add_prepend(src.get_string(component, "prepend", "normalizer Prepend"));
  } else if (type == "Replace") {
    const std::string content = src.get_string(component, "content", "normalizer Replace");
    const json& pattern = src.get(component, "pattern", "normalizer Replace");
    if (const json* literal = src.find(pattern, "String", "normalizer Replace.pattern");
        literal && literal->is_string()) {
      normalizer.add_replace(literal->get<std::string>(), content);
    } else {
      normalizer.add_replace_regex(pattern_of(src, component, "normalizer Replace"), content);
    }
  } else {
    src.fail("normalizer '", type, "' is not supported (supported: Sequence, Prepend, Replace)");
  }
}

SplitBehavior split_behavior(const Source& src, const std::string& name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  src.fail("pre_tokenizer Split behavior '", name, "' is not known");
}

// Metaspace's prepend scheme, from "prepend_scheme" or the older "add_prefix_space".
PrependScheme prepend_scheme(const Source& src, const json& component, std::string_view where) {
  if (const json* scheme = src.find(component, "prepend_scheme", where)) {
    const std::string name = scheme->is_string() ? scheme->get<std::string>() : "";
    if (name == "always") return PrependScheme::kAlways;
    if (name == "first") return PrependScheme::kFirst;
    if (name == "never") return PrependScheme::kNever;
    src.fail(where, ".prepend_scheme '", name, "' is not known");
  }
  return src.get_bool(component, "add_prefix_space", true, where) ? PrependScheme::kAlways
                                                                  : PrependScheme::kNever;
}

void add_pre_tokenizer(const Source& src, const json& component, PreTokenizer& pre) {
  const std::string type = src.type_of(component, "pre_tokenizer");
  if (type == "Sequence") {
    const json& steps = src.get(component, "pretokenizers", "pre_tokenizer Sequence");
    if (!steps.is_array()) src.fail("pre_tokenizer Sequence.pretokenizers is not an array");
    for (const json& step : steps) add_pre_tokenizer(src, step, pre);
  } else if (type == "Split") {
    pre.add_split(pattern_of(src, component, "pre_tokenizer Split"),
                  split_behavior(src, src.get_string(component, "behavior", "pre_tokenizer Split")),
                  src.get_bool(component, "invert", false, "pre_tokenizer Split"));
  } else if (type == "ByteLevel") {
    pre.add_byte_level(
        src.get_bool(component, "add_prefix_space", false, "pre_tokenizer ByteLevel"),
        src.get_bool(component, "use_regex", true, "pre_tokenizer ByteLevel"));
  } else if (type == "Metaspace") {
    pre.add_metaspace(src.get_string(component, "replacement", "pre_tokenizer Metaspace"),
                      prepend_scheme(src, component, "pre_tokenizer Metaspace"),
                      src.get_bool(component, "split", true, "pre_tokenizer Metaspace"));
  } else if (type == "Digits") {
    const bool individual = src.get_bool(component, "individual_digits", false, "Digits");
    pre.add_split(individual ? R"(\p{N})" : R"(\p{N}+)", SplitBehavior::kIsolated, false);
  } else if (type == "Whitespace") {
    pre.add_split(R"(\w+|[^\w\s]+)", SplitBehavior::kRemoved, /*invert=*/true);
  } else if (type == "WhitespaceSplit") {
    pre.add_split(R"(\S+)", SplitBehavior::kRemoved, /*invert=*/true);
  } else {
    src.fail("pre_tokenizer '", type,
             "' is not supported (supported: Sequence, Split, ByteLevel, Metaspace, Digits, "
             "Whitespace, WhitespaceSplit)");
  }
}

// What the decoder chain does to each token's text, and whether the decoded text loses one
// leading space. Fuse only joins tokens, which decoding does anyway; a Strip after it therefore
// acts on the whole text, before it on every token.
class DecoderPlan {
 public:
  void add(const Source& src, const json& component) {
    const std::string type = src.type_of(component, "decoder");
    if (type == "Sequence") {
      const json& steps = src.get(component, "decoders", "decoder Sequence");
      if (!steps.is_array()) src.fail("decoder Sequence.decoders is not an array");
      for (const json& step : steps) add(src, step);
    } else if (type == "ByteLevel") {
      steps_.push_back({Kind::kByteLevel, "", ""});
    } else if (type == "ByteFallback") {
      steps_.push_back({Kind::kByteFallback, "", ""});
    } else if (type == "Fuse") {
      fused_ = true;
    } else if (type == "Replace") {
      const json& pattern = src.get(component, "pattern", "decoder Replace");
      const json* literal = src.find(pattern, "String", "decoder Replace.pattern");
      if (literal == nullptr || !literal->is_string()) {
        src.fail("decoder Replace with a regex pattern is not supported");
      }
      steps_.push_back({Kind::kReplace, literal->get<std::string>(),
                        src.get_string(component, "content", "decoder Replace")});
    } else if (type == "Metaspace") {
      steps_.push_back(
          {Kind::kReplace, src.get_string(component, "replacement", "decoder Metaspace"), " "});
      if (prepend_scheme(src, component, "decoder Metaspace") != PrependScheme::kNever) {
        strip_leading_space_ = true;
      }
    } else if (type == "Strip") {
      add_strip(src, component);
    } else {
      src.fail("decoder '", type,
               "' is not supported (supported: Sequence, ByteLevel, ByteFallback, Fuse, "
               "Replace, Metaspace, Strip)");
    }
  }

  std::string piece(const std::string& text) const {
    std::string piece = text;
    for (const Step& step : steps_) {
      switch (step.kind) {
        case Kind::kByteLevel:
          piece = level_text_to_bytes(piece);
          break;
        case Kind::kByteFallback:
          if (const int byte = parse_byte_token_text(piece); byte >= 0) {
            piece.assign(1, static_cast<char>(byte));
          }
          break;
        case Kind::kReplace:
          piece = replace_all(piece, step.from, step.to);
          break;
        case Kind::kStripEach:
          piece = strip(piece, step.from, step.strip_start, step.strip_stop);
          break;
      }
    }
    return piece;
  }

  bool strip_leading_space() const { return strip_leading_space_; }

 private:
  enum class Kind { kByteLevel, kByteFallback, kReplace, kStripEach };
  struct Step {
    Kind kind;
    std::string from;  // kReplace: the literal; kStripEach: the character stripped
    std::string to;
    int strip_start = 0;
    int strip_stop = 0;
  };

  void add_strip(const Source& src, const json& component) {
    const std::string content = src.get_string(component, "content", "decoder Strip");
    const json& start = src.get(component, "start", "decoder Strip");
    const json& stop = src.get(component, "stop", "decoder Strip");
    if (!start.is_number_unsigned() || !stop.is_number_unsigned() || start.get<int64_t>() > 64 ||
        stop.get<int64_t>() > 64) {
      src.fail("decoder Strip has bad start/stop");
    }
    const int n_start = start.get<int>();
    const int n_stop = stop.get<int>();
    if (!fused_) {
      steps_.push_back({Kind::kStripEach, content, "", n_start, n_stop});
      return;
    }
    if (content != " " || n_start > 1 || n_stop != 0) {
      src.fail("decoder Strip after Fuse is supported only as content ' ', start 1, stop 0");
    }
    strip_leading_space_ = n_start == 1;
  }

  static std::string strip(std::string text, const std::string& content, int start, int stop) {
    for (int i = 0; i < start && !content.empty() && text.starts_with(content); ++i) {
      text.erase(0, content.size());
    }
    for (int i = 0; i < stop && !content.empty() && text.ends_with(content); ++i) {
      text.erase(text.size() - content.size());
    }
    return text;
  }

  std::vector<Step> steps_;
  bool fused_ = false;
  bool strip_leading_space_ = false;
};

// "bos_token": "<s>" or {"content": "<s>", ...}.
std::optional<std::string> config_token(const json& config, const std::string& key) {
  const auto it = config.find(key);
  if (it == config.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    const auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  return std::nullopt;
}

// The special token a TemplateProcessing post-processor puts first, if any: Hugging Face adds it
// to single sequences, so it is the BOS the model was trained with.
std::optional<std::string> template_bos(const json& root) {
  const auto processor = root.find("post_processor");
  if (processor == root.end() || !processor->is_object()) return std::nullopt;
  if (processor->value("type", json()) != "TemplateProcessing") return std::nullopt;
  const auto single = processor->find("single");
  if (single == processor->end() || !single->is_array() || single->empty()) return std::nullopt;
  const json& first = (*single)[0];
  if (!first.is_object() || !first.contains("SpecialToken")) return std::nullopt;
  const json& special = first["SpecialToken"];
  if (!special.is_object() || !special.contains("id") || !special["id"].is_string()) {
    return std::nullopt;
  }
  return special["id"].get<std::string>();
}

// BOS, EOS and whether BOS is added, from tokenizer_config.json when it is there, else from the
// post-processor.
void read_special_ids(const std::string& json_path, const json& root, Vocabulary& vocab,
                      const TokenIdMap& ids) {
  const auto id_of = [&](const std::optional<std::string>& text) {
    if (!text) return -1;
    const auto it = ids.find(*text);
    return it == ids.end() ? -1 : it->second;
  };
  const std::optional<std::string> bos_from_template = template_bos(root);
  vocab.bos_id = id_of(bos_from_template);
  vocab.add_bos = vocab.bos_id >= 0;

  const std::filesystem::path config_path =
      std::filesystem::path(json_path).parent_path() / "tokenizer_config.json";
  if (!std::filesystem::exists(config_path)) return;
  const json config = parse_file(config_path.string());
  if (!config.is_object()) fail(config_path.string(), ": not a JSON object");
  if (const auto bos = config_token(config, "bos_token")) vocab.bos_id = id_of(bos);
  vocab.eos_id = id_of(config_token(config, "eos_token"));
  const auto add_bos = config.find("add_bos_token");
  if (add_bos != config.end() && add_bos->is_boolean()) vocab.add_bos = add_bos->get<bool>();
  if (vocab.bos_id < 0) vocab.add_bos = false;
}

std::vector<AddedToken> to_added_tokens(const Source& src, const std::vector<json>& added,
                                        bool normalized) {
  std::vector<AddedToken> tokens;
  for (const json& token : added) {
    const std::string where = "an added token";
    if (src.get_bool(token, "normalized", false, where) != normalized) continue;
    AddedToken t;
    t.id = src.get_id(src.get(token, "id", where), where);
    t.text = src.get_string(token, "content", where);
    t.special = src.get_bool(token, "special", false, where);
    t.lstrip = src.get_bool(token, "lstrip", false, where);
    t.rstrip = src.get_bool(token, "rstrip", false, where);
    t.single_word = src.get_bool(token, "single_word", false, where);
    tokens.push_back(std::move(t));
  }
  return tokens;
}

BpeOptions read_bpe_options(const Source& src, const json& model, const TokenIdMap& ids) {
  BpeOptions options;
  if (const json* unk = src.find(model, "unk_token", "model")) {
    if (!unk->is_string()) src.fail("model.unk_token is not a string");
    const auto it = ids.find(unk->get<std::string>());
    if (it == ids.end()) src.fail("model.unk_token '", unk->get<std::string>(), "' is not a token");
    options.unk_id = it->second;
  }
  options.fuse_unk = src.get_bool(model, "fuse_unk", false, "model");
  options.byte_fallback = src.get_bool(model, "byte_fallback", false, "model");
  options.ignore_merges = src.get_bool(model, "ignore_merges", false, "model");
  if (const json* prefix = src.find(model, "continuing_subword_prefix", "model")) {
    if (!prefix->is_string()) src.fail("model.continuing_subword_prefix is not a string");
    options.continuing_subword_prefix = prefix->get<std::string>();
  }
  if (const json* suffix = src.find(model, "end_of_word_suffix", "model")) {
    if (!suffix->is_string()) src.fail("model.end_of_word_suffix is not a string");
    options.end_of_word_suffix = suffix->get<std::string>();
  }
  if (const json* dropout = src.find(model, "dropout", "model")) {
    if (!dropout->is_number() || dropout->get<double>() != 0.0) {
      src.fail("model.dropout is set: BPE dropout (a training aid) is not supported");
    }
  }
  return options;
}

std::unique_ptr<Tokenizer> load(const std::string& path) {
  const Source src(path);
  const json root = parse_file(path);
  if (!root.is_object()) src.fail("the top level is not a JSON object");
  const json& model = src.get(root, "model", "the top level");
  const json* type = src.find(model, "type", "model");
  const std::string model_type = type && type->is_string() ? type->get<std::string>() : "BPE";
  if (model_type != "BPE") {
    src.fail("model type '", model_type, "' is not supported (eigenkv reads BPE models)");
  }

  TokenTable table = read_tokens(src, root, model);
  Vocabulary& vocab = table.vocab;
  BpeOptions options = read_bpe_options(src, model, table.model_ids);
  if (options.unk_id >= 0) vocab.kinds[options.unk_id] = TokenKind::kUnknown;
  if (options.byte_fallback) {
    for (const auto& [text, id] : table.model_ids) {
      if (vocab.kinds[id] == TokenKind::kNormal && parse_byte_token_text(text) >= 0) {
        vocab.kinds[id] = TokenKind::kByte;
      }
    }
  }
  const std::vector<BpeMerge> merges =
      read_merges(src, model, table.model_ids, options.continuing_subword_prefix);

  BpePipeline pipeline;
  if (const json* normalizer = src.find(root, "normalizer", "the top level")) {
    add_normalizer(src, *normalizer, pipeline.normalizer);
  }
  if (const json* pre_tokenizer = src.find(root, "pre_tokenizer", "the top level")) {
    add_pre_tokenizer(src, *pre_tokenizer, pipeline.pre_tokenizer);
  } else if (!options.ignore_merges && table.model_ids.contains("\xE2\x96\x81")) {
    // Cutting is exact only while merges decide everything: with ignore_merges the whole text
    // is looked up as one word, and an unknown "▁" could fuse with unknown characters beside it.
    pipeline.word_edges = find_word_edges(table.model_ids);
  }
  pipeline.raw_tokens = AddedTokenSplitter(to_added_tokens(src, table.added, false));
  // Hugging Face matches "normalized" added tokens by their normalized text.
  std::vector<AddedToken> normalized_tokens = to_added_tokens(src, table.added, true);
  for (AddedToken& token : normalized_tokens) token.text = pipeline.normalizer.apply(token.text);
  pipeline.normalized_tokens = AddedTokenSplitter(normalized_tokens);

  DecoderPlan decoder;
  if (const json* decoder_json = src.find(root, "decoder", "the top level")) {
    decoder.add(src, *decoder_json);
  }
  vocab.strip_leading_space = decoder.strip_leading_space();
  vocab.pieces.resize(vocab.size());
  for (size_t id = 0; id < vocab.size(); ++id) {
    const TokenKind kind = vocab.kinds[id];
    if (kind == TokenKind::kNormal || kind == TokenKind::kByte || kind == TokenKind::kUserDefined) {
      vocab.pieces[id] = decoder.piece(vocab.texts[id]);
    }
  }

  TokenIdMap all_ids;
  for (int32_t id = 0; static_cast<size_t>(id) < vocab.size(); ++id) {
    if (vocab.kinds[id] != TokenKind::kUnused) all_ids.try_emplace(vocab.texts[id], id);
  }
  read_special_ids(path, root, vocab, all_ids);
  vocab.unk_id = options.unk_id;
  collect_end_of_generation_ids(vocab);

  BpeModel bpe(std::move(table.model_ids), merges, std::move(options));
  return std::make_unique<BpeTokenizer>(std::move(vocab), std::move(bpe), std::move(pipeline));
}

}  // namespace

std::unique_ptr<Tokenizer> tokenizer_from_json(const std::string& path) {
  try {
    return load(path);
  } catch (const json::exception& e) {
    // A value of an unexpected JSON type that the checks above did not anticipate.
    fail(path, ": unexpected tokenizer.json structure: ", e.what());
  } catch (const Error& e) {
    // Errors from the parts (a regex that does not compile, say) do not know the file.
    if (std::string_view(e.what()).find(path) != std::string_view::npos) throw;
    fail(path, ": ", e.what());
  }
}

}  // namespace eigenkv::tok
