#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <optional>
#include <set>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace eigenkv::io {
namespace {

using nlohmann::json;

// The reference implementation refuses headers above 100 MB; a larger length field is corruption,
// and the bound keeps a corrupt length from making the JSON parser chew through a huge file.
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;
// Bounds that no real tensor reaches, checked before any arithmetic so that products of corrupt
// values cannot overflow: 16 dimensions, 2^40 per dimension, 2^48 numbers in all.
constexpr size_t kMaxRank = 16;
constexpr uint64_t kMaxDim = uint64_t{1} << 40;
constexpr uint64_t kMaxNumel = uint64_t{1} << 48;
constexpr const char* kMetadataKey = "__metadata__";

// Corrupt files can carry megabytes of garbage where a name should be; messages quote at most
// this much of any string taken from the file.
std::string quote_name(std::string_view s) {
  constexpr size_t kMaxQuoted = 80;
  if (s.size() <= kMaxQuoted) return cat('\'', s, '\'');
  return cat('\'', s.substr(0, kMaxQuoted), "...' (", s.size(), " bytes)");
}

std::optional<TensorType> dtype_to_type(const std::string& dtype) {
  static const std::map<std::string, TensorType, std::less<>> kDtypes = {
      {"F32", TensorType::kF32}, {"F16", TensorType::kF16}, {"BF16", TensorType::kBF16},
      {"F64", TensorType::kF64}, {"I8", TensorType::kI8},   {"I16", TensorType::kI16},
      {"I32", TensorType::kI32}, {"I64", TensorType::kI64},
  };
  auto it = kDtypes.find(dtype);
  if (it == kDtypes.end()) return std::nullopt;
  return it->second;
}

// A JSON integer >= 0 as uint64, or nullopt for anything else (negative, fractional, a string).
// nlohmann stores non-negative integers as unsigned and negative ones as signed, except "-0".
std::optional<uint64_t> as_count(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() == 0) return 0;
  return std::nullopt;
}

// What a JSON value that should have been a count is, for messages. Values are described, never
// dumped: dump() recurses, and a corrupt header can nest arrays deep enough to exhaust the stack.
std::string describe(const json& v) {
  if (v.is_number_integer()) return cat("negative integer ", v.get<int64_t>());
  if (v.is_number_float()) return cat("fractional number ", v.get<double>());
  return cat("JSON ", v.type_name());
}

// Parses JSON bytes, refusing what the format refuses and nlohmann would accept silently: a
// second copy of a top-level key (the last would win, hiding a tensor). Returns a discarded value
// when the text is not JSON.
json parse_json(const uint8_t* begin, const uint8_t* end, std::string* duplicate_key) {
  std::set<std::string> seen;
  auto on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && duplicate_key->empty()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second) *duplicate_key = key;
    }
    return true;
  };
  try {
    return json::parse(begin, end, on_event, /*allow_exceptions=*/false);
  } catch (const json::exception&) {
    // allow_exceptions=false covers syntax errors; this covers anything else the library throws,
    // so that no input escapes as a non-Error exception.
    return json(json::value_t::discarded);
  }
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path), label_(path) {
  parse(file_.data(), file_.size());
}

SafetensorsFile::SafetensorsFile(const uint8_t* data, size_t size, std::string label)
    : label_(std::move(label)) {
  parse(data, size);
}

