// eigenkv bench: prefill and decode speed at several context depths, as a markdown table or JSON.
#include "eval/bench.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "ops/kv_format.h"
#include "ops/matmul.h"
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
  bool kv_sweep = false;
  std::vector<std::string> cache_types = {"f16", "int8", "int4"};
  std::vector<std::string> compare;
};

std::string file_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Decode at each depth for every model and cache type, with ratios to the first model's f16
// cache measured in the same run.
void run_sweep(const BenchFlags& f) {
  std::vector<int64_t> depths = f.depths;
  if (depths == std::vector<int64_t>{0}) depths = {256, 512, 1024, 2048, 4096};
  auto base = load_model(f.model);
  struct Entry {
    std::string model;
    std::string cache;
    eval::KvSweepRow row;
  };
  std::vector<Entry> entries;
  auto sweep = [&](const model::Model& m, kv::CacheTypes types) {
    for (const eval::KvSweepRow& r : eval::run_kv_sweep(m, types, depths, f.n_gen, f.repeats))
      entries.push_back({file_name(m.path()), types.describe(), r});
  };
  const int64_t trained = base->config().n_ctx_train;
  sweep(*base, {ops::KvType::kF16, ops::KvType::kF16});
  std::vector<std::unique_ptr<model::Model>> models;
  models.push_back(std::move(base));
  for (const std::string& path : f.compare) models.push_back(model::Model::load(path));
  for (const auto& m : models) {
    if (m->has_cache_allotment()) {
      sweep(*m, m->cache_types());
      continue;
    }
    for (const std::string& name : f.cache_types) {
      const ops::KvType t = ops::kv_type_from_name(name);
      if (m == models.front() && t == ops::KvType::kF16) continue;  // the baseline, done
      sweep(*m, {t, t});
    }
  }
  auto baseline = [&](int64_t depth) {
    for (const Entry& e : entries)
      if (e.row.depth == depth) return e.row;  // the first entries are the baseline's
    return eval::KvSweepRow{};
  };
  const int threads = thread_count();
  if (f.json) {
    nlohmann::json out = {{"threads", threads}, {"n_gen", f.n_gen}, {"trained_context", trained},
                          {"rows", nlohmann::json::array()}};
    for (const Entry& e : entries) {
      const eval::KvSweepRow b = baseline(e.row.depth);
      out["rows"].push_back({{"model", e.model},
                             {"cache", e.cache},
                             {"depth", e.row.depth},
                             {"kv_bytes_per_token", e.row.kv_bytes_per_token},
                             {"attention_us_per_token", e.row.attention_us_per_token},
                             {"tokens_per_s", e.row.tokens_per_s},
                             {"bytes_ratio", static_cast<double>(b.kv_bytes_per_token) /
                                                 e.row.kv_bytes_per_token},
                             {"attention_speedup",
                              b.attention_us_per_token / e.row.attention_us_per_token},
                             {"decode_speedup", e.row.tokens_per_s / b.tokens_per_s}});
    }
    std::printf("%s\n", out.dump().c_str());
    return;
  }
  std::printf("KV context sweep: decode %lld tokens at each depth, %d threads; ratios against %s "
              "with an f16 cache at the same depth, same run.\n",
              static_cast<long long>(f.n_gen), threads, entries.front().model.c_str());
  if (depths.back() > trained) {
    std::printf("Depths beyond %lld (the model's trained context) run the real weights past it: "
                "the speed is meaningful, the text would not be.\n",
                static_cast<long long>(trained));
  }
  std::printf("\n| model | cache | KV bytes/token | depth | attention us/token | decode tok/s | "
              "bytes f16/this | attention speedup | decode speedup |\n");
  std::printf("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Entry& e : entries) {
    const eval::KvSweepRow b = baseline(e.row.depth);
    std::printf("| %s | %s | %lld | %lld | %.1f | %.1f | %.2f | %.2f | %.2f |\n",
                e.model.c_str(), e.cache.c_str(), static_cast<long long>(e.row.kv_bytes_per_token),
                static_cast<long long>(e.row.depth), e.row.attention_us_per_token,
                e.row.tokens_per_s,
                static_cast<double>(b.kv_bytes_per_token) / e.row.kv_bytes_per_token,
                b.attention_us_per_token / e.row.attention_us_per_token,
                e.row.tokens_per_s / b.tokens_per_s);
  }
}

void run(const BenchFlags& f) {
  if (f.kv_sweep) return run_sweep(f);
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
                          {"prefill_path", ops::prefill_path_name()},
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
  std::printf(
      "model: %s, threads: %d, copy bandwidth: %.2f GB/s (median of 5), prefill of quantized "
      "matrices: %s\n\n",
      model->path().c_str(), threads, copy_bw / 1e9, ops::prefill_path_name());
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
      ->check(non_negative_number())
      ->capture_default_str();
  cmd->add_option("-n,--n-gen", flags->n_gen, "tokens per decode test (0: skip)")
      ->check(non_negative_number())
      ->capture_default_str();
  cmd->add_option("-d,--depth", flags->depths, "context depths, comma-separated")
      ->delimiter(',')
      ->check(non_negative_number())
      ->capture_default_str();
  cmd->add_option("-r,--repeats", flags->repeats, "repeats per test (median reported)")
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_flag("--kv-sweep", flags->kv_sweep,
                "decode at each depth (default 256..4096) per cache type and model, with ratios "
                "to the f16 cache of -m");
  cmd->add_option("--cache-types", flags->cache_types, "cache types of the sweep")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--compare", flags->compare,
                  "more models for the sweep (e.g. low-rank ones), comma-separated")
      ->delimiter(',');
  cmd->add_flag("--json", flags->json,
                "print JSON rows: test, depth, tokens_per_s, bandwidth_fraction");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
