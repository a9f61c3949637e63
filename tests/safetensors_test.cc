// Tests of the safetensors reader: the three Hugging Face directories in ../shared, agreement with
// the GGUF copy of the same weights, a sharded directory built here, and every malformed case the
// reader promises to turn into an Error.
#include "io/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "test_util.h"
#include "util/error.h"

namespace eigenkv::io {
namespace {

namespace fs = std::filesystem;
using eigenkv::testing::shared_path;
using nlohmann::ordered_json;

// ---- Building safetensors bytes -----------------------------------------------------------

struct StTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

size_t dtype_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64") return 8;
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16") return 2;
  return 1;
}

// A tensor whose bytes count up from `start`, so that every tensor's data is distinguishable.
StTensor make_tensor(std::string name, std::string dtype, std::vector<int64_t> shape,
                     uint8_t start = 0) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<uint8_t> bytes(static_cast<size_t>(n) * dtype_size(dtype));
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(start + i);
  return {std::move(name), std::move(dtype), std::move(shape), std::move(bytes)};
}

// The 8-byte length, the header text and the data, as the format lays them out.
std::vector<uint8_t> raw_file(const std::string& header, const std::vector<uint8_t>& data) {
  // Sized up front and filled in place: GCC 12 warns falsely about insert() after a resize.
  std::vector<uint8_t> out(8 + header.size() + data.size());
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  std::copy(header.begin(), header.end(), out.begin() + 8);
  std::copy(data.begin(), data.end(), out.begin() + 8 + static_cast<ptrdiff_t>(header.size()));
  return out;
}

