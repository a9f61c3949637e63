// Writes a model, compressed or not, as one GGUF file (DESIGN.md §4): its tensors in float32 with
// any bases folded in (rank-shaped attention weights), the source's metadata and tokenizer, and
// eigenkv.* keys describing the compression. The write is atomic (temporary file, then rename).
#pragma once

#include <string>

#include "model/model.h"

namespace eigenkv::model {

inline constexpr int64_t kCompressedFormatVersion = 1;
// Where a GGUF written from a Hugging Face model keeps its tokenizer_config.json text (beside the
// standard tokenizer.huggingface.json).
inline constexpr const char* kEmbeddedTokenizerConfigKey = "tokenizer.huggingface.tokenizer_config";

void save_gguf(const Model& model, const std::string& path);

}  // namespace eigenkv::model
