// eigenkv under mpirun (OpenMPI): perplexity and zero-shot evaluation split over 2 and 3 ranks
// give exactly one process's numbers, errors on any rank end the whole job with that rank's message, and subcommands that do
// not split their work are refused. Skips where mpirun or the MPI build is absent.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "dist/comm.h"
#include "test_util.h"

namespace eigenkv {
namespace {

using testing::shared_path;
using testing::source_path;

// mpirun -np N (as root too, more ranks than cores allowed), or "" when it cannot run here.
std::string mpirun(int n) {
  if (!dist::built_with_mpi()) return "";
  int status = 0;
  testing::run_command("command -v mpirun >/dev/null 2>&1", &status);
  if (status != 0) return "";
  // In the sanitizer build, LeakSanitizer reports OpenMPI's own allocations at exit (its
  // components are unloaded by MPI_Finalize, so their frames cannot even be named for a
  // suppression): leak checking is off for the ranks. The same code runs leak-checked in the
  // single-process tests.
  const std::string env =
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 "
      "ASAN_OPTIONS=detect_leaks=0 ";
  const std::string launcher = env + "mpirun --oversubscribe -np ";
  // A machine where mpirun cannot start even two copies of `true` (a container without what
  // OpenMPI's launcher needs) skips these tests rather than failing them.
  static const bool can_launch = [&] {
    int s = 0;
    testing::run_command(env + "timeout 60 mpirun --oversubscribe -np 2 true >/dev/null 2>&1", &s);
    return s == 0;
  }();
  if (!can_launch) return "";
  return launcher + std::to_string(n) + " ";
}

#define EKV_REQUIRE_MPIRUN()                                                                  \
  if (mpirun(1).empty())                                                                      \
    GTEST_SKIP() << "skipped: "                                                               \
                 << (dist::built_with_mpi() ? "mpirun is not installed or cannot start processes" \
                                            : "this build has no MPI (-DEIGENKV_MPI)")

nlohmann::json perplexity_json(const std::string& launcher, const std::string& args) {
  int status = 0;
  const std::string out = testing::run_command(
      launcher + testing::eigenkv_binary() + " perplexity " + args + " --json -t 1 2>/dev/null",
      &status);
  EXPECT_EQ(status, 0) << launcher << args << "\n" << out;
  return status == 0 ? nlohmann::json::parse(out) : nlohmann::json::object();
}

TEST(Mpi, PerplexitySplitOverRanksEqualsOneProcess) {
  EKV_REQUIRE_MPIRUN();
  EKV_REQUIRE_SHARED("models/tinystories-c4-gqa.gguf");
  EKV_REQUIRE_SHARED("models/quantized/tinystories-c4-gqa-Q8_0.gguf");
  const std::string common = "-m " + shared_path("models/quantized/tinystories-c4-gqa-Q8_0.gguf") +
                             " --kld-base " + shared_path("models/tinystories-c4-gqa.gguf") +
                             " -f " + source_path("data/tinystories-eval.txt") + " --ctx 128";
  const std::string args = common + " --max-windows 23";
  const nlohmann::json one = perplexity_json("", args);
  ASSERT_TRUE(one.contains("ppl"));
  for (int n : {2, 3}) {
    const nlohmann::json split = perplexity_json(mpirun(n), args);
    ASSERT_TRUE(split.contains("ppl")) << n << " ranks";
    // The per-token numbers are gathered in window order, so every sum is the same sum.
    for (const char* key : {"ppl", "nll_mean", "nll_stderr", "kld_mean", "kld_p99", "top1_agree"}) {
      EXPECT_EQ(split[key].get<double>(), one[key].get<double>()) << key << " with " << n << " ranks";
    }
    EXPECT_EQ(split["tokens_scored"], one["tokens_scored"]);
    EXPECT_EQ(split["windows"], 23);
  }
  // llama.cpp's protocol and the decode path split the same way.
  const std::string decode = common + " --llamacpp-protocol --decode --max-windows 5";
  EXPECT_EQ(perplexity_json(mpirun(2), decode)["ppl"], perplexity_json("", decode)["ppl"]);
}

// Zero-shot items split over ranks: the same accuracies, agreements and token counts as one
// process (the per-item log-likelihoods are gathered in item order), for the model and its base.
TEST(Mpi, EvalSplitOverRanksEqualsOneProcess) {
  EKV_REQUIRE_MPIRUN();
  EKV_REQUIRE_SHARED("models/tinystories-c4-gqa.gguf");
  EKV_REQUIRE_SHARED("data/zeroshot/copa.jsonl");
  const std::string d = source_path("tests/data/zeroshot/");
  const std::string args =
      "eval -t 1 --json -m " + shared_path("models/quantized/tinystories-c4-gqa-Q8_0.gguf") +
      " --base " + shared_path("models/tinystories-c4-gqa.gguf") + " --tasks arc_easy=" + d +
      "tiny_arc.jsonl,winogrande=" + d + "tiny_winogrande.jsonl,copa=" +
      shared_path("data/zeroshot/copa.jsonl") + " --limit 30";
  auto run = [&](const std::string& launcher) {
    int status = 0;
    const std::string out =
        testing::run_command(launcher + testing::eigenkv_binary() + " " + args + " 2>/dev/null", &status);
    EXPECT_EQ(status, 0) << launcher << "\n" << out;
    nlohmann::json j = status == 0 ? nlohmann::json::parse(out) : nlohmann::json::object();
    for (auto& t : j["tasks"]) {  // timings differ; everything else must not
      for (const char* side : {"model", "base"}) {
        t[side].erase("seconds");
        t[side].erase("items_per_s");
      }
    }
    return j;
  };
  const nlohmann::json one = run("");
  ASSERT_EQ(one["tasks"].size(), 3u);
  for (int n : {2, 3}) EXPECT_EQ(run(mpirun(n)), one) << n << " ranks";
}

TEST(Mpi, AFailingRankEndsTheJobWithItsMessage) {
  EKV_REQUIRE_MPIRUN();
  const auto start = std::chrono::steady_clock::now();
  int status = 0;
  const std::string out = testing::run_command(
      mpirun(2) + testing::eigenkv_binary() + " perplexity -m " +
          source_path("models/stories260K.gguf") + " -f /nonexistent/text.txt 2>&1",
      &status);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(status, 0) << out;
  EXPECT_LT(seconds, 30.0) << "the job hung";
  EXPECT_NE(out.find("eigenkv: error: rank"), std::string::npos) << out;
  EXPECT_NE(out.find("/nonexistent/text.txt"), std::string::npos) << out;
}

TEST(Mpi, SubcommandsThatDoNotSplitAreRefused) {
  EKV_REQUIRE_MPIRUN();
  const std::string out_path = testing::temp_path("mpi_refused.gguf");
  int status = 0;
  const std::string out = testing::run_command(
      mpirun(2) + testing::eigenkv_binary() + " calibrate -m " +
          source_path("models/stories260K.gguf") + " -f " +
          source_path("data/tinystories-calib.txt") + " --kv-budget 0.5 -o " + out_path + " 2>&1",
      &status);
  EXPECT_NE(status, 0) << out;
  EXPECT_NE(out.find("only perplexity and eval split their work"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(out_path));
}

}  // namespace
}  // namespace eigenkv