// The header as JSON (in the given order) so that tests can corrupt it before serialising.
ordered_json header_json(const std::vector<StTensor>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  ordered_json h = ordered_json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    h[t.name] = {{"dtype", t.dtype},
                 {"shape", t.shape},
                 {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  return h;
}

std::vector<uint8_t> data_of(const std::vector<StTensor>& tensors) {
  std::vector<uint8_t> data;
  for (const auto& t : tensors) data.insert(data.end(), t.bytes.begin(), t.bytes.end());
  return data;
}

// A well-formed file; the header is padded with spaces to a multiple of 8 as writers do.
std::vector<uint8_t> build_file(const std::vector<StTensor>& tensors,
                                const std::map<std::string, std::string>& metadata = {}) {
  std::string header = header_json(tensors, metadata).dump();
  header.resize((header.size() + 7) / 8 * 8, ' ');
  return raw_file(header, data_of(tensors));
}

void write_bytes(const fs::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// Runs `fn`, which must throw eigenkv::Error whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& p : parts) {
      EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    }
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-Error exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "did not throw; expected an Error mentioning " << parts.front();
}

std::vector<uint8_t> bytes_of(const TensorView& t) { return {t.data, t.data + t.nbytes}; }

class SafetensorsDir : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           cat("eigenkv_safetensors_test_", ::getpid(), "_", info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

// ---- The shared Hugging Face directories ---------------------------------------------------

// Checks the tensor names and shapes a LlamaForCausalLM directory must hold, from its config.json.
void check_llama_dir(const std::string& rel) {
  const std::string dir = shared_path(rel);
  nlohmann::json config = nlohmann::json::parse(std::ifstream(dir + "/config.json"));
  const int64_t hidden = config.at("hidden_size");
  const int64_t ffn = config.at("intermediate_size");
  const int64_t heads = config.at("num_attention_heads");
  const int64_t kv_heads = config.at("num_key_value_heads");
  const int64_t layers = config.at("num_hidden_layers");
  const int64_t vocab = config.at("vocab_size");
  const int64_t head_dim = hidden / heads;

  std::map<std::string, std::vector<int64_t>> expected = {
      {"model.embed_tokens.weight", {vocab, hidden}},
      {"model.norm.weight", {hidden}},
      {"lm_head.weight", {vocab, hidden}},
  };
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = cat("model.layers.", l, ".");
    expected[p + "input_layernorm.weight"] = {hidden};
    expected[p + "post_attention_layernorm.weight"] = {hidden};
    expected[p + "self_attn.q_proj.weight"] = {heads * head_dim, hidden};
    expected[p + "self_attn.k_proj.weight"] = {kv_heads * head_dim, hidden};
    expected[p + "self_attn.v_proj.weight"] = {kv_heads * head_dim, hidden};
    expected[p + "self_attn.o_proj.weight"] = {hidden, heads * head_dim};
    expected[p + "mlp.gate_proj.weight"] = {ffn, hidden};
    expected[p + "mlp.up_proj.weight"] = {ffn, hidden};
    expected[p + "mlp.down_proj.weight"] = {hidden, ffn};
  }

  SafetensorsModel model(dir);
  std::vector<std::string> want;
  for (const auto& [name, shape] : expected) want.push_back(name);
  EXPECT_EQ(model.tensor_names(), want) << rel;
  for (const auto& [name, shape] : expected) {
    const TensorView& t = model.tensor(name);
    EXPECT_EQ(t.name, name);
    EXPECT_EQ(t.type, TensorType::kF32) << name;
    EXPECT_EQ(t.shape, shape) << rel << " " << name;
    EXPECT_EQ(t.nbytes, static_cast<size_t>(t.numel()) * 4) << name;
  }
  if (config.value("tie_word_embeddings", false)) {
    EXPECT_EQ(model.tensor("model.embed_tokens.weight").data, model.tensor("lm_head.weight").data);
  } else {
    EXPECT_TRUE(model.aliases().empty());
    EXPECT_NE(model.tensor("model.embed_tokens.weight").data, model.tensor("lm_head.weight").data);
  }
}

TEST(SafetensorsShared, Stories260KNamesAndShapes) {
  EKV_REQUIRE_SHARED("models/stories260K-hf/model.safetensors");
  check_llama_dir("models/stories260K-hf");
}

TEST(SafetensorsShared, TinyStoriesGqaNamesAndShapes) {
  EKV_REQUIRE_SHARED("models/tinystories-c4-gqa-hf/model.safetensors");
  check_llama_dir("models/tinystories-c4-gqa-hf");
}

TEST(SafetensorsShared, TinyStories656KResolvesTiedEmbedding) {
  EKV_REQUIRE_SHARED("models/TinyStories-656K/model.safetensors");
  check_llama_dir("models/TinyStories-656K");

  const std::string dir = shared_path("models/TinyStories-656K");
  // The file itself holds only lm_head.weight; the model presents the embedding through the alias.
  SafetensorsFile file(dir + "/model.safetensors");
  EXPECT_EQ(file.find_tensor("model.embed_tokens.weight"), nullptr);
  EXPECT_EQ(file.metadata().at("model.embed_tokens.weight"), "lm_head.weight");

  SafetensorsModel model(dir);
  EXPECT_EQ(model.metadata().at("format"), "pt");
  EXPECT_EQ(model.aliases(),
            (std::map<std::string, std::string>{{"model.embed_tokens.weight", "lm_head.weight"}}));
  const TensorView& embed = model.tensor("model.embed_tokens.weight");
  const TensorView& head = model.tensor("lm_head.weight");
  EXPECT_EQ(embed.name, "model.embed_tokens.weight");
  EXPECT_EQ(embed.data, head.data);
  EXPECT_EQ(embed.shape, head.shape);
  EXPECT_EQ(embed.nbytes, head.nbytes);
  EXPECT_EQ(model.find_tensor("format"), nullptr);  // metadata that names no tensor stays metadata
}

// Sorted rows of a matrix, for comparing matrices equal up to a permutation of rows.
std::vector<std::string> sorted_rows(const TensorView& t) {
  const size_t row_bytes = t.nbytes / static_cast<size_t>(t.shape[0]);
  std::vector<std::string> rows;
  for (int64_t r = 0; r < t.shape[0]; ++r) {
    rows.emplace_back(reinterpret_cast<const char*>(t.data) + r * row_bytes, row_bytes);
  }
  std::sort(rows.begin(), rows.end());
  return rows;
}

TEST(SafetensorsShared, Stories260KEqualsGguf) {
  EKV_REQUIRE_SHARED("models/stories260K-hf/model.safetensors");
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  SafetensorsModel hf(shared_path("models/stories260K-hf"));
  GgufFile gguf(shared_path("models/stories260K.gguf"));

  std::map<std::string, std::string> same = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  for (int l = 0; l < 5; ++l) {
    const std::string h = cat("model.layers.", l, ".");
    const std::string g = cat("blk.", l, ".");
    same[h + "input_layernorm.weight"] = g + "attn_norm.weight";
    same[h + "post_attention_layernorm.weight"] = g + "ffn_norm.weight";
    same[h + "self_attn.v_proj.weight"] = g + "attn_v.weight";
    same[h + "self_attn.o_proj.weight"] = g + "attn_output.weight";
    same[h + "mlp.gate_proj.weight"] = g + "ffn_gate.weight";
    same[h + "mlp.up_proj.weight"] = g + "ffn_up.weight";
    same[h + "mlp.down_proj.weight"] = g + "ffn_down.weight";
  }
  for (const auto& [hf_name, gguf_name] : same) {
    const TensorView& a = hf.tensor(hf_name);
    const TensorView& b = gguf.tensor(gguf_name);
    ASSERT_EQ(b.type, TensorType::kF32) << gguf_name;
    EXPECT_EQ(a.shape, b.shape) << hf_name << " vs " << gguf_name;
    ASSERT_EQ(a.nbytes, b.nbytes) << hf_name;
    EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes), 0) << hf_name << " differs from " << gguf_name;
  }
  // q and k differ only by the row permutation between the two RoPE layouts.
  for (int l = 0; l < 5; ++l) {
    for (const char* which : {"q", "k"}) {
      const TensorView& a =
          hf.tensor(cat("model.layers.", l, ".self_attn.", which, "_proj.weight"));
      const TensorView& b = gguf.tensor(cat("blk.", l, ".attn_", which, ".weight"));
      EXPECT_EQ(a.shape, b.shape);
      EXPECT_NE(bytes_of(a), bytes_of(b)) << "layer " << l << " " << which << " is not permuted";
      EXPECT_EQ(sorted_rows(a), sorted_rows(b)) << "layer " << l << " " << which;
    }
  }
}

