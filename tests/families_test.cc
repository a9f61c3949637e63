// Model families beyond Llama, on the trained tiny models in ../shared/models (each with golden
// logits from an independent float64 reference of the family's Hugging Face semantics): logits,
// greedy text, the GGUF round trip, Eigen Attention at full rank, and the refusals of what is not
// built.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "compress/calibrate.h"
#include "eval/perplexity.h"
#include "io/gguf.h"
#include "kv/kv_cache.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/save.h"
#include "model_test_util.h"
#include "test_util.h"
#include "util/error.h"

namespace eigenkv {
namespace {

namespace fs = std::filesystem;
using testing::logits_of;
using testing::max_relative_diff;

constexpr const char* kQwen2 = "models/qwen2-tiny-hf";

// The model written to GGUF by eigenkv, in a temporary file named after `family`.
fs::path write_gguf_copy(const model::Model& m, const std::string& family) {
  const fs::path out =
      fs::temp_directory_path() / ("eigenkv_" + family + "_" + std::to_string(::getpid()) + ".gguf");
  model::save_gguf(m, out.string());
  return out;
}

// Perplexity on the first 4 windows of 128 tokens of the repository's calibration text.
double text_ppl(const model::Model& m) {
  eval::PerplexityOptions o;
  o.ctx = 128;
  o.max_windows = 4;
  o.progress = false;
  return eval::perplexity(m, testing::repo_text_ids(m, "data/tinystories-calib.txt"), o).ppl;
}


nlohmann::json golden(const std::string& model_dir) {
  std::ifstream in(testing::shared_path(model_dir + "/golden_logits.json"));
  return nlohmann::json::parse(in);
}

// Every golden sequence: the last position's logits within 1e-4 of the reference (relative to
// its largest), and the argmax at every position.
void expect_golden_logits(const model::Model& m, const nlohmann::json& g, const std::string& what) {
  const int64_t nv = m.config().n_vocab;
  int checked = 0;
  for (const auto& [name, seq] : g["sequences"].items()) {
    const std::vector<int32_t> ids = seq["ids"].get<std::vector<int32_t>>();
    const std::vector<float> ref = seq["last_logits"].get<std::vector<float>>();
    const std::vector<int32_t> argmax = seq["argmax_per_position"].get<std::vector<int32_t>>();
    ASSERT_EQ(static_cast<int64_t>(ref.size()), nv) << name;
    const std::vector<float> all = logits_of(m, ids);
    const std::vector<float> last(all.end() - nv, all.end());
    EXPECT_LT(max_relative_diff(last, ref), 1e-4) << what << ": sequence " << name;
    for (size_t t = 0; t < ids.size(); ++t) {
      const float* row = all.data() + t * nv;
      EXPECT_EQ(std::max_element(row, row + nv) - row, argmax[t])
          << what << ": sequence " << name << " position " << t;
    }
    ++checked;
  }
  EXPECT_GE(checked, 3);
}

TEST(Qwen2, HuggingFaceLogitsEqualTheGoldenOnes) {
  EKV_REQUIRE_SHARED(kQwen2);
  const auto m = model::Model::load(testing::shared_path(kQwen2));
  EXPECT_EQ(m->config().arch.name, "qwen2");
  EXPECT_TRUE(m->config().arch.q_bias && m->config().arch.k_bias && m->config().arch.v_bias);
  EXPECT_FALSE(m->config().arch.o_bias);
  EXPECT_EQ(m->weights().layers[0].bk.size(), 2u * 64);
  EXPECT_TRUE(m->weights().layers[0].bo.empty());  // absent, not zero-filled
  EXPECT_TRUE(m->config().tied_embeddings);
  expect_golden_logits(*m, golden(kQwen2), "qwen2 (Hugging Face)");
}

// Greedy decoding from BOS + "Once upon a time" gives the reference's ids.
void expect_greedy_text(const std::string& model_dir) {
  const auto m = model::Model::load(testing::shared_path(model_dir));
  const std::vector<int32_t> want =
      golden(model_dir)["greedy_from_bos_once_upon_a_time"].get<std::vector<int32_t>>();
  const std::vector<int32_t> prompt = m->tokenizer().encode("Once upon a time", true);
  ASSERT_EQ(std::vector<int32_t>(want.begin(), want.begin() + prompt.size()), prompt);
  model::GenerateOptions o;
  o.max_tokens = static_cast<int64_t>(want.size() - prompt.size());
  o.sampler.temperature = 0;
  o.stop_at_eos = false;
  EXPECT_EQ(model::generate(*m, prompt, o).ids,
            std::vector<int32_t>(want.begin() + prompt.size(), want.end()))
      << model_dir;
}

TEST(Qwen2, GreedyTextMatchesTheReference) {
  EKV_REQUIRE_SHARED(kQwen2);
  expect_greedy_text(kQwen2);
}

// The GGUF eigenkv writes of a Hugging Face Qwen2 directory is llama.cpp's qwen2 layout (rows as
// stored, biases as blk.N.attn_q.bias ...), and loads back to the same logits.
TEST(Qwen2, GgufRoundTripKeepsTheLogits) {
  EKV_REQUIRE_SHARED(kQwen2);
  const auto hf = model::Model::load(testing::shared_path(kQwen2));
  const fs::path out = write_gguf_copy(*hf, "qwen2");
  {
    const io::GgufFile f(out.string());
    EXPECT_EQ(f.get_string("general.architecture"), "qwen2");
    EXPECT_EQ(f.get_int("qwen2.block_count"), 4);
    ASSERT_NE(f.find_tensor("blk.0.attn_q.bias"), nullptr);
    EXPECT_EQ(f.find_tensor("blk.0.attn_k.bias")->shape, std::vector<int64_t>{128});
    EXPECT_EQ(f.find_tensor("blk.0.attn_output.bias"), nullptr);
    EXPECT_EQ(f.find_tensor("output.weight"), nullptr);  // tied: stored once
  }
  const auto gg = model::Model::load(out.string());
  fs::remove(out);
  EXPECT_EQ(gg->config().arch.rope_layout, model::RopeLayout::kHalves);
  const std::vector<int32_t> ids = {1, 403, 407, 261, 378, 426, 410, 13, 13, 441};
  EXPECT_LT(max_relative_diff(logits_of(*gg, ids), logits_of(*hf, ids)), 1e-6);
  expect_golden_logits(*gg, golden(kQwen2), "qwen2 (GGUF written by eigenkv)");
}

// Eigen Attention at full rank (threshold 0) keeps the function: the biases fold as U^T b.
TEST(Qwen2, EigenAtFullRankKeepsTheLogitsAndPerplexity) {
  EKV_REQUIRE_SHARED(kQwen2);
  for (model::KeyMode mode : {model::KeyMode::kPre, model::KeyMode::kPost}) {
    auto m = model::Model::load(testing::shared_path(kQwen2));
    const std::vector<int32_t> ids = testing::repo_text_ids(*m, "data/tinystories-calib.txt");
    const std::vector<int32_t> probe(ids.begin(), ids.begin() + 100);
    const std::vector<float> before = logits_of(*m, probe);
    const double ppl_before = text_ppl(*m);
    compress::CalibrationOptions o;
    o.key_mode = mode;
    o.threshold = 0.0;
    o.progress = false;
    o.max_tokens = 1024;
    compress::calibrate_eigen(*m, ids, o);
    ASSERT_TRUE(m->is_compressed());
    EXPECT_FALSE(m->weights().layers[0].bv.empty());
    EXPECT_LT(max_relative_diff(logits_of(*m, probe), before), 1e-4) << model::key_mode_name(mode);
    EXPECT_NEAR(text_ppl(*m) / ppl_before, 1.0, 1e-4);
  }
}

constexpr const char* kOpt = "models/opt-tiny-hf";

TEST(Opt, HuggingFaceLogitsEqualTheGoldenOnes) {
  EKV_REQUIRE_SHARED(kOpt);
  const auto m = model::Model::load(testing::shared_path(kOpt));
  const model::ArchSpec& a = m->config().arch;
  EXPECT_EQ(a.name, "opt");
  EXPECT_EQ(a.norm, model::NormKind::kLayer);
  EXPECT_EQ(a.position, model::PositionKind::kLearned);
  EXPECT_EQ(m->weights().position_embedding.rows, 514);
  EXPECT_TRUE(m->weights().layers[0].w_gate.empty());  // ReLU: no gate
  EXPECT_EQ(m->weights().layers[0].bo.size(), 256u);
  expect_golden_logits(*m, golden(kOpt), "opt (Hugging Face)");
}

TEST(Opt, GreedyTextMatchesTheReference) {
  EKV_REQUIRE_SHARED(kOpt);
  expect_greedy_text(kOpt);
}

// Without RoPE the key basis folds into both W_q and W_k (and their biases): attention runs
// wholly in rank space, exact at full rank.
TEST(Opt, EigenAtFullRankKeepsTheLogitsAndPerplexity) {
  EKV_REQUIRE_SHARED(kOpt);
  auto m = model::Model::load(testing::shared_path(kOpt));
  const std::vector<int32_t> ids = testing::repo_text_ids(*m, "data/tinystories-calib.txt");
  const std::vector<int32_t> probe(ids.begin(), ids.begin() + 100);
  const std::vector<float> before = logits_of(*m, probe);
    const double ppl_before = text_ppl(*m);
  compress::CalibrationOptions o;
  o.key_mode = model::KeyMode::kNoRope;
  o.threshold = 0.0;
  o.progress = false;
  o.max_tokens = 1024;
  compress::calibrate_eigen(*m, ids, o);
  ASSERT_TRUE(m->is_compressed());
  EXPECT_EQ(m->weights().layers[0].bq.size(), m->weights().layers[0].wq.rows);
  EXPECT_LT(max_relative_diff(logits_of(*m, probe), before), 1e-4);
    EXPECT_NEAR(text_ppl(*m) / ppl_before, 1.0, 1e-4);
}

TEST(Opt, PositionsPastTheTableAndUnbuiltVariantsAreRefused) {
  EKV_REQUIRE_SHARED(kOpt);
  const auto m = model::Model::load(testing::shared_path(kOpt));
  kv::KvCache cache = m->new_cache(600);
  std::vector<int32_t> ids(513, 5);
  std::vector<float> logits(static_cast<size_t>(m->config().n_vocab));
  try {
    m->forward(ids, cache, logits.data(), false);
    ADD_FAILURE() << "513 positions of a 512-position table were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("learned positions"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.size(), 0);
  std::ifstream in(testing::shared_path(std::string(kOpt) + "/config.json"));
  const nlohmann::json base = nlohmann::json::parse(in);
  for (auto [key, value] : {std::pair<const char*, nlohmann::json>{"activation_function", "gelu"},
                            {"layer_norm_elementwise_affine", false}}) {
    nlohmann::json j = base;
    j[key] = value;
    try {
      model::config_from_hf(j, "config.json");
      ADD_FAILURE() << key << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  }
}

// OPT has no llama.cpp layout; eigenkv's (DESIGN.md, "Families") follows GGUF's conventions:
// llama's tensor names with biases beside their weights, a position table that starts at
// position 0 (Hugging Face's two offset rows left out), opt.layer_norm_before. It loads back to
// the same logits.
TEST(Opt, GgufRoundTripKeepsTheLogits) {
  EKV_REQUIRE_SHARED(kOpt);
  const auto hf = model::Model::load(testing::shared_path(kOpt));
  const fs::path out = write_gguf_copy(*hf, "opt");
  {
    const io::GgufFile f(out.string());
    EXPECT_EQ(f.get_string("general.architecture"), "opt");
    EXPECT_TRUE(f.get_bool("opt.layer_norm_before"));
    EXPECT_NEAR(f.get_float("opt.attention.layer_norm_epsilon"), 1e-5, 1e-12);
    EXPECT_FALSE(f.has("opt.rope.freq_base"));
    ASSERT_NE(f.find_tensor("position_embd.weight"), nullptr);
    EXPECT_EQ(f.find_tensor("position_embd.weight")->shape, (std::vector<int64_t>{512, 256}));
    ASSERT_NE(f.find_tensor("blk.3.ffn_down.bias"), nullptr);
    ASSERT_NE(f.find_tensor("blk.0.attn_norm.bias"), nullptr);
    ASSERT_NE(f.find_tensor("output_norm.bias"), nullptr);
    EXPECT_EQ(f.find_tensor("blk.0.ffn_gate.weight"), nullptr);
    EXPECT_EQ(f.find_tensor("output.weight"), nullptr);
  }
  const auto gg = model::Model::load(out.string());
  fs::remove(out);
  EXPECT_EQ(gg->config().arch.position_offset, 0);
  EXPECT_EQ(gg->weights().position_embedding.rows, 512);
  EXPECT_TRUE(gg->config().arch.o_bias && gg->config().arch.ffn_bias);
  const std::vector<int32_t> ids = {1, 403, 407, 261, 378, 426, 410, 13, 13, 441};
  EXPECT_LT(max_relative_diff(logits_of(*gg, ids), logits_of(*hf, ids)), 1e-6);
  expect_golden_logits(*gg, golden(kOpt), "opt (GGUF written by eigenkv)");
}

// calibrate compresses an OPT model to half its KV cache and writes a GGUF that runs.
TEST(Opt, CalibrateWritesARunnableCompressedModel) {
  EKV_REQUIRE_SHARED(kOpt);
  const fs::path out = fs::temp_directory_path() / ("eigenkv_opt_calibrated_" + std::to_string(::getpid()) + ".gguf");
  int status = 0;
  const std::string said = testing::run_command(
      std::string(EIGENKV_BINARY) + " calibrate -m " + testing::shared_path(kOpt) + " -f " +
          testing::source_path("data/tinystories-calib.txt") + " --kv-budget 0.5 -t 1 -o " +
          out.string() + " 2>&1",
      &status);
  ASSERT_EQ(status, 0) << said;
  const auto m = model::Model::load(out.string());
  fs::remove(out);
  EXPECT_TRUE(m->is_compressed());
  EXPECT_EQ(m->weights().layers[0].key_mode, model::KeyMode::kNoRope);
  const auto full = model::Model::load(testing::shared_path(kOpt));
  EXPECT_LE(m->kv_bytes_per_token(), full->kv_bytes_per_token() / 2);
  const std::vector<int32_t> ids = {1, 403, 407, 261, 378, 426, 410, 13, 13, 441};
  const std::vector<float> a = logits_of(*m, ids), b = logits_of(*full, ids);
  EXPECT_LT(max_relative_diff(a, b), 0.5);  // compressed, yet the same model
}

constexpr const char* kMpt = "models/mpt-tiny-hf";

TEST(Mpt, HuggingFaceLogitsEqualTheGoldenOnes) {
  EKV_REQUIRE_SHARED(kMpt);
  const auto m = model::Model::load(testing::shared_path(kMpt));
  const model::ArchSpec& a = m->config().arch;
  EXPECT_EQ(a.name, "mpt");
  EXPECT_EQ(a.position, model::PositionKind::kAlibi);
  EXPECT_EQ(a.ffn, model::FfnKind::kGelu);
  EXPECT_FALSE(a.norm_bias || a.any_attention_bias() || a.ffn_bias);  // no_bias
  EXPECT_EQ(model::alibi_slopes(4, a.alibi_bias_max),
            (std::vector<float>{1.f / 4, 1.f / 16, 1.f / 64, 1.f / 256}));
  const model::LayerWeights& L = m->weights().layers[0];
  // The fused Wqkv [768, 256] is split into three views of its rows, without a copy.
  EXPECT_EQ(L.wq.rows, 256);
  EXPECT_EQ(L.wk.bytes, L.wq.bytes + L.wq.nbytes());
  EXPECT_EQ(L.wv.bytes, L.wk.bytes + L.wk.nbytes());
  EXPECT_TRUE(L.attn_norm_bias.empty());
  EXPECT_TRUE(m->config().tied_embeddings);
  expect_golden_logits(*m, golden(kMpt), "mpt (Hugging Face)");
}

TEST(Mpt, GreedyTextMatchesTheReference) {
  EKV_REQUIRE_SHARED(kMpt);
  expect_greedy_text(kMpt);
}

// The GGUF eigenkv writes of an MPT directory is llama.cpp's mpt layout (fused attn_qkv,
// layer_norm_epsilon, max_alibi_bias, no RoPE keys) and loads back to the same logits.
TEST(Mpt, GgufRoundTripKeepsTheLogits) {
  EKV_REQUIRE_SHARED(kMpt);
  const auto hf = model::Model::load(testing::shared_path(kMpt));
  const fs::path out = write_gguf_copy(*hf, "mpt");
  {
    const io::GgufFile f(out.string());
    EXPECT_EQ(f.get_string("general.architecture"), "mpt");
    EXPECT_EQ(f.get_float("mpt.attention.max_alibi_bias"), 8.0);
    EXPECT_NEAR(f.get_float("mpt.attention.layer_norm_epsilon"), 1e-5, 1e-12);
    EXPECT_FALSE(f.has("mpt.rope.freq_base"));
    ASSERT_NE(f.find_tensor("blk.0.attn_qkv.weight"), nullptr);
    EXPECT_EQ(f.find_tensor("blk.0.attn_qkv.weight")->shape, (std::vector<int64_t>{768, 256}));
    EXPECT_EQ(f.find_tensor("blk.0.attn_q.weight"), nullptr);
    EXPECT_EQ(f.find_tensor("blk.0.attn_norm.bias"), nullptr);
    EXPECT_EQ(f.find_tensor("output.weight"), nullptr);
  }
  const auto gg = model::Model::load(out.string());
  fs::remove(out);
  EXPECT_EQ(gg->config().arch.position, model::PositionKind::kAlibi);
  EXPECT_FALSE(gg->config().arch.norm_bias);
  const std::vector<int32_t> ids = {1, 403, 407, 261, 378, 426, 410, 13, 13, 441};
  EXPECT_LT(max_relative_diff(logits_of(*gg, ids), logits_of(*hf, ids)), 1e-6);
  expect_golden_logits(*gg, golden(kMpt), "mpt (GGUF written by eigenkv)");
}

// ALiBi has no rotation: the key basis folds into W_q and W_k (norope), and the ALiBi bias is
// added to the rank-space scores unchanged: exact at full rank.
TEST(Mpt, EigenAtFullRankKeepsTheLogitsAndPerplexity) {
  EKV_REQUIRE_SHARED(kMpt);
  auto m = model::Model::load(testing::shared_path(kMpt));
  const std::vector<int32_t> ids = testing::repo_text_ids(*m, "data/tinystories-calib.txt");
  const std::vector<int32_t> probe(ids.begin(), ids.begin() + 100);
  const std::vector<float> before = logits_of(*m, probe);
    const double ppl_before = text_ppl(*m);
  compress::CalibrationOptions o;
  o.key_mode = model::KeyMode::kNoRope;
  o.threshold = 0.0;
  o.progress = false;
  o.max_tokens = 1024;
  compress::calibrate_eigen(*m, ids, o);
  ASSERT_TRUE(m->is_compressed());
  EXPECT_LT(max_relative_diff(logits_of(*m, probe), before), 1e-4);
    EXPECT_NEAR(text_ppl(*m) / ppl_before, 1.0, 1e-4);
}

// A directory beside the trained MPT model whose config.json is edited by `edit`.
fs::path mpt_variant(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
  const fs::path src = testing::shared_path(kMpt);
  const fs::path dir = fs::temp_directory_path() / ("eigenkv_mpt_" + name + "_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (const char* f : {"model.safetensors", "tokenizer.json", "tokenizer_config.json"}) {
    fs::remove(dir / f);
    fs::create_symlink(src / f, dir / f);
  }
  std::ifstream in(src / "config.json");
  nlohmann::json j = nlohmann::json::parse(in);
  edit(j);
  std::ofstream(dir / "config.json") << j.dump(2);
  return dir;
}

// clip_qkv clamps q, k and v after the projection: a clamp above every activation changes
// nothing, a tight one changes the logits. Compression keeps the clamp between W x and the bases
// (the bases apply after it, two products each): exact at full rank, where folding the bases into
// W_q/W_k/W_v would not be; at half the KV it runs, survives the GGUF round trip bit for bit, and
// `info` says the bases apply after the clamp.
TEST(Mpt, ClipQkvClampsAndCompressionKeepsTheClamp) {
  EKV_REQUIRE_SHARED(kMpt);
  const auto base = model::Model::load(testing::shared_path(kMpt));
  const std::vector<int32_t> ids = {1, 403, 407, 261, 378, 426, 410, 13, 13, 441};
  const fs::path loose = mpt_variant("loose", [](nlohmann::json& j) { j["attn_config"]["clip_qkv"] = 1e4; });
  const fs::path tight = mpt_variant("tight", [](nlohmann::json& j) { j["attn_config"]["clip_qkv"] = 0.5; });
  auto clipped = model::Model::load(tight.string());
  EXPECT_EQ(clipped->config().arch.clip_qkv, 0.5);
  EXPECT_EQ(logits_of(*model::Model::load(loose.string()), ids), logits_of(*base, ids));
  EXPECT_GT(max_relative_diff(logits_of(*clipped, ids), logits_of(*base, ids)), 1e-3);
  const std::vector<int32_t> text = testing::repo_text_ids(*clipped, "data/tinystories-calib.txt");
  const std::vector<int32_t> probe(text.begin(), text.begin() + 100);
  const std::vector<float> before = logits_of(*clipped, probe);
  compress::CalibrationOptions o;
  o.key_mode = model::KeyMode::kNoRope;
  o.progress = false;
  o.max_tokens = 1024;
  {
    auto full = model::Model::load(tight.string());
    o.threshold = 0.0;
    compress::calibrate_eigen(*full, text, o);
    ASSERT_TRUE(full->is_compressed());
    EXPECT_EQ(full->weights().layers[0].key_rank, full->config().head_dim);
    EXPECT_TRUE(full->weights().layers[0].bases_after_clamp);
    EXPECT_LT(max_relative_diff(logits_of(*full, probe), before), 1e-4);
  }
  o.allotment = compress::Allotment::kKvBudget;
  o.kv_budget = 0.5;
  compress::calibrate_eigen(*clipped, text, o);
  ASSERT_TRUE(clipped->is_compressed());
  EXPECT_LE(clipped->kv_bytes_per_token(), base->kv_bytes_per_token() / 2);
  const std::vector<float> half = logits_of(*clipped, probe);
  EXPECT_GT(max_relative_diff(half, before), 0.0);
  EXPECT_LT(max_relative_diff(half, before), 0.5);
  const fs::path out = fs::temp_directory_path() / ("eigenkv_mpt_clip_" + std::to_string(::getpid()) + ".gguf");
  model::save_gguf(*clipped, out.string());
  const auto reloaded = model::Model::load(out.string());
  EXPECT_TRUE(reloaded->weights().layers[0].bases_after_clamp);
  EXPECT_LT(max_relative_diff(logits_of(*reloaded, probe), half), 1e-6);
  int status = 0;
  const std::string said = testing::run_command(
      std::string(EIGENKV_BINARY) + " info -m " + out.string() + " 2>&1", &status);
  EXPECT_EQ(status, 0) << said;
  EXPECT_NE(said.find("after clip_qkv's clamp"), std::string::npos) << said;
  fs::remove(out);
  fs::remove_all(loose);
  fs::remove_all(tight);
}

// calibrate refuses a model it could not save before it calibrates, and writes nothing: an MPT
// softmax_scale has no GGUF key.
TEST(Mpt, CalibrateRefusesWhatItCannotSaveBeforeItsWork) {
  EKV_REQUIRE_SHARED(kMpt);
  const fs::path dir = mpt_variant("scaled", [](nlohmann::json& j) { j["attn_config"]["softmax_scale"] = 0.1; });
  const fs::path out = fs::temp_directory_path() / "eigenkv_mpt_calibrated.gguf";
  int status = 0;
  const std::string said = testing::run_command(
      std::string(EIGENKV_BINARY) + " calibrate -m " + dir.string() + " -f " +
          testing::source_path("data/tinystories-calib.txt") + " --kv-budget 0.5 -t 1 -o " +
          out.string() + " 2>&1",
      &status);
  fs::remove_all(dir);
  EXPECT_EQ(status, 1) << said;
  EXPECT_NE(said.find("softmax_scale"), std::string::npos) << said;
  EXPECT_EQ(said.find("layer"), std::string::npos) << "calibrated before refusing: " << said;
  EXPECT_FALSE(fs::exists(out));
}

TEST(Mpt, UnbuiltVariantsAreRefusedByName) {
  EKV_REQUIRE_SHARED(kMpt);
  std::ifstream in(testing::shared_path(std::string(kMpt) + "/config.json"));
  const nlohmann::json base = nlohmann::json::parse(in);
  model::config_from_hf(base, "config.json");
  const std::vector<std::pair<std::string, std::function<void(nlohmann::json&)>>> cases = {
      {"qk_ln", [](nlohmann::json& j) { j["attn_config"]["qk_ln"] = true; }},
      {"prefix_lm", [](nlohmann::json& j) { j["attn_config"]["prefix_lm"] = true; }},
      {"attn_impl", [](nlohmann::json& j) { j["attn_config"]["attn_impl"] = "sparse"; }},
      {"attn_type", [](nlohmann::json& j) { j["attn_config"]["attn_type"] = "cross"; }},
      {"sliding_window_size", [](nlohmann::json& j) { j["attn_config"]["sliding_window_size"] = 128; }},
      {"logit_scale", [](nlohmann::json& j) { j["logit_scale"] = "inv_sqrt_d_model"; }},
      {"norm_type", [](nlohmann::json& j) { j["norm_type"] = "rmsnorm"; }},
      {"ffn_type", [](nlohmann::json& j) { j["ffn_config"] = {{"ffn_type", "mptglu"}}; }},
      {"expansion_ratio", [](nlohmann::json& j) { j["expansion_ratio"] = 4.001; }},
      {"clip_qkv", [](nlohmann::json& j) { j["attn_config"]["clip_qkv"] = -1; }},
  };
  for (const auto& [field, edit] : cases) {
    nlohmann::json j = base;
    edit(j);
    try {
      model::config_from_hf(j, "config.json");
      ADD_FAILURE() << field << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  }
}

// What is not built is refused with the config field named, before any weight is read.
TEST(Families, UnbuiltVariantsAreRefusedByName) {
  EKV_REQUIRE_SHARED(kQwen2);
  std::ifstream in(testing::shared_path(std::string(kQwen2) + "/config.json"));
  const nlohmann::json base = nlohmann::json::parse(in);
  auto refusal = [](const nlohmann::json& j) {
    try {
      model::config_from_hf(j, "config.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(refusal(base), "accepted");
  nlohmann::json j = base;
  j["use_sliding_window"] = true;
  EXPECT_NE(refusal(j).find("use_sliding_window"), std::string::npos) << refusal(j);
  j = base;
  j["layer_types"][1] = "sliding_attention";
  EXPECT_NE(refusal(j).find("layer_types"), std::string::npos) << refusal(j);
  j = base;
  j["model_type"] = "gpt_bigcode";
  EXPECT_NE(refusal(j).find("model_type 'gpt_bigcode'"), std::string::npos) << refusal(j);
  j = base;
  j["model_type"] = "llama";
  j["attention_bias"] = true;
  EXPECT_NE(refusal(j).find("attention_bias"), std::string::npos) << refusal(j);
  j = base;
  j["mlp_bias"] = true;
  EXPECT_NE(refusal(j).find("mlp_bias"), std::string::npos) << refusal(j);
}

}  // namespace
}  // namespace eigenkv
