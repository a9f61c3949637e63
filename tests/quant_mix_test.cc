// Tests for ops/quant_mix.h: llama-quantize's choice of type per tensor.
#include "ops/quant_mix.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "io/gguf.h"
#include "io/tensor_type.h"
#include "test_util.h"
#include "util/error.h"

namespace eigenkv::ops {
namespace {

using io::TensorType;

std::string name_of(TensorType type) { return std::string(io::tensor_type_info(type).name); }

TEST(QuantMix, Names) {
  EXPECT_EQ(quant_mix_from_name("q4_k_m"), QuantMix::kQ4_K_M);
  EXPECT_EQ(quant_mix_from_name("Q4_K_M"), QuantMix::kQ4_K_M);
  EXPECT_EQ(quant_mix_from_name("q5_K_m"), QuantMix::kQ5_K_M);
  EXPECT_EQ(quant_mix_from_name("Q8_0"), QuantMix::kQ8_0);
  EXPECT_EQ(quant_mix_from_name("q6_k"), QuantMix::kQ6_K);
  EXPECT_EQ(quant_mix_from_name("q4_k"), std::nullopt);  // Q4_K_S is not offered
  EXPECT_EQ(quant_mix_from_name("q4_k_m "), std::nullopt);
  EXPECT_EQ(quant_mix_from_name(""), std::nullopt);
  EXPECT_EQ(quant_mix_name(QuantMix::kQ5_1), "Q5_1");
  EXPECT_EQ(quant_mix_names(), "q8_0, q4_0, q4_1, q5_0, q5_1, q6_k, q4_k_m, q5_k_m");
  // llama_ftype numbers (llama.h): the shared files carry 2, 7, 15 and 18.
  EXPECT_EQ(mix_file_type(QuantMix::kQ4_0), 2u);
  EXPECT_EQ(mix_file_type(QuantMix::kQ4_1), 3u);
  EXPECT_EQ(mix_file_type(QuantMix::kQ8_0), 7u);
  EXPECT_EQ(mix_file_type(QuantMix::kQ5_0), 8u);
  EXPECT_EQ(mix_file_type(QuantMix::kQ5_1), 9u);
  EXPECT_EQ(mix_file_type(QuantMix::kQ4_K_M), 15u);
  EXPECT_EQ(mix_file_type(QuantMix::kQ5_K_M), 17u);
  EXPECT_EQ(mix_file_type(QuantMix::kQ6_K), 18u);
  EXPECT_EQ(mix_base_type(QuantMix::kQ4_K_M), TensorType::kQ4_K);
  EXPECT_EQ(mix_base_type(QuantMix::kQ5_K_M), TensorType::kQ5_K);
}

// ---- The shared files llama-quantize made from tinystories-c4-gqa (4 layers, GQA 4:2) ----

constexpr const char* kF32Model = "models/tinystories-c4-gqa.gguf";

class SharedMix : public ::testing::TestWithParam<const char*> {};

TEST_P(SharedMix, EveryTensorGetsLlamaQuantizesType) {
  const std::string mix_name = GetParam();
  const std::string quantized = "models/quantized/tinystories-c4-gqa-" + mix_name + ".gguf";
  EKV_REQUIRE_SHARED(kF32Model);
  EKV_REQUIRE_SHARED(quantized);
  const io::GgufFile source(testing::shared_path(kF32Model));
  const io::GgufFile reference(testing::shared_path(quantized));
  const auto mix = quant_mix_from_name(mix_name);
  ASSERT_TRUE(mix.has_value());
  EXPECT_EQ(reference.get_int("general.file_type"), mix_file_type(*mix));

  const QuantModelInfo info = quant_model_info(source);
  EXPECT_EQ(info.architecture, "llama");
  EXPECT_EQ(info.n_layers, 4);
  EXPECT_EQ(info.n_heads, 4);
  EXPECT_EQ(info.n_kv_heads, 2);
  EXPECT_TRUE(info.has_output);

  ASSERT_EQ(source.tensors().size(), reference.tensors().size());
  int quantized_count = 0;
  for (const io::TensorView& tensor : source.tensors()) {
    const io::TensorView& want = reference.tensor(tensor.name);
    const TensorChoice choice =
        choose_tensor_type(*mix, tensor.name, tensor.shape, tensor.type, info);
    EXPECT_EQ(name_of(choice.type), name_of(want.type)) << tensor.name;
    EXPECT_EQ(choice.note, "") << tensor.name;
    quantized_count += choice.type != TensorType::kF32;
  }
  EXPECT_EQ(quantized_count, 2 + 4 * 7);  // token_embd, output and seven matrices per layer
}

INSTANTIATE_TEST_SUITE_P(Files, SharedMix, ::testing::Values("Q8_0", "Q4_0", "Q6_K", "Q4_K_M"));

// ---- Rules on made-up models ----

QuantModelInfo llama(int64_t n_layers, int64_t n_heads = 32, int64_t n_kv_heads = 8) {
  QuantModelInfo info;
  info.n_layers = n_layers;
  info.n_heads = n_heads;
  info.n_kv_heads = n_kv_heads;
  return info;
}

TensorType choose(QuantMix mix, const std::string& name, std::vector<int64_t> shape,
                  const QuantModelInfo& info, TensorType stored = TensorType::kF32) {
  const TensorChoice choice = choose_tensor_type(mix, name, shape, stored, info);
  EXPECT_EQ(choice.note, "") << name;
  return choice.type;
}

// use_more_bits for 32 layers: n/8 = 4 and 7n/8 = 28, so layers 0-3 and 28-31, and between
// them those with (i - 4) % 3 == 2: 6, 9, ..., 27.
TEST(QuantMix, MoreBitsForAttnVAndFfnDownInKMedium) {
  const QuantModelInfo info = llama(32);
  std::vector<int64_t> more;
  for (int64_t i = 0; i < 32; ++i) {
    const std::string blk = "blk." + std::to_string(i) + ".";
    const TensorType v = choose(QuantMix::kQ4_K_M, blk + "attn_v.weight", {1024, 4096}, info);
    const TensorType down = choose(QuantMix::kQ4_K_M, blk + "ffn_down.weight", {4096, 11008}, info);
    EXPECT_EQ(v, down) << i;
    if (v == TensorType::kQ6_K) {
      more.push_back(i);
    } else {
      EXPECT_EQ(name_of(v), "q4_K") << i;
    }
    EXPECT_EQ(choose(QuantMix::kQ5_K_M, blk + "attn_v.weight", {1024, 4096}, info),
              v == TensorType::kQ6_K ? TensorType::kQ6_K : TensorType::kQ5_K);
    for (const char* other : {"attn_q.weight", "attn_k.weight", "attn_output.weight",
                              "ffn_gate.weight", "ffn_up.weight"}) {
      EXPECT_EQ(choose(QuantMix::kQ4_K_M, blk + other, {4096, 4096}, info), TensorType::kQ4_K);
    }
    // The other mixes give every layer the base type.
    EXPECT_EQ(choose(QuantMix::kQ6_K, blk + "attn_v.weight", {1024, 4096}, info),
              TensorType::kQ6_K);
    EXPECT_EQ(choose(QuantMix::kQ5_1, blk + "ffn_down.weight", {4096, 11008}, info),
              TensorType::kQ5_1);
  }
  const std::vector<int64_t> want = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31};
  EXPECT_EQ(more, want);
}

TEST(QuantMix, OutputAndEmbeddings) {
  QuantModelInfo info = llama(32);
  for (QuantMix mix : {QuantMix::kQ4_0, QuantMix::kQ4_1, QuantMix::kQ5_0, QuantMix::kQ5_1,
                       QuantMix::kQ6_K, QuantMix::kQ4_K_M, QuantMix::kQ5_K_M}) {
    EXPECT_EQ(choose(mix, "output.weight", {32000, 4096}, info), TensorType::kQ6_K);
    EXPECT_EQ(choose(mix, "token_embd.weight", {32000, 4096}, info), mix_base_type(mix));
  }
  EXPECT_EQ(choose(QuantMix::kQ8_0, "output.weight", {32000, 4096}, info), TensorType::kQ8_0);
  // An output row width that is not whole blocks of the base type gets Q8_0 (no fallback note:
  // this is the output rule itself).
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "output.weight", {32000, 2080}, info), TensorType::kQ8_0);
  // Tied embeddings: token_embd is the output matrix too and gets its type.
  info.has_output = false;
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "token_embd.weight", {32000, 4096}, info), TensorType::kQ6_K);
  EXPECT_EQ(choose(QuantMix::kQ4_0, "token_embd.weight", {32000, 4096}, info), TensorType::kQ6_K);
  EXPECT_EQ(choose(QuantMix::kQ8_0, "token_embd.weight", {32000, 4096}, info), TensorType::kQ8_0);
}