// ---- Files built here ---------------------------------------------------------------------

TEST(SafetensorsFileTest, ReadsEveryDtypeAndOddShapes) {
  std::vector<StTensor> tensors = {
      make_tensor("f32", "F32", {2, 3}, 1),   make_tensor("f16", "F16", {4}, 2),
      make_tensor("bf16", "BF16", {1, 2}, 3), make_tensor("f64", "F64", {2}, 4),
      make_tensor("i8", "I8", {5}, 5),        make_tensor("i16", "I16", {3}, 6),
      make_tensor("i32", "I32", {2, 1, 2}, 7), make_tensor("i64", "I64", {1}, 8),
      make_tensor("scalar", "F32", {}, 9),    make_tensor("empty", "F32", {0, 7}, 10),
  };
  auto bytes = build_file(tensors, {{"format", "pt"}, {"note", "built by the test"}});
  SafetensorsFile f(bytes.data(), bytes.size(), "mem.safetensors");
  EXPECT_EQ(f.path(), "mem.safetensors");
  EXPECT_EQ(f.metadata().at("note"), "built by the test");
  ASSERT_EQ(f.tensors().size(), tensors.size());
  const std::map<std::string, TensorType> types = {
      {"F32", TensorType::kF32}, {"F16", TensorType::kF16}, {"BF16", TensorType::kBF16},
      {"F64", TensorType::kF64}, {"I8", TensorType::kI8},   {"I16", TensorType::kI16},
      {"I32", TensorType::kI32}, {"I64", TensorType::kI64}};
  for (const auto& t : tensors) {
    const TensorView& v = f.tensor(t.name);
    EXPECT_EQ(v.type, types.at(t.dtype)) << t.name;
    EXPECT_EQ(v.shape, t.shape) << t.name;
    EXPECT_EQ(bytes_of(v), t.bytes) << t.name;
  }
  EXPECT_EQ(f.tensor("scalar").numel(), 1);
  EXPECT_EQ(f.tensor("empty").nbytes, 0u);
  EXPECT_EQ(f.find_tensor("absent"), nullptr);
  expect_error([&] { f.tensor("absent"); }, {"mem.safetensors", "absent"});
  // tensors() follows the data order, which here is the order written.
  EXPECT_EQ(f.tensors().front().name, "f32");
  EXPECT_EQ(f.tensors().back().name, "empty");
}

TEST(SafetensorsFileTest, HeaderWithoutMetadataOrPaddingReads) {
  std::vector<StTensor> tensors = {make_tensor("a", "F32", {3}), make_tensor("b", "I8", {1})};
  auto bytes = raw_file(header_json(tensors, {}).dump(), data_of(tensors));
  SafetensorsFile f(bytes.data(), bytes.size(), "mem");
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_EQ(f.tensors().size(), 2u);
  // A header with no tensors at all is a valid, empty file.
  auto empty = raw_file("{}", {});
  EXPECT_TRUE(SafetensorsFile(empty.data(), empty.size(), "mem").tensors().empty());
}

