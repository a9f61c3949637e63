// Seeded mutation fuzzing of the file parsers. Every parser that reads bytes from outside the
// program promises to either accept an input or throw eigenkv::Error; these tests hold it to that
// on tens of thousands of corrupted copies of real files. Anything else (another exception type, a
// crash, a sanitizer report, a view that points outside the input) is a failure.
//
// Knobs, all optional, for longer runs or reproducing one failure:
//   EIGENKV_FUZZ_ITERS    inputs per parser (default 10000)
//   EIGENKV_FUZZ_SEED     base seed (default fixed, so every run tests the same inputs)
//   EIGENKV_FUZZ_VERBOSE  1: print each input's mutations before parsing it, so that the last
//                         line before a crash names the input that caused it
// A failing input is written to the temp directory and its path printed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <typeinfo>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "io/safetensors.h"
#include "io/tensor_type.h"
#include "test_util.h"
#include "util/error.h"

#if __has_include("tokenizer/tokenizer.h")
#include "tokenizer/tokenizer.h"
#define EIGENKV_FUZZ_HAVE_TOKENIZER 1
#endif

namespace eigenkv {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;
using eigenkv::testing::shared_path;

// ---- Configuration and randomness -----------------------------------------------------------

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

int iterations() { return env_int("EIGENKV_FUZZ_ITERS", 10000); }
bool verbose() { return env_int("EIGENKV_FUZZ_VERBOSE", 0) != 0; }

// Each parser gets its own stream, so adding inputs to one test leaves the others' unchanged.
uint64_t seed_for(const std::string& parser) {
  const char* v = std::getenv("EIGENKV_FUZZ_SEED");
  uint64_t seed = v && *v ? std::strtoull(v, nullptr, 0) : 0x5eed'e16e'4b76'0001ULL;
  for (char c : parser) seed = (seed ^ static_cast<uint8_t>(c)) * 0x100000001b3ULL;
  return seed;
}

// mt19937_64's output is fixed by the standard but the std:: distributions are not, so the
// mapping to ranges is done here: the same seed gives the same inputs with any standard library.
class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  // In [0, n); n must be > 0. The modulo bias is irrelevant for fuzzing.
  uint64_t below(uint64_t n) { return gen_() % n; }
  bool chance(double p) { return static_cast<double>(gen_() >> 11) * 0x1.0p-53 < p; }
  template <typename T>
  const T& pick(const std::vector<T>& v) { return v[below(v.size())]; }

 private:
  std::mt19937_64 gen_;
};

// ---- Seeds --------------------------------------------------------------------------------

// A field of a binary format whose value steers the parser: mutating it, rather than random
// bytes, reaches the checks behind the first few.
enum class FieldKind { kLength, kCount, kValueType, kTensorType, kDim, kOffset, kVersion };
struct Field {
  size_t offset;
  int width;  // bytes, little-endian
  FieldKind kind;
};

struct Seed {
  std::string name;
  Bytes bytes;
  size_t hot_end = 0;  // the header: most mutations land before this offset
  std::vector<Field> fields;
};

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

uint64_t load_le(const Bytes& b, size_t at, int width) {
  uint64_t v = 0;
  for (int i = width - 1; i >= 0; --i) v = (v << 8) | b[at + i];
  return v;
}

void store_le(Bytes& b, size_t at, int width, uint64_t v) {
  for (int i = 0; i < width && at + i < b.size(); ++i) {
    b[at + i] = static_cast<uint8_t>(v >> (8 * i));
  }
}

// Walks a well-formed GGUF seed and lists its length, count, type, dimension and offset fields.
// It trusts its input: seeds are checked to parse before they are used.
class GgufWalker {
 public:
  explicit GgufWalker(const Bytes& b) : b_(b) {}

  std::vector<Field> walk(size_t* header_end) {
    pos_ = 4;
    add(4, FieldKind::kVersion);
    uint64_t n_tensors = load_le(b_, pos_, 8);
    add(8, FieldKind::kCount);
    uint64_t n_kv = load_le(b_, pos_, 8);
    add(8, FieldKind::kCount);
    for (uint64_t i = 0; i < n_kv; ++i) {
      string();
      uint32_t type = static_cast<uint32_t>(load_le(b_, pos_, 4));
      add(4, FieldKind::kValueType);
      value(type);
    }
    for (uint64_t i = 0; i < n_tensors; ++i) {
      string();
      uint32_t dims = static_cast<uint32_t>(load_le(b_, pos_, 4));
      add(4, FieldKind::kCount);
      for (uint32_t d = 0; d < dims; ++d) add(8, FieldKind::kDim);
      add(4, FieldKind::kTensorType);
      add(8, FieldKind::kOffset);
    }
    *header_end = pos_;
    return std::move(fields_);
  }

 private:
  void add(int width, FieldKind kind) {
    fields_.push_back({pos_, width, kind});
    pos_ += width;
  }
  void string() {
    uint64_t len = load_le(b_, pos_, 8);
    add(8, FieldKind::kLength);
    pos_ += len;
  }
  void value(uint32_t type) {
    static const std::map<uint32_t, size_t> kSizes = {{0, 1}, {1, 1}, {2, 2},  {3, 2},  {4, 4},
                                                      {5, 4}, {6, 4}, {7, 1},  {10, 8}, {11, 8},
                                                      {12, 8}};
    if (type == 8) return string();
    if (type != 9) {
      pos_ += kSizes.at(type);
      return;
    }
    uint32_t elem = static_cast<uint32_t>(load_le(b_, pos_, 4));
    add(4, FieldKind::kValueType);
    uint64_t count = load_le(b_, pos_, 8);
    add(8, FieldKind::kCount);
    if (elem == 8 || elem == 9) {
      for (uint64_t i = 0; i < count; ++i) value(elem);
    } else {
      pos_ += count * kSizes.at(elem);
    }
  }

