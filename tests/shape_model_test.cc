// Tests of eigenkv-shape-model (tools/make_shape_model.cc), the writer of random-weight models of
// real Llama shapes: two layers of the TinyLlama shape at f16 and q8_0 hold every tensor of a
// Llama model with its shape and type, the llama.* keys of the shape, the Llama vocabulary, the
// random-weights warning, N(0, 0.02) numbers, and the same bytes for a seed at any thread count.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "io/mapped_file.h"
#include "model/config.h"
#include "ops/dequant.h"
#include "ops/half.h"
#include "test_util.h"

namespace eigenkv {
namespace {

namespace fs = std::filesystem;
using eigenkv::testing::run_command;
using eigenkv::testing::shared_path;
using eigenkv::testing::temp_path;
using io::TensorType;

constexpr const char* kVocab = "tokenizers/llama-spm/ggml-vocab-llama-spm.gguf";
constexpr const char* kWarning = "RANDOM WEIGHTS FOR SPEED/MEMORY BENCHMARKS ONLY";
constexpr int64_t kLayers = 2;

#ifdef EIGENKV_SHAPE_TOOL
const char* const kTool = EIGENKV_SHAPE_TOOL;
#else
const char* const kTool = nullptr;
#endif

// A scratch path, in /dev/shm where there is one: the files are hundreds of MB, and the writer's
// fsync of them on a disk would take most of the test's time.
std::string scratch_path(const std::string& name) {
  std::error_code ec;
  if (fs::is_directory("/dev/shm", ec)) {
    return "/dev/shm/eigenkv_test_" + std::to_string(::getpid()) + "_" + name;
  }
  return temp_path(name);
}

// Runs the tool; returns its exit status and puts its stdout and stderr in *output.
int run_tool(const std::string& args, std::string* output = nullptr) {
  int status = 0;
  const std::string out = run_command(std::string(kTool) + " " + args + " 2>&1", &status);
  if (output) *output = out;
  return status;
}

// The files the checks read: two runs of q8_0 (one and two threads) and one of f16, all of
// seed 7, removed when the test ends. (ctest runs each TEST in a process of its own, so the
// checks share one TEST rather than make the files again for each.)
struct Files {
  std::string f16, q8, q8_again;
  std::vector<std::string> outputs;  // what the tool printed, in that order
  ~Files() {
    std::error_code ec;
    for (const std::string* p : {&f16, &q8, &q8_again}) fs::remove(*p, ec);
  }
};

#define EKV_REQUIRE_TOOL()                                                                  \
  do {                                                                                      \
    if (!kTool) GTEST_SKIP() << "skipped: eigenkv-shape-model is not built (CLI11 absent)"; \
    EKV_REQUIRE_SHARED(kVocab);                                                             \
  } while (0)

// Every tensor of a two-layer Llama model of TinyLlama's shape, outer dimension first.
std::map<std::string, std::vector<int64_t>> expected_tensors() {
  std::map<std::string, std::vector<int64_t>> t = {{"token_embd.weight", {32000, 2048}},
                                                   {"output_norm.weight", {2048}},
                                                   {"output.weight", {32000, 2048}}};
  for (int l = 0; l < kLayers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    t[b + "attn_norm.weight"] = {2048};
    t[b + "attn_q.weight"] = {2048, 2048};
    t[b + "attn_k.weight"] = {256, 2048};  // 4 KV heads of 64
    t[b + "attn_v.weight"] = {256, 2048};
    t[b + "attn_output.weight"] = {2048, 2048};
    t[b + "ffn_norm.weight"] = {2048};
    t[b + "ffn_gate.weight"] = {5632, 2048};
    t[b + "ffn_up.weight"] = {5632, 2048};
    t[b + "ffn_down.weight"] = {2048, 5632};
  }
  return t;
}

void expect_every_llama_tensor_with_its_shape_and_type(const Files& f) {
  for (const auto& [path, type] : {std::pair{f.f16, TensorType::kF16}, {f.q8, TensorType::kQ8_0}}) {
    SCOPED_TRACE(path);
    io::GgufFile g(path);
    const auto expected = expected_tensors();
    ASSERT_EQ(g.tensors().size(), expected.size());
    for (const auto& [name, shape] : expected) {
      SCOPED_TRACE(name);
      const io::TensorView* t = g.find_tensor(name);
      ASSERT_NE(t, nullptr);
      EXPECT_EQ(t->shape, shape);
      EXPECT_EQ(t->type, shape.size() == 1 ? TensorType::kF32 : type);
      EXPECT_EQ(t->nbytes, io::tensor_bytes(t->type, t->numel()));
    }
  }
}

void expect_the_shapes_keys_and_the_warning(const Files& f) {
  io::GgufFile g(f.q8);
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
  EXPECT_NE(g.get_string("general.name").find(kWarning), std::string::npos);
  EXPECT_NE(g.get_string("general.name").find("2 of 22 layers"), std::string::npos);
  EXPECT_NE(g.get_string("general.description").find(kWarning), std::string::npos);
  EXPECT_EQ(g.get_int("general.file_type"), 7);                    // llama.cpp's MOSTLY_Q8_0
  EXPECT_EQ(io::GgufFile(f.f16).get_int("general.file_type"), 1);  // MOSTLY_F16
  EXPECT_EQ(g.get_int("general.quantization_version"), 2);
  const std::map<std::string, int64_t> ints = {
      {"llama.vocab_size", 32000},          {"llama.context_length", 2048},
      {"llama.embedding_length", 2048},     {"llama.block_count", kLayers},
      {"llama.feed_forward_length", 5632},  {"llama.attention.head_count", 32},
      {"llama.attention.head_count_kv", 4}, {"llama.attention.key_length", 64},
      {"llama.attention.value_length", 64}, {"llama.rope.dimension_count", 64}};
  for (const auto& [key, value] : ints) {
    EXPECT_EQ(g.find(key)->type, io::GgufValueType::kUint32) << key;
    EXPECT_EQ(g.get_int(key), value) << key;
  }
  EXPECT_EQ(g.find("llama.rope.freq_base")->type, io::GgufValueType::kFloat32);
  EXPECT_EQ(g.get_float("llama.rope.freq_base"), 10000.0);
  EXPECT_EQ(g.get_float("llama.attention.layer_norm_rms_epsilon"), static_cast<double>(1e-5f));

  // eigenkv's own reader of the keys sees the shape.
  const model::ModelConfig c = model::config_from_gguf(g);
  EXPECT_EQ(c.n_vocab, 32000);
  EXPECT_EQ(c.d_model, 2048);
  EXPECT_EQ(c.n_layers, kLayers);
  EXPECT_EQ(c.n_heads, 32);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.d_ffn, 5632);
  EXPECT_EQ(c.n_ctx_train, 2048);
  EXPECT_FALSE(c.tied_embeddings);

