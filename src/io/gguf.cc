#include "io/gguf.h"

#include <cstring>
#include <limits>
#include <type_traits>

#include "util/error.h"

namespace eigenkv::io {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian uint32
constexpr uint32_t kMaxDims = 4;
// Guards against absurd counts in corrupt headers before anything is allocated for them.
constexpr uint64_t kMaxStringBytes = uint64_t{1} << 30;
constexpr int kMaxArrayNesting = 2;

// Reads little-endian values from a byte range; every read is bounds-checked and a failure names
// the file, the byte offset and what was being read.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const std::string& label)
      : data_(data), size_(size), label_(label) {}

  size_t offset() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  template <typename T>
  T read(const char* what) {
    static_assert(std::is_trivially_copyable_v<T>);
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  std::string read_string(const char* what) {
    uint64_t len = read<uint64_t>(what);
    if (len > kMaxStringBytes || len > remaining()) {
      fail(label_, ": truncated or corrupt GGUF: ", what, " at byte ", pos_ - 8, " claims ", len,
           " bytes but only ", remaining(), " remain");
    }
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }

  void need(uint64_t n, const char* what) const {
    if (n > remaining()) {
      fail(label_, ": truncated GGUF: reading ", what, " at byte ", pos_, " needs ", n,
           " bytes but only ", remaining(), " remain");
    }
  }

 private:
  const uint8_t* data_;
  size_t size_;
  const std::string& label_;
  size_t pos_ = 0;
};

size_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    default:
      return 0;
  }
}

bool is_valid_value_type(uint32_t raw) { return raw <= 12; }

// Reads one numeric scalar of type t as a double (arrays) or into the variant (scalars).
std::variant<int64_t, uint64_t, double, bool, std::string> read_scalar(Reader& r, GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
      return uint64_t{r.read<uint8_t>("uint8 value")};
    case GgufValueType::kInt8:
      return int64_t{r.read<int8_t>("int8 value")};
    case GgufValueType::kUint16:
      return uint64_t{r.read<uint16_t>("uint16 value")};
    case GgufValueType::kInt16:
      return int64_t{r.read<int16_t>("int16 value")};
    case GgufValueType::kUint32:
      return uint64_t{r.read<uint32_t>("uint32 value")};
    case GgufValueType::kInt32:
      return int64_t{r.read<int32_t>("int32 value")};
    case GgufValueType::kUint64:
      return r.read<uint64_t>("uint64 value");
    case GgufValueType::kInt64:
      return r.read<int64_t>("int64 value");
    case GgufValueType::kFloat32:
      return double{r.read<float>("float32 value")};
    case GgufValueType::kFloat64:
      return r.read<double>("float64 value");
    case GgufValueType::kBool:
      return r.read<uint8_t>("bool value") != 0;
    case GgufValueType::kString:
      return r.read_string("string value");
    case GgufValueType::kArray:
      break;
  }
  fail("internal: read_scalar on an array");
}

double as_double(const std::variant<int64_t, uint64_t, double, bool, std::string>& v) {
  if (auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  if (auto* u = std::get_if<uint64_t>(&v)) return static_cast<double>(*u);
  if (auto* d = std::get_if<double>(&v)) return *d;
  if (auto* b = std::get_if<bool>(&v)) return *b ? 1.0 : 0.0;
  return 0.0;
}

void read_value(Reader& r, GgufValue& out, const std::string& key, const std::string& label,
                int depth) {
  if (out.type != GgufValueType::kArray) {
    out.scalar = read_scalar(r, out.type);
    return;
  }
  uint32_t raw_elem = r.read<uint32_t>("array element type");
  if (!is_valid_value_type(raw_elem)) {
    fail(label, ": corrupt GGUF: key '", key, "' has an array of unknown type ", raw_elem);
  }
  out.element_type = static_cast<GgufValueType>(raw_elem);
  uint64_t count = r.read<uint64_t>("array length");
  if (out.element_type == GgufValueType::kArray) {
    if (depth >= kMaxArrayNesting)
      fail(label, ": corrupt GGUF: key '", key, "' nests arrays too deep");
    // Nested arrays are legal but unused by any model key eigenkv reads: parse and drop them.
    for (uint64_t i = 0; i < count; ++i) {
      GgufValue inner;
      inner.type = GgufValueType::kArray;
      read_value(r, inner, key, label, depth + 1);
    }
    return;
  }
  if (out.element_type == GgufValueType::kString) {
    // Each string takes at least its 8-byte length: a bound before reserving memory.
    if (count > r.remaining() / 8) {
      fail(label, ": truncated or corrupt GGUF: key '", key, "' claims ", count,
           " strings, more than the file can hold");
    }
    out.strings.reserve(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i) out.strings.push_back(r.read_string("array string"));
    return;
  }
  size_t elem = scalar_size(out.element_type);
  if (count > r.remaining() / elem) {
    fail(label, ": truncated or corrupt GGUF: key '", key, "' claims ", count, " ",
         gguf_value_type_name(out.element_type), " values, more than the file can hold");
  }
  out.numbers.reserve(static_cast<size_t>(count));
  for (uint64_t i = 0; i < count; ++i)
    out.numbers.push_back(as_double(read_scalar(r, out.element_type)));
}

}  // namespace