  const Bytes& b_;
  size_t pos_ = 0;
  std::vector<Field> fields_;
};

// Writes GGUF v3 by hand, so that the fuzzer starts from every value type, nested arrays, a
// custom alignment and quantized tensors, which no file in ../shared holds all of.
class GgufBuilder {
 public:
  void u8(uint8_t v) { out_.push_back(v); }
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void str(const std::string& s) {
    u64(s.size());
    raw(s.data(), s.size());
  }
  void raw(const void* p, size_t n) {
    auto* c = static_cast<const uint8_t*>(p);
    out_.insert(out_.end(), c, c + n);
  }
  void key(const std::string& k, uint32_t type) {
    str(k);
    u32(type);
  }
  Bytes& bytes() { return out_; }

 private:
  Bytes out_;
};

Bytes build_gguf() {
  struct T {
    const char* name;
    std::vector<uint64_t> ne;  // innermost first, as GGUF stores it
    io::TensorType type;
  };
  const std::vector<T> tensors = {
      {"a.f32", {4, 3}, io::TensorType::kF32},    {"b.f16", {8}, io::TensorType::kF16},
      {"c.q4_0", {32, 2}, io::TensorType::kQ4_0}, {"d.q8_0", {64}, io::TensorType::kQ8_0},
      {"e.q4_k", {256}, io::TensorType::kQ4_K},   {"f.i32", {2, 2, 2, 2}, io::TensorType::kI32},
      {"g.bf16", {2}, io::TensorType::kBF16},     {"h.q6_k", {256, 1}, io::TensorType::kQ6_K},
  };
  constexpr uint64_t kAlign = 64;
  GgufBuilder w;
  w.raw("GGUF", 4);
  w.u32(3);
  w.u64(tensors.size());
  w.u64(17);  // metadata count: keep in step with the keys below
  w.key("general.architecture", 8), w.str("llama");
  w.key("general.alignment", 4), w.u32(kAlign);
  w.key("k.u8", 0), w.u8(200);
  w.key("k.i8", 1), w.u8(0x80);
  w.key("k.u16", 2), w.u8(1), w.u8(2);
  w.key("k.i16", 3), w.u8(0xFF), w.u8(0xFF);
  w.key("k.i32", 5), w.u32(0xFFFFFFF0u);
  float f = 1.5f;
  w.key("k.f32", 6), w.raw(&f, 4);
  w.key("k.bool", 7), w.u8(1);
  w.key("k.u64", 10), w.u64(~uint64_t{0});
  w.key("k.i64", 11), w.u64(uint64_t{1} << 63);
  double d = -2.25;
  w.key("k.f64", 12), w.raw(&d, 8);
  w.key("k.strings", 9), w.u32(8), w.u64(3), w.str("a"), w.str(""), w.str("\xe2\x96\x81hi");
  w.key("k.floats", 9), w.u32(6), w.u64(3);
  for (float x : {0.5f, -1.0f, 3.0f}) w.raw(&x, 4);
  w.key("k.bools", 9), w.u32(7), w.u64(2), w.u8(0), w.u8(1);
  w.key("k.empty", 9), w.u32(4), w.u64(0);
  w.key("k.nested", 9), w.u32(9), w.u64(2);
  w.u32(4), w.u64(2), w.u32(7), w.u32(8);  // [7, 8]
  w.u32(8), w.u64(1), w.str("x");          // ["x"]

  uint64_t offset = 0;
  std::vector<size_t> sizes;
  for (const T& t : tensors) {
    w.str(t.name);
    w.u32(static_cast<uint32_t>(t.ne.size()));
    uint64_t numel = 1;
    for (uint64_t n : t.ne) w.u64(n), numel *= n;
    w.u32(static_cast<uint32_t>(t.type));
    w.u64(offset);
    sizes.push_back(io::tensor_bytes(t.type, static_cast<int64_t>(numel)));
    offset = (offset + sizes.back() + kAlign - 1) / kAlign * kAlign;
  }
  Bytes& b = w.bytes();
  b.resize((b.size() + kAlign - 1) / kAlign * kAlign, 0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    size_t start = b.size();
    for (size_t j = 0; j < sizes[i]; ++j) b.push_back(static_cast<uint8_t>(i * 31 + j));
    if (i + 1 < tensors.size()) b.resize(start + (sizes[i] + kAlign - 1) / kAlign * kAlign, 0);
  }
  return b;
}

Seed gguf_seed(std::string name, Bytes bytes) {
  io::GgufFile check(bytes.data(), bytes.size(), name);  // a seed must parse
  Seed s{std::move(name), std::move(bytes), 0, {}};
  s.fields = GgufWalker(s.bytes).walk(&s.hot_end);
  return s;
}

