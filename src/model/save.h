// Writes a model, compressed or not, as one GGUF file (DESIGN.md §4): every weight the
// compression did not change in its stored type, byte for byte; the folded (rank-shaped)
// attention weights in the fold type; bases, norms and cache scales in float32; the source's
// metadata and tokenizer, and eigenkv.* keys describing the compression. The write is atomic
// (temporary file, then rename).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "io/gguf_writer.h"

#include "model/model.h"

namespace eigenkv::model {

inline constexpr int64_t kCompressedFormatVersion = 1;
// Where a GGUF written from a Hugging Face model keeps its tokenizer_config.json text (beside the
// standard tokenizer.huggingface.json).
inline constexpr const char* kEmbeddedTokenizerConfigKey = "tokenizer.huggingface.tokenizer_config";

struct SaveOptions {
  // The type of folded attention weights. Unset: float32 when the source layer's weights are
  // float32, else f16. A quantized type whose blocks do not divide a folded row falls back to f16
  // (and `notes` says so).
  std::optional<io::TensorType> fold_type;
  // The type each stored (not computed) weight matrix is written in, given its GGUF name, shape
  // (outer dimension first) and stored type; unset: its stored type, byte for byte. A weight
  // given another type is converted as the file is written, a chunk of rows at a time, so only
  // one converted tensor exists at once (`eigenkv quantize` of a Hugging Face directory).
  std::function<io::TensorType(const std::string& name, const std::vector<int64_t>& shape,
                               io::TensorType stored)>
      stored_type;
  // Called on the metadata last, before the tensors are written (e.g. general.file_type).
  std::function<void(io::GgufWriter&)> edit_metadata;
};

// Parses a fold type name: f32, f16, bf16 or a quantized type eigenkv writes (q8_0, q4_0, ...).
io::TensorType fold_type_from_name(const std::string& name);

// Returns notes on type fallbacks (empty when none).
// Throws Error, naming the model, when save_gguf cannot write it (its family has no GGUF writer
// yet, or Hugging Face rope_scaling): commands call it before their long work.
void check_can_save_gguf(const Model& model);

std::vector<std::string> save_gguf(const Model& model, const std::string& path,
                                   const SaveOptions& options = {});

}  // namespace eigenkv::model
