#include "io/gguf_writer.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>
#include <type_traits>
#include <variant>

#include "util/error.h"
#include "util/files.h"

namespace eigenkv::io {
namespace {

// The writer lays values down by copying host bytes; GGUF is little-endian.
static_assert(std::endian::native == std::endian::little);

constexpr uint32_t kVersion = 3;
constexpr size_t kDefaultAlignment = 32;
// GgufFile rejects larger alignments, so the writer must not produce them.
constexpr uint64_t kMaxAlignment = 65536;
constexpr size_t kMaxDims = 4;
// llama.cpp keeps tensor names in a 64-byte NUL-terminated buffer and refuses longer ones.
constexpr size_t kMaxTensorNameBytes = 63;
// The same bounds GgufFile puts on a dimension and on the number count of a tensor.
constexpr int64_t kMaxDim = int64_t{1} << 40;
constexpr int64_t kMaxNumel = int64_t{1} << 48;

struct IntegerType {
  bool is_signed;
  int bits;
};

std::optional<IntegerType> integer_type(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8: return IntegerType{false, 8};
    case GgufValueType::kInt8: return IntegerType{true, 8};
    case GgufValueType::kUint16: return IntegerType{false, 16};
    case GgufValueType::kInt16: return IntegerType{true, 16};
    case GgufValueType::kUint32: return IntegerType{false, 32};
    case GgufValueType::kInt32: return IntegerType{true, 32};
    case GgufValueType::kUint64: return IntegerType{false, 64};
    case GgufValueType::kInt64: return IntegerType{true, 64};
    default: return std::nullopt;
  }
}

bool is_float_type(GgufValueType t) {
  return t == GgufValueType::kFloat32 || t == GgufValueType::kFloat64;
}

bool fits(IntegerType it, int64_t v) {
  if (!it.is_signed && v < 0) return false;
  if (it.bits == 64) return true;
  const int64_t limit = int64_t{1} << (it.is_signed ? it.bits - 1 : it.bits);
  return v < limit && (!it.is_signed || v >= -limit);
}

// Whole numbers in range convert to the integer type exactly; anything else would be changed.
bool fits(IntegerType it, double v) {
  if (std::trunc(v) != v) return false;  // also rejects NaN
  const double limit = std::ldexp(1.0, it.is_signed ? it.bits - 1 : it.bits);
  return v < limit && v >= (it.is_signed ? -limit : 0.0);
}

// Infinities and NaN are float32 values too; only finite numbers past its range are lost.
bool fits_float32(double v) { return !std::isfinite(v) || std::fabs(v) <= FLT_MAX; }

// Whether x is a value of the numeric (or bool) type t, so that storing it changes nothing.
bool is_value_of(GgufValueType t, double x) {
  if (const auto it = integer_type(t)) return fits(*it, x);
  if (t == GgufValueType::kBool) return x == 0.0 || x == 1.0;
  if (t == GgufValueType::kFloat32) return fits_float32(x);
  return true;  // float64
}

// The two's-complement bit pattern of an in-range integer, whose low bytes are its encoding.
uint64_t integer_bits(double v, IntegerType it) {
  return it.is_signed ? static_cast<uint64_t>(static_cast<int64_t>(v)) : static_cast<uint64_t>(v);
}

uint64_t integer_bits(const decltype(GgufValue::scalar)& scalar, const std::string& key) {
  if (auto* i = std::get_if<int64_t>(&scalar)) return static_cast<uint64_t>(*i);
  if (auto* u = std::get_if<uint64_t>(&scalar)) return *u;
  fail("GGUF writer: metadata key '", key, "' has an integer type but holds no integer");
}

size_t align_up(size_t n, size_t alignment) { return (n + alignment - 1) / alignment * alignment; }

std::string shape_string(const std::vector<int64_t>& shape) {
  TensorView view;
  view.shape = shape;
  return view.shape_string();
}

// Appends little-endian GGUF encodings to a byte string.
class Encoder {
 public:
  template <typename T>
  void put(T value) {
    static_assert(std::is_trivially_copyable_v<T>);
    char bytes[sizeof(T)];
    std::memcpy(bytes, &value, sizeof(T));
    out_.append(bytes, sizeof(T));
  }

  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    out_ += s;
  }

  void put_integer(uint64_t bits, IntegerType it) {
    switch (it.bits) {
      case 8: put(static_cast<uint8_t>(bits)); break;
      case 16: put(static_cast<uint16_t>(bits)); break;
      case 32: put(static_cast<uint32_t>(bits)); break;
      default: put(bits); break;
    }
  }

  void put_value(const std::string& key, const GgufValue& value) {
    put(static_cast<uint32_t>(value.type));
    if (value.type == GgufValueType::kArray) {
      put_array(key, value);
    } else if (auto it = integer_type(value.type)) {
      put_integer(integer_bits(value.scalar, key), *it);
    } else if (value.type == GgufValueType::kFloat32) {
      put(static_cast<float>(std::get<double>(value.scalar)));
    } else if (value.type == GgufValueType::kFloat64) {
      put(std::get<double>(value.scalar));
    } else if (value.type == GgufValueType::kBool) {
      put<uint8_t>(std::get<bool>(value.scalar) ? 1 : 0);
    } else {
      put_string(std::get<std::string>(value.scalar));
    }
  }