// A safetensors file with every dtype, odd shapes and metadata, written by hand for the same
// reason as build_gguf.
Bytes build_safetensors() {
  struct T {
    const char* name;
    const char* dtype;
    std::vector<int64_t> shape;
    size_t elem;
  };
  const std::vector<T> tensors = {
      {"w.f32", "F32", {2, 3}, 4}, {"w.f16", "F16", {4}, 2},     {"w.bf16", "BF16", {1, 2}, 2},
      {"w.f64", "F64", {1}, 8},    {"w.i8", "I8", {3}, 1},       {"w.i16", "I16", {2}, 2},
      {"w.i32", "I32", {1, 1, 2}, 4}, {"w.i64", "I64", {1}, 8},  {"scalar", "F32", {}, 4},
      {"empty", "F16", {0, 5}, 2},
  };
  nlohmann::ordered_json h;
  h["__metadata__"] = {{"format", "pt"}, {"tied.weight", "w.f32"}};
  uint64_t offset = 0;
  for (const T& t : tensors) {
    uint64_t n = t.elem;
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string header = h.dump();
  header.resize((header.size() + 7) / 8 * 8, ' ');
  // Sized up front and filled in place: GCC 12 warns falsely about insert() after Bytes(8).
  Bytes b(8 + header.size() + offset);
  store_le(b, 0, 8, header.size());
  std::memcpy(b.data() + 8, header.data(), header.size());
  for (uint64_t i = 0; i < offset; ++i) b[8 + header.size() + i] = static_cast<uint8_t>(i * 7);
  return b;
}

Seed safetensors_seed(std::string name, Bytes bytes) {
  io::SafetensorsFile check(bytes.data(), bytes.size(), name);  // a seed must parse
  Seed s{std::move(name), std::move(bytes), 0, {}};
  s.hot_end = 8 + load_le(s.bytes, 0, 8);
  s.fields.push_back({0, 8, FieldKind::kLength});
  return s;
}

// ---- Mutations ----------------------------------------------------------------------------

// Values that sit on the boundaries parsers get wrong: zero, one, sign bits, all ones, powers of
// two around the sizes of int types, and the input's own size.
uint64_t interesting_value(Rng& rng, int width, uint64_t size) {
  static const std::vector<uint64_t> k64 = {0,
                                            1,
                                            2,
                                            7,
                                            8,
                                            255,
                                            256,
                                            0x7FFF,
                                            0x8000,
                                            0xFFFF,
                                            0x10000,
                                            0x7FFFFFFF,
                                            0x80000000,
                                            0xFFFFFFFF,
                                            uint64_t{1} << 32,
                                            uint64_t{1} << 40,
                                            uint64_t{1} << 48,
                                            (uint64_t{1} << 62) + 1,
                                            0x7FFFFFFFFFFFFFFF,
                                            uint64_t{1} << 63,
                                            ~uint64_t{0} - 7,
                                            ~uint64_t{0}};
  uint64_t v = rng.chance(0.1) ? size + rng.below(17) - 8 : rng.pick(k64);
  if (width < 8) v &= (uint64_t{1} << (8 * width)) - 1;
  return v;
}

// A new value for a known field, chosen for what that field means to the parser.
uint64_t field_value(Rng& rng, const Field& f, uint64_t old, uint64_t size) {
  switch (f.kind) {
    case FieldKind::kValueType:
      return rng.chance(0.8) ? rng.below(14) : interesting_value(rng, 4, size);
    case FieldKind::kTensorType: {
      static const std::vector<uint64_t> kTypes = {0,  1,  2,  3,  4,  5,  6,  7,  8,   9,
                                                   10, 11, 12, 13, 14, 15, 16, 23, 24,  25,
                                                   26, 27, 28, 29, 30, 31, 39, 99, 255, 0xFFFFFFFF};
      return rng.pick(kTypes);
    }
    case FieldKind::kVersion:
      return rng.below(6);
    default:
      break;
  }
  switch (rng.below(8)) {
    case 0: return old + 1;
    case 1: return old - 1;
    case 2: return old * 2;
    case 3: return old + rng.below(64) + 1;
    case 4: return old + (uint64_t{1} << 32);
    case 5: return old - rng.below(64) - 1;
    case 6: return size - rng.below(64);
    default: return interesting_value(rng, f.width, size);
  }
}

// Where a mutation lands: mostly inside the header, where a byte steers the parser; sometimes
// anywhere, since a parser must also survive garbage in the data it only bounds-checks.
size_t pick_pos(Rng& rng, size_t size, size_t hot_end) {
  if (size == 0) return 0;
  size_t hot = std::min(hot_end, size);
  if (hot > 0 && rng.chance(0.85)) return rng.below(hot);
  return rng.below(size);
}

size_t pick_len(Rng& rng) { return rng.chance(0.7) ? rng.below(16) + 1 : rng.below(512) + 1; }

// Applies one generic byte-level mutation. Returns true when it moved bytes (so that field offsets
// recorded in the seed no longer hold).
bool mutate_bytes(Rng& rng, Bytes& b, size_t hot_end, std::string& log) {
  const size_t pos = pick_pos(rng, b.size(), hot_end);
  switch (rng.below(9)) {
    case 0: {  // flip one bit
      if (b.empty()) return false;
      int bit = static_cast<int>(rng.below(8));
      b[pos] ^= static_cast<uint8_t>(1u << bit);
      log += cat(" flip@", pos, ":", bit);
      return false;
    }
    case 1: {  // overwrite one byte with a boundary value
      if (b.empty()) return false;
      static const std::vector<uint8_t> k8 = {0, 1, 0x7F, 0x80, 0xFF, 0xFE, 0x20, 0x40,
                                              '{', '}', '[', ']', '"', ',', ':', '\\', '0', '9'};
      b[pos] = rng.pick(k8);
      log += cat(" byte@", pos, "=", int{b[pos]});
      return false;
    }
    case 2: {  // overwrite 2, 4 or 8 bytes with a boundary integer
      static const std::vector<int> kWidths = {2, 4, 8};
      int width = rng.pick(kWidths);
      uint64_t v = interesting_value(rng, width, b.size());
      store_le(b, pos, width, v);
      log += cat(" word", width, "@", pos, "=", v);
      return false;
    }
    case 3: {  // truncate
      size_t at = rng.chance(0.5) ? pos : b.size() - std::min(b.size(), pick_len(rng));
      b.resize(at);
      log += cat(" truncate@", at);
      return true;
    }
    case 4: {  // remove a chunk
      size_t len = std::min(pick_len(rng), b.size() - pos);
      b.erase(b.begin() + pos, b.begin() + pos + len);
      log += cat(" erase@", pos, "+", len);
      return true;
    }
    case 5: {  // duplicate a chunk in place: repeats a field, a string or a whole entry
      size_t len = std::min(pick_len(rng), b.size() - pos);
      Bytes chunk(b.begin() + pos, b.begin() + pos + len);
      size_t dst = pick_pos(rng, b.size(), hot_end);
      b.insert(b.begin() + dst, chunk.begin(), chunk.end());
      log += cat(" dup@", pos, "+", len, "->", dst);
      return true;
    }
    case 6: {  // copy a chunk over another
      size_t len = std::min(pick_len(rng), b.size() - pos);
      size_t dst = pick_pos(rng, b.size(), hot_end);
      len = std::min(len, b.size() - dst);
      std::memmove(b.data() + dst, b.data() + pos, len);
      log += cat(" copy@", pos, "+", len, "->", dst);
      return false;
    }
    case 7: {  // insert random bytes
      size_t len = rng.below(8) + 1;
      for (size_t i = 0; i < len; ++i) {
        b.insert(b.begin() + pos, static_cast<uint8_t>(rng.below(256)));
      }
      log += cat(" insert@", pos, "+", len);
      return true;
    }
    default: {  // scribble over a few bytes
      size_t len = std::min<size_t>(rng.below(8) + 1, b.size() - pos);
      for (size_t i = 0; i < len; ++i) b[pos + i] = static_cast<uint8_t>(rng.below(256));
      log += cat(" scribble@", pos, "+", len);
      return false;
    }
  }
}

// Changes one of the seed's known fields (offsets still valid only while no bytes moved).
void mutate_field(Rng& rng, Bytes& b, const std::vector<Field>& fields, std::string& log) {
  const Field& f = rng.pick(fields);
  if (f.offset + f.width > b.size()) return;
  uint64_t old = load_le(b, f.offset, f.width);
  uint64_t v = field_value(rng, f, old, b.size());
  store_le(b, f.offset, f.width, v);
  log += cat(" field@", f.offset, "(", static_cast<int>(f.kind), ")", old, "->", v);
}

// One to four stacked mutations of a binary seed.
Bytes mutate_binary(Rng& rng, const Seed& seed, std::string& log) {
  Bytes b = seed.bytes;
  bool moved = false;
  const int n = 1 + static_cast<int>(rng.below(4));
  for (int i = 0; i < n; ++i) {
    if (!moved && !seed.fields.empty() && rng.chance(0.4)) {
      mutate_field(rng, b, seed.fields, log);
    } else {
      moved = mutate_bytes(rng, b, seed.hot_end, log) || moved;
    }
  }
  return b;
}

// ---- JSON text mutations ------------------------------------------------------------------

struct Token {
  size_t begin, end;
  char kind;  // 's' string, 'n' number, 'l' literal, 'p' punctuation
  int depth;  // nesting depth at the token (top-level object's members are at depth 1)
};

// A forgiving scanner: mutated text need not be JSON, it only has to give the mutator places to
// aim at.
std::vector<Token> scan_json(const std::string& s) {
  std::vector<Token> out;
  int depth = 0;
  for (size_t i = 0; i < s.size();) {
    char c = s[i];
    size_t start = i;
    if (c == '"') {
      for (++i; i < s.size() && s[i] != '"'; ++i) {
        if (s[i] == '\\') ++i;
      }
      i = std::min(i + 1, s.size());
      out.push_back({start, i, 's', depth});
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      auto numeric = [](char x) {
        return (x >= '0' && x <= '9') || x == '-' || x == '+' || x == '.' || x == 'e' || x == 'E';
      };
      while (i < s.size() && numeric(s[i])) ++i;
      out.push_back({start, i, 'n', depth});
    } else if (std::isalpha(static_cast<unsigned char>(c))) {
      while (i < s.size() && std::isalpha(static_cast<unsigned char>(s[i]))) ++i;
      out.push_back({start, i, 'l', depth});
    } else if (c == '{' || c == '}' || c == '[' || c == ']' || c == ':' || c == ',') {
      if (c == '}' || c == ']') --depth;
      out.push_back({start, i + 1, 'p', depth});
      if (c == '{' || c == '[') ++depth;
      ++i;
    } else {
      ++i;
    }
  }
  return out;
}

const std::vector<std::string>& interesting_numbers() {
  static const std::vector<std::string> k = {
      "0", "1", "-1", "2", "7", "8", "-0", "0.5", "1.0", "1e3", "1e308", "-1e308", "1e999",
      "4294967295", "4294967296", "1099511627776", "1099511627777", "281474976710656",
      "9223372036854775807", "9223372036854775808", "-9223372036854775808",
      "18446744073709551615", "18446744073709551616", "99999999999999999999999999", "00", "1e",
      "-", "0x10"};
  return k;
}

// Strings that trouble JSON and UTF-8 readers: escapes, lone surrogates, broken sequences.
std::vector<std::string> hostile_strings() {
  return {"\"\"", "\"\\u0000\"", "\"\\ud800\"", "\"\\udc00\\ud800\"", "\"\\\"\"", "\"a\\\\b\"",
          "\"\xc3\x28\"", "\"\xf0\x9f\x98\"", "\"\xe2\x96\x81\"", "\"\xed\xa0\x80\"",
          "\"\xc0\xaf\"",
          "\"unterminated", "\"" + std::string(300, 'A') + "\""};
}

// Replacement strings for a format: its own words, then the hostile ones.
std::vector<std::string> with_hostile(std::vector<std::string> words) {
  for (auto& w : words) w = "\"" + w + "\"";
  for (auto& h : hostile_strings()) words.push_back(h);
  return words;
}

const std::vector<std::string>& safetensors_strings() {
  static const std::vector<std::string> k = with_hostile(
      {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64", "BOOL", "U8", "F8_E4M3", "F8_E5M2",
       "__metadata__", "dtype", "shape", "data_offsets", "format"});
  return k;
}

std::string deep_nesting(size_t depth, char open, char close) {
  return std::string(depth, open) + std::string(depth, close);
}

const std::vector<std::string>& interesting_values() {
  static const std::vector<std::string> k = {
      "null", "true", "false", "[]", "{}", "[0]", "[0,0]", "[0,0,0]", "[-1]", "[[]]", "[{}]",
      "{\"dtype\":\"F32\"}", "{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}",
      "[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]", deep_nesting(200, '[', ']'),
      "[" + std::string(2000, '1').insert(1, ",") + "]"};
  return k;
}

// Nesting deep enough to overflow the stack of a recursive parser or destructor. Costly to
// parse under the sanitizers, so used sparingly.
const std::vector<std::string>& deep_values() {
  static const std::vector<std::string> k = {deep_nesting(100000, '[', ']'),
                                             "{\"a\":" + deep_nesting(50000, '{', '}') + "}",
                                             deep_nesting(100000, '[', ']').insert(50000, "{")};
  return k;
}

// One mutation of JSON text aimed at its tokens: numbers, strings, values and whole entries.
// `strings`: the replacements for string tokens, the format's own words among them.
void mutate_json_once(Rng& rng, std::string& s, const std::vector<std::string>& strings,
                      std::string& log) {
  std::vector<Token> tokens = scan_json(s);
  auto pick_token = [&](char kind) -> const Token* {
    std::vector<const Token*> of_kind;
    for (const Token& t : tokens) {
      if (t.kind == kind) of_kind.push_back(&t);
    }
    return of_kind.empty() ? nullptr : of_kind[rng.below(of_kind.size())];
  };
  auto replace = [&](const Token& t, const std::string& with, const char* what) {
    log += cat(" json-", what, "@", t.begin, "=", with.substr(0, 24));
    s.replace(t.begin, t.end - t.begin, with);
  };
  switch (rng.below(7)) {
    case 0: {  // a number becomes a boundary number, or a near neighbour of itself
      const Token* t = pick_token('n');
      if (!t) return;
      std::string with = rng.pick(interesting_numbers());
      if (rng.chance(0.4)) {
        uint64_t v = std::strtoull(s.substr(t->begin, t->end - t->begin).c_str(), nullptr, 10);
        static const std::vector<int64_t> kDeltas = {-8, -4, -2, -1, 1, 2, 4, 8};
        with = std::to_string(rng.chance(0.2) ? v * 2 : v + rng.pick(kDeltas));
      }
      return replace(*t, with, "number");
    }
    case 1: {  // a string (key or value) becomes a dtype, a field name, or a hostile string
      const Token* t = pick_token('s');
      if (!t) return;
      std::string with = rng.pick(strings);
      if (rng.chance(0.3)) {  // or another string from the same text: duplicates, swapped keys
        const Token* other = pick_token('s');
        with = s.substr(other->begin, other->end - other->begin);
      }
      return replace(*t, with, "string");
    }
    case 2: {  // any scalar becomes a structure or another type
      const Token* t = rng.chance(0.5) ? pick_token('n') : pick_token('s');
      if (!t) return;
      const auto& values = rng.chance(0.02) ? deep_values() : interesting_values();
      return replace(*t, rng.pick(values), "value");
    }
    case 3: {  // duplicate a top-level entry "key": {...}, as is or after the next mutation
      std::vector<size_t> keys;
      for (size_t i = 0; i + 1 < tokens.size(); ++i) {
        if (tokens[i].kind == 's' && tokens[i].depth == 1 && s[tokens[i + 1].begin] == ':') {
          keys.push_back(i);
        }
      }
      if (keys.empty()) return;
      size_t k = rng.pick(keys);
      size_t j = k + 2;  // the value: a scalar, or an opening bracket up to its closing one
      if (j >= tokens.size()) return;
      if (s[tokens[j].begin] == '{' || s[tokens[j].begin] == '[') {
        if (++j == tokens.size()) return;  // an opening bracket that ends the text
        while (j + 1 < tokens.size() && tokens[j].depth > 1) ++j;
      }
      size_t begin = tokens[k].begin, end = tokens[j].end;
      std::string entry = s.substr(begin, end - begin);
      // Renamed, the copy is a second tensor over the same bytes; as is, a duplicate key.
      bool rename = rng.chance(0.5) && entry.size() > 1;
      if (rename) entry.insert(1, "copy.");
      s.insert(end, "," + entry);
      log += cat(" json-dup-entry@", begin, "+", end - begin, rename ? " renamed" : "");
      return;
    }
    case 4: {  // delete the span between two tokens: drops fields, commas, brackets
      if (tokens.size() < 2) return;
      size_t a = rng.below(tokens.size());
      size_t b = std::min(tokens.size() - 1, a + rng.below(6));
      log += cat(" json-erase@", tokens[a].begin, "+", tokens[b].end - tokens[a].begin);
      s.erase(tokens[a].begin, tokens[b].end - tokens[a].begin);
      return;
    }
    case 5: {  // insert punctuation
      static const std::vector<std::string> kPunct = {"{", "}", "[", "]", ",", ":", "\"", "\\",
                                                      " ", std::string(1, '\0'), "\xff"};
      size_t at = s.empty() ? 0 : rng.below(s.size() + 1);
      std::string what = rng.pick(kPunct);
      s.insert(at, what);
      log += cat(" json-insert@", at);
      return;
    }
    default: {  // byte-level change inside the text
      Bytes b(s.begin(), s.end());
      mutate_bytes(rng, b, b.size(), log);
      s.assign(b.begin(), b.end());
      return;
    }
  }
}

// ---- The harness --------------------------------------------------------------------------

struct Stats {
  int inputs = 0;
  int accepted = 0;
  int rejected = 0;
  int failures = 0;
  double slowest_s = 0;
  std::string slowest;
  std::set<std::string> error_kinds;  // messages with numbers and names blanked out
};

// An error message with digits and quoted names blanked, so that messages from the same check
// count once: the number of kinds shows how many of a parser's checks the mutations reached.
std::string error_kind(const std::string& msg) {
  std::string out;
  size_t start = msg.find(": ");  // drop the label
  bool in_quote = false;
  for (size_t i = start == std::string::npos ? 0 : start; i < msg.size(); ++i) {
    char c = msg[i];
    if (c == '\'') {
      if (!in_quote) out += "'_'";
      in_quote = !in_quote;
      continue;
    }
    if (in_quote) continue;
    if (c >= '0' && c <= '9') {
      if (out.empty() || out.back() != '#') out += '#';
      continue;
    }
    out += c;
  }
  return out.substr(0, 160);
}

void save_failure(const std::string& parser, int iter, const Bytes& input) {
  fs::path path = fs::temp_directory_path() / cat("eigenkv_fuzz_", parser, "_", iter, ".bin");
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(input.data()),
            static_cast<std::streamsize>(input.size()));
  std::cerr << "  input written to " << path.string() << "\n";
}

