#include "cli/common.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <fstream>
#include <sstream>

#include "dist/comm.h"
#include "model/save.h"
#include "util/error.h"
#include "util/files.h"
#include "util/threads.h"

namespace eigenkv::cli {
namespace {

// A bound as a person writes it: 1048576, 0.5, 1e+30.
std::string bound_text(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.10g", v);
  return buf;
}

// The value as a finite number, or nullopt when the whole text is not one.
std::optional<double> parse_number(const std::string& text) {
  if (text.empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || errno == ERANGE || !std::isfinite(v)) return std::nullopt;
  return v;
}

// The value as the flag's error shows it: cut, control bytes escaped.
std::string shown(const std::string& text) { return quote_for_error(text, 40); }

CLI::Validator number_check(std::function<bool(double)> ok, std::string range,
                            std::string name) {
  return CLI::Validator(
      [ok = std::move(ok), range](std::string& text) -> std::string {
        const std::optional<double> v = parse_number(text);
        if (!v) return cat("must be a number ", range, ", found ", shown(text));
        if (!ok(*v)) return cat("must be ", range, ", found ", shown(text));
        return "";
      },
      range, std::move(name));
}

}  // namespace

CLI::Validator positive_number() {
  return number_check([](double v) { return v > 0; }, "greater than 0", "POSITIVE");
}

CLI::Validator non_negative_number() {
  return number_check([](double v) { return v >= 0; }, "0 or more", "NONNEGATIVE");
}

CLI::Validator number_in(double lo, double hi) {
  return number_check([lo, hi](double v) { return v >= lo && v <= hi; },
                      cat("in [", bound_text(lo), ", ", bound_text(hi), "]"), "RANGE");
}

bool warn_past_trained_context(const model::Model& model, int64_t ctx, const char* flag) {
  const int64_t trained = model.config().n_ctx_train;
  if (trained <= 0 || ctx <= trained) return false;
  if (!dist::Comm::world().root()) return true;
  std::fprintf(stderr,
               "eigenkv: warning: %s %lld is past the model's trained context of %lld positions; "
               "scores there mean little\n",
               flag, static_cast<long long>(ctx), static_cast<long long>(trained));
  return true;
}

void report_on_rank_zero_only() {
  const dist::Comm& comm = dist::Comm::world();
  if (!comm.root() && !std::freopen("/dev/null", "w", stdout)) {
    fail("cannot silence the output of rank ", comm.rank());
  }
}

void add_model_flags(CLI::App* app, ModelFlags& flags, bool required) {
  auto* m = app->add_option("-m,--model", flags.model,
                            "model: a .gguf file or a Hugging Face directory (config.json + "
                            "safetensors + tokenizer.json)");
  if (required) m->required();
  app->add_option("-t,--threads", flags.threads,
                  "threads (default: OMP_NUM_THREADS, else all cores)")
      ->check(positive_number());
  if (!required) return;  // the model only provides a tokenizer
  app->add_option("--cache-type-k", flags.cache_type_k,
                  "KV cache element type of keys: f32, f16, int8, int4 (q8_0/q4_0 accepted); "
                  "default f32, or the water-filled allotment a model stores");
  app->add_option("--cache-type-v", flags.cache_type_v, "the same for values");
}

kv::CacheTypes cache_types(const ModelFlags& flags, const model::Model& model) {
  kv::CacheTypes types = model.cache_types();
  if (!flags.cache_type_k.empty()) types.key = ops::kv_type_from_name(flags.cache_type_k);
  if (!flags.cache_type_v.empty()) types.value = ops::kv_type_from_name(flags.cache_type_v);
  return types;
}

std::unique_ptr<model::Model> load_model(const ModelFlags& flags) {
  set_thread_count(flags.threads);
  auto model = model::Model::load(flags.model);
  model->set_cache_types(cache_types(flags, *model));
  return model;
}

bool& parse_special_text() {
  static bool parse = true;
  return parse;
}

uint64_t& max_text_bytes() {
  static uint64_t limit = uint64_t{1} << 30;
  return limit;
}

std::string read_text_file(const std::string& path) {
  std::string text = read_regular_file(path, max_text_bytes(), "--max-text-bytes");
  EKV_CHECK(!text.empty(), path, ": the file is empty");
  return text;
}

std::string prompt_text(const std::string& prompt, const std::string& file) {
  EKV_CHECK(prompt.empty() || file.empty(), "give the text with -p or -f, not both");
  return file.empty() ? prompt : read_text_file(file);
}

void add_fold_type_flag(CLI::App* app, std::string& fold_type) {
  app->add_option("--fold-type", fold_type,
                  "type of the folded attention weights: f32, f16, bf16, q8_0, q4_0, ... "
                  "(default: f32 for a float32 model, else f16); every other tensor keeps its "
                  "stored type");
}

void save_model(const model::Model& model, const std::string& path, const std::string& fold_type) {
  model::SaveOptions options;
  if (!fold_type.empty()) options.fold_type = model::fold_type_from_name(fold_type);
  for (const std::string& note : model::save_gguf(model, path, options)) {
    std::fprintf(stderr, "eigenkv: note: %s\n", note.c_str());
  }
}

void print_tensor_line(size_t index, size_t count, const std::string& name,
                       const std::vector<int64_t>& shape, io::TensorType from, io::TensorType to,
                       size_t bytes_in, size_t bytes_out, const std::string& note) {
  std::string shape_text;
  for (int64_t d : shape) shape_text += (shape_text.empty() ? "" : " x ") + std::to_string(d);
  const std::string position =
      count > 0 ? std::to_string(index) + "/" + std::to_string(count) : std::to_string(index);
  std::printf("[%7s] %-32s %-16s %5s -> %-5s %9.3f MB -> %9.3f MB%s%s\n", position.c_str(),
              name.c_str(), shape_text.c_str(), std::string(io::tensor_type_info(from).name).c_str(),
              std::string(io::tensor_type_info(to).name).c_str(), 1e-6 * double(bytes_in),
              1e-6 * double(bytes_out), note.empty() ? "" : "  ", note.c_str());
  std::fflush(stdout);
}

void print_size_total(size_t total_in, size_t total_out, int64_t numbers, int fallbacks,
                      const std::string& out) {
  std::printf("model size %.2f MB -> %.2f MB (%.2f bits per weight)", 1e-6 * double(total_in),
              1e-6 * double(total_out),
              numbers > 0 ? 8.0 * static_cast<double>(total_out) / numbers : 0.0);
  if (fallbacks > 0) std::printf(", %d tensors in a fallback type", fallbacks);
  std::printf("\nwrote %s\n", out.c_str());
}

}  // namespace eigenkv::cli