TEST(QuantMix, TensorsThatKeepTheirType) {
  const QuantModelInfo info = llama(4);
  for (TensorType stored : {TensorType::kF32, TensorType::kF16}) {
    EXPECT_EQ(choose(QuantMix::kQ4_K_M, "blk.0.attn_norm.weight", {4096}, info, stored), stored);
    EXPECT_EQ(choose(QuantMix::kQ4_K_M, "output_norm.weight", {4096}, info, stored), stored);
    EXPECT_EQ(choose(QuantMix::kQ4_0, "rope_freqs.weight", {64}, info, stored), stored);
    // 2-D with a leading 1 is 1-D to ggml.
    EXPECT_EQ(choose(QuantMix::kQ4_0, "blk.0.attn_q.weight", {1, 4096}, info, stored), stored);
    EXPECT_EQ(choose(QuantMix::kQ4_0, "blk.0.ffn_gate_inp.weight", {8, 4096}, info, stored),
              stored);
    EXPECT_EQ(choose(QuantMix::kQ4_0, "blk.0.attn_q.bias", {4096, 1}, info, stored), stored);
  }
  // eigenkv compressed models: the key bases and cache sigmas stay float32.
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "blk.2.attn_k_basis.weight", {512, 48}, info),
            TensorType::kF32);
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "blk.2.attn_k_cache_sigma", {96}, info), TensorType::kF32);
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "blk.2.attn_v_cache_sigma", {96}, info), TensorType::kF32);
  // A quantized tensor the mix does not change keeps its type (the caller then copies it).
  EXPECT_EQ(choose(QuantMix::kQ4_0, "blk.0.attn_q.weight", {4096, 4096}, info, TensorType::kQ8_0),
            TensorType::kQ4_0);
}

