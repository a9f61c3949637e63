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
#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cli/common.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "io/tensor_type.h"
#include "ops/dequant.h"
#include "ops/quant_mix.h"
#include "util/error.h"
#include "util/threads.h"

namespace eigenkv::cli {
namespace {

using io::TensorType;

// llama.cpp's GGML_QNT_VERSION: the block formats' version, written as
// general.quantization_version.
constexpr uint32_t kQuantizationVersion = 2;

// Keys llama-quantize drops: an output is one file, not the input's splits.
constexpr const char* kSplitKeys[] = {"split.no", "split.count", "split.tensors.count"};

// Rows per parallel chunk: whole rows, at least this many numbers, so a thread's float buffer
// stays small and there are chunks enough for every thread.
constexpr int64_t kChunkNumbers = 1 << 15;

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

// Converts `tensor` to `type` in chunks of whole rows over the OpenMP threads.
std::vector<uint8_t> convert(const io::TensorView& tensor, TensorType type) {
  const int64_t width = tensor.shape.back();
  const int64_t rows = tensor.numel() / width;
  const size_t in_row = io::tensor_bytes(tensor.type, width);
  const size_t out_row = io::tensor_bytes(type, width);
  std::vector<uint8_t> out(out_row * static_cast<size_t>(rows));
  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunkNumbers / width);
  const int64_t n_chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  std::exception_ptr error;
#pragma omp parallel
  {
    std::vector<float> buffer;
#pragma omp for schedule(dynamic)
    for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
      try {
        const int64_t first = chunk * rows_per_chunk;
        const int64_t n = std::min(rows_per_chunk, rows - first) * width;
        buffer.resize(static_cast<size_t>(n));
        ops::dequantize(tensor.type, tensor.data + first * in_row, buffer.data(), n);
        ops::quantize(type, buffer.data(), out.data() + first * out_row, n);
      } catch (...) {
#pragma omp critical(eigenkv_quantize_error)
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
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
  std::error_code ec;
  EKV_CHECK(!std::filesystem::is_directory(f.model, ec), f.model,
            ": is a directory; quantize takes a GGUF file (convert a Hugging Face model to GGUF "
            "first)");
  set_thread_count(f.threads);
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
    std::printf("[%3zu/%3zu] %-32s %-16s %5s -> %-5s %9.3f MB -> %9.3f MB%s%s\n", i + 1,
                plan.size(), tensor.name.c_str(), shape_text(tensor.shape).c_str(),
                type_name(tensor.type).c_str(), type_name(choice.type).c_str(),
                megabytes(tensor.nbytes), megabytes(nbytes), choice.note.empty() ? "" : "  ",
                choice.note.c_str());
    std::fflush(stdout);
  }
  w.write(f.out);
  std::printf("model size %.2f MB -> %.2f MB (%.2f bits per weight)", megabytes(total_in),
              megabytes(total_out),
              numbers > 0 ? 8.0 * static_cast<double>(total_out) / numbers : 0.0);
  if (fallbacks > 0) std::printf(", %d tensors in a fallback type", fallbacks);
  std::printf("\nwrote %s\n", f.out.c_str());
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto flags = std::make_shared<QuantizeFlags>();
  CLI::App* cmd = app.add_subcommand(
      "quantize", "write a GGUF model in a llama-quantize type mix (q8_0, q4_0, ..., q4_k_m)");
  cmd->add_option("-m,--model", flags->model,
                  "input model (GGUF input; for a Hugging Face directory convert first)")
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
