// Model::load: finds out what `path` is (GGUF file or Hugging Face directory) and builds the model.
#include <cmath>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/save.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/files.h"
#include "util/memory.h"

namespace eigenkv::model {
namespace {

namespace fs = std::filesystem;

// The weights borrow the mapped file's bytes, so the file stays mapped as long as any weight does.
class GgufSource : public TensorSource {
 public:
  explicit GgufSource(std::shared_ptr<const io::GgufFile> file) : file_(std::move(file)) {}
  const io::TensorView* find(const std::string& name) const override {
    return file_->find_tensor(name);
  }
  std::string label() const override { return file_->path(); }
  std::shared_ptr<const void> owner() const override { return file_; }

 private:
  std::shared_ptr<const io::GgufFile> file_;
};

class SafetensorsSource : public TensorSource {
 public:
  explicit SafetensorsSource(std::shared_ptr<const io::SafetensorsModel> model)
      : model_(std::move(model)) {}
  const io::TensorView* find(const std::string& name) const override {
    return model_->find_tensor(name);
  }
  std::string label() const override { return model_->dir(); }
  std::shared_ptr<const void> owner() const override { return model_; }

 private:
  std::shared_ptr<const io::SafetensorsModel> model_;
};

template <typename Range>
std::map<std::string, int64_t> count_types(const Range& tensors) {
  std::map<std::string, int64_t> counts;
  for (const io::TensorView& t : tensors) {
    ++counts[io::tensor_type_name(static_cast<uint32_t>(t.type))];
  }
  return counts;
}

// The per-layer attention shapes recorded in a compressed model's eigenkv.* keys.
std::vector<LayerSpec> read_compression(const io::GgufFile& file, const ModelConfig& c) {
  const int64_t version = file.get_int("eigenkv.version");
  EKV_CHECK(version == kCompressedFormatVersion, file.path(), ": eigenkv format version ", version,
            " is not supported (this build reads version ", kCompressedFormatVersion, ")");
  const KeyMode mode = key_mode_from_name(file.get_string("eigenkv.key_mode"));
  EKV_CHECK(mode != KeyMode::kFull, file.path(), ": eigenkv.key_mode 'full' is not a compression");
  EKV_CHECK((mode == KeyMode::kNoRope) == (!c.rope()), file.path(),
            ": eigenkv.key_mode '", key_mode_name(mode), "' does not fit the model's positions");
  const auto& key_ranks = file.get_number_array("eigenkv.key_ranks");
  const auto& value_ranks = file.get_number_array("eigenkv.value_ranks");
  EKV_CHECK(static_cast<int64_t>(key_ranks.size()) == c.n_layers &&
                static_cast<int64_t>(value_ranks.size()) == c.n_layers,
            file.path(), ": eigenkv ranks are given for ", key_ranks.size(), "/",
            value_ranks.size(), " layers, the model has ", c.n_layers);
  std::vector<LayerSpec> specs;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    LayerSpec s{mode, static_cast<int64_t>(key_ranks[l]), static_cast<int64_t>(value_ranks[l])};
    for (int64_t r : {s.key_rank, s.value_rank}) {
      EKV_CHECK(r >= 1 && r <= c.head_dim, file.path(), ": layer ", l, " has rank ", r,
                ", outside [1, head width ", c.head_dim, "]");
    }
    specs.push_back(s);
  }
  return specs;
}

// A water-filled model's cache allotment (eigenkv.cache.* keys and per-direction scale tensors),
// read into the layers; false when the file has none.
bool read_cache_allotment(const io::GgufFile& file, const TensorSource& source,
                          const ModelConfig& c, ModelWeights& weights) {
  if (!file.has("eigenkv.cache.key_bits8") && !file.has("eigenkv.cache.value_bits8")) return false;
  const auto& key_bits8 = file.get_number_array("eigenkv.cache.key_bits8");
  const auto& value_bits8 = file.get_number_array("eigenkv.cache.value_bits8");
  EKV_CHECK(static_cast<int64_t>(key_bits8.size()) == c.n_layers &&
                static_cast<int64_t>(value_bits8.size()) == c.n_layers,
            file.path(), ": eigenkv.cache allotment is given for ", key_bits8.size(), "/",
            value_bits8.size(), " layers, the model has ", c.n_layers);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = weights.layers[l];
    L.key_n8 = static_cast<int64_t>(key_bits8[l]);
    L.value_n8 = static_cast<int64_t>(value_bits8[l]);
    EKV_CHECK(L.key_n8 >= 0 && L.key_n8 <= L.key_rank && L.value_n8 >= 0 &&
                  L.value_n8 <= L.value_rank,
              file.path(), ": layer ", l, " gives 8 bits to ", L.key_n8, "/", L.value_n8,
              " directions of ", L.key_rank, "/", L.value_rank);
    L.key_sigma = load_vector(source, layer_name(kGgufKeySigmaName, l), c.n_kv_heads * L.key_rank);
    L.value_sigma =
        load_vector(source, layer_name(kGgufValueSigmaName, l), c.n_kv_heads * L.value_rank);
    for (const auto* sigma : {&L.key_sigma, &L.value_sigma}) {
      for (float x : *sigma) {
        EKV_CHECK(std::isfinite(x) && x >= 0, file.path(), ": layer ", l,
                  " has a cache scale of ", x, " (scales must be finite and >= 0)");
      }
    }
  }
  return true;
}

