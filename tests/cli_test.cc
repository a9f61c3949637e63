// The eigenkv binary as a user runs it: known outputs of real models, machine-readable output,
// and one-line errors (exit code != 0, no crash) for bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace eigenkv {
namespace {

using testing::shared_path;
using testing::source_path;

const std::string kBundled = source_path("models/stories260K.gguf");

using Outcome = testing::CliOutcome;
constexpr auto& run = testing::run_eigenkv;

TEST(Cli, GreedyGenerationFromBosMatchesKnownStory) {
  Outcome o = run("generate -m " + kBundled + " -n 40 --temp 0");
  ASSERT_EQ(o.status, 0) << o.out;
  EXPECT_EQ(o.out.rfind("Once upon a time, there was a little girl named Lily. She loved to play "
                        "outside in the park.",
                        0),
            0u)
      << o.out;
}

TEST(Cli, GreedyGenerationOfTinyStories656K) {
  EKV_REQUIRE_SHARED("models/TinyStories-656K");
  Outcome o = run("generate -m " + shared_path("models/TinyStories-656K") + " -n 30 --temp 0");
  ASSERT_EQ(o.status, 0) << o.out;
  EXPECT_EQ(o.out.rfind("Once upon a time, there was a little girl named Lily.", 0), 0u) << o.out;
}

TEST(Cli, GenerateJsonHasTextIdsAndSpeed) {
  Outcome o = run("generate -m " + kBundled + " -n 8 --temp 0 --json 2>/dev/null");
  ASSERT_EQ(o.status, 0) << o.out;
  auto j = nlohmann::json::parse(o.out);
  EXPECT_EQ(j["ids"].size(), 8u);
  EXPECT_EQ(j["text"].get<std::string>().rfind("Once upon a time", 0), 0u);
  EXPECT_GT(j["tokens_per_s"].get<double>(), 0.0);
}

TEST(Cli, SeededSamplingIsReproducible) {
  Outcome a = run("generate -m " + kBundled + " -n 20 --temp 1 --seed 42 --json");
  Outcome b = run("generate -m " + kBundled + " -n 20 --temp 1 --seed 42 --json");
  ASSERT_EQ(a.status, 0);
  EXPECT_EQ(nlohmann::json::parse(a.out)["ids"], nlohmann::json::parse(b.out)["ids"]);
}

TEST(Cli, TokenizeJsonIncludesBosUnlessAsked) {
  Outcome o = run("tokenize -m " + kBundled + " -p 'Once upon a time' --json");
  ASSERT_EQ(o.status, 0) << o.out;
  auto ids = nlohmann::json::parse(o.out)["ids"];
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1);
  Outcome n = run("tokenize -m " + kBundled + " -p 'Once upon a time' --json --no-bos");
  EXPECT_EQ(nlohmann::json::parse(n.out)["ids"].size(), ids.size() - 1);
}

// Tokenizer defaults as the references have them: special-token strings are the tokens (Hugging
// Face tokenizers, llama-tokenize), unless --no-parse-special; BOS as the tokenizer's own rule
// (a bare Llama-3 tokenizer.json's post-processor adds none, Llama 2's TemplateProcessing adds <s>).
TEST(Cli, TokenizeDefaultsFollowTheReferences) {
  std::vector<int32_t> ids;
  auto ids_of = [&](const std::string& args) {
    Outcome o = run("tokenize " + args + " --json");
    EXPECT_EQ(o.status, 0) << args << "\n" << o.out;
    return o.status == 0 ? nlohmann::json::parse(o.out)["ids"].get<std::vector<int32_t>>()
                         : std::vector<int32_t>{};
  };
  auto count = [](const std::vector<int32_t>& v, int32_t id) {
    return std::count(v.begin(), v.end(), id);
  };
  // GGUF (llama.cpp's rules): PTB's "<unk>" and "</s>" written in the text.
  ids = ids_of("-m " + kBundled + " -p 'a <unk> b</s>'");
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(count(ids, 0), 1);
  EXPECT_EQ(ids.back(), 2);
  ids = ids_of("-m " + kBundled + " -p 'a <unk> b</s>' --no-parse-special");
  EXPECT_EQ(count(ids, 0), 0);
  EXPECT_NE(ids.back(), 2);
  if (!std::filesystem::exists(shared_path("tokenizers/llama3/tokenizer.json"))) {
    GTEST_SKIP() << "skipped: ../shared/tokenizers/llama3 is absent";
  }
  const std::string llama3 = "--tokenizer " + shared_path("tokenizers/llama3/tokenizer.json");
  ids = ids_of(llama3 + " -p '<|start_header_id|>user<|end_header_id|>'");
  EXPECT_EQ(ids, (std::vector<int32_t>{128006, 882, 128007}));  // no BOS: its post-processor
  ids = ids_of(llama3 + " -p '<|start_header_id|>user' --bos");
  EXPECT_EQ(ids.front(), 128000);
  ids = ids_of(llama3 + " -p '<|start_header_id|>user' --no-parse-special");
  EXPECT_EQ(count(ids, 128006), 0);
  EXPECT_GT(ids.size(), 3u);
  ids = ids_of("--tokenizer " + shared_path("tokenizers/llama2/tokenizer.json") + " -p 'Hello'");
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1) << "Llama 2's TemplateProcessing adds <s>";
}

