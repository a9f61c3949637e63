// Hugging Face safetensors reader: one file (SafetensorsFile) or a model directory with one file or
// several shards (SafetensorsModel), all presented as TensorViews over memory-mapped bytes.
//
// The file format: an 8-byte little-endian header length N, then N bytes of UTF-8 JSON
//   {"<tensor name>": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<string>": "<string>", ...}}
// then the data section; offsets are relative to its start. Every field is validated against the
// file's bounds before a view is made, so a truncated or corrupt file gives an Error naming the
// file and tensor, never a crash. Tensor data is not necessarily aligned: read it with memcpy or
// check the pointer before using it as a float*.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/mapped_file.h"
#include "io/tensor_view.h"

namespace eigenkv::io {

class SafetensorsFile {
 public:
  // Maps and parses `path`. Throws Error on any malformed content.
  explicit SafetensorsFile(const std::string& path);
  // Parses bytes already in memory (tests, fuzzing); `label` names them in errors. The bytes must
  // outlive the object.
  SafetensorsFile(const uint8_t* data, size_t size, std::string label);

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return label_; }

  // In the order of their data in the file.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find_tensor(const std::string& name) const;
  const TensorView& tensor(const std::string& name) const;  // throws when absent
  // The header's "__metadata__" object (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  void parse(const uint8_t* data, size_t size);

  MappedFile file_;
  std::string label_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> tensor_index_;
  std::map<std::string, std::string> metadata_;
};

// A Hugging Face model directory: `model.safetensors`, or the shards named by
// `model.safetensors.index.json` ("weight_map": tensor name -> shard file), as transformers looks
// for them (the single file wins when both exist).
//
// Tied weights that transformers stored once are resolved: it drops the duplicate and records
// `"__metadata__": {"<dropped name>": "<kept name>"}`, so find_tensor("model.embed_tokens.weight")
// returns a view of lm_head.weight's bytes under the asked-for name.
class SafetensorsModel {
 public:
  // Throws Error naming the directory or file when there is no model file, a shard is missing, a
  // tensor appears in two shards, or any file is malformed.
  explicit SafetensorsModel(const std::string& dir);

  SafetensorsModel(const SafetensorsModel&) = delete;
  SafetensorsModel& operator=(const SafetensorsModel&) = delete;

  const std::string& dir() const { return dir_; }

  // Stored tensors and resolved aliases alike; nullptr when neither.
  const TensorView* find_tensor(const std::string& name) const;
  const TensorView& tensor(const std::string& name) const;  // throws naming the directory
  // Every name find_tensor resolves, sorted: stored tensors and aliases.
  std::vector<std::string> tensor_names() const;
  // Alias name -> stored name, for the tied weights found in the metadata.
  const std::map<std::string, std::string>& aliases() const { return alias_targets_; }
  // The files' "__metadata__" merged (the first shard, in name order, wins a disagreement).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The files read, in name order.
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> stored_;
  std::map<std::string, TensorView> alias_views_;
  std::map<std::string, std::string> alias_targets_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace eigenkv::io