// A GGUF written from a Hugging Face model carries its tokenizer.json (and tokenizer_config.json)
// as text; the tokenizer.json reader takes a directory, so the texts are laid out in a private
// temporary one for the duration of the parse.
std::unique_ptr<tok::Tokenizer> embedded_hf_tokenizer(const io::GgufFile& file) {
  std::string dir_template = (fs::temp_directory_path() / "eigenkv_tokenizer_XXXXXX").string();
  EKV_CHECK(::mkdtemp(dir_template.data()) != nullptr, file.path(),
            ": cannot make a temporary directory for the embedded tokenizer");
  const fs::path dir(dir_template);
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{dir};
  std::ofstream(dir / "tokenizer.json", std::ios::binary)
      << file.get_string("tokenizer.huggingface.json");
  if (auto config = file.find_string(kEmbeddedTokenizerConfigKey)) {
    std::ofstream(dir / "tokenizer_config.json", std::ios::binary) << *config;
  }
  return tok::tokenizer_from_json((dir / "tokenizer.json").string());
}

std::unique_ptr<tok::Tokenizer> gguf_tokenizer(const io::GgufFile& file) {
  // A file eigenkv wrote from a Hugging Face directory has both: the tokenizer.json it came with
  // is the original, and the tokenizer.ggml keys beside it (for llama.cpp) encode the same ids.
  if (file.has("tokenizer.huggingface.json")) {
    return embedded_hf_tokenizer(file);
  }
  return tok::tokenizer_from_gguf(file);
}

bool is_gguf_file(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return false;
  uint64_t size = 0;
  const int fd = open_regular_file(path, &size);  // a FIFO or device is refused, not waited on
  char magic[4] = {};
  const ssize_t got = ::read(fd, magic, 4);
  ::close(fd);
  return got == 4 && std::string(magic, 4) == "GGUF";
}

std::unique_ptr<Model> load_gguf(const std::string& path) {
  auto mapped = std::make_shared<const io::GgufFile>(path);
  const io::GgufFile& file = *mapped;
  int64_t tensor_bytes = 0;
  for (const io::TensorView& t : file.tensors()) tensor_bytes += static_cast<int64_t>(t.nbytes);
  check_fits_in_memory(tensor_bytes, path + ": the weights");
  const GgufSource source(mapped);
  ModelConfig config = config_from_gguf(file);
  const bool compressed = file.has("eigenkv.version");
  std::vector<LayerSpec> specs;
  if (compressed) specs = read_compression(file, config);
  ModelWeights weights = load_gguf_weights(source, config, specs);
  EKV_CHECK(compressed || !file.has("eigenkv.cache.key_bits8"), path,
            ": a cache allotment without eigenkv.version (not a compressed model)");
  if (compressed) read_cache_allotment(file, source, config, weights);
  auto tokenizer = gguf_tokenizer(file);
  EKV_CHECK(static_cast<int64_t>(tokenizer->vocab_size()) <= config.n_vocab, path,
            ": the tokenizer has ", tokenizer->vocab_size(), " tokens but the model only ",
            config.n_vocab, " embeddings");
  auto model =
      std::make_unique<Model>(std::move(config), std::move(weights), std::move(tokenizer), path);
  model->set_stored_types(count_types(file.tensors()));
  if (compressed) {
    model->set_compression_json(file.find_string("eigenkv.report").value_or("{}"));
  }
  return model;
}

// config.json, tokenizer.json and their kin: regular files of at most this size.
constexpr uint64_t kMaxJsonBytes = uint64_t{1} << 30;

std::string read_file(const fs::path& path) { return read_regular_file(path.string(), kMaxJsonBytes); }

nlohmann::json read_json(const fs::path& path) {
  const std::string text = read_file(path);
  try {
    return nlohmann::json::parse(text);
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
  auto mapped = std::make_shared<const io::SafetensorsModel>(dir);
  const io::SafetensorsModel& tensors = *mapped;
  ModelWeights weights = load_hf_weights(SafetensorsSource(mapped), config);
  const fs::path tokenizer_path = root / "tokenizer.json";
  EKV_CHECK(fs::exists(tokenizer_path), dir, ": no tokenizer.json");
  auto tokenizer = tok::tokenizer_from_json(tokenizer_path.string());
  std::string tokenizer_text = read_file(tokenizer_path);
  const fs::path tokenizer_config_path = root / "tokenizer_config.json";
  std::string tokenizer_config =
      fs::exists(tokenizer_config_path) ? read_file(tokenizer_config_path) : std::string();
  EKV_CHECK(static_cast<int64_t>(tokenizer->vocab_size()) <= config.n_vocab,
            tokenizer_path.string(), ": ", tokenizer->vocab_size(),
            " tokens but the model only has ", config.n_vocab, " embeddings");
  std::vector<io::TensorView> stored;
  for (const std::string& name : tensors.tensor_names()) {
    if (!tensors.aliases().count(name)) stored.push_back(*tensors.find_tensor(name));
  }
  auto model =
      std::make_unique<Model>(std::move(config), std::move(weights), std::move(tokenizer), dir);
  model->set_stored_types(count_types(stored));
  model->set_tokenizer_json(std::move(tokenizer_text), std::move(tokenizer_config));
  return model;
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return load_hf(path);
  if (!fs::exists(path, ec)) fail(path, ": no such file or directory");
  if (is_gguf_file(path)) return load_gguf(path);
  fail(path, ": not a model (expected a .gguf file or a Hugging Face directory with config.json)");
}

std::unique_ptr<tok::Tokenizer> load_tokenizer(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec))
    return tok::tokenizer_from_json((fs::path(path) / "tokenizer.json").string());
  if (!fs::exists(path, ec)) fail(path, ": no such file or directory");
  if (is_gguf_file(path)) return gguf_tokenizer(io::GgufFile(path));
  fail(path, ": not a model (expected a .gguf file or a Hugging Face directory with config.json)");
}

}  // namespace eigenkv::model
