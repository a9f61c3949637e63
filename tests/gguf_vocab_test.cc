// tokenizer.json -> tokenizer.ggml.* keys (what `eigenkv convert` writes for llama.cpp): the GGUF
// vocabulary, read back by eigenkv's GGUF tokenizer (which follows llama.cpp's), gives the ids
// the tokenizers library gives, on real tokenizer files of both kinds; what GGUF cannot express
// is refused by name.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "test_util.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace eigenkv {
namespace {

using testing::shared_path;
using testing::temp_path;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The texts both tokenizers encode: story text, and what tends to split differently.
std::vector<std::string> texts() {
  std::string story = read_file(shared_path("data/tinystories/valid_a.txt")).substr(0, 6000);
  return {story,
          "Hello world",
          " leading space and  two  spaces\n\nnew lines\ttab",
          "digits 1234567 and 3.14159, prices $12.50",
          "unicode: naïve café, Ελληνικά, 日本語, emoji 🙂 and ZWJ 👩‍💻",
          "it's they're we'll I'd don't",
          "x",
          "   "};
}

// The vocabulary of a tokenizer directory, as GGUF keys, read back as a GGUF tokenizer.
std::unique_ptr<tok::Tokenizer> through_gguf(const tok::Tokenizer& hf, const std::string& json,
                                             const std::string& config, int64_t n_vocab,
                                             const std::string& name,
                                             tok::GgufVocab* vocab_out = nullptr) {
  const tok::GgufVocab vocab = tok::gguf_vocab_from_json(hf, json, config, n_vocab);
  if (vocab_out) *vocab_out = vocab;
  io::GgufWriter w;
  w.set_string("general.architecture", "llama");
  tok::write_gguf_vocab(vocab, w);
  const std::string path = temp_path(name + ".gguf");
  w.write(path);
  const io::GgufFile file(path);
  auto t = tok::tokenizer_from_gguf(file);
  std::filesystem::remove(path);
  return t;
}

struct Case {
  const char* dir;       // holds tokenizer.json (+ tokenizer_config.json)
  const char* model;     // the GGUF model it must become
  const char* pre;       // tokenizer.ggml.pre ("" for llama)
};

class GgufVocabRoundTrip : public ::testing::TestWithParam<Case> {};

TEST_P(GgufVocabRoundTrip, GgufTokenizerGivesTheTokenizersLibrarysIds) {
  const Case c = GetParam();
  const std::string dir = std::string(c.dir);
  EKV_REQUIRE_SHARED(dir + "/tokenizer.json");
  EKV_REQUIRE_SHARED("data/tinystories/valid_a.txt");
  const std::string json_path = shared_path(dir + "/tokenizer.json");
  const std::string config_path = shared_path(dir + "/tokenizer_config.json");
  const auto hf = tok::tokenizer_from_json(json_path);
  const std::string config = std::filesystem::exists(config_path) ? read_file(config_path) : "";
  tok::GgufVocab vocab;
  const auto gguf = through_gguf(*hf, read_file(json_path), config,
                                 static_cast<int64_t>(hf->vocab_size()), "roundtrip", &vocab);
  EXPECT_EQ(vocab.model, c.model);
  EXPECT_EQ(vocab.pre, c.pre);
  ASSERT_EQ(gguf->vocab_size(), hf->vocab_size());
  EXPECT_EQ(gguf->bos_id(), hf->bos_id());
  EXPECT_EQ(gguf->eos_id(), hf->eos_id());
  EXPECT_EQ(gguf->add_bos_by_default(), hf->add_bos_by_default());
  size_t total = 0;
  for (const std::string& text : texts()) {
    const std::vector<int32_t> want = hf->encode(text, true);
    EXPECT_EQ(gguf->encode(text, true), want) << dir << ": '" << text.substr(0, 60) << "'";
    EXPECT_EQ(gguf->decode(want), hf->decode(want)) << dir;
    total += want.size();
  }
  EXPECT_GT(total, 1000u);  // the story text alone is well over a thousand tokens
}

INSTANTIATE_TEST_SUITE_P(
    SharedTokenizers, GgufVocabRoundTrip,
    ::testing::Values(Case{"models/mpt-tiny-hf", "llama", ""},
                      Case{"models/qwen2-tiny-hf", "llama", ""},
                      Case{"tokenizers/llama2", "llama", ""},
                      Case{"tokenizers/spm-bpe-32k", "llama", ""},
                      Case{"tokenizers/llama3", "gpt2", "llama-bpe"}),
    [](const ::testing::TestParamInfo<Case>& info) {
      std::string name = std::filesystem::path(info.param.dir).filename().string();
      for (char& ch : name) {
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      }
      return name;
    });

// Qwen2's split pattern (single digits) in a byte-level tokenizer: named "qwen2", and splits
// digits as the tokenizer.json does.
TEST(GgufVocab, Qwen2SplitPatternIsNamedAndSplitsDigitsAlike) {
  EKV_REQUIRE_SHARED("tokenizers/llama3/tokenizer.json");
  nlohmann::json j = nlohmann::json::parse(read_file(shared_path("tokenizers/llama3/tokenizer.json")));
  std::string& pattern = j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"].get_ref<std::string&>();
  const size_t at = pattern.find("\\p{N}{1,3}");
  ASSERT_NE(at, std::string::npos);
  pattern.replace(at, std::string("\\p{N}{1,3}").size(), "\\p{N}");
  j["model"]["ignore_merges"] = false;
  const std::string path = temp_path("qwen2_tokenizer.json");
  std::ofstream(path) << j.dump();
  const auto hf = tok::tokenizer_from_json(path);
  tok::GgufVocab vocab;
  const auto gguf = through_gguf(*hf, j.dump(), "", static_cast<int64_t>(hf->vocab_size()),
                                 "qwen2", &vocab);
  std::filesystem::remove(path);
  EXPECT_EQ(vocab.pre, "qwen2");
  const std::string text = "In 2024 there were 1234567 tokens";
  EXPECT_EQ(gguf->encode(text, false), hf->encode(text, false));
  EXPECT_GT(hf->encode(text, false).size(), hf->encode("In 2024 there were 1234 tokens", false).size());
}

// Embedding rows beyond the tokenizer become unused [PAD<id>] tokens, as llama.cpp's converter
// writes them; a tokenizer larger than the model is refused.
TEST(GgufVocab, PadsToTheModelsRowsAndRefusesFewerRows) {
  EKV_REQUIRE_SHARED("models/mpt-tiny-hf/tokenizer.json");
  const std::string path = shared_path("models/mpt-tiny-hf/tokenizer.json");
  const auto hf = tok::tokenizer_from_json(path);
  const int64_t n = static_cast<int64_t>(hf->vocab_size());
  const tok::GgufVocab v = tok::gguf_vocab_from_json(*hf, read_file(path), "", n + 3);
  ASSERT_EQ(v.tokens.size(), static_cast<size_t>(n + 3));
  EXPECT_EQ(v.tokens[n + 2], "[PAD" + std::to_string(n + 2) + "]");
  EXPECT_EQ(v.types[n + 2], static_cast<int32_t>(tok::TokenKind::kUnused));
  EXPECT_EQ(v.tokens[n - 1], hf->token_text(static_cast<int32_t>(n - 1)));
  EXPECT_EQ(v.scores.size(), static_cast<size_t>(n + 3));
  // Merge results score by rank: the first merge's token outranks every other.
  const nlohmann::json j = nlohmann::json::parse(read_file(path));
  const std::string first = j["model"]["merges"][0].is_string()
                                ? j["model"]["merges"][0].get<std::string>()
                                : j["model"]["merges"][0][0].get<std::string>() + " " +
                                      j["model"]["merges"][0][1].get<std::string>();
  std::string merged = first;
  merged.erase(merged.find(' '), 1);
  const std::optional<int32_t> top = hf->find_token(merged);
  ASSERT_TRUE(top.has_value()) << merged;
  EXPECT_EQ(v.scores[*top], 0.0f);
  EXPECT_EQ(*std::max_element(v.scores.begin(), v.scores.end()), 0.0f);
  EXPECT_EQ(std::count(v.scores.begin(), v.scores.end(), 0.0f), 1);
  try {
    tok::gguf_vocab_from_json(*hf, read_file(path), "", n - 1);
    FAIL() << "a tokenizer larger than the model was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("embedding rows"), std::string::npos) << e.what();
  }
}

std::string refusal(const tok::Tokenizer& hf, const nlohmann::json& j) {
  try {
    tok::gguf_vocab_from_json(hf, j.dump(), "", static_cast<int64_t>(hf.vocab_size()));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// What llama.cpp would tokenize differently is refused, naming the part.
TEST(GgufVocab, RefusesWhatGgufCannotExpress) {
  EKV_REQUIRE_SHARED("models/TinyStories-656K/tokenizer.json");
  EKV_REQUIRE_SHARED("tokenizers/llama3/tokenizer.json");
  {
    // Trained as BPE with ▁ inside tokens: llama.cpp's score-ordered merging would differ.
    const std::string path = shared_path("models/TinyStories-656K/tokenizer.json");
    const auto hf = tok::tokenizer_from_json(path);
    const std::string why = refusal(*hf, nlohmann::json::parse(read_file(path)));
    EXPECT_NE(why.find("is not a merge"), std::string::npos) << why;
  }
  const std::string path = shared_path("tokenizers/llama3/tokenizer.json");
  const auto hf = tok::tokenizer_from_json(path);
  const nlohmann::json base = nlohmann::json::parse(read_file(path));
  {
    nlohmann::json j = base;
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+|\\w+";
    EXPECT_NE(refusal(*hf, j).find("is not one llama.cpp names"), std::string::npos);
  }
  {
    nlohmann::json j = base;
    j["normalizer"] = {{"type", "NFC"}};
    EXPECT_NE(refusal(*hf, j).find("normalizer 'NFC'"), std::string::npos) << refusal(*hf, j);
  }
  {
    nlohmann::json j = base;
    j["model"]["ignore_merges"] = false;
    EXPECT_NE(refusal(*hf, j).find("ignore_merges"), std::string::npos) << refusal(*hf, j);
  }
  {
    nlohmann::json j = base;
    j["model"]["type"] = "Unigram";
    EXPECT_NE(refusal(*hf, j).find("model type Unigram"), std::string::npos) << refusal(*hf, j);
  }
  {
    nlohmann::json j = base;
    j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true;
    EXPECT_NE(refusal(*hf, j).find("add_prefix_space"), std::string::npos) << refusal(*hf, j);
  }
}

}  // namespace
}  // namespace eigenkv
