// llama.cpp's own tokenizer tests (../shared/tokenizers/*/*.inp, .out): every text must give
// exactly llama.cpp's ids, from the GGUF vocabularies and from the equivalent tokenizer.json.
#include <gtest/gtest.h>

#include "tokenizer_test_util.h"

namespace eigenkv::testing {
namespace {

// Encodes every case as llama.cpp's test does (no BOS, specials not parsed) and reports each
// mismatch; returns how many cases passed.
size_t expect_cases_pass(const tok::Tokenizer& tokenizer, const std::string& inp_rel,
                         const std::string& out_rel) {
  const std::vector<VocabCase> cases = read_vocab_cases(shared_path(inp_rel), shared_path(out_rel));
  EXPECT_FALSE(cases.empty()) << inp_rel << " and " << out_rel << " do not pair up";
  size_t passed = 0;
  for (const VocabCase& c : cases) {
    const std::vector<int32_t> ids = tokenizer.encode(c.text, /*add_bos=*/false);
    EXPECT_EQ(ids_to_string(ids), ids_to_string(c.ids)) << "text: '" << c.text << "'";
    passed += ids == c.ids;
  }
  std::cout << "[          ] " << passed << "/" << cases.size() << " cases of " << inp_rel
            << " pass\n";
  return passed;
}

TEST(TokenizerVocabTest, LlamaSpmGgufMatchesLlamaCpp) {
  EKV_REQUIRE_SHARED("tokenizers/llama-spm/ggml-vocab-llama-spm.gguf");
  const auto& tokenizer = shared_gguf_tokenizer("tokenizers/llama-spm/ggml-vocab-llama-spm.gguf");
  EXPECT_EQ(expect_cases_pass(tokenizer, "tokenizers/llama-spm/ggml-vocab-llama-spm.gguf.inp",
                              "tokenizers/llama-spm/ggml-vocab-llama-spm.gguf.out"),
            46u);
}

TEST(TokenizerVocabTest, Llama2JsonMatchesLlamaCppSpm) {
  EKV_REQUIRE_SHARED("tokenizers/llama2/tokenizer.json");
  EKV_REQUIRE_SHARED("tokenizers/llama-spm/ggml-vocab-llama-spm.gguf.inp");
  const auto& tokenizer = shared_json_tokenizer("tokenizers/llama2/tokenizer.json");
  EXPECT_EQ(expect_cases_pass(tokenizer, "tokenizers/llama-spm/ggml-vocab-llama-spm.gguf.inp",
                              "tokenizers/llama-spm/ggml-vocab-llama-spm.gguf.out"),
            46u);
}

TEST(TokenizerVocabTest, Llama3JsonMatchesLlamaCppBpe) {
  EKV_REQUIRE_SHARED("tokenizers/llama3/tokenizer.json");
  EKV_REQUIRE_SHARED("tokenizers/llama3/ggml-vocab-llama-bpe.gguf.inp");
  const auto& tokenizer = shared_json_tokenizer("tokenizers/llama3/tokenizer.json");
  EXPECT_EQ(expect_cases_pass(tokenizer, "tokenizers/llama3/ggml-vocab-llama-bpe.gguf.inp",
                              "tokenizers/llama3/ggml-vocab-llama-bpe.gguf.out"),
            46u);
}

TEST(TokenizerVocabTest, Gpt2GgufMatchesLlamaCpp) {
  EKV_REQUIRE_SHARED("tokenizers/gpt-2/ggml-vocab-gpt-2.gguf");
  const auto& tokenizer = shared_gguf_tokenizer("tokenizers/gpt-2/ggml-vocab-gpt-2.gguf");
  EXPECT_EQ(expect_cases_pass(tokenizer, "tokenizers/gpt-2/ggml-vocab-gpt-2.gguf.inp",
                              "tokenizers/gpt-2/ggml-vocab-gpt-2.gguf.out"),
            46u);
}

TEST(TokenizerVocabTest, MptGgufMatchesLlamaCpp) {
  EKV_REQUIRE_SHARED("tokenizers/mpt/ggml-vocab-mpt.gguf");
  const auto& tokenizer = shared_gguf_tokenizer("tokenizers/mpt/ggml-vocab-mpt.gguf");
  EXPECT_EQ(expect_cases_pass(tokenizer, "tokenizers/mpt/ggml-vocab-mpt.gguf.inp",
                              "tokenizers/mpt/ggml-vocab-mpt.gguf.out"),
            46u);
}

// The vocabulary inside stories260K.gguf and its tokenizer.json twin give the same ids.
TEST(TokenizerVocabTest, Stories260KGgufAndJsonAgree) {
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  EKV_REQUIRE_SHARED("models/stories260K-hf/tokenizer.json");
  const auto& gguf = shared_gguf_tokenizer("models/stories260K.gguf");
  const auto& json = shared_json_tokenizer("models/stories260K-hf/tokenizer.json");
  EXPECT_EQ(gguf.vocab_size(), json.vocab_size());
  EXPECT_EQ(gguf.bos_id(), json.bos_id());
  EXPECT_EQ(gguf.eos_id(), json.eos_id());
  const std::vector<std::string> texts = {
      "Once upon a time, there was a little girl named Lily.",
      "She loved to play outside in the park. One day, she saw a big, red ball.",
      " leading space",
      "two  spaces\tand a tab\n\nnew lines",
      "Ünïcödé ☃ and 🦙 emoji",
      "numbers 12345 and 3.14",
      "\"Quotes\" (parens) [brackets] {braces}",
      "",
      "<s>not special</s>",
      "Tom's dog's bone; it's Sam's!"};
  for (const std::string& text : texts) {
    for (const bool add_bos : {false, true}) {
      EXPECT_EQ(ids_to_string(gguf.encode(text, add_bos)),
                ids_to_string(json.encode(text, add_bos)))
          << "text: '" << text << "'";
    }
  }
  if (!std::filesystem::exists(shared_path("data/tinystories/valid_a.txt"))) return;
  const std::string stories =
      read_file(shared_path("data/tinystories/valid_a.txt")).substr(0, 20000);
  const std::vector<int32_t> ids = gguf.encode(stories, true);
  EXPECT_EQ(ids, json.encode(stories, true));
  EXPECT_EQ(gguf.decode(ids), stories);
}

TEST(TokenizerVocabTest, TinyStories656KLoadsAndRoundTrips) {
  EKV_REQUIRE_SHARED("models/TinyStories-656K/tokenizer.json");
  const auto& tokenizer = shared_json_tokenizer("models/TinyStories-656K/tokenizer.json");
  EXPECT_EQ(tokenizer.vocab_size(), 2048u);
  EXPECT_EQ(tokenizer.token_text(tokenizer.bos_id()), "<|start_story|>");
  EXPECT_EQ(tokenizer.token_text(tokenizer.eos_id()), "<|end_story|>");
  EXPECT_TRUE(tokenizer.add_bos_by_default());
  EXPECT_TRUE(tokenizer.is_end_of_generation(tokenizer.eos_id()));
  const std::string text =
      "Once upon a time, there was a little girl named Lily. She had a toy car.";
  const std::vector<int32_t> ids = tokenizer.encode(text, /*add_bos=*/true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), tokenizer.bos_id());
  EXPECT_EQ(tokenizer.decode(ids), text);
}

}  // namespace
}  // namespace eigenkv::testing