const char* gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
      return "uint8";
    case GgufValueType::kInt8:
      return "int8";
    case GgufValueType::kUint16:
      return "uint16";
    case GgufValueType::kInt16:
      return "int16";
    case GgufValueType::kUint32:
      return "uint32";
    case GgufValueType::kInt32:
      return "int32";
    case GgufValueType::kFloat32:
      return "float32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kUint64:
      return "uint64";
    case GgufValueType::kInt64:
      return "int64";
    case GgufValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

GgufFile::GgufFile(const std::string& path) : file_(path), label_(path) {
  parse(file_.data(), file_.size());
}

GgufFile::GgufFile(const uint8_t* data, size_t size, std::string label) : label_(std::move(label)) {
  parse(data, size);
}

void GgufFile::parse(const uint8_t* data, size_t size) {
  Reader r(data, size, label_);
  if (size < 4) fail(label_, ": not a GGUF file: only ", size, " bytes");
  uint32_t magic = r.read<uint32_t>("magic");
  if (magic != kMagic) fail(label_, ": not a GGUF file (bad magic)");
  version_ = r.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3) {
    fail(label_, ": unsupported GGUF version ", version_, " (eigenkv reads versions 2 and 3)");
  }
  uint64_t n_tensors = r.read<uint64_t>("tensor count");
  uint64_t n_kv = r.read<uint64_t>("metadata count");
  // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor entry at least
  // 8 + 4 + 4 + 8: bounds on the counts before any loop runs.
  if (n_kv > r.remaining() / 13)
    fail(label_, ": corrupt GGUF: metadata count ", n_kv, " is impossible");
  if (n_tensors > r.remaining() / 24) {
    fail(label_, ": corrupt GGUF: tensor count ", n_tensors, " is impossible for a file of ", size,
         " bytes");
  }

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.read_string("metadata key");
    uint32_t raw_type = r.read<uint32_t>("metadata value type");
    if (!is_valid_value_type(raw_type)) {
      fail(label_, ": corrupt GGUF: key '", key, "' has unknown value type ", raw_type);
    }
    GgufValue value;
    value.type = static_cast<GgufValueType>(raw_type);
    read_value(r, value, key, label_, 0);
    if (metadata_.count(key)) fail(label_, ": corrupt GGUF: key '", key, "' appears twice");
    metadata_.emplace(std::move(key), std::move(value));
  }

  if (auto a = find_int("general.alignment")) {
    if (*a <= 0 || (*a & (*a - 1)) != 0 || *a > 65536) {
      fail(label_, ": corrupt GGUF: general.alignment ", *a, " is not a power of two");
    }
    alignment_ = static_cast<size_t>(*a);
  }

  struct RawTensor {
    TensorView view;
    uint64_t offset;
  };
  std::vector<RawTensor> raw;
  raw.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    RawTensor t;
    t.view.name = r.read_string("tensor name");
    uint32_t n_dims = r.read<uint32_t>("tensor dimension count");
    if (n_dims == 0 || n_dims > kMaxDims) {
      fail(label_, ": corrupt GGUF: tensor '", t.view.name, "' has ", n_dims, " dimensions");
    }
    std::vector<int64_t> ne(n_dims);
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim = r.read<uint64_t>("tensor dimension");
      if (dim == 0 || dim > (uint64_t{1} << 40) ||
          static_cast<uint64_t>(numel) > (uint64_t{1} << 48) / dim) {
        fail(label_, ": corrupt GGUF: tensor '", t.view.name, "' has dimension ", dim);
      }
      ne[d] = static_cast<int64_t>(dim);
      numel *= ne[d];
    }
    uint32_t raw_type = r.read<uint32_t>("tensor type");
    auto info = tensor_type_info(raw_type);
    if (!info) {
      fail(label_, ": tensor '", t.view.name, "' has tensor type ", raw_type,
           " which eigenkv does not support");
    }
    t.view.type = info->type;
    if (ne[0] % info->block_size != 0) {
      fail(label_, ": corrupt GGUF: tensor '", t.view.name, "' of type ", info->name,
           " has rows of ", ne[0], " numbers, not a multiple of the block size ", info->block_size);
    }
    t.view.shape.assign(ne.rbegin(), ne.rend());
    t.view.nbytes = tensor_bytes(t.view.type, numel);
    t.offset = r.read<uint64_t>("tensor offset");
    if (t.offset % alignment_ != 0) {
      fail(label_, ": corrupt GGUF: tensor '", t.view.name, "' offset ", t.offset,
           " is not aligned to ", alignment_);
    }
    raw.push_back(std::move(t));
  }

  size_t data_start = (r.offset() + alignment_ - 1) / alignment_ * alignment_;
  if (data_start > size && !raw.empty()) {
    fail(label_, ": truncated GGUF: tensor data would start at byte ", data_start,
         " past the end (", size, " bytes)");
  }
  size_t data_size = data_start <= size ? size - data_start : 0;
  for (auto& t : raw) {
    if (t.offset > data_size || t.view.nbytes > data_size - t.offset) {
      fail(label_, ": truncated or corrupt GGUF: tensor '", t.view.name, "' (", t.view.nbytes,
           " bytes at data offset ", t.offset, ") lies outside the file's ", data_size,
           " bytes of tensor data");
    }
    t.view.data = data + data_start + t.offset;
    if (tensor_index_.count(t.view.name)) {
      fail(label_, ": corrupt GGUF: tensor '", t.view.name, "' appears twice");
    }
    tensor_index_[t.view.name] = tensors_.size();
    tensors_.push_back(std::move(t.view));
  }
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