// Parses one input, which `parse` reads and checks. `parse` returns a description of any broken
// invariant (empty when the parse was sound) or throws.
void run_one(const std::string& parser, int iter, const Bytes& input, const std::string& log,
             const std::function<std::string(const Bytes&)>& parse, Stats& stats) {
  if (verbose()) std::cerr << parser << " #" << iter << ":" << log << std::endl;
  std::string problem;
  auto t0 = std::chrono::steady_clock::now();
  try {
    problem = parse(input);
    ++stats.accepted;
  } catch (const Error& e) {
    ++stats.rejected;
    stats.error_kinds.insert(error_kind(e.what()));
  } catch (const std::exception& e) {
    problem = cat("threw ", typeid(e).name(), " (not eigenkv::Error): ", e.what());
  } catch (...) {
    problem = "threw a non-std exception";
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ++stats.inputs;
  if (s > stats.slowest_s) {
    stats.slowest_s = s;
    stats.slowest = cat("#", iter, log);
  }
  if (!problem.empty()) {
    if (++stats.failures <= 5) {
      ADD_FAILURE() << parser << " input #" << iter << " (seed " << seed_for(parser)
                    << ", mutations:" << log << "): " << problem;
      save_failure(parser, iter, input);
    }
  }
}

// Wall time and this process's CPU time: on a loaded machine the second is the one to compare.
class Timer {
 public:
  double wall_s() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0_).count();
  }
  double cpu_s() const { return static_cast<double>(std::clock() - cpu0_) / CLOCKS_PER_SEC; }

 private:
  std::chrono::steady_clock::time_point wall0_ = std::chrono::steady_clock::now();
  std::clock_t cpu0_ = std::clock();
};