TEST(Cli, InfoJsonReportsKvBytesPerToken) {
  Outcome o = run("info -m " + kBundled + " --json");
  ASSERT_EQ(o.status, 0) << o.out;
  auto j = nlohmann::json::parse(o.out);
  // 2 (K and V) x 5 layers x 4 KV heads x 8 dims x 4 bytes.
  EXPECT_EQ(j["kv_bytes_per_token"], 2 * 5 * 4 * 8 * 4);
  EXPECT_EQ(j["n_layers"], 5);
}

TEST(Cli, PerplexityJsonFields) {
  const std::string text = testing::temp_path("ppl.txt");
  std::string story;
  for (int i = 0; i < 30; ++i) story += "Once upon a time, there was a little girl named Lily. ";
  std::ofstream(text) << story;
  Outcome o = run("perplexity -m " + kBundled + " -f " + text + " --ctx 64 --json --kld-base " +
                  kBundled + " 2>/dev/null");
  std::filesystem::remove(text);
  ASSERT_EQ(o.status, 0) << o.out;
  auto j = nlohmann::json::parse(o.out);
  EXPECT_GT(j["windows"].get<int>(), 0);
  EXPECT_EQ(j["tokens_scored"].get<int>(), j["windows"].get<int>() * 63);
  EXPECT_GT(j["ppl"].get<double>(), 1.0);
  EXPECT_NEAR(j["kld_mean"].get<double>(), 0.0, 1e-9);  // a model against itself
  EXPECT_DOUBLE_EQ(j["top1_agree"].get<double>(), 1.0);
}

// --llamacpp-protocol scores as llama-perplexity does (BOS at each window start, the second half
// of each window), and gives the float64 reference's perplexity under the same protocol.
TEST(Cli, PerplexityLlamaCppProtocolMatchesTheReference) {
  EKV_REQUIRE_REFERENCE();
  const std::string text = testing::temp_path("ppl_llamacpp.txt");
  std::string story;
  for (int i = 0; i < 20; ++i) story += "Tom had a red ball. He threw it to his dog, who ran. ";
  std::ofstream(text) << story;
  Outcome o = run("perplexity -m " + kBundled + " -f " + text +
                  " --ctx 64 --llamacpp-protocol --json 2>/dev/null");
  ASSERT_EQ(o.status, 0) << o.out;
  const auto j = nlohmann::json::parse(o.out);
  EXPECT_EQ(j["protocol"], "llama.cpp");
  EXPECT_EQ(j["tokens_scored"].get<int>(), j["windows"].get<int>() * (64 - 1 - 32));
  Outcome ids = run("tokenize -m " + kBundled + " -f " + text + " --json");
  ASSERT_EQ(ids.status, 0) << ids.out;
  const std::string ids_file = testing::temp_path("ppl_llamacpp_ids.json");
  std::ofstream(ids_file) << ids.out;
  int status = 0;
  const std::string ref = testing::run_command(
      testing::reference_script() + " perplexity --model " + kBundled + " --tokens-file " +
          ids_file + " --ctx 64 --llamacpp-protocol",
      &status);
  std::filesystem::remove(text);
  std::filesystem::remove(ids_file);
  ASSERT_EQ(status, 0) << ref;
  const auto r = nlohmann::json::parse(ref);
  EXPECT_EQ(r["tokens_scored"], j["tokens_scored"]);
  EXPECT_NEAR(j["ppl"].get<double>() / r["ppl"].get<double>(), 1.0, 1e-4);
}