std::string GgufFile::get_string(const std::string& key) const {
  auto s = find_string(key);
  if (!s) fail(label_, ": missing metadata key '", key, "'");
  return *s;
}

std::optional<std::string> GgufFile::find_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::kString) {
    fail(label_, ": metadata key '", key, "' is ", gguf_value_type_name(v->type),
         ", expected string");
  }
  return std::get<std::string>(v->scalar);
}

std::optional<int64_t> GgufFile::find_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (auto* i = std::get_if<int64_t>(&v->scalar); i && v->type != GgufValueType::kArray) return *i;
  if (auto* u = std::get_if<uint64_t>(&v->scalar); u && v->type != GgufValueType::kArray) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(label_, ": metadata key '", key, "' value ", *u, " is out of range");
    }
    return static_cast<int64_t>(*u);
  }
  fail(label_, ": metadata key '", key, "' is ", gguf_value_type_name(v->type),
       ", expected an integer");
}

int64_t GgufFile::get_int(const std::string& key) const {
  auto i = find_int(key);
  if (!i) fail(label_, ": missing metadata key '", key, "'");
  return *i;
}

std::optional<double> GgufFile::find_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type == GgufValueType::kFloat32 || v->type == GgufValueType::kFloat64) {
    return std::get<double>(v->scalar);
  }
  return static_cast<double>(get_int(key));
}

double GgufFile::get_float(const std::string& key) const {
  auto f = find_float(key);
  if (!f) fail(label_, ": missing metadata key '", key, "'");
  return *f;
}

bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail(label_, ": missing metadata key '", key, "'");
  if (v->type != GgufValueType::kBool) {
    fail(label_, ": metadata key '", key, "' is ", gguf_value_type_name(v->type),
         ", expected bool");
  }
  return std::get<bool>(v->scalar);
}

const std::vector<std::string>& GgufFile::get_string_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail(label_, ": missing metadata key '", key, "'");
  if (v->type != GgufValueType::kArray || v->element_type != GgufValueType::kString) {
    fail(label_, ": metadata key '", key, "' is not an array of strings");
  }
  return v->strings;
}

const std::vector<double>& GgufFile::get_number_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail(label_, ": missing metadata key '", key, "'");
  if (v->type != GgufValueType::kArray || v->element_type == GgufValueType::kString ||
      v->element_type == GgufValueType::kArray) {
    fail(label_, ": metadata key '", key, "' is not an array of numbers");
  }
  return v->numbers;
}

const TensorView* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& GgufFile::tensor(const std::string& name) const {
  const TensorView* t = find_tensor(name);
  if (!t) fail(label_, ": tensor '", name, "' is missing");
  return *t;
}

}  // namespace eigenkv::io