void report(const std::string& parser, const Stats& stats, const Timer& timer) {
  std::cout << "[ fuzz     ] " << parser << ": " << stats.inputs << " inputs in " << timer.wall_s()
            << " s (" << timer.cpu_s() << " s CPU): " << stats.accepted << " accepted, "
            << stats.rejected << " rejected with " << stats.error_kinds.size()
            << " kinds of Error, " << stats.failures << " failures; slowest input "
            << stats.slowest_s * 1e3 << " ms\n";
  if (verbose()) {
    for (const auto& k : stats.error_kinds) std::cout << "    " << k << "\n";
  }
  EXPECT_EQ(stats.failures, 0);
  // Parsing a few megabytes takes milliseconds even under the sanitizers; seconds on one input
  // mean a loop that runs away with a corrupt count.
  EXPECT_LT(stats.slowest_s, 5.0) << "slowest input " << stats.slowest;
}

// Reads one byte at each end of a view, so that a view outside the input trips the sanitizer,
// and checks the view's bounds and size without one.
std::string check_view(const io::TensorView& t, const Bytes& input) {
  const uint8_t* lo = input.data();
  const uint8_t* hi = input.data() + input.size();
  if (t.nbytes != 0) {
    if (t.data < lo || t.data > hi || t.nbytes > static_cast<size_t>(hi - t.data)) {
      return cat("tensor '", t.name, "' view of ", t.nbytes, " bytes lies outside the input");
    }
    volatile uint8_t touch = t.data[0];
    touch = t.data[t.nbytes - 1];
    (void)touch;
  }
  for (int64_t d : t.shape) {
    if (d < 0) return cat("tensor '", t.name, "' has negative dimension ", d);
  }
  if (t.nbytes != io::tensor_bytes(t.type, t.numel())) {
    return cat("tensor '", t.name, "' has ", t.nbytes, " bytes for ", t.numel(), " numbers");
  }
  return {};
}