  // What the tool prints: the shape, the type, the tensor count and the file size.
  const std::string& out = f.outputs[1];
  for (const std::string& part :
       std::vector<std::string>{"tinyllama-1.1b", "q8_0", "tensors:  21",
                                std::to_string(fs::file_size(f.q8)), kWarning}) {
    EXPECT_NE(out.find(part), std::string::npos) << "output lacks \"" << part << "\":\n" << out;
  }
}

void expect_the_vocabulary_and_nothing_else_of_its_file(const Files& f) {
  io::GgufFile vocab(shared_path(kVocab));
  io::GgufFile g(f.f16);
  int64_t copied = 0;
  for (const auto& [key, value] : vocab.metadata()) {
    if (key.rfind("tokenizer.", 0) != 0) continue;
    SCOPED_TRACE(key);
    const io::GgufValue* v = g.find(key);
    ASSERT_NE(v, nullptr);
    EXPECT_EQ(v->type, value.type);
    EXPECT_EQ(v->element_type, value.element_type);
    EXPECT_EQ(v->strings, value.strings);
    EXPECT_EQ(v->numbers, value.numbers);
    EXPECT_TRUE(v->scalar == value.scalar);
    ++copied;
  }
  EXPECT_GE(copied, 4);  // model, tokens, scores, token types at least
  EXPECT_EQ(g.get_string_array("tokenizer.ggml.tokens").size(), 32000u);
  EXPECT_EQ(g.get_string("tokenizer.ggml.model"), "llama");
  // The vocabulary file's own general.* keys are not carried over.
  for (const auto& [key, value] : g.metadata()) {
    EXPECT_TRUE(key.rfind("tokenizer.", 0) == 0 || key.rfind("general.", 0) == 0 ||
                key.rfind("llama.", 0) == 0)
        << key;
  }
}

void expect_the_same_bytes_whatever_the_thread_count(const Files& f) {
  const io::MappedFile a(f.q8), b(f.q8_again);
  ASSERT_GT(a.size(), 100u << 20);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size()), 0)
      << "q8_0 files made with one and two threads differ";
  // Tensors are not copies of one another: each is seeded by its name.
  io::GgufFile g(f.q8);
  const io::TensorView& q0 = g.tensor("blk.0.attn_q.weight");
  const io::TensorView& q1 = g.tensor("blk.1.attn_q.weight");
  const io::TensorView& o = g.tensor("blk.0.attn_output.weight");
  EXPECT_NE(std::memcmp(q0.data, q1.data, q0.nbytes), 0);
  EXPECT_NE(std::memcmp(q0.data, o.data, q0.nbytes), 0);
  // Nor are the rows of one tensor.
  const size_t row = io::tensor_bytes(TensorType::kQ8_0, 2048);
  EXPECT_NE(std::memcmp(q0.data, q0.data + row, row), 0);
}