TEST(QuantMix, BigModelRules) {
  // llama.cpp's 70B: 80 layers of grouped-query attention; attn_v gets Q5_K where Q4_K_M would
  // give Q4_K. Layer 5: 80/8 = 10, so 5 < 10 gets more bits; layer 11: (11 - 10) % 3 = 1 not.
  const QuantModelInfo big = llama(80, 64, 8);
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "blk.5.attn_v.weight", {1024, 8192}, big), TensorType::kQ6_K);
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "blk.11.attn_v.weight", {1024, 8192}, big),
            TensorType::kQ5_K);
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "blk.11.ffn_down.weight", {8192, 28672}, big),
            TensorType::kQ4_K);
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "blk.11.attn_v.weight", {1024, 8192}, llama(80, 64, 64)),
            TensorType::kQ4_K);  // 65B: no grouped-query attention

  QuantModelInfo moe = llama(32);
  moe.n_experts = 8;
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "blk.11.attn_v.weight", {1024, 4096}, moe),
            TensorType::kQ8_0);
  EXPECT_EQ(choose(QuantMix::kQ4_0, "blk.11.attn_k.weight", {1024, 4096}, moe), TensorType::kQ8_0);
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "blk.11.attn_output.weight", {4096, 4096}, moe),
            TensorType::kQ5_K);
  EXPECT_EQ(choose(QuantMix::kQ5_K_M, "blk.11.attn_output.weight", {4096, 4096}, moe),
            TensorType::kQ5_K);

  QuantModelInfo falcon = llama(32);
  falcon.architecture = "falcon";
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "output.weight", {65024, 4544}, falcon), TensorType::kQ8_0);
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "blk.1.ffn_down.weight", {4544, 18176}, falcon),
            TensorType::kQ6_K);
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "blk.4.ffn_down.weight", {4544, 18176}, falcon),
            TensorType::kQ4_K);
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "blk.6.ffn_down.weight", {4544, 18176}, falcon),
            TensorType::kQ5_K);
}

