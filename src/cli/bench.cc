// eigenkv bench: prefill and decode speed at several context depths, as a markdown table or JSON.
#include "eval/bench.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "util/threads.h"

namespace eigenkv::cli {
namespace {

struct BenchFlags {
  ModelFlags model;
  int64_t n_prompt = 128;
  int64_t n_gen = 32;
  std::vector<int64_t> depths = {0};
  int repeats = 5;
  bool json = false;
};

void run(const BenchFlags& f) {
  auto model = load_model(f.model);
  eval::BenchOptions options;
  options.n_prompt = f.n_prompt;
  options.n_gen = f.n_gen;
  options.depths = f.depths;
  options.repeats = f.repeats;
  const double copy_bw = eval::measure_copy_bandwidth();
  std::vector<eval::BenchRow> rows = eval::run_bench(*model, options, copy_bw);
  const int threads = thread_count();
  if (f.json) {
    nlohmann::json out = {{"model", model->path()},
                          {"threads", threads},
                          {"copy_bandwidth_gb_s", copy_bw / 1e9},
                          {"kv_bytes_per_token", model->kv_bytes_per_token()},
                          {"weight_bytes", model->weights().decode_bytes_read()},
                          {"rows", nlohmann::json::array()}};
    for (const auto& r : rows) {
      nlohmann::json row = {{"test", r.test},
                            {"n_tokens", r.n_tokens},
                            {"depth", r.depth},
                            {"tokens_per_s", r.tokens_per_s},
                            {"tokens_per_s_min", r.tokens_per_s_min},
                            {"tokens_per_s_max", r.tokens_per_s_max}};
      if (r.test == "tg") {
        row["bytes_per_token"] = r.bytes_per_token;
        row["bandwidth_fraction"] = r.bandwidth_fraction;
        row["attention_us_per_token"] = r.attention_us_per_token;
      }
      out["rows"].push_back(row);
    }
    std::printf("%s\n", out.dump().c_str());
    return;
  }
  std::printf("model: %s, threads: %d, copy bandwidth: %.2f GB/s (median of 5)\n\n",
              model->path().c_str(), threads, copy_bw / 1e9);
  std::printf(
      "| test | depth | tokens/s (median) | min | max | attention us/token | bytes/token | of copy "
      "bandwidth |\n");
  std::printf(
      "|------|------:|------------------:|----:|----:|-------------------:|------------:|---------"
      "---------:|\n");
  for (const auto& r : rows) {
    const std::string name = r.test + std::to_string(r.n_tokens);
    if (r.test == "tg") {
      std::printf("| %s | %lld | %.1f | %.1f | %.1f | %.1f | %.3g | %.1f %% |\n", name.c_str(),
                  static_cast<long long>(r.depth), r.tokens_per_s, r.tokens_per_s_min,
                  r.tokens_per_s_max, r.attention_us_per_token, r.bytes_per_token,
                  100.0 * r.bandwidth_fraction);
    } else {
      std::printf("| %s | %lld | %.1f | %.1f | %.1f | | | |\n", name.c_str(),
                  static_cast<long long>(r.depth), r.tokens_per_s, r.tokens_per_s_min,
                  r.tokens_per_s_max);
    }
  }
}

}  // namespace

void register_bench(CLI::App& app) {
  auto flags = std::make_shared<BenchFlags>();
  CLI::App* cmd = app.add_subcommand("bench", "prefill/decode tokens per second at context depths");
  add_model_flags(cmd, flags->model);
  cmd->add_option("-p,--n-prompt", flags->n_prompt, "prompt tokens per prefill test (0: skip)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("-n,--n-gen", flags->n_gen, "tokens per decode test (0: skip)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("-d,--depth", flags->depths, "context depths, comma-separated")
      ->delimiter(',')
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("-r,--repeats", flags->repeats, "repeats per test (median reported)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_flag("--json", flags->json,
                "print JSON rows: test, depth, tokens_per_s, bandwidth_fraction");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