// ---- GGUF ---------------------------------------------------------------------------------

std::string parse_gguf(const Bytes& input) {
  io::GgufFile f(input.data(), input.size(), "fuzz.gguf");
  for (const io::TensorView& t : f.tensors()) {
    if (auto p = check_view(t, input); !p.empty()) return p;
    if (f.find_tensor(t.name) != &t) return cat("find_tensor('", t.name, "') finds another");
    if (t.shape.empty() || t.shape.size() > 4) {
      return cat("tensor '", t.name, "' has rank ", t.shape.size());
    }
  }
  // The typed getters must also answer every key with a value or an Error.
  for (const auto& [key, value] : f.metadata()) {
    const std::vector<std::function<void()>> getters = {
        [&] { f.get_string(key); },       [&] { f.get_int(key); },
        [&] { f.get_float(key); },        [&] { f.get_bool(key); },
        [&] { f.get_string_array(key); }, [&] { f.get_number_array(key); }};
    for (const auto& get : getters) {
      try {
        get();
      } catch (const Error&) {
      }
    }
  }
  return {};
}

TEST(FuzzParsers, Gguf) {
  std::vector<Seed> seeds;
  seeds.push_back(gguf_seed("built.gguf", build_gguf()));
  for (const char* rel :
       {"models/stories260K.gguf", "models/quantized/tinystories-c4-gqa-Q4_K_M.gguf"}) {
    if (fs::exists(shared_path(rel))) seeds.push_back(gguf_seed(rel, read_file(shared_path(rel))));
  }
  ASSERT_FALSE(seeds.empty());

  Rng rng(seed_for("gguf"));
  Stats stats;
  Timer timer;
  const int n = iterations();
  for (int i = 0; i < n; ++i) {
    // The small built seed holds the most variety and costs least to copy (which counts under
    // the sanitizers): it gets most inputs, the real files the rest.
    const Seed& seed = rng.chance(0.7) ? seeds[0] : seeds[rng.below(seeds.size())];
    std::string log = " " + seed.name + ":";
    Bytes input = mutate_binary(rng, seed, log);
    run_one("gguf", i, input, log, parse_gguf, stats);
  }
  report("gguf", stats, timer);
}

