// eigenkv calibrate: compress a model's KV cache with Eigen Attention or StiefAttention and write
// the result.
#include "compress/calibrate.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "cli/common.h"
#include "compress/profile_plot.h"
#include "compress/stief.h"
#include "model/save.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/files.h"
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
  std::optional<double> threshold;  // exactly one of these three
  std::optional<double> error_budget;
  std::optional<double> kv_budget;
  int64_t tokens = 0;
  int64_t ctx = 256;
  int64_t error_windows = 8;
  std::string profile_json;
  std::string fold_type;
  bool json = false;
  // StiefAttention
  int64_t epochs = 10;
  double lr = 5e-3;
  uint64_t seed = 0;
  int64_t batch = 2;
  std::string ranks = "0.5,0.6,0.7,0.8,0.9";
  int64_t train_windows = 64;
  std::string heldout;
  std::string plot;
  std::string kv_budgets;
  bool shared_key = false;
};

compress::CalibrationOptions options_from(const CalibrateFlags& f, const model::Model& model) {
  compress::CalibrationOptions o;
  const int given = f.threshold.has_value() + f.error_budget.has_value() + f.kv_budget.has_value();
  EKV_CHECK(given == 1, "give exactly one of --threshold, --error-budget or --kv-budget (",
            given, " given)");
  // Written so that NaN fails every range.
  if (f.threshold) {
    EKV_CHECK(*f.threshold >= 0 && *f.threshold < 1, "--threshold must be in [0, 1), found ",
              *f.threshold);
    o.allotment = compress::Allotment::kThreshold;
    o.threshold = *f.threshold;
  } else if (f.error_budget) {
    EKV_CHECK(*f.error_budget > 0 && *f.error_budget <= 1,
              "--error-budget must be in (0, 1], found ", *f.error_budget);
    o.allotment = compress::Allotment::kErrorBudget;
    o.error_budget = *f.error_budget;
  } else {
    EKV_CHECK(*f.kv_budget > 0 && *f.kv_budget <= 1, "--kv-budget must be in (0, 1], found ",
              *f.kv_budget);
    o.allotment = compress::Allotment::kKvBudget;
    o.kv_budget = *f.kv_budget;
  }
  EKV_CHECK(f.method == "eigen" || f.method == "stief", "unknown --method '", f.method,
            "' (this build offers: eigen, stief)");
  if (model.config().rope()) {
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
  return o;
}

// What a compressed file records of its calibration text: the file's name (not its path, which
// may say more about the machine than the user wants to publish), size and a 64-bit FNV-1a hash.
std::string text_label(const std::string& path, const std::string& text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : text) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return cat(std::filesystem::path(path).filename().string(), " (", text.size(),
             " bytes, fnv1a64 ", hex, ")");
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

compress::StiefOptions stief_options_from(const CalibrateFlags& f, const model::Model& model) {
  compress::StiefOptions o;
  o.calibration = options_from(f, model);
  EKV_CHECK(o.calibration.allotment != compress::Allotment::kThreshold,
            "--method stief allots ranks from its error-rank profiles: give --error-budget or "
            "--kv-budget instead of --threshold");
  o.rank_fractions = compress::parse_rank_fractions(f.ranks);
  compress::candidate_ranks(model.config().head_dim, o.rank_fractions);  // checks the list
  o.training.epochs = f.epochs;
  o.training.lr = f.lr;
  o.training.seed = f.seed;
  o.training.batch = f.batch;
  o.training.shared_key = f.shared_key;
  o.train_windows = f.train_windows;
  o.profile_windows = f.error_windows;
  return o;
}

// The profiles of both methods as JSON, per layer (candidate ranks, calibration and held-out).
nlohmann::json stief_profile_json(const compress::StiefResult& r) {
  auto points = [](const compress::LayerProfile& p) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& c : p) {
      out.push_back({{"key_rank", c.key_rank},
                     {"value_rank", c.value_rank},
                     {"error", c.error},
                     {"cosine", c.cosine}});
    }
    return out;
  };
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& sl : r.layers) {
    nlohmann::json l = {{"eigen", points(sl.eigen_profile)},
                        {"stief", points(sl.stief_profile)},
                        {"epoch_loss", sl.epoch_loss},
                        {"kept_eigen", sl.kept_eigen},
                        {"seconds", sl.seconds}};
    if (!sl.eigen_heldout.empty()) {
      l["eigen_heldout"] = points(sl.eigen_heldout);
      l["stief_heldout"] = points(sl.stief_heldout);
    }
    if (sl.kept_eigen) {
      l["stief_trained"] = points(sl.trained_profile);
      if (!sl.trained_heldout.empty()) l["stief_trained_heldout"] = points(sl.trained_heldout);
    }
    layers.push_back(l);
  }
  return layers;
}