void expect_other_numbers_from_another_seed(const Files& f) {
  // One layer of f16, the cheapest run; its first layer's tensors must differ from seed 7's.
  const std::string path = scratch_path("shape_seed8.gguf");
  std::string output;
  ASSERT_EQ(run_tool("--shape tinyllama-1.1b --layers 1 --type f16 --seed 8 --vocab " +
                         shared_path(kVocab) + " -o " + path,
                     &output),
            0)
      << output;
  {
    io::GgufFile a(f.f16), b(path);
    const io::TensorView& ta = a.tensor("blk.0.ffn_up.weight");
    const io::TensorView& tb = b.tensor("blk.0.ffn_up.weight");
    ASSERT_EQ(ta.nbytes, tb.nbytes);
    EXPECT_NE(std::memcmp(ta.data, tb.data, ta.nbytes), 0);
  }
  fs::remove(path);
}

// Mean and standard deviation of n numbers.
std::pair<double, double> moments(const std::vector<float>& x) {
  double sum = 0, sum2 = 0;
  for (float v : x) {
    sum += v;
    sum2 += static_cast<double>(v) * v;
  }
  const double mean = sum / x.size();
  return {mean, std::sqrt(sum2 / x.size() - mean * mean)};
}

void expect_q8_0_blocks_of_normal_numbers_of_std_002(const Files& f) {
  io::GgufFile g(f.q8);
  const io::TensorView& t = g.tensor("blk.0.ffn_gate.weight");
  ASSERT_EQ(t.type, TensorType::kQ8_0);
  // Byte by byte: each block of 34 bytes is an f16 scale and 32 int8 quants.
  const int64_t n = t.numel();
  std::vector<float> x(static_cast<size_t>(n));
  int64_t blocks_at_127 = 0;
  for (int64_t b = 0; b < n / 32; ++b) {
    const uint8_t* block = t.data + b * 34;
    uint16_t scale_bits;
    std::memcpy(&scale_bits, block, 2);
    const float scale = ops::fp16_to_fp32(scale_bits);
    ASSERT_GT(scale, 0.0f) << "block " << b;
    int max_abs = 0;
    for (int i = 0; i < 32; ++i) {
      const int q = static_cast<int8_t>(block[2 + i]);
      max_abs = std::max(max_abs, std::abs(q));
      x[b * 32 + i] = scale * static_cast<float>(q);
    }
    blocks_at_127 += max_abs == 127;  // the scale maps each block's largest number to +-127
  }
  EXPECT_EQ(blocks_at_127, n / 32);
  const auto [mean, stddev] = moments(x);
  EXPECT_NEAR(mean, 0.0, 1e-4);
  EXPECT_NEAR(stddev, 0.02, 2e-4);
  // The share within one standard deviation is a normal's 68.3 %.
  int64_t within = 0;
  for (float v : x) within += std::fabs(v) < 0.02f;
  EXPECT_NEAR(static_cast<double>(within) / n, 0.6827, 0.005);
  // The same numbers as eigenkv's dequantizer gives.
  std::vector<float> y(static_cast<size_t>(n));
  ops::dequantize(TensorType::kQ8_0, t.data, y.data(), n);
  EXPECT_TRUE(x == y);
}

// The type changes how the numbers are stored, not the numbers: q8_0 and f16 of one seed agree
// within q8_0's rounding (half a block's scale) and f16's.
void expect_the_same_numbers_in_every_type(const Files& f) {
  io::GgufFile a(f.q8), b(f.f16);
  const io::TensorView& q = a.tensor("blk.1.attn_v.weight");
  const io::TensorView& h = b.tensor("blk.1.attn_v.weight");
  ASSERT_EQ(q.numel(), h.numel());
  const int64_t n = q.numel();
  std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
  ops::dequantize(TensorType::kQ8_0, q.data, x.data(), n);
  ops::dequantize(TensorType::kF16, h.data, y.data(), n);
  for (int64_t block = 0; block < n / 32; ++block) {
    uint16_t scale_bits;
    std::memcpy(&scale_bits, q.data + block * 34, 2);
    const float tolerance = 0.51f * ops::fp16_to_fp32(scale_bits) + 1e-4f;
    for (int64_t i = block * 32; i < block * 32 + 32; ++i) {
      ASSERT_NEAR(x[i], y[i], tolerance) << "number " << i;
    }
  }
}