// ---- safetensors --------------------------------------------------------------------------

std::string parse_safetensors(const Bytes& input) {
  io::SafetensorsFile f(input.data(), input.size(), "fuzz.safetensors");
  uint64_t expect_begin = 8 + load_le(input, 0, 8);  // tensors tile the data section in order
  for (const io::TensorView& t : f.tensors()) {
    if (auto p = check_view(t, input); !p.empty()) return p;
    if (static_cast<uint64_t>(t.data - input.data()) != expect_begin) {
      return cat("tensor '", t.name, "' does not follow the previous one");
    }
    expect_begin += t.nbytes;
    if (f.find_tensor(t.name) != &t) return cat("find_tensor('", t.name, "') finds another");
  }
  if (expect_begin != input.size()) return "tensors do not cover the data section";
  for (const auto& [k, v] : f.metadata()) (void)f.find_tensor(v);
  return {};
}

TEST(FuzzParsers, Safetensors) {
  std::vector<Seed> seeds;
  seeds.push_back(safetensors_seed("built.safetensors", build_safetensors()));
  for (const char* rel : {"models/stories260K-hf/model.safetensors"}) {
    if (fs::exists(shared_path(rel))) {
      seeds.push_back(safetensors_seed(rel, read_file(shared_path(rel))));
    }
  }

  Rng rng(seed_for("safetensors"));
  Stats stats;
  Timer timer;
  const int n = iterations();
  for (int i = 0; i < n; ++i) {
    const Seed& seed = rng.chance(0.7) ? seeds[0] : seeds[rng.below(seeds.size())];
    std::string log = " " + seed.name + ":";
    Bytes input;
    if (rng.chance(0.3)) {
      // Raw: any byte may change, the length field included.
      input = mutate_binary(rng, seed, log);
    } else {
      // Header-aware: mutate the JSON text and write a length that matches it, so that the input
      // gets past the length check and into the JSON and its validation.
      std::string header(seed.bytes.begin() + 8, seed.bytes.begin() + seed.hot_end);
      const int m = 1 + static_cast<int>(rng.below(3));
      for (int j = 0; j < m; ++j) mutate_json_once(rng, header, safetensors_strings(), log);
      input.assign(8, 0);
      store_le(input, 0, 8, header.size());
      input.insert(input.end(), header.begin(), header.end());
      input.insert(input.end(), seed.bytes.begin() + seed.hot_end, seed.bytes.end());
      if (rng.chance(0.1)) {
        size_t cut = rng.below(64);
        input.erase(input.end() - static_cast<ptrdiff_t>(std::min(cut, input.size())),
                    input.end());
        log += cat(" data-cut ", cut);
      }
    }
    run_one("safetensors", i, input, log, parse_safetensors, stats);
  }
  report("safetensors", stats, timer);
}

// ---- tokenizer.json -----------------------------------------------------------------------

#ifdef EIGENKV_FUZZ_HAVE_TOKENIZER

std::string utf8(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

// A small byte-level BPE in the Llama-3 / GPT-2 style (regex split, ByteLevel pre-tokenizer and
// decoder, special added tokens), the other family of tokenizer.json next to stories260K's
// SentencePiece-style one. The 256 byte symbols follow GPT-2's byte-to-character table.
std::string build_byte_level_tokenizer() {
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  int next_extra = 256;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    vocab[utf8(printable ? b : next_extra++)] = b;
  }
  const std::string g = utf8(0x120);  // "Ġ", the byte-level space
  const std::vector<std::pair<std::string, std::string>> merges = {
      {g, "t"}, {"h", "e"}, {g + "t", "he"}, {"l", "l"}, {"ll", "o"}, {g, "w"}, {"o", "r"}};
  nlohmann::ordered_json merge_list = nlohmann::ordered_json::array();
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = static_cast<int>(vocab.size());
    merge_list.push_back(a + " " + b);
  }
  const int bos = static_cast<int>(vocab.size());
  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  for (const char* special : {"<|begin_of_text|>", "<|end_of_text|>"}) {
    added.push_back({{"id", bos + static_cast<int>(added.size())}, {"content", special},
                     {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  }
  const char* split_regex =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
      "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  nlohmann::ordered_json j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", split_regex}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"},
           {"add_prefix_space", false},
           {"trim_offsets", true},
           {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false},
        {"use_regex", true}}},
      {"decoder",
       {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
        {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", true},
        {"vocab", vocab}, {"merges", merge_list}}},
  };
  return j.dump(1);
}

