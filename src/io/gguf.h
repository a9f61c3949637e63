// GGUF v2/v3 reader: key-value metadata and tensor directory over a memory-mapped file.
// Every count, length, offset and size is checked against the file's bounds before use, so a
// truncated or corrupt file gives an Error naming the file and the problem, never a crash.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "io/mapped_file.h"
#include "io/tensor_view.h"

namespace eigenkv::io {

// GGUF metadata value types, numbered as in the format.
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// The format's name of a value type ("uint32", "string", ...), for messages.
const char* gguf_value_type_name(GgufValueType type);

// One metadata value. Integers of every width are held as int64/uint64, floats as double;
// arrays keep their element type and hold strings or numbers.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint32;
  GgufValueType element_type = GgufValueType::kUint32;  // for arrays
  std::variant<int64_t, uint64_t, double, bool, std::string> scalar;
  std::vector<std::string> strings;  // array of strings
  std::vector<double> numbers;       // array of numbers (any numeric element type, or bool)
};

class GgufFile {
 public:
  // Maps and parses `path`. Throws Error on any malformed content.
  explicit GgufFile(const std::string& path);
  // Parses bytes already in memory (used by the fuzz tests); `label` names them in errors.
  // The bytes must outlive the object.
  GgufFile(const uint8_t* data, size_t size, std::string label);

  const std::string& path() const { return label_; }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }

  bool has(const std::string& key) const { return metadata_.count(key) != 0; }
  const GgufValue* find(const std::string& key) const;
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }

  // Typed getters: throw Error naming the key when it is missing or of another type.
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;   // any integer type, range-checked
  double get_float(const std::string& key) const;  // float32/float64 or integer
  bool get_bool(const std::string& key) const;
  std::optional<int64_t> find_int(const std::string& key) const;
  std::optional<double> find_float(const std::string& key) const;
  std::optional<std::string> find_string(const std::string& key) const;
  const std::vector<std::string>& get_string_array(const std::string& key) const;
  const std::vector<double>& get_number_array(const std::string& key) const;

  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find_tensor(const std::string& name) const;
  const TensorView& tensor(const std::string& name) const;  // throws when absent

 private:
  void parse(const uint8_t* data, size_t size);

  MappedFile file_;
  std::string label_;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  std::map<std::string, GgufValue> metadata_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace eigenkv::io