// "0.5,0.6": the --kv-budgets list.
std::vector<double> parse_budgets(const std::string& text) {
  std::vector<double> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    double b = 0;
    try {
      b = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    EKV_CHECK(used > 0 && used == item.size() && b > 0 && b <= 1, "--kv-budgets: '", item,
              "' is not a fraction in (0, 1]");
    out.push_back(b);
  }
  EKV_CHECK(!out.empty(), "--kv-budgets: no budgets in '", text, "'");
  return out;
}

// The output path for one budget: "{}" in the pattern replaced by the budget.
std::string output_for(const std::string& pattern, double budget) {
  const size_t at = pattern.find("{}");
  if (at == std::string::npos) return pattern;
  char text[32];
  std::snprintf(text, sizeof(text), "%g", budget);
  return pattern.substr(0, at) + text + pattern.substr(at + 2);
}

// Where the profiles go by default: beside the model, "out.gguf" -> "out.profile.json" and
// "out_{}.gguf" -> "out_profile.json".
std::string profile_beside(const std::string& out) {
  std::string base = out;
  if (base.size() > 5 && base.compare(base.size() - 5, 5, ".gguf") == 0)
    base.resize(base.size() - 5);
  const size_t at = base.find("{}");
  if (at != std::string::npos)
    return base.substr(0, at) + "profile" + base.substr(at + 2) + ".json";
  return base + ".profile.json";
}

nlohmann::json chosen_json(const compress::StiefResult& r) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& sl : r.layers) {
    out.push_back({{"key_rank", sl.chosen.key_rank},
                   {"value_rank", sl.chosen.value_rank},
                   {"error", sl.chosen.error},
                   {"cosine", sl.chosen.cosine}});
  }
  return out;
}

void print_stief_table(const compress::StiefResult& r) {
  std::printf("| layer | r_K | r_V | layer-output error | cosine | Eigen error at these ranks |\n");
  std::printf("|------:|----:|----:|-------------------:|-------:|---------------------------:|\n");
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const auto& sl = r.layers[l];
    double eigen_error = 0;
    for (const auto& c : sl.eigen_profile) {
      if (c.key_rank == sl.chosen.key_rank && c.value_rank == sl.chosen.value_rank)
        eigen_error = c.error;
    }
    std::printf("| %zu | %lld | %lld | %.5f | %.6f | %.5f%s |\n", l,
                static_cast<long long>(sl.chosen.key_rank),
                static_cast<long long>(sl.chosen.value_rank), sl.chosen.error, sl.chosen.cosine,
                eigen_error, sl.kept_eigen ? " (Eigen bases kept)" : "");
  }
}

// Refuses outputs that are inputs (the model, the texts) or each other, before any work.
void check_outputs(const CalibrateFlags& f, const std::vector<std::string>& models) {
  const std::vector<std::string> inputs = {f.model.model, f.file, f.heldout};
  for (const std::string& m : models) {
    std::vector<std::string> others = inputs;
    for (const std::string& other : models) {
      if (other != m) others.push_back(other);
    }
    check_output_path(m, "-o", others);
  }
  std::vector<std::string> all = inputs;
  all.insert(all.end(), models.begin(), models.end());
  if (!f.profile_json.empty()) check_output_path(f.profile_json, "--profile-json", all);
  if (!f.plot.empty()) {
    all.push_back(f.profile_json);
    check_output_path(f.plot, "--plot", all);
  }
}