// Row widths (the innermost dimension) that are not whole 256-number blocks fall back as
// llama.cpp's tensor_type_fallback does, with a note.
TEST(QuantMix, FallbackWhenRowsAreNotWholeBlocks) {
  const QuantModelInfo info = llama(4);
  struct Case {
    QuantMix mix;
    std::string name;
    std::vector<int64_t> shape;
    TensorType want;
  };
  const Case cases[] = {
      // A compressed model's attn_output with 4 heads of value rank 40: width 160.
      {QuantMix::kQ4_K_M, "blk.0.attn_output.weight", {256, 160}, TensorType::kQ5_0},
      {QuantMix::kQ5_K_M, "blk.0.attn_q.weight", {256, 160}, TensorType::kQ5_1},
      {QuantMix::kQ6_K, "blk.0.attn_q.weight", {256, 160}, TensorType::kQ8_0},
      // Layer 3 of 4 gets Q6_K in Q4_K_M, which falls back to Q8_0.
      {QuantMix::kQ4_K_M, "blk.3.ffn_down.weight", {256, 480}, TensorType::kQ8_0},
      // Not even whole 32-number blocks: F16.
      {QuantMix::kQ4_K_M, "blk.0.attn_q.weight", {256, 100}, TensorType::kF16},
      {QuantMix::kQ4_0, "blk.0.attn_q.weight", {256, 100}, TensorType::kF16},
      {QuantMix::kQ8_0, "blk.0.attn_q.weight", {256, 100}, TensorType::kF16},
  };
  for (const Case& c : cases) {
    const TensorChoice choice = choose_tensor_type(c.mix, c.name, c.shape, TensorType::kF32, info);
    EXPECT_EQ(name_of(choice.type), name_of(c.want)) << c.name;
    const std::string width = std::to_string(c.shape.back());
    EXPECT_NE(choice.note.find("row width " + width), std::string::npos) << choice.note;
    EXPECT_NE(choice.note.find(name_of(c.want)), std::string::npos) << choice.note;
  }
  // The outer dimension does not matter.
  EXPECT_EQ(choose(QuantMix::kQ4_K_M, "blk.0.attn_q.weight", {100, 256}, info), TensorType::kQ4_K);
}

TEST(QuantMix, ModelInfoErrors) {
  // quant_model_info needs the architecture and block count.
  const std::vector<uint8_t> empty_gguf = {'G', 'G', 'U', 'F', 3, 0, 0, 0, 0, 0, 0, 0,
                                           0,   0,   0,   0,   0, 0, 0, 0, 0, 0, 0, 0};
  const io::GgufFile file(empty_gguf.data(), empty_gguf.size(), "empty.gguf");
  try {
    quant_model_info(file);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("general.architecture"), std::string::npos) << e.what();
  }
  EXPECT_THROW(choose_tensor_type(QuantMix::kQ4_K_M, "blk.9.attn_v.weight", {256, 256},
                                  TensorType::kF32, llama(4)),
               Error);
}

}  // namespace
}  // namespace eigenkv::ops
