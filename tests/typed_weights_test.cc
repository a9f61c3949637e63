// Weights used where they lie: a quantized GGUF's matrices stay in their stored type inside the
// mapped file, and a model compressed from it keeps every tensor that compression does not
// change byte for byte (the folded attention weights in the fold type), at most 2 % larger.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <iostream>
#include <set>

#include "compress/calibrate.h"
#include "io/gguf.h"
#include "model/model.h"
#include "ops/matmul.h"
#include "model/save.h"
#include "model_test_util.h"
#include "test_util.h"
#include "util/error.h"

namespace eigenkv {
namespace {

const char* kQ4KM = "models/quantized/tinystories-c4-gqa-Q4_K_M.gguf";

bool is_folded(const std::string& name) {
  for (const char* part : {".attn_q.", ".attn_k.", ".attn_v.", ".attn_output.", "attn_k_basis"}) {
    if (name.find(part) != std::string::npos) return true;
  }
  return false;
}

TEST(TypedWeights, QuantizedMatricesPointIntoTheMappedFile) {
  EKV_REQUIRE_SHARED(kQ4KM);
  const std::string path = testing::shared_path(kQ4KM);
  auto m = model::Model::load(path);
  const io::GgufFile file(path);
  const model::LayerWeights& L = m->weights().layers[1];
  const io::TensorView* wq = file.find_tensor("blk.1.attn_q.weight");
  const io::TensorView* down = file.find_tensor("blk.1.ffn_down.weight");
  ASSERT_TRUE(wq && down);
  EXPECT_EQ(L.wq.type, wq->type);
  EXPECT_EQ(L.w_down.type, down->type);
  EXPECT_EQ(L.w_down.nbytes(), down->nbytes);
  // The weights hold exactly the file's matrix bytes (no float32 copy of anything large).
  int64_t matrix_bytes = 0;
  for (const io::TensorView& t : file.tensors()) {
    if (t.shape.size() == 2 && t.name.find("norm") == std::string::npos) {
      matrix_bytes += static_cast<int64_t>(t.nbytes);
    }
  }
  EXPECT_EQ(m->weights().stored_bytes(), matrix_bytes);
  // Embedding rows dequantize to the file's numbers.
  std::vector<float> row(static_cast<size_t>(m->config().d_model));
  m->weights().token_embedding.row_to_float(7, row.data());
  const model::Matrix all = m->weights().token_embedding.to_float();
  for (int64_t i = 0; i < m->config().d_model; ++i) ASSERT_EQ(row[i], all.row(7)[i]);
}

TEST(TypedWeights, TiedEmbeddingsAreStoredOnce) {
  EKV_REQUIRE_SHARED("models/TinyStories-656K/config.json");
  auto m = model::Model::load(testing::shared_path("models/TinyStories-656K"));
  ASSERT_TRUE(m->config().tied_embeddings);
  EXPECT_EQ(m->weights().output.bytes, m->weights().token_embedding.bytes);
}

TEST(TypedWeights, CompressedQuantizedModelKeepsUnchangedTensorsByteForByte) {
  EKV_REQUIRE_SHARED(kQ4KM);
  const std::string source = testing::shared_path(kQ4KM);
  auto m = model::Model::load(source);
  const std::vector<int32_t> ids = testing::repo_text_ids(*m, "data/tinystories-calib.txt");
  compress::CalibrationOptions o;
  o.key_mode = model::KeyMode::kPost;
  o.allotment = compress::Allotment::kKvBudget;
  o.kv_budget = 0.5;
  o.error_windows = 2;
  o.progress = false;
  o.max_tokens = 1024;
  compress::calibrate_eigen(*m, ids, o);
  const std::string out = testing::temp_path("typed_compressed.gguf");
  model::save_gguf(*m, out);
  const io::GgufFile a(source), b(out);
  int64_t same = 0, folded = 0;
  for (const io::TensorView& t : a.tensors()) {
    const io::TensorView* u = b.find_tensor(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    if (is_folded(t.name)) {
      // Folded: f16 by default for a quantized source (q and, in post mode, k keep their bytes).
      if (u->nbytes != t.nbytes || std::memcmp(u->data, t.data, t.nbytes) != 0) {
        EXPECT_EQ(u->type, io::TensorType::kF16) << t.name;
        ++folded;
      }
      continue;
    }
    EXPECT_EQ(u->type, t.type) << t.name;
    ASSERT_EQ(u->nbytes, t.nbytes) << t.name;
    EXPECT_EQ(std::memcmp(u->data, t.data, t.nbytes), 0) << t.name << " changed";
    ++same;
  }
  EXPECT_EQ(folded, 2 * m->config().n_layers);  // attn_v and attn_output of every layer
  EXPECT_GT(same, 20);
  // Beyond the tensors, the file grows only by the eigenkv.* metadata (a few KiB): what it costs
  // is the folded weights and the bases, which on a model this small (attention is half of
  // every layer, and a 64x32 float32 basis per KV head is 1 % of the file) come to several
  // per cent; docs/BENCH.md measures the real-size ratio.
  auto tensor_bytes = [](const io::GgufFile& f) {
    int64_t n = 0;
    for (const io::TensorView& t : f.tensors()) n += static_cast<int64_t>(t.nbytes);
    return n;
  };
  const int64_t overhead_a = static_cast<int64_t>(std::filesystem::file_size(source)) - tensor_bytes(a);
  const int64_t overhead_b = static_cast<int64_t>(std::filesystem::file_size(out)) - tensor_bytes(b);
  EXPECT_LT(overhead_b - overhead_a, 64 * 1024);
  const std::string out_q8 = testing::temp_path("typed_compressed_q8.gguf");
  model::SaveOptions q8;
  q8.fold_type = io::TensorType::kQ8_0;
  model::save_gguf(*m, out_q8, q8);
  const double source_size = static_cast<double>(std::filesystem::file_size(source));
  const double ratio_f16 = static_cast<double>(std::filesystem::file_size(out)) / source_size;
  const double ratio_q8 = static_cast<double>(std::filesystem::file_size(out_q8)) / source_size;
  std::filesystem::remove(out_q8);
  std::cout << "compressed / source size: f16 folds " << ratio_f16 << ", q8_0 folds " << ratio_q8
            << "\n";
  EXPECT_LT(ratio_q8, ratio_f16);
  // The reloaded file gives the logits of the model in memory up to the f16 rounding of the
  // folded weights (compared with float activations: the integer prefill's 8-bit rounding of
  // them would amplify that small difference where a number crosses a rounding step).
  auto reloaded = model::Model::load(out);
  std::filesystem::remove(out);
  const std::vector<int32_t> probe(ids.begin(), ids.begin() + 32);
  ops::set_prefill_mode(ops::PrefillMode::kExact);
  EXPECT_LT(testing::max_relative_diff(testing::logits_of(*reloaded, probe),
                                       testing::logits_of(*m, probe)),
            2e-3);
  ops::set_prefill_mode(ops::PrefillMode::kAuto);
}

TEST(TypedWeights, FoldTypeIsHonouredAndBadNamesRefused) {
  EXPECT_EQ(model::fold_type_from_name("q8_0"), io::TensorType::kQ8_0);
  EXPECT_EQ(model::fold_type_from_name("F16"), io::TensorType::kF16);
  EXPECT_THROW(model::fold_type_from_name("q9_9"), Error);
}

}  // namespace
}  // namespace eigenkv