void SafetensorsFile::parse(const uint8_t* data, size_t size) {
  if (size < 8) {
    fail(label_, ": not a safetensors file: ", size,
         " bytes, fewer than the 8-byte header length that starts one");
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  if (header_len > size - 8) {
    fail(label_, ": truncated or corrupt safetensors file: header length ", header_len,
         " runs past the end of the file (", size, " bytes)");
  }
  if (header_len > kMaxHeaderBytes) {
    fail(label_, ": corrupt safetensors file: header length ", header_len, " exceeds the ",
         kMaxHeaderBytes, "-byte limit");
  }
  const uint8_t* header = data + 8;
  if (header_len == 0 || header[0] != '{') {
    fail(label_, ": corrupt safetensors file: the header does not start with '{'");
  }
  std::string duplicate;
  json root = parse_json(header, header + header_len, &duplicate);
  if (root.is_discarded()) fail(label_, ": corrupt safetensors file: the header is not valid JSON");
  if (!root.is_object()) {
    fail(label_, ": corrupt safetensors file: the header is a JSON ", root.type_name(),
         ", expected an object");
  }
  if (!duplicate.empty()) {
    fail(label_, ": corrupt safetensors file: ", quote_name(duplicate),
         " appears twice in the header");
  }

  const uint8_t* data_section = header + header_len;
  const uint64_t data_size = size - 8 - header_len;

  struct Entry {
    TensorView view;
    uint64_t begin;
    uint64_t end;
  };
  std::vector<Entry> entries;
  entries.reserve(root.size());
  for (const auto& item : root.items()) {
    // References, not a structured binding: clang < 16 cannot capture one in the lambda below.
    const std::string& name = item.key();
    const json& desc = item.value();
    if (name == kMetadataKey) {
      if (!desc.is_object()) {
        fail(label_, ": corrupt safetensors file: __metadata__ is a JSON ", desc.type_name(),
             ", expected an object of strings");
      }
      for (const auto& [key, value] : desc.items()) {
        if (!value.is_string()) {
          fail(label_, ": corrupt safetensors file: __metadata__ key ", quote_name(key),
               " is a JSON ", value.type_name(), ", expected a string");
        }
        metadata_.emplace(key, value.get<std::string>());
      }
      continue;
    }

    const std::string where = cat(label_, ": tensor ", quote_name(name));
    if (!desc.is_object()) {
      fail(where, ": entry is a JSON ", desc.type_name(), ", expected an object");
    }
    // A field the entry lacks, or holds with the wrong JSON type, is named in the message.
    auto field = [&](const char* key, bool (json::*is_kind)() const, const char* kind) {
      auto it = desc.find(key);
      if (it == desc.end()) fail(where, ": the entry has no \"", key, "\"");
      if (!((*it).*is_kind)()) {
        fail(where, ": \"", key, "\" is a JSON ", it->type_name(), ", expected ", kind);
      }
      return it;
    };
    auto dtype_it = field("dtype", &json::is_string, "a string");
    auto shape_it = field("shape", &json::is_array, "an array");
    auto offsets_it = field("data_offsets", &json::is_array, "an array [begin, end]");

    Entry e;
    e.view.name = name;
    const std::string& dtype = dtype_it->get_ref<const std::string&>();
    auto type = dtype_to_type(dtype);
    if (!type) {
      fail(where, ": dtype ", quote_name(dtype),
           " is not one eigenkv reads (F32, F16, BF16, F64, I8, I16, I32, I64)");
    }
    e.view.type = *type;

    if (shape_it->size() > kMaxRank) {
      fail(where, ": shape has ", shape_it->size(), " dimensions, more than ", kMaxRank);
    }
    uint64_t numel = 1;
    for (const json& d : *shape_it) {
      auto dim = as_count(d);
      if (!dim) {
        fail(where, ": shape holds a ", describe(d), " after ", e.view.shape_string(),
             ", expected a non-negative integer");
      }
      if (*dim > kMaxDim) fail(where, ": shape holds the absurd dimension ", *dim);
      e.view.shape.push_back(static_cast<int64_t>(*dim));
      // Division, not multiplication, so that the test itself cannot overflow.
      if (*dim != 0 && numel > kMaxNumel / *dim) {
        fail(where, ": shape ", e.view.shape_string(), "... holds more than ", kMaxNumel,
             " numbers");
      }
      numel *= *dim;
    }

    if (offsets_it->size() != 2) {
      fail(where, ": data_offsets has ", offsets_it->size(), " entries, expected [begin, end]");
    }
    auto begin = as_count((*offsets_it)[0]);
    auto end = as_count((*offsets_it)[1]);
    if (!begin || !end) {
      fail(where, ": data_offsets hold a ", describe((*offsets_it)[begin ? 1 : 0]),
           ", expected non-negative integers [begin, end]");
    }
    if (*begin > *end) {
      fail(where, ": data_offsets [", *begin, ", ", *end, "] end before they begin");
    }
    if (*end > data_size) {
      fail(where, ": data_offsets [", *begin, ", ", *end, "] run past the data section's ",
           data_size, " bytes (file truncated?)");
    }
    e.begin = *begin;
    e.end = *end;
    e.view.nbytes = tensor_bytes(e.view.type, static_cast<int64_t>(numel));
    if (e.end - e.begin != e.view.nbytes) {
      fail(where, ": ", dtype, " shape ", e.view.shape_string(), " takes ", e.view.nbytes,
           " bytes but data_offsets [", e.begin, ", ", e.end, "] hold ", e.end - e.begin);
    }
    e.view.data = data_section + e.begin;
    entries.push_back(std::move(e));
  }

  // The format requires the tensors to tile the data section exactly, with no overlap (two
  // tensors aliasing the same bytes) and no holes (room to hide a second file format in).
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.view.name < b.view.name;
  });
  uint64_t pos = 0;
  const std::string* previous = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < pos) {
      fail(label_, ": corrupt safetensors file: tensor ", quote_name(e.view.name), " (bytes ",
           e.begin, "..", e.end, ") overlaps tensor ", quote_name(*previous), " (which ends at ",
           pos, ")");
    }
    if (e.begin > pos) {
      fail(label_, ": corrupt safetensors file: ", e.begin - pos, " unused bytes before tensor ",
           quote_name(e.view.name), " at data offset ", pos);
    }
    pos = e.end;
    previous = &e.view.name;
  }
  if (pos != data_size) {
    fail(label_, ": corrupt safetensors file: ", data_size - pos,
         " bytes of the data section follow the last tensor",
         previous ? cat(" ", quote_name(*previous)) : std::string(), " and belong to none");
  }

  tensors_.reserve(entries.size());
  for (Entry& e : entries) {
    tensor_index_.emplace(e.view.name, tensors_.size());
    tensors_.push_back(std::move(e.view));
  }
}

