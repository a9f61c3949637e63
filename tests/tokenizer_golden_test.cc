// Ids from the official Hugging Face tokenizers library (tests/data/tokenizer/golden_*.json,
// written by scripts/golden_tokens/make_golden.js) for varied texts: English, code, several
// scripts, emoji, white space runs, numbers, contractions and special tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "tokenizer_test_util.h"

namespace eigenkv::testing {
namespace {

struct GoldenCase {
  std::string text;
  std::vector<int32_t> ids;
  std::string decoded;
};

struct GoldenFile {
  std::string tokenizer;  // relative to the repository root: "../shared/..." or "tests/data/..."
  std::vector<GoldenCase> cases;
};

GoldenFile read_golden(const std::string& name) {
  const nlohmann::json root = nlohmann::json::parse(
      read_file(source_path("tests/data/tokenizer/golden_" + name + ".json")));
  GoldenFile golden{root.at("tokenizer").get<std::string>(), {}};
  for (const nlohmann::json& c : root.at("cases")) {
    golden.cases.push_back({c.at("text").get<std::string>(),
                            c.at("ids").get<std::vector<int32_t>>(),
                            c.at("decoded").get<std::string>()});
  }
  return golden;
}

constexpr std::string_view kSharedPrefix = "../shared/";

// Loads each tokenizer once per test binary.
const tok::Tokenizer& golden_tokenizer(const std::string& rel) {
  if (rel.starts_with(kSharedPrefix))
    return shared_json_tokenizer(rel.substr(kSharedPrefix.size()));
  static std::map<std::string, std::unique_ptr<tok::Tokenizer>> cache;
  auto& slot = cache[rel];
  if (!slot) slot = tok::tokenizer_from_json(source_path(rel));
  return *slot;
}

class TokenizerGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    golden_ = read_golden(GetParam());
    if (golden_.tokenizer.starts_with(kSharedPrefix)) {
      EKV_REQUIRE_SHARED(golden_.tokenizer.substr(kSharedPrefix.size()));
    }
    tokenizer_ = &golden_tokenizer(golden_.tokenizer);
  }

  GoldenFile golden_;
  const tok::Tokenizer* tokenizer_ = nullptr;
};

// One test per tokenizer, since under ctest every test is a process that loads its tokenizer.
TEST_P(TokenizerGoldenTest, MatchesHuggingFace) {
  ASSERT_GE(golden_.cases.size(), 40u);
  size_t passed = 0;
  size_t round_trips = 0;
  for (const GoldenCase& c : golden_.cases) {
    SCOPED_TRACE("text: '" + c.text + "'");
    // The library matches added tokens written in the text, and so does eigenkv by default
    // (parse_special true: special-token strings are the tokens).
    const std::vector<int32_t> ids = tokenizer_->encode(c.text, false);
    EXPECT_EQ(ids_to_string(ids), ids_to_string(c.ids));
    passed += ids == c.ids;
    // "decoded" is the library's decode of the ids without special tokens.
    EXPECT_EQ(tokenizer_->decode(c.ids), c.decoded);
    // Where the library gets the text back (no special tokens in it, every character in the
    // vocabulary), so does eigenkv, with and without BOS.
    if (c.decoded != c.text) continue;
    ++round_trips;
    EXPECT_EQ(tokenizer_->decode(tokenizer_->encode(c.text, /*add_bos=*/false)), c.text);
    EXPECT_EQ(tokenizer_->decode(tokenizer_->encode(c.text, /*add_bos=*/true)), c.text);
  }
  EXPECT_GT(round_trips, 0u);
  std::cout << "[          ] " << passed << "/" << golden_.cases.size() << " golden cases of "
            << golden_.tokenizer << " pass; " << round_trips << " round-trip\n";
}

INSTANTIATE_TEST_SUITE_P(AllTokenizers, TokenizerGoldenTest,
                         ::testing::Values("llama3", "spm-bpe-32k", "llama2", "tinystories-656k",
                                           "metaspace", "byte-level"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return name;
                         });

}  // namespace
}  // namespace eigenkv::testing