void run_stief(const CalibrateFlags& flags) {
  CalibrateFlags f = flags;
  std::vector<double> budgets;
  if (!f.kv_budgets.empty()) {
    EKV_CHECK(!f.threshold && !f.error_budget && !f.kv_budget,
              "--kv-budgets replaces --kv-budget, --error-budget and --threshold");
    budgets = parse_budgets(f.kv_budgets);
    EKV_CHECK(budgets.size() == 1 || f.out.find("{}") != std::string::npos,
              "with several --kv-budgets, -o must contain {} (replaced by each budget)");
    f.kv_budget = budgets[0];
  }
  {
    std::vector<std::string> outs;
    for (double budget : budgets.empty() ? std::vector<double>{0.0} : budgets) {
      outs.push_back(budgets.empty() ? f.out : output_for(f.out, budget));
    }
    check_outputs(f, outs);
    if (f.profile_json.empty()) {
      std::vector<std::string> all = {f.model.model, f.file, f.heldout};
      all.insert(all.end(), outs.begin(), outs.end());
      check_output_path(profile_beside(f.out), "the profile beside -o", all);
    }
  }
  auto model = load_model(f.model);
  model::check_can_save_gguf(*model);  // before the long work
  compress::StiefOptions options = stief_options_from(f, *model);
  if (budgets.empty()) budgets = {options.calibration.kv_budget};
  const std::string text = read_text_file(f.file);
  options.calibration.source = text_label(f.file, text);
  const std::vector<int32_t> ids = model->tokenizer().encode(text, true, parse_special_text());
  std::vector<int32_t> heldout_ids;
  if (!f.heldout.empty()) {
    heldout_ids = model->tokenizer().encode(read_text_file(f.heldout), true, parse_special_text());
  }
  const int64_t full_bytes = model->kv_bytes_per_token();
  const int64_t head_dim = model->config().head_dim;
  compress::StiefResult r = compress::train_stief(*model, ids, heldout_ids, options);
  const model::ModelWeights original = model->weights();
  nlohmann::json outputs = nlohmann::json::array();
  if (!f.json) {
    std::printf("StiefAttention: %lld calibration tokens, trained on %lld, %lld epochs, %.1f s\n",
                static_cast<long long>(r.tokens), static_cast<long long>(r.train_tokens),
                static_cast<long long>(options.training.epochs), r.seconds);
  }
  for (double budget : budgets) {
    options.calibration.kv_budget = budget;
    model->set_weights(original);
    compress::apply_stief(*model, r, options);
    const std::string path = output_for(f.out, budget);
    save_model(*model, path, f.fold_type);
    const int64_t bytes = model->kv_bytes_per_token();
    outputs.push_back({{"output", path},
                       {"kv_budget", budget},
                       {"kv_bytes_per_token", bytes},
                       {"kv_fraction", static_cast<double>(bytes) / full_bytes},
                       {"chosen", chosen_json(r)}});
    if (!f.json) {
      print_stief_table(r);
      std::printf("KV bytes/token: %lld of %lld (%.1f %%)\nwrote %s\n",
                  static_cast<long long>(bytes), static_cast<long long>(full_bytes),
                  100.0 * bytes / full_bytes, path.c_str());
    }
  }
  const nlohmann::json layers = stief_profile_json(r);
  const nlohmann::json profiles = {{"head_dim", head_dim},
                                   {"candidate_ranks", r.ranks},
                                   {"compression", nlohmann::json::parse(r.metadata_json)},
                                   {"layers", layers}};
  const std::string profile_path = f.profile_json.empty() ? profile_beside(f.out) : f.profile_json;
  std::ofstream profile_file(profile_path);
  profile_file << profiles.dump(1) << "\n";
  EKV_CHECK(profile_file.good(), profile_path, ": cannot write the error-rank profiles");
  if (!f.plot.empty()) compress::write_profile_svg(r, head_dim, f.plot);
  if (f.json) {
    nlohmann::json out = outputs.back();
    out["profile_json"] = profile_path;
    out["calibration_tokens"] = r.tokens;
    out["train_tokens"] = r.train_tokens;
    out["seconds"] = r.seconds;
    out["kv_bytes_per_token_full"] = full_bytes;
    out["outputs"] = outputs;
    out["layers"] = layers;
    std::printf("%s\n", out.dump().c_str());
  }
}

