// Model::load: finds out what `path` is (GGUF file or Hugging Face directory) and builds the model.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace eigenkv::model {
namespace {

namespace fs = std::filesystem;

class GgufSource : public TensorSource {
 public:
  explicit GgufSource(const io::GgufFile& file) : file_(file) {}
  const io::TensorView* find(const std::string& name) const override {
    return file_.find_tensor(name);
  }
  std::string label() const override { return file_.path(); }

 private:
  const io::GgufFile& file_;
};

class SafetensorsSource : public TensorSource {
 public:
  explicit SafetensorsSource(const io::SafetensorsModel& model) : model_(model) {}
  const io::TensorView* find(const std::string& name) const override {
    return model_.find_tensor(name);
  }
  std::string label() const override { return model_.dir(); }

 private:
  const io::SafetensorsModel& model_;
};

template <typename Range>
std::map<std::string, int64_t> count_types(const Range& tensors) {
  std::map<std::string, int64_t> counts;
  for (const io::TensorView& t : tensors) {
    ++counts[io::tensor_type_name(static_cast<uint32_t>(t.type))];
  }
  return counts;
}

std::unique_ptr<Model> load_gguf(const std::string& path) {
  io::GgufFile file(path);
  ModelConfig config = config_from_gguf(file);
  ModelWeights weights = load_gguf_weights(GgufSource(file), config);
  auto tokenizer = tok::tokenizer_from_gguf(file);
  EKV_CHECK(static_cast<int64_t>(tokenizer->vocab_size()) <= config.n_vocab, path,
            ": the tokenizer has ", tokenizer->vocab_size(), " tokens but the model only ",
            config.n_vocab, " embeddings");
  auto model = std::make_unique<Model>(std::move(config), std::move(weights), std::move(tokenizer),
                                       path);
  model->set_stored_types(count_types(file.tensors()));
  return model;
}

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) fail(path.string(), ": cannot open");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(path.string(), ": not valid JSON: ", e.what());
  }
}

std::unique_ptr<Model> load_hf(const std::string& dir) {
  const fs::path root(dir);
  const fs::path config_path = root / "config.json";
  EKV_CHECK(fs::exists(config_path), dir, ": no config.json (a Hugging Face model directory needs ",
            "config.json and model.safetensors)");
  nlohmann::json config_json = read_json(config_path);
  EKV_CHECK(config_json.is_object(), config_path.string(), ": expected a JSON object");
  ModelConfig config = config_from_hf(config_json, config_path.string());
  io::SafetensorsModel tensors(dir);
  ModelWeights weights = load_hf_weights(SafetensorsSource(tensors), config);
  const fs::path tokenizer_path = root / "tokenizer.json";
  EKV_CHECK(fs::exists(tokenizer_path), dir, ": no tokenizer.json");
  auto tokenizer = tok::tokenizer_from_json(tokenizer_path.string());
  EKV_CHECK(static_cast<int64_t>(tokenizer->vocab_size()) <= config.n_vocab, tokenizer_path.string(),
            ": ", tokenizer->vocab_size(), " tokens but the model only has ", config.n_vocab,
            " embeddings");
  std::vector<io::TensorView> stored;
  for (const std::string& name : tensors.tensor_names()) {
    if (!tensors.aliases().count(name)) stored.push_back(*tensors.find_tensor(name));
  }
  auto model = std::make_unique<Model>(std::move(config), std::move(weights), std::move(tokenizer),
                                       dir);
  model->set_stored_types(count_types(stored));
  return model;
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return load_hf(path);
  if (!fs::exists(path, ec)) fail(path, ": no such file or directory");
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  if (in.gcount() == 4 && std::string(magic, 4) == "GGUF") return load_gguf(path);
  fail(path, ": not a model (expected a .gguf file or a Hugging Face directory with config.json)");
}

}  // namespace eigenkv::model
