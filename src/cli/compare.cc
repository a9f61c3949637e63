// eigenkv compare: a compressed model beside its original, in one run: KV bytes per token,
// perplexity, KL divergence, top-1 agreement and decode speed, with ratios.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "eval/bench.h"
#include "eval/perplexity.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace eigenkv::cli {
namespace {

struct CompareFlags {
  ModelFlags model;
  std::string base;
  std::string file;
  int64_t ctx = 256;
  int64_t max_windows = 0;
  int64_t n_gen = 32;
  int64_t depth = -1;
  int repeats = 3;
  bool json = false;
};

void run(const CompareFlags& f) {
  auto model = load_model(f.model);
  auto base = model::Model::load(f.base);
  const std::string text = read_text_file(f.file);
  const std::vector<int32_t> ids = base->tokenizer().encode(text, true, parse_special_text());
  EKV_CHECK(model->tokenizer().encode(text, true, parse_special_text()) == ids,
            "the two models tokenize the text differently; compare needs the same vocabulary");
  warn_past_trained_context(*base, f.ctx);
  eval::PerplexityOptions po;
  po.ctx = f.ctx;
  po.max_windows = f.max_windows;
  const eval::PerplexityResult base_ppl = eval::perplexity(*base, ids, po);
  const eval::PerplexityResult ppl = eval::perplexity(*model, ids, po, base.get());

  eval::BenchOptions bo;
  bo.n_prompt = 0;
  bo.n_gen = f.n_gen;
  bo.depths = {f.depth >= 0
                   ? f.depth
                   : std::max<int64_t>(0, std::min(base->config().n_ctx_train, f.ctx) - f.n_gen)};
  bo.repeats = f.repeats;
  const double bw = eval::measure_copy_bandwidth(3);
  const eval::BenchRow base_tg = eval::run_bench(*base, bo, bw).at(0);
  const eval::BenchRow tg = eval::run_bench(*model, bo, bw).at(0);

  const double kv_base = static_cast<double>(base->kv_bytes_per_token());
  const double kv = static_cast<double>(model->kv_bytes_per_token());
  if (f.json) {
    nlohmann::json out = {{"base",
                           {{"path", f.base},
                            {"kv_bytes_per_token", kv_base},
                            {"ppl", base_ppl.ppl},
                            {"tokens_per_s", base_tg.tokens_per_s}}},
                          {"model",
                           {{"path", f.model.model},
                            {"kv_bytes_per_token", kv},
                            {"ppl", ppl.ppl},
                            {"kld_mean", ppl.kld_mean},
                            {"kld_p99", ppl.kld_p99},
                            {"top1_agree", ppl.top1_agree},
                            {"tokens_per_s", tg.tokens_per_s}}},
                          {"kv_ratio", kv / kv_base},
                          {"ppl_ratio", ppl.ppl / base_ppl.ppl},
                          {"tokens_per_s_ratio", tg.tokens_per_s / base_tg.tokens_per_s},
                          {"decode_depth", bo.depths[0]},
                          {"windows", ppl.windows},
                          {"ctx", f.ctx}};
    std::printf("%s\n", out.dump().c_str());
    return;
  }
  std::printf("text %s: %lld windows of %lld tokens; decode tg%lld at depth %lld, median of %d\n\n",
              f.file.c_str(), static_cast<long long>(ppl.windows), static_cast<long long>(f.ctx),
              static_cast<long long>(f.n_gen), static_cast<long long>(bo.depths[0]), f.repeats);
  std::printf(
      "| model | KV bytes/token | PPL | KLD mean | KLD p99 | top-1 agree | decode tok/s |\n");
  std::printf(
      "|-------|---------------:|----:|---------:|--------:|------------:|-------------:|\n");
  std::printf("| original | %.0f | %.4f | 0 | 0 | 100 %% | %.1f |\n", kv_base, base_ppl.ppl,
              base_tg.tokens_per_s);
  std::printf("| compressed | %.0f | %.4f | %.5f | %.5f | %.2f %% | %.1f |\n", kv, ppl.ppl,
              ppl.kld_mean, ppl.kld_p99, 100.0 * ppl.top1_agree, tg.tokens_per_s);
  std::printf("| ratio | %.3f | %.4f | | | | %.3f |\n", kv / kv_base, ppl.ppl / base_ppl.ppl,
              tg.tokens_per_s / base_tg.tokens_per_s);
}

}  // namespace

void register_compare(CLI::App& app) {
  auto flags = std::make_shared<CompareFlags>();
  CLI::App* cmd = app.add_subcommand(
      "compare", "a compressed model beside its original: KV bytes, PPL, KLD, decode speed");
  add_model_flags(cmd, flags->model);
  cmd->add_option("--base", flags->base, "the original model")->required();
  cmd->add_option("-f,--file", flags->file, "evaluation text")->required();
  cmd->add_option("--ctx", flags->ctx, "perplexity window")
      ->check(number_in(int64_t{2}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--max-windows", flags->max_windows, "score at most this many windows")
      ->check(positive_number());
  cmd->add_option("-n,--n-gen", flags->n_gen, "decode tokens per speed test")
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_option("-d,--depth", flags->depth, "context depth of the speed test (default: ctx - n)")
      ->check(non_negative_number());
  cmd->add_option("-r,--repeats", flags->repeats, "speed repeats (median)")
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_flag("--json", flags->json, "print one JSON object");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