TEST(Cli, BenchJsonRows) {
  Outcome o = run("bench -m " + kBundled + " -p 16 -n 4 -d 0,16 -r 1 --json");
  ASSERT_EQ(o.status, 0) << o.out;
  auto j = nlohmann::json::parse(o.out);
  ASSERT_EQ(j["rows"].size(), 4u);
  for (const auto& row : j["rows"]) {
    EXPECT_GT(row["tokens_per_s"].get<double>(), 0.0);
    if (row["test"] == "tg") {
      EXPECT_GT(row["bandwidth_fraction"].get<double>(), 0.0);
    }
  }
}

TEST(Cli, CalibrateWritesACompressedModelThatInfoAndCompareRead) {
  const std::string out = testing::temp_path("calibrated.gguf");
  Outcome c = run("calibrate -m " + kBundled + " -f " + source_path("data/tinystories-calib.txt") +
                  " --threshold 0.05 --rope post --tokens 2048 --json -o " + out + " 2>/dev/null");
  ASSERT_EQ(c.status, 0) << c.out;
  auto cal = nlohmann::json::parse(c.out);
  EXPECT_LT(cal["kv_fraction"].get<double>(), 1.0);
  EXPECT_EQ(cal["calibration_tokens"], 2048);
  Outcome i = run("info -m " + out + " --json");
  ASSERT_EQ(i.status, 0) << i.out;
  auto info = nlohmann::json::parse(i.out);
  EXPECT_TRUE(info["compressed"].get<bool>());
  EXPECT_EQ(info["kv_bytes_per_token"], cal["kv_bytes_per_token"]);
  EXPECT_EQ(info["layers"][0]["key_mode"], "post");
  Outcome cmp = run("compare -m " + out + " --base " + kBundled + " -f " +
                    source_path("data/tinystories-eval.txt") +
                    " --ctx 64 --max-windows 4 -n 4 -r 1 --json 2>/dev/null");
  ASSERT_EQ(cmp.status, 0) << cmp.out;
  auto j = nlohmann::json::parse(cmp.out);
  EXPECT_NEAR(j["kv_ratio"].get<double>(), cal["kv_fraction"].get<double>(), 1e-9);
  EXPECT_GT(j["model"]["kld_mean"].get<double>(), 0.0);
  // A compressed model cannot be calibrated again, and no output is left behind.
  const std::string again = testing::temp_path("again.gguf");
  Outcome twice = run("calibrate -m " + out + " -f " + source_path("data/tinystories-calib.txt") +
                      " --threshold 0.05 -o " + again);
  EXPECT_NE(twice.status, 0);
  EXPECT_NE(twice.out.find("already compressed"), std::string::npos) << twice.out;
  EXPECT_FALSE(std::filesystem::exists(again));
  std::filesystem::remove(out);
}

// Bad input: one line naming the problem on stderr, exit status 1, never a crash.
void expect_error(const std::string& args, const std::string& fragment) {
  Outcome o = run(args);
  EXPECT_NE(o.status, 0) << args << "\n" << o.out;
  EXPECT_LT(o.status, 128) << "crashed: " << args << "\n" << o.out;
  EXPECT_NE(o.out.find(fragment), std::string::npos) << args << "\n" << o.out;
  EXPECT_NE(o.out.find("error"), std::string::npos) << o.out;
}

TEST(CliErrors, BadPrefillModeInTheEnvironment) {
  const testing::CliOutcome o = testing::run_eigenkv_env("EIGENKV_PREFILL=fast", "info -m /x.gguf");
  EXPECT_EQ(o.status, 1) << o.out;
  EXPECT_NE(o.out.find("EIGENKV_PREFILL must be auto, exact or integer, not 'fast'"),
            std::string::npos)
      << o.out;
}

TEST(CliErrors, MissingFile) { expect_error("info -m /nonexistent.gguf", "no such file"); }

TEST(CliErrors, BadMagic) {
  const std::string path = testing::temp_path("bad.gguf");
  std::ofstream(path) << "this is not a model file at all";
  expect_error("info -m " + path, "not a model");
  std::filesystem::remove(path);
}