const TensorView* SafetensorsFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& SafetensorsFile::tensor(const std::string& name) const {
  const TensorView* t = find_tensor(name);
  if (!t) fail(label_, ": tensor ", quote_name(name), " is missing");
  return *t;
}

namespace {

namespace fs = std::filesystem;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

// Reads the index's weight map: tensor name -> shard file name. Shard names must stay inside the
// directory, since they come from a file that may have been downloaded.
std::map<std::string, std::string> read_weight_map(const std::string& index_path) {
  MappedFile file(index_path);
  if (file.size() == 0) fail(index_path, ": empty file, expected a JSON object");
  std::string duplicate;
  json root = parse_json(file.data(), file.data() + file.size(), &duplicate);
  if (root.is_discarded()) fail(index_path, ": not valid JSON");
  if (!root.is_object()) fail(index_path, ": is a JSON ", root.type_name(), ", expected an object");
  auto wm = root.find("weight_map");
  if (wm == root.end() || !wm->is_object()) fail(index_path, ": missing \"weight_map\" object");
  std::map<std::string, std::string> out;
  for (const auto& [name, shard] : wm->items()) {
    if (!shard.is_string()) {
      fail(index_path, ": weight_map entry for tensor ", quote_name(name), " is a JSON ",
           shard.type_name(), ", expected a file name");
    }
    const std::string& s = shard.get_ref<const std::string&>();
    fs::path p(s);
    bool escapes = s.empty() || p.is_absolute();
    for (const auto& part : p) escapes = escapes || part == "..";
    if (escapes) {
      fail(index_path, ": tensor ", quote_name(name), " is mapped to ", quote_name(s),
           ", which is not a file inside the model directory");
    }
    out.emplace(name, s);
  }
  if (out.empty()) fail(index_path, ": weight_map lists no tensors");
  return out;
}

}  // namespace

SafetensorsModel::SafetensorsModel(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail(dir, ": not a directory, expected a Hugging Face model");
  const fs::path root(dir);
  const std::string single = (root / kSingleFile).string();
  const std::string index = (root / kIndexFile).string();

  // Which shard each tensor should be in, when an index says so.
  std::map<std::string, std::string> weight_map;
  std::vector<std::string> shard_names;
  if (fs::exists(single, ec)) {
    shard_names.push_back(kSingleFile);
  } else if (fs::exists(index, ec)) {
    weight_map = read_weight_map(index);
    std::set<std::string> unique;
    for (const auto& [name, shard] : weight_map) {
      if (unique.insert(shard).second && !fs::exists(root / shard, ec)) {
        fail(index, ": shard ", quote_name(shard), " (holding tensor ", quote_name(name),
             ") is missing from ", dir);
      }
    }
    shard_names.assign(unique.begin(), unique.end());
  } else {
    fail(dir, ": no ", kSingleFile, " or ", kIndexFile, " in the directory");
  }

  std::map<std::string, std::string> stored_in;  // tensor name -> shard name
  for (const std::string& shard : shard_names) {
    files_.push_back(std::make_unique<SafetensorsFile>((root / shard).string()));
    const SafetensorsFile& f = *files_.back();
    for (const TensorView& t : f.tensors()) {
      auto [it, inserted] = stored_in.emplace(t.name, shard);
      if (!inserted) {
        fail(dir, ": tensor ", quote_name(t.name), " is stored twice, in ", it->second, " and in ",
             shard);
      }
      stored_.emplace(t.name, &t);
    }
    for (const auto& [key, value] : f.metadata()) metadata_.emplace(key, value);
  }
  for (const auto& [name, shard] : weight_map) {
    auto it = stored_in.find(name);
    if (it == stored_in.end() || it->second != shard) {
      fail(index, ": tensor ", quote_name(name), " is mapped to ", shard, " but ",
           it == stored_in.end() ? std::string("no shard holds it")
                                 : cat("it is stored in ", it->second));
    }
  }

  // transformers records a dropped tied weight as metadata "<dropped name>": "<kept name>"; other
  // metadata ("format": "pt") names no tensor and is left alone.
  for (const auto& [key, value] : metadata_) {
    if (stored_.count(key)) continue;
    auto target = stored_.find(value);
    if (target == stored_.end()) continue;
    TensorView view = *target->second;
    view.name = key;
    alias_views_.emplace(key, std::move(view));
    alias_targets_.emplace(key, value);
  }
}

const TensorView* SafetensorsModel::find_tensor(const std::string& name) const {
  if (auto it = stored_.find(name); it != stored_.end()) return it->second;
  if (auto it = alias_views_.find(name); it != alias_views_.end()) return &it->second;
  return nullptr;
}

const TensorView& SafetensorsModel::tensor(const std::string& name) const {
  const TensorView* t = find_tensor(name);
  if (!t) fail(dir_, ": tensor ", quote_name(name), " is missing");
  return *t;
}

std::vector<std::string> SafetensorsModel::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(stored_.size() + alias_views_.size());
  for (const auto& [name, view] : stored_) names.push_back(name);
  for (const auto& [name, view] : alias_views_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace eigenkv::io