void run(const CalibrateFlags& f) {
  if (f.method == "stief") {
    run_stief(f);
    return;
  }
  EKV_CHECK(f.kv_budgets.empty(), "--kv-budgets is for --method stief; give one --kv-budget");
  check_outputs(f, {f.out});
  auto model = load_model(f.model);
  model::check_can_save_gguf(*model);  // before the long work
  compress::CalibrationOptions options = options_from(f, *model);
  const std::string text = read_text_file(f.file);
  options.source = text_label(f.file, text);
  const std::vector<int32_t> ids = model->tokenizer().encode(text, true, parse_special_text());
  const int64_t full_bytes = model->kv_bytes_per_token();
  compress::CalibrationResult r = compress::calibrate_eigen(*model, ids, options);
  save_model(*model, f.out, f.fold_type);
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
      "calibrate",
      "compress the KV cache (Eigen Attention or StiefAttention) from calibration text; writes a "
      "GGUF");
  add_model_flags(cmd, flags->model);
  cmd->add_option("-f,--file", flags->file, "calibration text")->required();
  cmd->add_option("-o,--output", flags->out, "compressed model to write (.gguf)")->required();
  add_fold_type_flag(cmd, flags->fold_type);
  cmd->add_option("--method", flags->method, "eigen (Eigen Attention) or stief (StiefAttention)")
      ->capture_default_str();
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
      ->check(positive_number());
  cmd->add_option("--ctx", flags->ctx, "calibration window in tokens")
      ->check(number_in(int64_t{2}, int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--error-windows", flags->error_windows,
                  "windows used to measure layer-output errors")
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_option("--profile-json", flags->profile_json,
                  "write the error-rank profiles here (stief: default OUT.profile.json beside "
                  "the model)");
  cmd->add_flag("--json", flags->json, "print a JSON summary");
  cmd->add_option("--epochs", flags->epochs, "stief: training epochs (0 keeps the Eigen bases)")
      ->check(number_in(int64_t{0}, int64_t{100000}))
      ->capture_default_str();
  cmd->add_option("--lr", flags->lr, "stief: Adam learning rate (cosine schedule)")
      ->capture_default_str();
  cmd->add_option("--seed", flags->seed, "stief: seed of the window order")->capture_default_str();
  cmd->add_option("--batch", flags->batch, "stief: windows per training step")
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_option("--ranks", flags->ranks, "stief: candidate ranks as fractions of the head width")
      ->capture_default_str();
  cmd->add_option("--train-windows", flags->train_windows,
                  "stief: calibration windows the bases are trained on")
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_option("--heldout", flags->heldout,
                  "stief: held-out text; its layer-output errors are added to the profiles");
  cmd->add_option("--plot", flags->plot, "stief: write the error-rank profiles as an SVG plot");
  cmd->add_flag("--shared-key-basis", flags->shared_key,
                "stief: one key basis per layer shared by its KV heads (the paper's choice), "
                "started from the eigenbasis of their summed Gram matrices");
  cmd->add_option("--kv-budgets", flags->kv_budgets,
                  "stief: several KV budgets from one training, e.g. 0.5,0.7; -o must then "
                  "contain {} (replaced by each budget)");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