const std::vector<std::string>& tokenizer_strings() {
  static const std::vector<std::string> k = with_hostile(
      {"BPE", "WordPiece", "WordLevel", "Unigram", "Sequence", "Split", "ByteLevel", "Metaspace",
       "Whitespace", "Digits", "Punctuation", "Replace", "Prepend", "Strip", "NFC", "NFD", "NFKC",
       "NFKD", "Lowercase", "ByteFallback", "Fuse", "TemplateProcessing", "Isolated", "Removed",
       "MergedWithPrevious", "Contiguous", "String", "Regex", "type", "vocab", "merges", "model",
       "id", "content", "special", "unk_token", "<unk>", "<s>", "</s>", "<0x00>", "<0xFF>",
       "<0xZZ>",
       "<|begin_of_text|>", "\xe2\x96\x81", "\xc4\xa0", "a b", " ", "a  b", "a", "(", ")", "[",
       "[^", "\\\\p{", "\\\\p{Zz}", "(?i:", "(?!", "(?<=a)", "*", "+?", "a{1,2", "a{99999}",
       "\\\\", "\\\\k<x>", "(a|", "[z-a]", "\\\\u{110000}", "bos_token", "eos_token",
       "add_bos_token"});
  return k;
}

// Loads one mutated tokenizer.json (and tokenizer_config.json when given) from `dir` and, when it
// loads, encodes and decodes a little text with it: a tokenizer that loads must also work.
std::string load_tokenizer(const fs::path& dir) {
  auto tok = tok::tokenizer_from_json((dir / "tokenizer.json").string());
  if (!tok) return "tokenizer_from_json returned null";
  const int32_t n = static_cast<int32_t>(tok->vocab_size());
  for (const char* text : {"Hello world! 123  x\n\ty", "\xc3\xbcn\xc3\xaf \xf0\x9f\x98\x80 <s>",
                           "<|begin_of_text|>it's 42", "", "\xff\xfe broken \xc3"}) {
    for (bool special : {false, true}) {
      std::vector<int32_t> ids = tok->encode(text, /*add_bos=*/special, special);
      for (int32_t id : ids) {
        if (id < 0 || id >= n) return cat("encode gave id ", id, " outside the vocabulary of ", n);
      }
      (void)tok->decode(ids);
    }
  }
  for (int32_t id : {0, 1, 2, n / 2, n - 1}) {
    if (id < 0 || id >= n) continue;
    (void)tok->token_to_piece(id);
    (void)tok->find_token(tok->token_text(id));
  }
  return {};
}

TEST(FuzzParsers, TokenizerJson) {
  struct JsonSeed {
    std::string name;
    std::string tokenizer;
    std::string config;  // empty: no tokenizer_config.json beside it
  };
  std::vector<JsonSeed> seeds = {{"built-byte-level", build_byte_level_tokenizer(), ""}};
  if (fs::exists(shared_path("models/stories260K-hf/tokenizer.json"))) {
    auto text = [](const char* rel) {
      Bytes b = read_file(shared_path(rel));
      return std::string(b.begin(), b.end());
    };
    seeds.push_back({"stories260K-hf", text("models/stories260K-hf/tokenizer.json"),
                     text("models/stories260K-hf/tokenizer_config.json")});
  }
  // The loader takes a path, so every input is a file: in memory (/dev/shm) where there is one,
  // since on a disk the writes take longer than the parsing.
  std::error_code ec;
  const fs::path base =
      fs::is_directory("/dev/shm", ec) ? fs::path("/dev/shm") : fs::temp_directory_path();
  const fs::path dir = base / cat("eigenkv_fuzz_tokenizer_", ::getpid());
  fs::create_directories(dir);
  auto write = [&](const char* name, const std::string& text) {
    std::ofstream out(dir / name, std::ios::binary);
    out << text;
  };
  for (const auto& seed : seeds) {  // seeds must load
    write("tokenizer.json", seed.tokenizer);
    fs::remove(dir / "tokenizer_config.json");
    if (!seed.config.empty()) write("tokenizer_config.json", seed.config);
    ASSERT_EQ(load_tokenizer(dir), "") << seed.name;
  }

  bool had_config = fs::exists(dir / "tokenizer_config.json");
  Rng rng(seed_for("tokenizer.json"));
  Stats stats;
  Timer timer;
  const int n = iterations();
  for (int i = 0; i < n; ++i) {
    const JsonSeed& seed = rng.pick(seeds);
    std::string log = " " + seed.name + ":";
    std::string tokenizer = seed.tokenizer;
    std::string config = seed.config;
    // Mostly the tokenizer.json; sometimes the config beside it instead.
    std::string& target = !config.empty() && rng.chance(0.15) ? config : tokenizer;
    if (&target == &config) log += " config:";
    const int m = 1 + static_cast<int>(rng.below(3));
    for (int j = 0; j < m; ++j) mutate_json_once(rng, target, tokenizer_strings(), log);
    write("tokenizer.json", tokenizer);
    if (!config.empty()) {
      write("tokenizer_config.json", config);
    } else if (had_config) {
      fs::remove(dir / "tokenizer_config.json");
    }
    had_config = !config.empty();
    // The harness takes bytes; what it is given here is what was written, for the failure dump.
    Bytes input(target.begin(), target.end());
    run_one("tokenizer_json", i, input, log, [&](const Bytes&) { return load_tokenizer(dir); },
            stats);
  }
  fs::remove_all(dir);
  report("tokenizer.json", stats, timer);
}

#endif  // EIGENKV_FUZZ_HAVE_TOKENIZER

}  // namespace
}  // namespace eigenkv
