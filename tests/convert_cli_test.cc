// eigenkv convert: every family's Hugging Face directory to GGUF in F32, F16, BF16 or a quantized
// mix; the file loads back to the directory's logits (exactly in F32), carries the vocabulary as
// tokenizer.ggml keys with the ids the tokenizer.json gives, and bad input is one error line.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "io/gguf.h"
#include "model/model.h"
#include "model_test_util.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace eigenkv {
namespace {

namespace fs = std::filesystem;
using testing::logits_of;
using testing::max_relative_diff;

struct Case {
  const char* dir;
  const char* type;
  int64_t file_type;        // general.file_type llama.cpp gives the type
  const char* matrix_type;  // what blk.0.attn_output.weight becomes
  double logits_bound;      // against the directory's logits
};

class ConvertCli : public ::testing::TestWithParam<Case> {};

TEST_P(ConvertCli, WritesAFileThatLoadsToTheSameModel) {
  const Case c = GetParam();
  EKV_REQUIRE_SHARED(c.dir);
  const std::string out = testing::temp_path(std::string(c.type) + ".gguf");
  const testing::CliOutcome o = testing::run_eigenkv(
      "convert -m " + testing::shared_path(c.dir) + " -o " + out + " --type " + c.type + " -t 1");
  ASSERT_EQ(o.status, 0) << o.out;
  EXPECT_NE(o.out.find("wrote " + out), std::string::npos) << o.out;
  EXPECT_EQ(o.out.find("note:"), std::string::npos) << o.out;  // the vocabulary was written
  const auto hf = model::Model::load(testing::shared_path(c.dir));
  {
    const io::GgufFile f(out);
    EXPECT_EQ(f.get_string("general.architecture"), hf->config().arch.name);
    EXPECT_EQ(f.get_int("general.file_type"), c.file_type);
    EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "llama");  // the tiny models' SPM vocabulary
    EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens").size(),
              static_cast<size_t>(hf->config().n_vocab));
    const io::TensorView* wo = f.find_tensor("blk.0.attn_output.weight");
    ASSERT_NE(wo, nullptr);
    EXPECT_EQ(io::tensor_type_info(wo->type).name, std::string(c.matrix_type));
    EXPECT_EQ(f.find_tensor("blk.0.attn_norm.weight")->type, io::TensorType::kF32);
    // llama.cpp reads the tokenizer.ggml keys: they must give the tokenizer.json's ids.
    const auto gguf_tokenizer = tok::tokenizer_from_gguf(f);
    const std::string text = "Once upon a time, there was a little dog named Max. He liked 42 balls!";
    EXPECT_EQ(gguf_tokenizer->encode(text, true), hf->tokenizer().encode(text, true));
  }
  const auto gg = model::Model::load(out);
  fs::remove(out);
  const std::vector<int32_t> ids = {1, 403, 407, 261, 378, 426, 410, 13, 13, 441};
  const double diff = max_relative_diff(logits_of(*gg, ids), logits_of(*hf, ids));
  EXPECT_LE(diff, c.logits_bound) << c.dir << " " << c.type;
}

INSTANTIATE_TEST_SUITE_P(
    Families, ConvertCli,
    ::testing::Values(Case{"models/mpt-tiny-hf", "f32", 0, "f32", 1e-6},
                      Case{"models/mpt-tiny-hf", "f16", 1, "f16", 2e-3},
                      Case{"models/qwen2-tiny-hf", "bf16", 32, "bf16", 3e-2},
                      Case{"models/qwen2-tiny-hf", "q8_0", 7, "q8_0", 2e-2},
                      Case{"models/opt-tiny-hf", "f32", 0, "f32", 1e-6},
                      Case{"models/opt-tiny-hf", "q4_k_m", 15, "q4_K", 0.2},
                      Case{"models/tinystories-c4-gqa-hf", "f16", 1, "f16", 2e-3}),
    [](const ::testing::TestParamInfo<Case>& info) {
      std::string name = fs::path(info.param.dir).filename().string() + "_" + info.param.type;
      for (char& ch : name) {
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      }
      return name;
    });

// A vocabulary llama.cpp would tokenize differently is not written as tokenizer.ggml keys; the
// file still runs in eigenkv (from the embedded tokenizer.json) and a note says why.
TEST(ConvertCliNotes, AVocabularyGgufCannotExpressIsNotedAndEmbedded) {
  EKV_REQUIRE_SHARED("models/TinyStories-656K");
  const std::string out = testing::temp_path("656k.gguf");
  const testing::CliOutcome o = testing::run_eigenkv(
      "convert -m " + testing::shared_path("models/TinyStories-656K") + " -o " + out + " -t 1");
  ASSERT_EQ(o.status, 0) << o.out;
  EXPECT_NE(o.out.find("note: the tokenizer cannot be written as GGUF tokenizer.ggml keys"),
            std::string::npos)
      << o.out;
  {
    const io::GgufFile f(out);
    EXPECT_FALSE(f.has("tokenizer.ggml.model"));
    EXPECT_TRUE(f.has("tokenizer.huggingface.json"));
  }
  const auto gg = model::Model::load(out);
  const auto hf = model::Model::load(testing::shared_path("models/TinyStories-656K"));
  fs::remove(out);
  const std::string text = "The little cat sat on the mat.";
  EXPECT_EQ(gg->tokenizer().encode(text, true), hf->tokenizer().encode(text, true));
}

TEST(ConvertCliErrors, BadInputIsOneErrorLine) {
  EKV_REQUIRE_SHARED("models/mpt-tiny-hf");
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  const std::string out = testing::temp_path("never.gguf");
  const std::string dir = testing::shared_path("models/mpt-tiny-hf");
  const struct {
    std::string args, expect;
  } cases[] = {
      {"convert -m " + dir + " -o " + out + " --type q3_k_xl", "--type 'q3_k_xl' is not f32"},
      {"convert -m " + testing::shared_path("models/stories260K.gguf") + " -o " + out,
       "not a Hugging Face directory"},
      {"convert -m /nonexistent/dir -o " + out, "not a Hugging Face directory"},
      {"convert -m " + dir + " -o " + dir + "/config.json", "config.json"},
  };
  for (const auto& c : cases) {
    const testing::CliOutcome o = testing::run_eigenkv(c.args);
    EXPECT_EQ(o.status, 1) << c.args << "\n" << o.out;
    EXPECT_NE(o.out.find(c.expect), std::string::npos) << c.args << "\n" << o.out;
    EXPECT_EQ(o.out.find("eigenkv: error:"), o.out.rfind("eigenkv: error:")) << o.out;
  }
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
}  // namespace eigenkv
