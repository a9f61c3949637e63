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
// A Hugging Face directory goes to convert_hf_to_gguf (eigenkv convert) with the mix.
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

// `tensor` converted to `type` (ops::convert_rows: chunks of rows over the threads).
std::vector<uint8_t> convert(const io::TensorView& tensor, TensorType type) {
  const int64_t width = tensor.shape.back();
  const int64_t rows = tensor.numel() / width;
  std::vector<uint8_t> out(io::tensor_bytes(type, rows * width));
  ops::convert_rows(tensor.type, tensor.data, type, out.data(), rows, width);
  return out;
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
  if (std::filesystem::is_directory(f.model, ec)) return convert_hf_to_gguf(f.model, f.out, f.type);
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
    print_tensor_line(i + 1, plan.size(), tensor.name, tensor.shape, tensor.type, choice.type,
                 tensor.nbytes, nbytes, choice.note);
  }
  w.write(f.out);
  print_size_total(total_in, total_out, numbers, fallbacks, f.out);
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
      ->check(positive_number());
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
