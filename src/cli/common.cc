#include "cli/common.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "model/save.h"
#include "util/error.h"
#include "util/files.h"
#include "util/threads.h"

namespace eigenkv::cli {

void add_model_flags(CLI::App* app, ModelFlags& flags, bool required) {
  auto* m = app->add_option("-m,--model", flags.model,
                            "model: a .gguf file or a Hugging Face directory (config.json + "
                            "safetensors + tokenizer.json)");
  if (required) m->required();
  app->add_option("-t,--threads", flags.threads,
                  "threads (default: OMP_NUM_THREADS, else all cores)")
      ->check(CLI::PositiveNumber);
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
