// eigenkv calibrate: compress a model's KV cache with Eigen Attention and write the result.
#include "compress/calibrate.h"

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "model/save.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/progress.h"

namespace eigenkv::cli {
namespace {

struct CalibrateFlags {
  ModelFlags model;
  std::string file;
  std::string out;
  std::string method = "eigen";
  std::string rope = "pre";
  std::string rank_rule = "energy";
  double threshold = -1;
  double error_budget = -1;
  double kv_budget = -1;
  int64_t tokens = 0;
  int64_t ctx = 256;
  int64_t error_windows = 8;
  std::string profile_json;
  bool json = false;
};

compress::CalibrationOptions options_from(const CalibrateFlags& f, const model::Model& model) {
  compress::CalibrationOptions o;
  const int given = (f.threshold >= 0) + (f.error_budget >= 0) + (f.kv_budget >= 0);
  EKV_CHECK(given == 1, "give exactly one of --threshold, --error-budget or --kv-budget");
  if (f.threshold >= 0) {
    EKV_CHECK(f.threshold < 1, "--threshold must be in [0, 1), found ", f.threshold);
    o.allotment = compress::Allotment::kThreshold;
    o.threshold = f.threshold;
  } else if (f.error_budget >= 0) {
    EKV_CHECK(f.error_budget > 0 && f.error_budget <= 1, "--error-budget must be in (0, 1], found ",
              f.error_budget);
    o.allotment = compress::Allotment::kErrorBudget;
    o.error_budget = f.error_budget;
  } else {
    EKV_CHECK(f.kv_budget > 0 && f.kv_budget <= 1, "--kv-budget must be in (0, 1], found ",
              f.kv_budget);
    o.allotment = compress::Allotment::kKvBudget;
    o.kv_budget = f.kv_budget;
  }
  EKV_CHECK(f.method == "eigen", "unknown --method '", f.method, "' (this build offers: eigen)");
  if (model.config().position == model::PositionKind::kRope) {
    EKV_CHECK(f.rope == "pre" || f.rope == "post", "--rope must be pre or post, found '", f.rope,
              "'");
    o.key_mode = model::key_mode_from_name(f.rope);
  } else {
    o.key_mode = model::KeyMode::kNoRope;
  }
  EKV_CHECK(f.rank_rule == "energy" || f.rank_rule == "singular",
            "--rank-rule must be energy or singular, found '", f.rank_rule, "'");
  o.rule = f.rank_rule == "energy" ? compress::RankRule::kEnergy : compress::RankRule::kSingular;
  o.ctx = f.ctx;
  o.max_tokens = f.tokens;
  o.error_windows = f.error_windows;
  o.source = f.file;
  return o;
}

nlohmann::json profile_json(const compress::CalibrationResult& r) {
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& lc : r.layers) {
    nlohmann::json points = nlohmann::json::array();
    for (const auto& c : lc.profile) {
      points.push_back({{"threshold", c.threshold},
                        {"key_rank", c.key_rank},
                        {"value_rank", c.value_rank},
                        {"error", c.error},
                        {"cosine", c.cosine}});
    }
    layers.push_back({{"profile", points},
                      {"chosen",
                       {{"key_rank", lc.chosen.key_rank},
                        {"value_rank", lc.chosen.value_rank},
                        {"error", lc.chosen.error}}}});
  }
  return layers;
}

void run(const CalibrateFlags& f) {
  auto model = load_model(f.model);
  const compress::CalibrationOptions options = options_from(f, *model);
  const std::string text = read_text_file(f.file);
  const std::vector<int32_t> ids = model->tokenizer().encode(text, true);
  const int64_t full_bytes = model->kv_bytes_per_token();
  compress::CalibrationResult r = compress::calibrate_eigen(*model, ids, options);
  model::save_gguf(*model, f.out);
  if (!f.profile_json.empty()) {
    std::ofstream(f.profile_json) << profile_json(r).dump(1) << "\n";
  }
  const int64_t bytes = model->kv_bytes_per_token();
  if (f.json) {
    nlohmann::json out = {{"output", f.out},
                          {"calibration_tokens", r.tokens},
                          {"seconds", r.seconds},
                          {"kv_bytes_per_token", bytes},
                          {"kv_bytes_per_token_full", full_bytes},
                          {"kv_fraction", static_cast<double>(bytes) / full_bytes},
                          {"layers", profile_json(r)}};
    std::printf("%s\n", out.dump().c_str());
    return;
  }
  std::printf("calibrated on %lld tokens of %s in %.1f s (key mode %s)\n",
              static_cast<long long>(r.tokens), f.file.c_str(), r.seconds,
              model::key_mode_name(options.key_mode));
  std::printf("| layer | r_K | r_V | eps | layer-output error | cosine |\n");
  std::printf("|------:|----:|----:|----:|-------------------:|-------:|\n");
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const auto& c = r.layers[l].chosen;
    std::printf("| %zu | %lld | %lld | %.2f | %.5f | %.6f |\n", l,
                static_cast<long long>(c.key_rank), static_cast<long long>(c.value_rank),
                c.threshold, c.error, c.cosine);
  }
  std::printf("KV bytes/token: %lld of %lld (%.1f %%)\n", static_cast<long long>(bytes),
              static_cast<long long>(full_bytes), 100.0 * bytes / full_bytes);
  std::printf("wrote %s\n", f.out.c_str());
}

}  // namespace

void register_calibrate(CLI::App& app) {
  auto flags = std::make_shared<CalibrateFlags>();
  CLI::App* cmd = app.add_subcommand(
      "calibrate", "compress the KV cache (Eigen Attention) from calibration text; writes a GGUF");
  add_model_flags(cmd, flags->model);
  cmd->add_option("-f,--file", flags->file, "calibration text")->required();
  cmd->add_option("-o,--output", flags->out, "compressed model to write (.gguf)")->required();
  cmd->add_option("--method", flags->method, "eigen")->capture_default_str();
  cmd->add_option("--threshold", flags->threshold,
                  "one error threshold EPS in [0, 1) for every layer (energy kept: 1 - EPS)");
  cmd->add_option("--error-budget", flags->error_budget,
                  "per-layer relative output error budget in (0, 1]: ranks allotted per layer");
  cmd->add_option("--kv-budget", flags->kv_budget,
                  "KV cache size as a fraction of the uncompressed one, in (0, 1]: the ranks "
                  "with the least summed layer error that fit");
  cmd->add_option("--rope", flags->rope, "key basis before (pre) or after (post) RoPE")
      ->capture_default_str();
  cmd->add_option("--rank-rule", flags->rank_rule,
                  "energy (eigenvalues) or singular (singular values, as the authors' code)")
      ->capture_default_str();
  cmd->add_option("--tokens", flags->tokens, "use at most N calibration tokens")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--ctx", flags->ctx, "calibration window in tokens")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--error-windows", flags->error_windows,
                  "windows used to measure layer-output errors")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--profile-json", flags->profile_json, "write the error-rank profiles here");
  cmd->add_flag("--json", flags->json, "print a JSON summary");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
