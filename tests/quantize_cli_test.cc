// eigenkv quantize as a user runs it: the files it writes from the F32 tinystories-c4-gqa hold
// the same tensors, types and bytes as the ones llama-quantize wrote from it (../shared); the
// fallbacks, eigenkv's compressed models, the requantize rule and bad input.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "io/tensor_type.h"
#include "ops/dequant.h"
#include "test_util.h"

namespace eigenkv {
namespace {

using io::TensorType;
using testing::shared_path;
using testing::source_path;

const std::string kBundled = source_path("models/stories260K.gguf");
constexpr const char* kF32Model = "models/tinystories-c4-gqa.gguf";

using Outcome = testing::CliOutcome;
constexpr auto& run = testing::run_eigenkv;

std::string type_name(TensorType type) { return std::string(io::tensor_type_info(type).name); }

constexpr const char* kF32HfModel = "models/tinystories-c4-gqa-hf";

// Quantizes `input` (the shared F32 model, as GGUF or as its Hugging Face directory) with `mix`
// and compares every tensor with the file llama-quantize made from the GGUF: same names, shapes,
// types and bytes.
void expect_same_as_llama_quantize(const std::string& mix, const std::string& reference_name,
                                   const std::string& input = kF32Model) {
  const std::string reference_path = "models/quantized/" + reference_name;
  const std::string out = testing::temp_path(mix + ".gguf");
  Outcome o = run("quantize -m " + shared_path(input) + " -o " + out + " --type " + mix);
  ASSERT_EQ(o.status, 0) << o.out;
  const io::GgufFile ours(out);
  const io::GgufFile reference(shared_path(reference_path));
  EXPECT_EQ(ours.get_int("general.file_type"), reference.get_int("general.file_type"));
  EXPECT_EQ(ours.get_int("general.quantization_version"),
            reference.get_int("general.quantization_version"));
  EXPECT_EQ(ours.get_int("llama.block_count"), 4);
  if (input == kF32Model) {
    // Every key of the source is carried over.
    const io::GgufFile source(shared_path(kF32Model));
    for (const auto& [key, value] : source.metadata()) {
      ASSERT_TRUE(ours.has(key)) << key;
      EXPECT_EQ(ours.find(key)->type, value.type) << key;
    }
    EXPECT_EQ(ours.get_string_array("tokenizer.ggml.tokens"),
              source.get_string_array("tokenizer.ggml.tokens"));
  } else {
    // From Hugging Face: the model's keys and its tokenizer.json, embedded.
    EXPECT_EQ(ours.get_int("llama.attention.head_count_kv"), 2);
    EXPECT_TRUE(ours.has("tokenizer.huggingface.json"));
  }

  ASSERT_EQ(ours.tensors().size(), reference.tensors().size());
  for (const io::TensorView& want : reference.tensors()) {
    SCOPED_TRACE(mix + " " + want.name);
    const io::TensorView* got = ours.find_tensor(want.name);
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(type_name(got->type), type_name(want.type));
    EXPECT_EQ(got->shape, want.shape);
    ASSERT_EQ(got->nbytes, want.nbytes);
    EXPECT_EQ(std::memcmp(got->data, want.data, want.nbytes), 0) << "bytes differ";
  }
  // One line per tensor and a total.
  EXPECT_NE(o.out.find("blk.3.ffn_down.weight"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("model size 10.49 MB -> "), std::string::npos) << o.out;
  // The file it wrote runs.
  Outcome g = run("generate -m " + out + " -n 4 --temp 0 -p Once");
  EXPECT_EQ(g.status, 0) << g.out;
  std::filesystem::remove(out);
}

TEST(QuantizeCli, Q8_0MatchesLlamaQuantize) {
  EKV_REQUIRE_SHARED(kF32Model);
  EKV_REQUIRE_SHARED("models/quantized/tinystories-c4-gqa-Q8_0.gguf");
  expect_same_as_llama_quantize("q8_0", "tinystories-c4-gqa-Q8_0.gguf");
}

TEST(QuantizeCli, Q4_0MatchesLlamaQuantize) {
  EKV_REQUIRE_SHARED(kF32Model);
  EKV_REQUIRE_SHARED("models/quantized/tinystories-c4-gqa-Q4_0.gguf");
  expect_same_as_llama_quantize("q4_0", "tinystories-c4-gqa-Q4_0.gguf");
}

// The K mixes: the per-tensor types (Q6_K for output, and for attn_v and ffn_down of layers 2
// and 3 in Q4_K_M) and, the K encoders being exact, the bytes too.
TEST(QuantizeCli, Q4_K_MMatchesLlamaQuantize) {
  EKV_REQUIRE_SHARED(kF32Model);
  EKV_REQUIRE_SHARED("models/quantized/tinystories-c4-gqa-Q4_K_M.gguf");
  expect_same_as_llama_quantize("Q4_K_M", "tinystories-c4-gqa-Q4_K_M.gguf");
}

TEST(QuantizeCli, Q6_KMatchesLlamaQuantize) {
  EKV_REQUIRE_SHARED(kF32Model);
  EKV_REQUIRE_SHARED("models/quantized/tinystories-c4-gqa-Q6_K.gguf");
  expect_same_as_llama_quantize("q6_k", "tinystories-c4-gqa-Q6_K.gguf");
}

// A Hugging Face directory in: the converter's q/k row order, then the same mix, the same bytes.
TEST(QuantizeCli, HuggingFaceDirectoryMatchesLlamaQuantize) {
  EKV_REQUIRE_SHARED(kF32HfModel);
  EKV_REQUIRE_SHARED("models/quantized/tinystories-c4-gqa-Q8_0.gguf");
  EKV_REQUIRE_SHARED("models/quantized/tinystories-c4-gqa-Q4_K_M.gguf");
  expect_same_as_llama_quantize("q8_0", "tinystories-c4-gqa-Q8_0.gguf", kF32HfModel);
  expect_same_as_llama_quantize("q4_k_m", "tinystories-c4-gqa-Q4_K_M.gguf", kF32HfModel);
}

// stories260K has 64-wide rows, which no K type fits: its matrices fall back from Q4_K to Q5_0
// (with a note per tensor), except ffn_down, whose 172-wide rows fit no 32-number block either
// and fall back to F16, and attn_v of layers 2 and 4 (use_more_bits of 5 layers), whose Q6_K
// falls back to Q8_0; output.weight takes Q8_0 by the output rule. The model it writes still
// loads and generates.
TEST(QuantizeCli, FallbackTypesForNarrowRows) {
  const std::string out = testing::temp_path("fallback.gguf");
  Outcome o = run("quantize -m " + kBundled + " -o " + out + " --type q4_k_m -t 2");
  ASSERT_EQ(o.status, 0) << o.out;
  EXPECT_NE(o.out.find("row width 64 is not a multiple of 256 (q4_K): q5_0 instead"),
            std::string::npos)
      << o.out;
  EXPECT_NE(o.out.find("row width 172 is not a multiple of 256 (q4_K): f16 instead"),
            std::string::npos)
      << o.out;
  EXPECT_NE(o.out.find("row width 64 is not a multiple of 256 (q6_K): q8_0 instead"),
            std::string::npos)
      << o.out;
  EXPECT_NE(o.out.find("tensors in a fallback type"), std::string::npos) << o.out;
  const io::GgufFile file(out);
  EXPECT_EQ(file.get_int("general.file_type"), 15);
  for (const io::TensorView& t : file.tensors()) {
    TensorType want = TensorType::kQ5_0;
    if (t.shape.size() == 1) want = TensorType::kF32;
    if (t.name == "output.weight") want = TensorType::kQ8_0;
    if (t.name == "blk.2.attn_v.weight" || t.name == "blk.4.attn_v.weight") {
      want = TensorType::kQ8_0;
    }
    if (t.name.find("ffn_down") != std::string::npos) want = TensorType::kF16;
    EXPECT_EQ(type_name(t.type), type_name(want)) << t.name;
  }
  Outcome g = run("generate -m " + out + " -n 8 --temp 0");
  EXPECT_EQ(g.status, 0) << g.out;
  std::filesystem::remove(out);
}

// A compressed model: its key bases stay float32, the metadata that describes the compression
// is carried over, and the result still loads.
TEST(QuantizeCli, CompressedModelKeepsBasesInFloat32) {
  const std::string compressed = testing::temp_path("compressed.gguf");
  Outcome c =
      run("calibrate -m " + kBundled + " -f " + source_path("data/tinystories-calib.txt") +
          " --threshold 0.05 --rope post --tokens 1024 --json -o " + compressed + " 2>/dev/null");
  ASSERT_EQ(c.status, 0) << c.out;
  const std::string out = testing::temp_path("compressed-q8.gguf");
  Outcome o = run("quantize -m " + compressed + " -o " + out + " --type q8_0");
  ASSERT_EQ(o.status, 0) << o.out;
  const io::GgufFile file(out);
  EXPECT_TRUE(file.has("eigenkv.version"));
  int bases = 0;
  for (const io::TensorView& t : file.tensors()) {
    if (t.name.find("_basis") != std::string::npos) {
      EXPECT_EQ(t.type, TensorType::kF32) << t.name;
      ++bases;
    }
  }
  EXPECT_GT(bases, 0);
  Outcome i = run("info -m " + out + " --json");
  EXPECT_EQ(i.status, 0) << i.out;
  std::filesystem::remove(compressed);
  std::filesystem::remove(out);
}

// llama-quantize's rule: a quantized tensor is converted again only with --allow-requantize;
// tensors already of the wanted type are copied as they are.
TEST(QuantizeCli, RequantizeNeedsTheFlag) {
  const std::string q8 = testing::temp_path("q8.gguf");
  ASSERT_EQ(run("quantize -m " + kBundled + " -o " + q8 + " --type q8_0").status, 0);

  const std::string again = testing::temp_path("q8-again.gguf");
  Outcome same = run("quantize -m " + q8 + " -o " + again + " --type q8_0");
  ASSERT_EQ(same.status, 0) << same.out;
  {
    const io::GgufFile a(q8), b(again);
    for (const io::TensorView& t : a.tensors()) {
      const io::TensorView& u = b.tensor(t.name);
      ASSERT_EQ(u.nbytes, t.nbytes) << t.name;
      EXPECT_EQ(std::memcmp(u.data, t.data, t.nbytes), 0) << t.name;
    }
  }

  const std::string q4 = testing::temp_path("q4.gguf");
  Outcome refused = run("quantize -m " + q8 + " -o " + q4 + " --type q4_0");
  EXPECT_EQ(refused.status, 1) << refused.out;
  EXPECT_NE(refused.out.find("eigenkv: error: "), std::string::npos) << refused.out;
  EXPECT_NE(refused.out.find("--allow-requantize"), std::string::npos) << refused.out;
  EXPECT_FALSE(std::filesystem::exists(q4));

  Outcome allowed = run("quantize -m " + q8 + " -o " + q4 + " --type q4_0 --allow-requantize");
  ASSERT_EQ(allowed.status, 0) << allowed.out;
  const io::GgufFile from(q8), to(q4);
  const io::TensorView& t = from.tensor("blk.0.attn_q.weight");
  std::vector<float> x(t.numel());
  ops::dequantize(t.type, t.data, x.data(), t.numel());
  std::vector<uint8_t> want(io::tensor_bytes(TensorType::kQ4_0, t.numel()));
  ops::quantize(TensorType::kQ4_0, x.data(), want.data(), t.numel());
  const io::TensorView& got = to.tensor("blk.0.attn_q.weight");
  EXPECT_EQ(got.type, TensorType::kQ4_0);
  ASSERT_EQ(got.nbytes, want.size());
  EXPECT_EQ(std::memcmp(got.data, want.data(), want.size()), 0);
  for (const std::string& path : {q8, again, q4}) std::filesystem::remove(path);
}

void expect_error(const std::string& args, const std::string& fragment) {
  Outcome o = run(args);
  EXPECT_NE(o.status, 0) << args << "\n" << o.out;
  EXPECT_LT(o.status, 128) << "crashed: " << args << "\n" << o.out;
  EXPECT_NE(o.out.find(fragment), std::string::npos) << args << "\n" << o.out;
  EXPECT_NE(o.out.find("eigenkv: error: "), std::string::npos) << o.out;
}

TEST(QuantizeCli, Errors) {
  const std::string out = testing::temp_path("never.gguf");
  expect_error("quantize -m " + kBundled + " -o " + out + " --type q3_k_xl", "q4_k_m");
  expect_error("quantize -m /nonexistent.gguf -o " + out + " --type q8_0", "cannot open");
  expect_error("quantize -m " + source_path("models") + " -o " + out + " --type q8_0",
               "no config.json");
  expect_error("quantize -m " + kBundled + " --type q8_0", "--output");
  EXPECT_FALSE(std::filesystem::exists(out));
  Outcome help = run("quantize --help");
  EXPECT_NE(help.out.find("a Hugging Face directory"), std::string::npos)
      << help.out;
}

}  // namespace
}  // namespace eigenkv
