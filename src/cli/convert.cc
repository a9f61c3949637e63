// eigenkv convert: a Hugging Face directory to one GGUF file, in F32, F16 or BF16, or straight
// into a llama-quantize type mix (the job of llama.cpp's Python converter, then llama-quantize).
//
// The model is read as Model::load reads it and written by save_gguf, the one GGUF writer of a
// model, with the family's tensor map (fused q/k/v where the family fuses them, biases and
// position embeddings where it has them), the family's llama.cpp metadata keys, the
// tokenizer.json embedded, and the same vocabulary as tokenizer.ggml.* keys for llama.cpp. Each
// weight matrix is converted as the file is written, a chunk of rows at a time, so no float32
// copy of the model is ever made; norms and biases stay F32.
#include <cstdio>
#include <filesystem>
#include <string>

#include "cli/common.h"
#include "io/gguf.h"
#include "model/model.h"
#include "model/save.h"
#include "ops/dequant.h"
#include "ops/quant_mix.h"
#include "util/error.h"
#include "util/files.h"
#include "util/threads.h"

namespace eigenkv::cli {
namespace {

using io::TensorType;

// llama_ftype of the float outputs.
struct FloatType {
  const char* name;
  TensorType type;
  uint32_t file_type;
};
constexpr FloatType kFloatTypes[] = {
    {"f32", TensorType::kF32, 0}, {"f16", TensorType::kF16, 1}, {"bf16", TensorType::kBF16, 32}};

struct ConvertFlags {
  std::string model;
  std::string out;
  std::string type = "f16";
  int threads = 0;
};

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}


void run(const ConvertFlags& f) {
  std::error_code ec;
  EKV_CHECK(std::filesystem::is_directory(f.model, ec), f.model,
            ": not a Hugging Face directory (convert reads config.json and safetensors; "
            "`eigenkv quantize` rewrites a GGUF file)");
  set_thread_count(f.threads);
  check_output_path(f.out, "-o", {f.model});
  convert_hf_to_gguf(f.model, f.out, f.type);
}

}  // namespace

void convert_hf_to_gguf(const std::string& dir, const std::string& out, const std::string& type) {
  std::optional<FloatType> float_type;
  for (const FloatType& t : kFloatTypes) {
    if (lower(type) == t.name) float_type = t;
  }
  const std::optional<ops::QuantMix> mix = ops::quant_mix_from_name(type);
  EKV_CHECK(float_type || mix, "--type '", type, "' is not f32, f16, bf16 or a quantization type (",
            ops::quant_mix_names(), ")");
  const auto model = model::Model::load(dir);
  model::check_can_save_gguf(*model);
  const model::ModelConfig& c = model->config();
  ops::QuantModelInfo info;
  info.architecture = c.arch.name;
  info.n_layers = c.n_layers;
  info.n_heads = c.n_heads;
  info.n_kv_heads = c.n_kv_heads;
  info.has_output = !c.tied_embeddings;
  const std::string type_label =
      float_type ? float_type->name : std::string(ops::quant_mix_name(*mix));
  std::printf("converting %s (%s, Hugging Face) to %s (%s), %d threads\n", dir.c_str(),
              c.arch.name.c_str(), out.c_str(), type_label.c_str(), thread_count());
  size_t index = 0, matrices_in = 0, matrices_out = 0;
  int fallbacks = 0;
  model::SaveOptions options;
  options.stored_type = [&](const std::string& name, const std::vector<int64_t>& shape,
                            TensorType stored) {
    TensorType chosen = stored;
    std::string note;
    if (float_type) {
      chosen = float_type->type;
    } else {
      const ops::TensorChoice choice = ops::choose_tensor_type(*mix, name, shape, stored, info);
      chosen = choice.type;
      note = choice.note;
    }
    EKV_CHECK(chosen == stored || ops::can_dequantize(stored), dir, ": tensor '", name,
              "' has type ", io::tensor_type_info(stored).name, ", which eigenkv cannot read");
    const size_t in = io::tensor_bytes(stored, shape[0] * shape[1]);
    const size_t written = io::tensor_bytes(chosen, shape[0] * shape[1]);
    matrices_in += in;
    matrices_out += written;
    fallbacks += !note.empty();
    print_tensor_line(++index, 0, name, shape, stored, chosen, in, written, note);
    return chosen;
  };
  options.edit_metadata = [&](io::GgufWriter& w) {
    if (mix) {
      w.set_int("general.quantization_version", kQuantizationVersion);
      w.set_int("general.file_type", ops::mix_file_type(*mix));
    } else {
      w.set_int("general.file_type", float_type->file_type);
    }
  };
  for (const std::string& note : model::save_gguf(*model, out, options)) {
    std::fprintf(stderr, "eigenkv: note: %s\n", note.c_str());
  }
  // Norms and biases (written as F32) are the same size on both sides.
  size_t total_out = 0;
  int64_t numbers = 0;
  const io::GgufFile written(out);
  for (const io::TensorView& t : written.tensors()) {
    total_out += t.nbytes;
    numbers += t.numel();
  }
  print_size_total(total_out - matrices_out + matrices_in, total_out, numbers, fallbacks, out);
}

void register_convert(CLI::App& app) {
  auto flags = std::make_shared<ConvertFlags>();
  CLI::App* cmd = app.add_subcommand(
      "convert", "write a Hugging Face model directory as one GGUF file that llama.cpp loads");
  cmd->add_option("-m,--model", flags->model,
                  "Hugging Face directory (config.json, safetensors, tokenizer.json)")
      ->required();
  cmd->add_option("-o,--output", flags->out, "output .gguf")->required();
  cmd->add_option("--type", flags->type,
                  "f32, f16, bf16, or a type mix: " + ops::quant_mix_names() + " (default f16)");
  cmd->add_option("-t,--threads", flags->threads,
                  "threads (default: OMP_NUM_THREADS, else all cores)")
      ->check(positive_number());
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