void expect_f16_matrices_of_std_002_and_norms_of_one(const Files& f) {
  io::GgufFile g(f.f16);
  for (const char* name : {"token_embd.weight", "blk.1.attn_k.weight", "output.weight"}) {
    SCOPED_TRACE(name);
    const io::TensorView& t = g.tensor(name);
    // The first 1024 rows are plenty (and the whole of attn_k).
    const int64_t n = std::min<int64_t>(t.numel(), 1024 * 2048);
    std::vector<float> x(static_cast<size_t>(n));
    ops::dequantize(TensorType::kF16, t.data, x.data(), n);
    const auto [mean, stddev] = moments(x);
    EXPECT_NEAR(mean, 0.0, 1e-4);
    EXPECT_NEAR(stddev, 0.02, 2e-4);
  }
  for (const char* name :
       {"blk.0.attn_norm.weight", "blk.1.ffn_norm.weight", "output_norm.weight"}) {
    const io::TensorView& t = g.tensor(name);
    std::vector<float> x(static_cast<size_t>(t.numel()));
    std::memcpy(x.data(), t.data, t.nbytes);
    EXPECT_TRUE(std::all_of(x.begin(), x.end(), [](float v) { return v == 1.0f; })) << name;
  }
}

TEST(ShapeModel, TwoLayersOfTinyLlamaAtF16AndQ8_0) {
  EKV_REQUIRE_TOOL();
  Files f;
  const std::string common =
      "--shape tinyllama-1.1b --layers 2 --seed 7 --vocab " + shared_path(kVocab);
  const std::pair<std::string*, std::string> runs[] = {
      {&f.f16, "f16 -t 1"}, {&f.q8, "q8_0 -t 1"}, {&f.q8_again, "q8_0 -t 2"}};
  for (const auto& [path, args] : runs) {
    *path = scratch_path("shape_" + std::to_string(f.outputs.size()) + ".gguf");
    std::string output;
    ASSERT_EQ(run_tool(common + " --type " + args + " -o " + *path, &output), 0) << output;
    f.outputs.push_back(output);
  }
  {
    SCOPED_TRACE("every llama tensor with its shape and type");
    expect_every_llama_tensor_with_its_shape_and_type(f);
  }
  {
    SCOPED_TRACE("the shapes keys and the warning");
    expect_the_shapes_keys_and_the_warning(f);
  }
  {
    SCOPED_TRACE("the vocabulary and nothing else of its file");
    expect_the_vocabulary_and_nothing_else_of_its_file(f);
  }
  {
    SCOPED_TRACE("the same bytes whatever the thread count");
    expect_the_same_bytes_whatever_the_thread_count(f);
  }
  {
    SCOPED_TRACE("other numbers from another seed");
    expect_other_numbers_from_another_seed(f);
  }
  {
    SCOPED_TRACE("q8 0 blocks of normal numbers of std 002");
    expect_q8_0_blocks_of_normal_numbers_of_std_002(f);
  }
  {
    SCOPED_TRACE("the same numbers in every type");
    expect_the_same_numbers_in_every_type(f);
  }
  {
    SCOPED_TRACE("f16 matrices of std 002 and norms of one");
    expect_f16_matrices_of_std_002_and_norms_of_one(f);
  }
}

TEST(ShapeModel, RejectsAnUnknownShapeOrType) {
  EKV_REQUIRE_TOOL();
  std::string output;
  EXPECT_NE(run_tool("--shape llama-9b -o /dev/null", &output), 0);
  EXPECT_NE(output.find("llama-9b"), std::string::npos) << output;
  EXPECT_NE(run_tool("--type q9_9 -o " + temp_path("shape_bad.gguf"), &output), 0);
  EXPECT_NE(output.find("q9_9"), std::string::npos) << output;
  EXPECT_NE(output.find("q8_0"), std::string::npos) << output;  // the types it does write
  EXPECT_FALSE(fs::exists(temp_path("shape_bad.gguf")));
}

}  // namespace
}  // namespace eigenkv