  void pad_to(size_t alignment) { out_.resize(align_up(out_.size(), alignment), '\0'); }

  const std::string& bytes() const { return out_; }

 private:
  void put_array(const std::string& key, const GgufValue& value) {
    put(static_cast<uint32_t>(value.element_type));
    if (value.element_type == GgufValueType::kString) {
      put<uint64_t>(value.strings.size());
      for (const auto& s : value.strings) put_string(s);
      return;
    }
    put<uint64_t>(value.numbers.size());
    const auto it = integer_type(value.element_type);
    for (double v : value.numbers) {
      if (it) {
        put_integer(integer_bits(v, *it), *it);
      } else if (value.element_type == GgufValueType::kFloat32) {
        put(static_cast<float>(v));
      } else if (value.element_type == GgufValueType::kFloat64) {
        put(v);
      } else {
        put<uint8_t>(v != 0.0 ? 1 : 0);
      }
    }
  }

  std::string out_;
};

}  // namespace

void GgufWriter::set(const std::string& key, GgufValue value) {
  EKV_CHECK(!key.empty(), "GGUF writer: a metadata key must not be empty");
  for (auto& [existing, old] : metadata_) {
    if (existing == key) {
      old = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(key, std::move(value));
}

void GgufWriter::set_string(const std::string& key, std::string value) {
  GgufValue v;
  v.type = GgufValueType::kString;
  v.scalar = std::move(value);
  set(key, std::move(v));
}

void GgufWriter::set_int(const std::string& key, int64_t value, GgufValueType type) {
  const auto it = integer_type(type);
  EKV_CHECK(it, "GGUF writer: metadata key '", key, "': set_int needs an integer type, not ",
            gguf_value_type_name(type));
  EKV_CHECK(fits(*it, value), "GGUF writer: metadata key '", key, "': ", value, " does not fit ",
            gguf_value_type_name(type));
  GgufValue v;
  v.type = type;
  // Signed and unsigned alternatives as GgufFile holds them, so that read-back values compare.
  if (it->is_signed) {
    v.scalar = value;
  } else {
    v.scalar = static_cast<uint64_t>(value);
  }
  set(key, std::move(v));
}

void GgufWriter::set_float(const std::string& key, double value, GgufValueType type) {
  EKV_CHECK(is_float_type(type), "GGUF writer: metadata key '", key,
            "': set_float needs float32 or float64, not ", gguf_value_type_name(type));
  EKV_CHECK(type == GgufValueType::kFloat64 || fits_float32(value), "GGUF writer: metadata key '",
            key, "': ", value, " overflows float32");
  GgufValue v;
  v.type = type;
  v.scalar = value;
  set(key, std::move(v));
}

void GgufWriter::set_bool(const std::string& key, bool value) {
  GgufValue v;
  v.type = GgufValueType::kBool;
  v.scalar = value;
  set(key, std::move(v));
}

void GgufWriter::set_string_array(const std::string& key, std::vector<std::string> values) {
  GgufValue v;
  v.type = GgufValueType::kArray;
  v.element_type = GgufValueType::kString;
  v.strings = std::move(values);
  set(key, std::move(v));
}

void GgufWriter::set_number_array(const std::string& key, std::vector<double> values,
                                  GgufValueType element_type) {
  EKV_CHECK(integer_type(element_type) || is_float_type(element_type) ||
                element_type == GgufValueType::kBool,
            "GGUF writer: metadata key '", key, "': a number array cannot hold ",
            gguf_value_type_name(element_type));
  for (size_t i = 0; i < values.size(); ++i) {
    const double x = values[i];
    EKV_CHECK(is_value_of(element_type, x), "GGUF writer: metadata key '", key, "': element ", i,
              " (", x, ") is not a value of type ", gguf_value_type_name(element_type));
  }
  GgufValue v;
  v.type = GgufValueType::kArray;
  v.element_type = element_type;
  v.numbers = std::move(values);
  set(key, std::move(v));
}

void GgufWriter::copy_metadata(const GgufFile& source,
                               const std::function<bool(const std::string&)>& skip) {
  for (const auto& [key, value] : source.metadata()) {
    if (skip && skip(key)) continue;
    EKV_CHECK(value.type != GgufValueType::kArray || value.element_type != GgufValueType::kArray,
              "GGUF writer: metadata key '", key, "' of ", source.path(),
              " is an array of arrays, whose contents are not kept when read; skip it");
    set(key, value);
  }
}

void GgufWriter::remove(const std::string& key) {
  std::erase_if(metadata_, [&](const auto& kv) { return kv.first == key; });
}

size_t GgufWriter::check_tensor(const std::string& name, TensorType type,
                                const std::vector<int64_t>& shape) const {
  EKV_CHECK(!name.empty(), "GGUF writer: a tensor needs a name");
  EKV_CHECK(name.size() <= kMaxTensorNameBytes, "GGUF writer: tensor '", name, "' has a name of ",
            name.size(), " bytes; GGUF readers take at most ", kMaxTensorNameBytes);
  EKV_CHECK(!tensor_names_.count(name), "GGUF writer: tensor '", name, "' is added twice");
  const auto info = tensor_type_info(static_cast<uint32_t>(type));
  EKV_CHECK(info, "GGUF writer: tensor '", name, "' has unknown tensor type ",
            static_cast<uint32_t>(type));
  EKV_CHECK(!shape.empty() && shape.size() <= kMaxDims, "GGUF writer: tensor '", name,
            "' has shape ", shape_string(shape), "; GGUF takes 1 to ", kMaxDims, " dimensions");
  int64_t numel = 1;
  for (int64_t d : shape) {
    EKV_CHECK(d > 0 && d <= kMaxDim && numel <= kMaxNumel / d, "GGUF writer: tensor '", name,
              "' has shape ", shape_string(shape), "; every dimension must be positive and the ",
              "total at most 2^48");
    numel *= d;
  }
  // Quantized blocks never straddle rows, so the innermost dimension must be whole blocks.
  EKV_CHECK(shape.back() % info->block_size == 0, "GGUF writer: tensor '", name, "' of type ",
            info->name, " has rows of ", shape.back(),
            " numbers, not a multiple of the block size ", info->block_size);
  return tensor_bytes(type, numel);
}

void GgufWriter::add_tensor(const std::string& name, TensorType type, std::vector<int64_t> shape,
                            const void* data, size_t nbytes) {
  const size_t expected = check_tensor(name, type, shape);
  EKV_CHECK(nbytes == expected, "GGUF writer: tensor '", name, "' of type ",
            tensor_type_info(type).name, " and shape ", shape_string(shape), " takes ", expected,
            " bytes, but ", nbytes, " were given");
  EKV_CHECK(data, "GGUF writer: tensor '", name, "' has no data");
  tensor_names_.insert(name);
  tensors_.push_back(
      {name, type, std::move(shape), static_cast<const uint8_t*>(data), nbytes, nullptr});
}

void GgufWriter::add_tensor_generated(const std::string& name, TensorType type,
                                      std::vector<int64_t> shape, TensorFill fill) {
  const size_t nbytes = check_tensor(name, type, shape);
  EKV_CHECK(fill, "GGUF writer: tensor '", name, "' has no fill function");
  tensor_names_.insert(name);
  tensors_.push_back({name, type, std::move(shape), nullptr, nbytes, std::move(fill)});
}

void GgufWriter::add_f32_tensor(const std::string& name, std::vector<int64_t> shape,
                                const float* data) {
  // Sized only for a shape add_tensor accepts (and without overflow); it reports any other.
  int64_t numel = 1;
  for (int64_t d : shape) {
    numel = d > 0 && d <= kMaxDim && numel <= kMaxNumel / d ? numel * d : 0;
  }
  const size_t nbytes = static_cast<size_t>(numel) * sizeof(float);
  add_tensor(name, TensorType::kF32, std::move(shape), data, nbytes);
}

void GgufWriter::write(const std::string& path) const {
  size_t alignment = kDefaultAlignment;
  for (const auto& [key, value] : metadata_) {
    if (key != "general.alignment") continue;
    // llama.cpp reads this key only as uint32.
    EKV_CHECK(value.type == GgufValueType::kUint32, path,
              ": cannot write GGUF: general.alignment must be uint32, not ",
              gguf_value_type_name(value.type));
    const uint64_t a = std::get<uint64_t>(value.scalar);
    EKV_CHECK(std::has_single_bit(a) && a <= kMaxAlignment, path,
              ": cannot write GGUF: general.alignment ", a, " is not a power of two up to ",
              kMaxAlignment);
    alignment = static_cast<size_t>(a);
  }

  Encoder header;
  header.put<uint32_t>(0x46554747);  // "GGUF" as a little-endian uint32
  header.put<uint32_t>(kVersion);
  header.put<uint64_t>(tensors_.size());
  header.put<uint64_t>(metadata_.size());
  for (const auto& [key, value] : metadata_) {
    header.put_string(key);
    header.put_value(key, value);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    header.put_string(t.name);
    header.put<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) header.put<uint64_t>(*d);
    header.put<uint32_t>(static_cast<uint32_t>(t.type));
    header.put<uint64_t>(offset);
    offset += align_up(t.nbytes, alignment);
  }
  header.pad_to(alignment);

  const std::vector<uint8_t> zeros(alignment, 0);
  TempFile file(path);
  file.write(header.bytes().data(), header.bytes().size());
  for (const auto& t : tensors_) {
    if (t.fill) {
      // One generated tensor in memory at a time: made, written, freed.
      std::vector<uint8_t> bytes(t.nbytes, 0);
      t.fill(bytes.data());
      file.write(bytes.data(), t.nbytes);
    } else {
      file.write(t.data, t.nbytes);
    }
    file.write(zeros.data(), align_up(t.nbytes, alignment) - t.nbytes);
  }
  file.commit();
}

}  // namespace eigenkv::io