TEST(CliErrors, TruncatedGguf) {
  const std::string path = testing::temp_path("truncated.gguf");
  std::ifstream in(kBundled, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (size_t cut : {size_t{100}, bytes.size() / 2, bytes.size() - 10}) {
    std::ofstream(path, std::ios::binary) << bytes.substr(0, cut);
    expect_error("info -m " + path, "truncated");
  }
  std::filesystem::remove(path);
}

TEST(CliErrors, ZeroOrNegativeFlags) {
  expect_error("generate -m " + kBundled + " -n 0", "-n");
  expect_error("generate -m " + kBundled + " -n -3", "-n");
  expect_error("generate -m " + kBundled + " -t 0", "-t");
  expect_error("perplexity -m " + kBundled + " -f x --ctx 0", "--ctx");
  expect_error("generate -m " + kBundled + " --top-p 1.5", "--top-p");
}

TEST(CliErrors, EmptyTextFile) {
  const std::string path = testing::temp_path("empty.txt");
  std::ofstream(path) << "";
  expect_error("perplexity -m " + kBundled + " -f " + path, "empty");
  std::filesystem::remove(path);
}

TEST(CliErrors, TextShorterThanOneWindow) {
  const std::string path = testing::temp_path("short.txt");
  std::ofstream(path) << "Once upon a time.";
  expect_error("perplexity -m " + kBundled + " -f " + path + " --ctx 256", "fewer than one window");
  std::filesystem::remove(path);
}

TEST(CliErrors, PromptLongerThanContext) {
  std::string prompt;
  for (int i = 0; i < 50; ++i) prompt += "Once upon a time ";
  expect_error("generate -m " + kBundled + " --ctx 16 -p '" + prompt + "'", "context");
}

TEST(CliErrors, UnknownArchitectureInHfConfig) {
  const std::string dir = testing::temp_path("hfdir");
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << R"({"model_type": "bloom", "vocab_size": 10})";
  expect_error("info -m " + dir, "unsupported model_type 'bloom'");
  std::filesystem::remove_all(dir);
}

TEST(CliErrors, CalibrateBadBudgetsAndText) {
  const std::string calib = source_path("data/tinystories-calib.txt");
  const std::string out = testing::temp_path("never.gguf");
  const std::string base = "calibrate -m " + kBundled + " -o " + out + " -f ";
  expect_error(base + calib + " --threshold 1.5", "--threshold");
  expect_error(base + calib + " --threshold -0.1", "--threshold must be in [0, 1), found -0.1");
  expect_error(base + calib + " --kv-budget -1", "--kv-budget must be in (0, 1], found -1");
  expect_error(base + calib + " --error-budget nan", "--error-budget must be in (0, 1], found nan");
  expect_error(base + calib + " --kv-budget 0", "--kv-budget");
  expect_error(base + calib + " --error-budget 2", "--error-budget");
  expect_error(base + calib + " --threshold 0.1 --kv-budget 0.5", "exactly one");
  expect_error(base + calib + " --threshold 0.1 --rope sideways", "--rope");
  expect_error(base + calib + " --threshold 0.1 --method magic", "--method");
  expect_error(base + calib + " --kv-budget 0.01", "cannot be met");
  const std::string tiny = testing::temp_path("tiny.txt");
  std::ofstream(tiny) << "Once upon a time.";
  expect_error(base + tiny + " --threshold 0.1", "are needed");
  std::filesystem::remove(tiny);
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST(CliErrors, CorruptCompressionMetadata) {
  // A compressed file whose recorded ranks exceed the head width is refused by name.
  const std::string out = testing::temp_path("c.gguf");
  Outcome c = run("calibrate -m " + kBundled + " -f " + source_path("data/tinystories-calib.txt") +
                  " --threshold 0.1 --tokens 1024 -o " + out);
  ASSERT_EQ(c.status, 0) << c.out;
  std::ifstream in(out, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  // eigenkv.key_ranks is a uint32 array: find it and overwrite its first element with 99.
  const std::string key = "eigenkv.key_ranks";
  const size_t at = bytes.find(key);
  ASSERT_NE(at, std::string::npos);
  const size_t first = at + key.size() + 4 + 4 + 8;  // value type, element type, count
  bytes[first] = 99;
  bytes[first + 1] = bytes[first + 2] = bytes[first + 3] = 0;
  std::ofstream(out, std::ios::binary) << bytes;
  expect_error("info -m " + out, "rank 99");
  std::filesystem::remove(out);
}

TEST(CliErrors, UnknownSubcommand) {
  Outcome o = run("frobnicate");
  EXPECT_NE(o.status, 0);
  EXPECT_LT(o.status, 128);
}

}  // namespace
}  // namespace eigenkv
