// Flags and helpers shared by the subcommands.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "io/tensor_type.h"
#include "model/model.h"

namespace eigenkv::cli {

struct ModelFlags {
  std::string model;
  int threads = 0;  // 0: all cores
  std::string cache_type_k;  // empty: the model's default (f32, or mixed for a water-filled model)
  std::string cache_type_v;
};

// -m/--model (required unless `required` is false), -t/--threads, and (where the model runs)
// --cache-type-k/--cache-type-v.
void add_model_flags(CLI::App* app, ModelFlags& flags, bool required = true);
// The cache types the flags ask for, starting from the model's default.
kv::CacheTypes cache_types(const ModelFlags& flags, const model::Model& model);
// Sets the thread count, loads the model and sets its cache types; prints nothing.
std::unique_ptr<model::Model> load_model(const ModelFlags& flags);

// Checks of a flag's number that name the value and its range in the error ("must be a positive
// number, found '0'"), where CLI11's own print "Value 0 not in range 0.000000 to 1.797...e308"
// (and say so of a value that is no number at all).
CLI::Validator positive_number();      // > 0
CLI::Validator non_negative_number();  // >= 0
CLI::Validator number_in(double lo, double hi);  // in [lo, hi]

// Prints a warning to stderr when `ctx` (the flag `flag`) is past the model's trained context:
// the model never saw those positions, so a perplexity there means little (stories260K, trained
// on 2048: 4.5 at --ctx 1024, 32.8 at 4096). Returns whether ctx is past it; under mpirun only
// rank 0 prints.
bool warn_past_trained_context(const model::Model& model, int64_t ctx, const char* flag = "--ctx");

// Under mpirun, a subcommand whose ranks all end with the whole result (perplexity, eval) lets
// rank 0 alone report it: the other ranks' standard output goes to /dev/null.
void report_on_rank_zero_only();

// --fold-type: the type of folded attention weights in a written model ("" = auto).
void add_fold_type_flag(CLI::App* app, std::string& fold_type);
// Writes the model with that fold type; prints the type fallbacks, if any, to stderr.
void save_model(const model::Model& model, const std::string& path, const std::string& fold_type);

// The whole file; throws Error naming the file when it cannot be read, is not a regular file
// (a FIFO or /dev/zero would hang or grow without end), is over max_text_bytes() or is empty.
std::string read_text_file(const std::string& path);
// --max-text-bytes: 1 GiB unless set.
uint64_t& max_text_bytes();
// Whether special tokens written in a text ("<s>", "<|endoftext|>") are read as those tokens: true
// unless --no-parse-special (Hugging Face's and llama.cpp's default).
bool& parse_special_text();
// The text given by -p or read from -f (exactly one of them may be set; both empty gives "").
std::string prompt_text(const std::string& prompt, const std::string& file);

// llama.cpp's GGML_QNT_VERSION (the block formats' version), written with a quantized type mix
// as general.quantization_version.
inline constexpr uint32_t kQuantizationVersion = 2;

// One line per tensor of a conversion: index (of count, when count > 0), name, shape, types,
// sizes and a type fallback's note.
void print_tensor_line(size_t index, size_t count, const std::string& name,
                       const std::vector<int64_t>& shape, io::TensorType from, io::TensorType to,
                       size_t bytes_in, size_t bytes_out, const std::string& note);
// The closing line: total sizes, bits per weight, fallbacks, the file written.
void print_size_total(size_t total_in, size_t total_out, int64_t numbers, int fallbacks,
                      const std::string& out);

// A Hugging Face directory written as GGUF in `type`: f32, f16, bf16 or a quantization mix
// (eigenkv convert; also eigenkv quantize of a directory). Prints a line per weight matrix.
void convert_hf_to_gguf(const std::string& dir, const std::string& out, const std::string& type);

// Each subcommand registers itself on the app; its callback runs the job.
void register_generate(CLI::App& app);
void register_perplexity(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_info(CLI::App& app);
void register_bench(CLI::App& app);
void register_calibrate(CLI::App& app);
void register_compare(CLI::App& app);
void register_quantize_cache(CLI::App& app);
void register_quantize(CLI::App& app);
void register_convert(CLI::App& app);
void register_eval(CLI::App& app);
void register_serve(CLI::App& app);

}  // namespace eigenkv::cli