TEST_F(SafetensorsDir, ReadsFromPath) {
  std::vector<StTensor> tensors = {make_tensor("x", "F32", {2, 2}, 7)};
  write_bytes(dir_ / "one.safetensors", build_file(tensors));
  SafetensorsFile f((dir_ / "one.safetensors").string());
  EXPECT_EQ(bytes_of(f.tensor("x")), tensors[0].bytes);
  expect_error([&] { SafetensorsFile((dir_ / "absent.safetensors").string()); },
               {"absent.safetensors"});
}

// Two shards, an index, and a tied weight whose alias sits in one shard and target in the other.
void write_sharded(const fs::path& dir, std::vector<StTensor>* all) {
  std::vector<StTensor> shard1 = {make_tensor("model.embed_tokens.weight", "F32", {4, 2}, 1),
                                  make_tensor("model.layers.0.w", "BF16", {2, 2}, 2)};
  std::vector<StTensor> shard2 = {make_tensor("model.layers.1.w", "F16", {2, 3}, 3),
                                  make_tensor("model.norm.weight", "F32", {2}, 4)};
  write_bytes(dir / "model-00001-of-00002.safetensors", build_file(shard1, {{"format", "pt"}}));
  write_bytes(
      dir / "model-00002-of-00002.safetensors",
      build_file(shard2, {{"format", "pt"}, {"lm_head.weight", "model.embed_tokens.weight"}}));
  nlohmann::json index = {{"metadata", {{"total_size", 64}}},
                          {"weight_map", nlohmann::json::object()}};
  for (const auto& t : shard1) index["weight_map"][t.name] = "model-00001-of-00002.safetensors";
  for (const auto& t : shard2) index["weight_map"][t.name] = "model-00002-of-00002.safetensors";
  write_text(dir / "model.safetensors.index.json", index.dump(2));
  all->insert(all->end(), shard1.begin(), shard1.end());
  all->insert(all->end(), shard2.begin(), shard2.end());
}

TEST_F(SafetensorsDir, ShardedModelLoads) {
  std::vector<StTensor> all;
  write_sharded(dir_, &all);
  SafetensorsModel model(dir_.string());
  EXPECT_EQ(model.files().size(), 2u);
  EXPECT_EQ(model.tensor_names(),
            (std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight",
                                      "model.layers.0.w", "model.layers.1.w",
                                      "model.norm.weight"}));
  for (const auto& t : all) {
    const TensorView& v = model.tensor(t.name);
    EXPECT_EQ(v.shape, t.shape) << t.name;
    EXPECT_EQ(bytes_of(v), t.bytes) << t.name;
  }
  EXPECT_EQ(model.tensor("model.layers.0.w").type, TensorType::kBF16);
  EXPECT_EQ(model.tensor("model.layers.1.w").type, TensorType::kF16);
  EXPECT_EQ(model.tensor("lm_head.weight").data, model.tensor("model.embed_tokens.weight").data);
  EXPECT_EQ(model.tensor("lm_head.weight").name, "lm_head.weight");
  expect_error([&] { model.tensor("model.layers.2.w"); }, {dir_.string(), "model.layers.2.w"});
}

TEST_F(SafetensorsDir, SingleFileWinsOverIndex) {
  std::vector<StTensor> all;
  write_sharded(dir_, &all);
  write_bytes(dir_ / "model.safetensors", build_file({make_tensor("only", "F32", {1})}));
  SafetensorsModel model(dir_.string());
  EXPECT_EQ(model.tensor_names(), std::vector<std::string>{"only"});
}

// ---- Malformed files ----------------------------------------------------------------------

// Parses `bytes` as a file labelled "bad.safetensors" and expects an Error naming it and `parts`.
void expect_bad(const std::vector<uint8_t>& bytes, std::vector<std::string> parts) {
  parts.insert(parts.begin(), "bad.safetensors");
  expect_error([&] { SafetensorsFile(bytes.data(), bytes.size(), "bad.safetensors"); }, parts);
}

