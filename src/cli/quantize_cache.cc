// eigenkv quantize-cache: allot 8/4/0 bits to the cached directions of a compressed model by
// reverse water-filling under a bytes-per-token budget, and write the model with its allotment.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "compress/cache_bits.h"
#include "model/save.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/files.h"

namespace eigenkv::cli {
namespace {

struct QuantizeCacheFlags {
  ModelFlags model;
  std::string file;
  std::string out;
  double budget = 0.25;
  int64_t tokens = 16384;
  int64_t ctx = 256;
  bool json = false;
  std::string fold_type;
};

void run(const QuantizeCacheFlags& f) {
  check_output_path(f.out, "-o", {f.model.model, f.file});
  auto model = load_model(f.model);
  model::check_can_save_gguf(*model);  // before the long work
  const std::string text = read_text_file(f.file);
  const std::vector<int32_t> ids = model->tokenizer().encode(text, true, parse_special_text());
  compress::CacheBitsOptions o;
  o.budget = f.budget;
  o.ctx = f.ctx;
  o.max_tokens = f.tokens;
  o.progress = !f.json;
  const compress::CacheBitsResult r = compress::water_fill_cache(*model, ids, o);
  nlohmann::json report = nlohmann::json::parse(model->compression_json());
  nlohmann::json layers = nlohmann::json::array();
  for (size_t l = 0; l < r.keys.size(); ++l) {
    layers.push_back({{"key_rank", r.keys[l].rank},
                      {"key_bits8", r.keys[l].n8},
                      {"value_rank", r.values[l].rank},
                      {"value_bits8", r.values[l].n8}});
  }
  report["cache_allotment"] = {{"budget", f.budget},
                               {"bytes_per_token", r.bytes_per_token},
                               {"f16_full_bytes_per_token", r.f16_full_bytes},
                               {"retained_energy", r.retained},
                               {"calibration_tokens", r.tokens},
                               {"layers", layers}};
  model->set_compression_json(report.dump());
  save_model(*model, f.out, f.fold_type);
  if (f.json) {
    std::printf("%s\n", report["cache_allotment"].dump().c_str());
    return;
  }
  std::printf("cache allotment (reverse water-filling over %lld calibration tokens)\n",
              static_cast<long long>(r.tokens));
  std::printf("| layer | K rank | K 8-bit | V rank | V 8-bit |\n|---:|---:|---:|---:|---:|\n");
  for (size_t l = 0; l < r.keys.size(); ++l) {
    std::printf("| %zu | %lld | %lld | %lld | %lld |\n", l,
                static_cast<long long>(r.keys[l].rank), static_cast<long long>(r.keys[l].n8),
                static_cast<long long>(r.values[l].rank), static_cast<long long>(r.values[l].n8));
  }
  std::printf("KV bytes per token: %lld of %lld for f16 (%.1f %%, budget %.1f %%); energy kept: %.4f\n",
              static_cast<long long>(r.bytes_per_token), static_cast<long long>(r.f16_full_bytes),
              100.0 * r.bytes_per_token / r.f16_full_bytes, 100.0 * f.budget, r.retained);
  std::printf("wrote %s\n", f.out.c_str());
}

}  // namespace

void register_quantize_cache(CLI::App& app) {
  auto flags = std::make_shared<QuantizeCacheFlags>();
  CLI::App* cmd = app.add_subcommand(
      "quantize-cache",
      "allot 8/4/0 bits per cached direction of a compressed model (reverse water-filling)");
  add_model_flags(cmd, flags->model);
  cmd->add_option("-f,--file", flags->file, "calibration text")->required();
  cmd->add_option("-o,--output", flags->out, "output .gguf")->required();
  add_fold_type_flag(cmd, flags->fold_type);
  cmd->add_option("--budget", flags->budget,
                  "KV bytes per token as a fraction of the uncompressed f16 cache, (0, 1]")
      ->capture_default_str();
  cmd->add_option("--tokens", flags->tokens, "calibration tokens used (0: all)")
      ->check(non_negative_number())
      ->capture_default_str();
  cmd->add_option("--ctx", flags->ctx, "calibration window")->check(number_in(2, 1 << 20))
      ->capture_default_str();
  cmd->add_flag("--json", flags->json, "print the allotment as JSON");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
