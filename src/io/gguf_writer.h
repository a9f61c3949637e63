// GGUF v3 writer: metadata in insertion order, tensors at aligned offsets, written atomically.
// Everything that can be checked is checked when it is added, so that write() fails only on I/O;
// and write() builds the file under a temporary name beside the target and renames it into place,
// so a reader of `path` sees the old file or the complete new one, never a partial one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "io/gguf.h"
#include "io/tensor_type.h"

namespace eigenkv::io {

class GgufWriter {
 public:
  // Metadata keeps insertion order, as GGUF does. Setting a key that exists replaces its value
  // (and type) in the key's original position.
  void set_string(const std::string& key, std::string value);
  // `type` must be an integer type; throws Error when `value` does not fit it.
  void set_int(const std::string& key, int64_t value, GgufValueType type = GgufValueType::kUint32);
  // `type` must be kFloat32 or kFloat64; throws Error when a finite value overflows float32.
  void set_float(const std::string& key, double value,
                 GgufValueType type = GgufValueType::kFloat32);
  void set_bool(const std::string& key, bool value);
  void set_string_array(const std::string& key, std::vector<std::string> values);
  // `element_type` is any numeric type or kBool. For integer types each value must be a whole
  // number in the type's range (it is then stored exactly); for kBool it must be 0 or 1.
  void set_number_array(const std::string& key, std::vector<double> values,
                        GgufValueType element_type);
  // Copies every metadata key of `source` for which skip(key) is false (all of them when skip
  // is empty), with its type. Keys arrive in the order GgufFile holds them (sorted by name).
  // Throws Error naming the key for an array of arrays, whose contents GgufFile does not keep.
  void copy_metadata(const GgufFile& source,
                     const std::function<bool(const std::string&)>& skip = nullptr);
  // Removes `key` if present.
  void remove(const std::string& key);

  // Adds a tensor of `type` whose bytes are data[0, nbytes). The bytes are BORROWED, not copied:
  // they must stay valid and unchanged until the last write() call, which lets a model be
  // rewritten straight from its memory map without a second copy of the weights. `shape` is
  // outer dimension first, as in TensorView; GGUF's innermost-first order is written for it.
  // Throws Error naming the tensor for an empty or over-long name, a repeated name, a shape
  // with no, more than 4, or non-positive dimensions, rows that are not whole blocks of a
  // quantized type, or `nbytes` other than the size the shape and type give.
  void add_tensor(const std::string& name, TensorType type, std::vector<int64_t> shape,
                  const void* data, size_t nbytes);
  // add_tensor for F32 numbers, as many as the shape holds (also borrowed).
  void add_f32_tensor(const std::string& name, std::vector<int64_t> shape, const float* data);

  // Fills `out`, the tensor's io::tensor_bytes(type, numel) bytes (zeroed beforehand).
  using TensorFill = std::function<void(uint8_t* out)>;
  // Adds a tensor whose bytes are made when the file is written: write() allocates a buffer of
  // the tensor's size, calls fill on it, writes it and frees it before the next tensor, so a file
  // of generated tensors needs memory for only its largest one, never for all of them. fill runs
  // once per write() call, in the order the tensors were added; an exception from it fails that
  // write() like an I/O error (nothing is left behind). Checks the name, type and shape as
  // add_tensor does; throws Error naming the tensor when fill is empty.
  void add_tensor_generated(const std::string& name, TensorType type, std::vector<int64_t> shape,
                            TensorFill fill);

  // Writes the file: to `path + ".tmp.<pid>"`, fsync, then rename over `path`. On any error the
  // temporary is removed, `path` is left as it was, and Error names `path`. Tensor data is
  // aligned to general.alignment (a uint32 power of two) when that key is set, else to 32.
  void write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    TensorType type;
    std::vector<int64_t> shape;  // outer dimension first
    const uint8_t* data;  // borrowed bytes, or null when `fill` makes them
    size_t nbytes;
    TensorFill fill;
  };

  void set(const std::string& key, GgufValue value);
  // Checks a tensor add_tensor or add_tensor_generated is given; returns the bytes it takes.
  size_t check_tensor(const std::string& name, TensorType type,
                      const std::vector<int64_t>& shape) const;

  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<Tensor> tensors_;
  std::set<std::string> tensor_names_;
};

}  // namespace eigenkv::io