// One well-formed file's header, for the cases below to corrupt one field of.
struct Corruptible {
  std::vector<StTensor> tensors = {make_tensor("first", "F32", {2, 2}, 1),
                                   make_tensor("second", "F16", {3}, 2)};
  ordered_json header = header_json(tensors, {{"format", "pt"}});
  std::vector<uint8_t> data = data_of(tensors);
  std::vector<uint8_t> file() const { return raw_file(header.dump(), data); }
};

TEST(SafetensorsMalformed, LengthAndJson) {
  Corruptible c;
  std::vector<uint8_t> good = c.file();
  expect_bad({}, {"0 bytes"});
  expect_bad({1, 0, 0}, {"3 bytes"});

  auto too_long = good;
  too_long[0] = 0xFF;
  too_long[1] = 0xFF;
  expect_bad(too_long, {"header length", "past the end"});
  auto huge = good;
  std::fill(huge.begin(), huge.begin() + 8, 0xFF);
  expect_bad(huge, {"header length 18446744073709551615"});

  expect_bad(raw_file("", {}), {"does not start with '{'"});
  expect_bad(raw_file("[1, 2]", {}), {"does not start with '{'"});
  expect_bad(raw_file("{\"a\": ", {}), {"not valid JSON"});
  expect_bad(raw_file("{\"a\": 1} trailing", {}), {"not valid JSON"});
  expect_bad(raw_file("{\"x\": \"\xff\"}", {}), {"not valid JSON"});

  // A file cut short inside the data section.
  auto cut = good;
  cut.resize(cut.size() - 1);
  expect_bad(cut, {"second", "run past the data section"});
}

TEST(SafetensorsMalformed, MissingOrWrongFields) {
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    Corruptible c;
    c.header["second"].erase(field);
    expect_bad(c.file(), {"'second'", field});
    Corruptible d;
    d.header["second"][field] = true;
    expect_bad(d.file(), {"'second'", field, "boolean"});
  }
  Corruptible c;
  c.header["first"] = 42;
  expect_bad(c.file(), {"'first'", "expected an object"});
}

TEST(SafetensorsMalformed, Dtypes) {
  for (const char* dtype : {"F8_E4M3", "F8_E5M2", "BOOL", "U8", "C64", "f32", "NOPE"}) {
    Corruptible c;
    c.header["second"]["dtype"] = dtype;
    expect_bad(c.file(), {"'second'", cat("'", dtype, "'")});
  }
}

TEST(SafetensorsMalformed, Offsets) {
  auto offsets = [](nlohmann::json value, std::vector<std::string> parts) {
    Corruptible c;
    c.header["second"]["data_offsets"] = value;
    parts.insert(parts.begin(), "'second'");
    expect_bad(c.file(), parts);
  };
  offsets({16}, {"1 entries"});
  offsets({16, 22, 28}, {"3 entries"});
  offsets({22, 16}, {"end before they begin"});
  offsets({-1, 6}, {"negative integer -1"});
  offsets({16, 22.5}, {"fractional"});
  offsets({16, "22"}, {"string"});
  offsets({16, 1000}, {"run past the data section"});
  offsets({uint64_t{1} << 63, ~uint64_t{0}}, {"run past the data section"});
  offsets({16, 20}, {"takes 6 bytes", "hold 4"});
}

TEST(SafetensorsMalformed, OverlapsHolesAndTrailingBytes) {
  {
    Corruptible c;  // "second" claims bytes 10..16, inside "first" (0..16)
    c.header["first"]["data_offsets"] = {0, 16};
    c.header["second"]["data_offsets"] = {10, 16};
    c.header["second"]["shape"] = {3};
    expect_bad(c.file(), {"'second'", "overlaps", "'first'"});
  }
  {
    Corruptible c;  // both tensors at the same bytes
    c.header["second"] = {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}};
    expect_bad(c.file(), {"overlaps"});
  }
  {
    Corruptible c;  // "second" starts two bytes after "first" ends
    c.data.resize(c.data.size() + 2);
    c.header["second"]["data_offsets"] = {18, 24};
    expect_bad(c.file(), {"2 unused bytes before tensor 'second'"});
  }
  {
    Corruptible c;  // bytes after the last tensor
    c.data.resize(c.data.size() + 3);
    expect_bad(c.file(), {"3 bytes", "'second'", "belong to none"});
  }
}

