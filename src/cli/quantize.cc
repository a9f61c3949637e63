// eigenkv quantize: rewrite a GGUF model with llama-quantize's type mixes (Q8_0 ... Q4_K_M),
// giving each tensor the type llama.cpp would and the blocks its reference quantizers write.
//
// Tensors are converted one at a time, in chunks of rows spread over the threads, each chunk
// dequantized into a small float buffer and quantized from it, so no tensor is ever held whole
// in float32. The quantized bytes of every tensor are kept in memory until the file is written
// (GgufWriter borrows them); tensors whose type does not change are copied from the input's
// memory map byte for byte. Tensors are written in the input's order, metadata in the sorted
// order GgufFile keeps it, with general.file_type and general.quantization_version set as
// llama-quantize sets them.
//
// A Hugging Face directory is read as Model::load reads it and written by save_gguf (the one GGUF
// writer of a model), each weight matrix converted as the file is written: the job of llama.cpp's
// converter followed by llama-quantize, in one step and without a float32 copy.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cli/common.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "io/tensor_type.h"
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

// llama.cpp's GGML_QNT_VERSION: the block formats' version, written as
// general.quantization_version.
constexpr uint32_t kQuantizationVersion = 2;

// Keys llama-quantize drops: an output is one file, not the input's splits.
constexpr const char* kSplitKeys[] = {"split.no", "split.count", "split.tensors.count"};

struct QuantizeFlags {
  std::string model;
  std::string out;
  std::string type;
  bool allow_requantize = false;
  int threads = 0;
};

std::string type_name(TensorType type) { return std::string(io::tensor_type_info(type).name); }

bool is_quantized(TensorType type) {
  return type != TensorType::kF32 && type != TensorType::kF16 && type != TensorType::kBF16 &&
         type != TensorType::kF64;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s;
  for (int64_t d : shape) s += (s.empty() ? "" : " x ") + std::to_string(d);
  return s;
}

double megabytes(size_t bytes) { return static_cast<double>(bytes) / 1e6; }

// `tensor` converted to `type` (ops::convert_rows: chunks of rows over the threads).
std::vector<uint8_t> convert(const io::TensorView& tensor, TensorType type) {
  const int64_t width = tensor.shape.back();
  const int64_t rows = tensor.numel() / width;
  std::vector<uint8_t> out(io::tensor_bytes(type, rows * width));
  ops::convert_rows(tensor.type, tensor.data, type, out.data(), rows, width);
  return out;
}

// One line per tensor as it is planned: index, name, shape, types, sizes, a fallback's note.
void print_tensor(size_t index, size_t count, const std::string& name,
                  const std::vector<int64_t>& shape, TensorType from, TensorType to,
                  size_t bytes_in, size_t bytes_out, const std::string& note) {
  std::printf("[%3zu/%3zu] %-32s %-16s %5s -> %-5s %9.3f MB -> %9.3f MB%s%s\n", index, count,
              name.c_str(), shape_text(shape).c_str(), type_name(from).c_str(),
              type_name(to).c_str(), megabytes(bytes_in), megabytes(bytes_out),
              note.empty() ? "" : "  ", note.c_str());
  std::fflush(stdout);
}

void print_total(size_t total_in, size_t total_out, int64_t numbers, int fallbacks,
                 const std::string& out) {
  std::printf("model size %.2f MB -> %.2f MB (%.2f bits per weight)", megabytes(total_in),
              megabytes(total_out),
              numbers > 0 ? 8.0 * static_cast<double>(total_out) / numbers : 0.0);
  if (fallbacks > 0) std::printf(", %d tensors in a fallback type", fallbacks);
  std::printf("\nwrote %s\n", out.c_str());
}

// A Hugging Face directory: the model is loaded as Model::load does (its q/k rows reordered for
// GGUF's rotary layout, as llama.cpp's converter does) and written by save_gguf with each weight
// matrix in the mix's type, converted as the file is written; norms stay F32.
void run_hf(const QuantizeFlags& f, ops::QuantMix mix) {
  const auto model = model::Model::load(f.model);
  const model::ModelConfig& c = model->config();
  ops::QuantModelInfo info;
  info.architecture = c.arch.name;
  info.n_layers = c.n_layers;
  info.n_heads = c.n_heads;
  info.n_kv_heads = c.n_kv_heads;
  info.has_output = !c.tied_embeddings;
  const size_t count = (c.tied_embeddings ? 1 : 2) + 7 * static_cast<size_t>(c.n_layers);
  std::printf("quantizing %s (Hugging Face) to %s (%s), %d threads\n", f.model.c_str(),
              f.out.c_str(), std::string(ops::quant_mix_name(mix)).c_str(), thread_count());
  size_t index = 0, matrices_in = 0, matrices_out = 0;
  int fallbacks = 0;
  model::SaveOptions options;
  options.stored_type = [&](const std::string& name, const std::vector<int64_t>& shape,
                            TensorType stored) {
    const ops::TensorChoice choice = ops::choose_tensor_type(mix, name, shape, stored, info);
    EKV_CHECK(choice.type == stored || ops::can_dequantize(stored), f.model, ": tensor '", name,
              "' has type ", type_name(stored), ", which eigenkv cannot read");
    const size_t in = io::tensor_bytes(stored, shape[0] * shape[1]);
    const size_t out = io::tensor_bytes(choice.type, shape[0] * shape[1]);
    matrices_in += in;
    matrices_out += out;
    fallbacks += !choice.note.empty();
    print_tensor(++index, count, name, shape, stored, choice.type, in, out, choice.note);
    return choice.type;
  };
  options.edit_metadata = [mix](io::GgufWriter& w) {
    w.set_int("general.quantization_version", kQuantizationVersion);
    w.set_int("general.file_type", ops::mix_file_type(mix));
  };
  model::save_gguf(*model, f.out, options);
  // The norms (and anything else written as F32) are the same size on both sides.
  size_t total_out = 0;
  int64_t numbers = 0;
  const io::GgufFile written(f.out);
  for (const io::TensorView& t : written.tensors()) {
    total_out += t.nbytes;
    numbers += t.numel();
  }
  print_total(total_out - matrices_out + matrices_in, total_out, numbers, fallbacks, f.out);
}

