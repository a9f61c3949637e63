// eigenkv perplexity: PPL of a text (DESIGN.md §5), optionally KLD against a base model.
#include "eval/perplexity.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/progress.h"

namespace eigenkv::cli {
namespace {

struct PerplexityFlags {
  ModelFlags model;
  std::string file;
  int64_t ctx = 256;
  int64_t max_windows = 0;
  bool decode = false;
  bool llamacpp = false;
  std::string kld_base;
  bool json = false;
};

void run(const PerplexityFlags& f) {
  report_on_rank_zero_only();  // under mpirun every rank ends with the whole result
  auto model = load_model(f.model);
  std::unique_ptr<model::Model> base;
  if (!f.kld_base.empty()) base = model::Model::load(f.kld_base);
  const std::string text = read_text_file(f.file);
  const double t0 = now_seconds();
  // llama-perplexity tokenizes without parsing special tokens: its protocol does too.
  const bool special = parse_special_text() && !f.llamacpp;
  const std::vector<int32_t> ids = model->tokenizer().encode(text, true, special);
  const double tokenize_seconds = now_seconds() - t0;
  if (base) {
    EKV_CHECK(base->tokenizer().encode(text, true, special) == ids, f.kld_base,
              ": the base model tokenizes the text differently; KLD needs the same vocabulary");
  }
  const bool past_context = warn_past_trained_context(*model, f.ctx);
  eval::PerplexityOptions options;
  options.ctx = f.ctx;
  options.max_windows = f.max_windows;
  options.decode = f.decode;
  options.llamacpp_protocol = f.llamacpp;
  eval::PerplexityResult r = eval::perplexity(*model, ids, options, base.get());
  if (f.json) {
    nlohmann::json out = {{"ppl", r.ppl},
                          {"nll_mean", r.nll_mean},
                          {"nll_stderr", r.nll_stderr},
                          {"tokens_scored", r.tokens_scored},
                          {"windows", r.windows},
                          {"ctx", f.ctx},
                          {"past_trained_context", past_context},
                          {"protocol", f.llamacpp ? "llama.cpp" : "eigenkv"},
                          {"text_tokens", ids.size()},
                          {"tokenize_seconds", tokenize_seconds},
                          {"seconds", r.seconds},
                          {"cache_types", model->cache_types().describe()},
                          {"kv_bytes_per_token", model->kv_bytes_per_token()}};
    if (r.has_kld) {
      out["kld_mean"] = r.kld_mean;
      out["kld_p99"] = r.kld_p99;
      out["top1_agree"] = r.top1_agree;
    }
    std::printf("%s\n", out.dump().c_str());
    return;
  }
  std::printf("model:         %s\n", f.model.model.c_str());
  std::printf("text:          %s (%zu tokens)\n", f.file.c_str(), ids.size());
  std::printf("windows:       %lld of %lld tokens\n", static_cast<long long>(r.windows),
              static_cast<long long>(f.ctx));
  std::printf("tokens scored: %lld\n", static_cast<long long>(r.tokens_scored));
  std::printf("PPL:           %.4f +/- %.4f\n", r.ppl, r.ppl * r.nll_stderr);
  if (r.has_kld) {
    std::printf("KLD vs base:   mean %.6f, p99 %.6f\n", r.kld_mean, r.kld_p99);
    std::printf("top-1 agree:   %.2f %%\n", 100.0 * r.top1_agree);
  }
  std::printf("time:          %.2f s (%.0f tokens/s)\n", r.seconds,
              r.seconds > 0 ? r.windows * f.ctx / r.seconds : 0.0);
}

}  // namespace

void register_perplexity(CLI::App& app) {
  auto flags = std::make_shared<PerplexityFlags>();
  CLI::App* cmd =
      app.add_subcommand("perplexity", "perplexity of a text file, and KLD vs a base model");
  add_model_flags(cmd, flags->model);
  cmd->add_option("-f,--file", flags->file, "text file to score")->required();
  cmd->add_option("--ctx", flags->ctx, "window size in tokens")
      ->check(number_in(int64_t{2}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--max-windows", flags->max_windows, "score at most this many windows")
      ->check(positive_number());
  cmd->add_flag("--decode", flags->decode,
                "feed each window one token at a time, as generation runs (decode kernels)");
  cmd->add_flag("--llamacpp-protocol", flags->llamacpp,
                "score as llama-perplexity does (BOS at each window start, second half of each "
                "window only), to compare with llama.cpp on the same file");
  cmd->add_option("--kld-base", flags->kld_base,
                  "base model: also report KL divergence from it and top-1 agreement");
  cmd->add_flag("--json", flags->json,
                "print one JSON object: ppl, nll_mean, tokens_scored, windows (+ kld_mean, "
                "kld_p99, top1_agree)");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