TEST(SafetensorsMalformed, Shapes) {
  auto shape = [](nlohmann::json value, std::vector<std::string> parts) {
    Corruptible c;
    c.header["second"]["shape"] = value;
    parts.insert(parts.begin(), "'second'");
    expect_bad(c.file(), parts);
  };
  shape({-3}, {"negative integer -3"});
  shape({3.0}, {"fractional"});
  shape({"3"}, {"string"});
  shape({nlohmann::json::array({3})}, {"array"});
  shape({uint64_t{1} << 50}, {"absurd dimension"});
  shape({uint64_t{1} << 40, uint64_t{1} << 40}, {"more than"});
  shape({~uint64_t{0}}, {"absurd dimension"});
  shape(nlohmann::json(std::vector<int>(17, 1)), {"17 dimensions"});
  shape({4}, {"takes 8 bytes", "hold 6"});
}

TEST(SafetensorsMalformed, MetadataAndDuplicates) {
  {
    Corruptible c;
    c.header["__metadata__"]["total"] = 5;
    expect_bad(c.file(), {"__metadata__", "'total'", "number"});
  }
  {
    Corruptible c;
    c.header["__metadata__"] = {1, 2};
    expect_bad(c.file(), {"__metadata__", "array"});
  }
  {
    // JSON objects cannot hold a key twice once parsed, so write the text by hand.
    std::string h = "{\"a\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                    "\"a\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[1,2]}}";
    expect_bad(raw_file(h, {1, 2}), {"'a'", "appears twice"});
  }
}

TEST_F(SafetensorsDir, MalformedDirectories) {
  expect_error([&] { SafetensorsModel((dir_ / "nope").string()); }, {"nope", "not a directory"});
  expect_error([&] { SafetensorsModel(dir_.string()); }, {dir_.string(), "no model.safetensors"});

  std::vector<StTensor> all;
  write_sharded(dir_, &all);
  const fs::path index = dir_ / "model.safetensors.index.json";
  const fs::path shard2 = dir_ / "model-00002-of-00002.safetensors";

  // A shard the index names is missing.
  fs::rename(shard2, dir_ / "moved");
  expect_error([&] { SafetensorsModel(dir_.string()); },
               {"index.json", "model-00002-of-00002.safetensors", "missing"});
  fs::rename(dir_ / "moved", shard2);
  SafetensorsModel ok(dir_.string());  // and loads again once it is back

  // A tensor stored in both shards.
  write_bytes(shard2, build_file({make_tensor("model.layers.1.w", "F16", {2, 3}, 3),
                                  make_tensor("model.norm.weight", "F32", {2}, 4),
                                  make_tensor("model.layers.0.w", "BF16", {2, 2}, 2)}));
  expect_error([&] { SafetensorsModel(dir_.string()); },
               {"model.layers.0.w", "stored twice", "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"});

  // A tensor the index maps to a shard that lacks it.
  write_bytes(shard2, build_file({make_tensor("model.layers.1.w", "F16", {2, 3}, 3)}));
  expect_error([&] { SafetensorsModel(dir_.string()); },
               {"index.json", "model.norm.weight", "no shard holds it"});

  // A malformed shard is named.
  write_bytes(shard2, raw_file("{\"model.norm.weight\": 3}", {}));
  expect_error([&] { SafetensorsModel(dir_.string()); },
               {"model-00002-of-00002.safetensors", "model.norm.weight"});

  // Malformed indexes.
  write_text(index, "{\"weight_map\": ");
  expect_error([&] { SafetensorsModel(dir_.string()); }, {"index.json", "not valid JSON"});
  write_text(index, "{\"metadata\": {}}");
  expect_error([&] { SafetensorsModel(dir_.string()); }, {"index.json", "weight_map"});
  write_text(index, "{\"weight_map\": {}}");
  expect_error([&] { SafetensorsModel(dir_.string()); }, {"index.json", "no tensors"});
  write_text(index, "{\"weight_map\": {\"w\": 3}}");
  expect_error([&] { SafetensorsModel(dir_.string()); }, {"index.json", "'w'"});
  write_text(index, "{\"weight_map\": {\"w\": \"../model-00001-of-00002.safetensors\"}}");
  expect_error([&] { SafetensorsModel(dir_.string()); }, {"index.json", "'w'", "inside"});
  write_text(index, "{\"weight_map\": {\"w\": \"/etc/passwd\"}}");
  expect_error([&] { SafetensorsModel(dir_.string()); }, {"index.json", "'w'", "inside"});
}

}  // namespace
}  // namespace eigenkv::io