struct Plan {
  const io::TensorView* tensor;
  ops::TensorChoice choice;
};

void run(const QuantizeFlags& f) {
  const auto mix = ops::quant_mix_from_name(f.type);
  EKV_CHECK(mix.has_value(), "--type '", f.type, "' is not a quantization type (",
            ops::quant_mix_names(), ")");
  set_thread_count(f.threads);
  check_output_path(f.out, "-o", {f.model});
  std::error_code ec;
  if (std::filesystem::is_directory(f.model, ec)) return run_hf(f, *mix);
  const io::GgufFile in(f.model);
  const ops::QuantModelInfo info = ops::quant_model_info(in);

  // Every choice and refusal first, so that a bad tensor stops the run before any work.
  std::vector<Plan> plan;
  for (const io::TensorView& tensor : in.tensors()) {
    const ops::TensorChoice choice =
        ops::choose_tensor_type(*mix, tensor.name, tensor.shape, tensor.type, info);
    if (choice.type != tensor.type) {
      EKV_CHECK(!is_quantized(tensor.type) || f.allow_requantize, f.model, ": tensor '",
                tensor.name, "' is already ", type_name(tensor.type),
                "; requantizing loses accuracy and is refused unless --allow-requantize");
      EKV_CHECK(ops::can_dequantize(tensor.type), f.model, ": tensor '", tensor.name, "' has type ",
                type_name(tensor.type), ", which eigenkv cannot read");
      EKV_CHECK(ops::can_quantize(choice.type), "tensor '", tensor.name, "': eigenkv cannot write ",
                type_name(choice.type));
    }
    plan.push_back({&tensor, choice});
  }

  io::GgufWriter w;
  w.copy_metadata(in);
  for (const char* key : kSplitKeys) w.remove(key);
  w.set_int("general.quantization_version", kQuantizationVersion);
  w.set_int("general.file_type", ops::mix_file_type(*mix));

  std::printf("quantizing %s to %s (%s), %d threads\n", f.model.c_str(), f.out.c_str(),
              std::string(ops::quant_mix_name(*mix)).c_str(), thread_count());
  std::vector<std::vector<uint8_t>> converted;  // borrowed by the writer until write()
  converted.reserve(plan.size());
  size_t total_in = 0, total_out = 0;
  int64_t numbers = 0;
  int fallbacks = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    const io::TensorView& tensor = *plan[i].tensor;
    const ops::TensorChoice& choice = plan[i].choice;
    const uint8_t* data = tensor.data;
    size_t nbytes = tensor.nbytes;
    if (choice.type != tensor.type) {
      converted.push_back(convert(tensor, choice.type));
      data = converted.back().data();
      nbytes = converted.back().size();
    }
    w.add_tensor(tensor.name, choice.type, tensor.shape, data, nbytes);
    total_in += tensor.nbytes;
    total_out += nbytes;
    numbers += tensor.numel();
    fallbacks += !choice.note.empty();
    print_tensor(i + 1, plan.size(), tensor.name, tensor.shape, tensor.type, choice.type,
                 tensor.nbytes, nbytes, choice.note);
  }
  w.write(f.out);
  print_total(total_in, total_out, numbers, fallbacks, f.out);
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto flags = std::make_shared<QuantizeFlags>();
  CLI::App* cmd = app.add_subcommand(
      "quantize", "write a GGUF model in a llama-quantize type mix (q8_0, q4_0, ..., q4_k_m)");
  cmd->add_option("-m,--model", flags->model,
                  "input model: a GGUF file, or a Hugging Face directory (F32/F16/BF16 "
                  "safetensors)")
      ->required();
  cmd->add_option("-o,--output", flags->out, "output .gguf")->required();
  cmd->add_option("--type", flags->type, "type mix: " + ops::quant_mix_names())->required();
  cmd->add_flag("--allow-requantize", flags->allow_requantize,
                "allow converting tensors that are already quantized (loses accuracy)");
  cmd->add_option("-t,--threads", flags->threads,
                  "threads (default: OMP_NUM_THREADS, else all cores)")
      ->check(CLI::PositiveNumber);
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
