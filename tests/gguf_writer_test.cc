// Tests of the GGUF writer: every metadata type and several tensor types round-trip through
// GgufFile, a real model copies to an identical file, a failed write leaves nothing behind, and
// tensor data lands on the requested alignment.
#include "io/gguf_writer.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <numbers>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "test_util.h"
#include "util/error.h"

namespace eigenkv::io {
namespace {

namespace fs = std::filesystem;
using eigenkv::testing::temp_path;
using VT = GgufValueType;

// Removes the file (and any temporary of the writer's) when the test ends, pass or fail.
class ScratchFile {
 public:
  explicit ScratchFile(const std::string& name) : path_(temp_path(name)) { clean(); }
  ~ScratchFile() { clean(); }
  const std::string& path() const { return path_; }

  // Files in the directory whose names begin with the target's name plus ".tmp.".
  std::vector<std::string> temporaries() const {
    std::vector<std::string> found;
    const fs::path target(path_);
    const std::string prefix = target.filename().string() + ".tmp.";
    for (const auto& entry : fs::directory_iterator(target.parent_path())) {
      const std::string name = entry.path().filename().string();
      if (name.rfind(prefix, 0) == 0) found.push_back(entry.path().string());
    }
    return found;
  }

 private:
  void clean() const {
    std::error_code ec;
    fs::remove(path_, ec);
    for (const auto& t : temporaries()) fs::remove(t, ec);
  }
  std::string path_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Runs `f`, expects an eigenkv::Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no Error thrown; expected one mentioning " << *parts.begin();
  } catch (const Error& e) {
    for (const auto& part : parts) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << part << "\"";
    }
  }
}

void expect_same_value(const std::string& key, const GgufValue& a, const GgufValue& b) {
  SCOPED_TRACE("key " + key);
  ASSERT_EQ(a.type, b.type);
  if (a.type == VT::kArray) {
    ASSERT_EQ(a.element_type, b.element_type);
    EXPECT_EQ(a.strings, b.strings);
    ASSERT_EQ(a.numbers.size(), b.numbers.size());
    for (size_t i = 0; i < a.numbers.size(); ++i) {
      EXPECT_EQ(std::bit_cast<uint64_t>(a.numbers[i]), std::bit_cast<uint64_t>(b.numbers[i]))
          << "element " << i;
    }
  } else {
    EXPECT_TRUE(a.scalar == b.scalar);
  }
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> bytes(n);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  return bytes;
}

// ---- Metadata ------------------------------------------------------------------------------

TEST(GgufWriter, EveryMetadataTypeRoundTrips) {
  ScratchFile file("writer_metadata.gguf");
  GgufWriter w;
  w.set_int("u8", 255, VT::kUint8);
  w.set_int("i8", -128, VT::kInt8);
  w.set_int("u16", 65535, VT::kUint16);
  w.set_int("i16", -32768, VT::kInt16);
  w.set_int("u32", 4294967295, VT::kUint32);
  w.set_int("i32", std::numeric_limits<int32_t>::min(), VT::kInt32);
  w.set_int("u64", std::numeric_limits<int64_t>::max(), VT::kUint64);
  w.set_int("i64", std::numeric_limits<int64_t>::min(), VT::kInt64);
  w.set_int("default_u32", 7);
  w.set_float("f32", 1.5);
  w.set_float("f32_inf", -INFINITY);
  w.set_float("f64", std::numbers::pi, VT::kFloat64);
  w.set_bool("yes", true);
  w.set_bool("no", false);
  w.set_string("text", std::string("caf\xc3\xa9 with a \0 inside", 21));
  w.set_string("empty_text", "");
  w.set_number_array("a_u8", {0, 255}, VT::kUint8);
  w.set_number_array("a_i8", {-128, 127}, VT::kInt8);
  w.set_number_array("a_u16", {0, 65535}, VT::kUint16);
  w.set_number_array("a_i16", {-32768, 32767}, VT::kInt16);
  w.set_number_array("a_u32", {0, 4294967295.0}, VT::kUint32);
  w.set_number_array("a_i32", {-2147483648.0, 2147483647}, VT::kInt32);
  w.set_number_array("a_u64", {0, 9007199254740992.0, 18446744073709549568.0}, VT::kUint64);
  w.set_number_array("a_i64", {-9223372036854775808.0, -1, 9007199254740992.0}, VT::kInt64);
  w.set_number_array("a_f32", {0.25, -3.5, 1e30}, VT::kFloat32);
  w.set_number_array("a_f64", {std::numbers::pi, -1e300, 5e-324}, VT::kFloat64);
  w.set_number_array("a_bool", {1, 0, 1}, VT::kBool);
  w.set_number_array("a_empty", {}, VT::kInt32);
  w.set_string_array("a_str", {"alpha", "", "\xe2\x96\x81gamma"});
  w.set_string_array("a_str_empty", {});
  w.write(file.path());

  GgufFile g(file.path());
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.metadata().size(), 30u);
  EXPECT_EQ(g.get_int("u8"), 255);
  EXPECT_EQ(g.find("u8")->type, VT::kUint8);
  EXPECT_EQ(g.get_int("i8"), -128);
  EXPECT_EQ(g.find("i8")->type, VT::kInt8);
  EXPECT_EQ(g.get_int("u16"), 65535);
  EXPECT_EQ(g.find("u16")->type, VT::kUint16);
  EXPECT_EQ(g.get_int("i16"), -32768);
  EXPECT_EQ(g.find("i16")->type, VT::kInt16);
  EXPECT_EQ(g.get_int("u32"), 4294967295);
  EXPECT_EQ(g.find("u32")->type, VT::kUint32);
  EXPECT_EQ(g.get_int("i32"), std::numeric_limits<int32_t>::min());
  EXPECT_EQ(g.find("i32")->type, VT::kInt32);
  EXPECT_EQ(g.get_int("u64"), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(g.find("u64")->type, VT::kUint64);
  EXPECT_EQ(g.get_int("i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(g.find("i64")->type, VT::kInt64);
  EXPECT_EQ(g.get_int("default_u32"), 7);
  EXPECT_EQ(g.find("default_u32")->type, VT::kUint32);
  EXPECT_EQ(g.get_float("f32"), 1.5);
  EXPECT_EQ(g.find("f32")->type, VT::kFloat32);
  EXPECT_EQ(g.get_float("f32_inf"), -INFINITY);
  EXPECT_EQ(g.get_float("f64"), std::numbers::pi);
  EXPECT_EQ(g.find("f64")->type, VT::kFloat64);
  EXPECT_TRUE(g.get_bool("yes"));
  EXPECT_FALSE(g.get_bool("no"));
  EXPECT_EQ(g.get_string("text"), std::string("caf\xc3\xa9 with a \0 inside", 21));
  EXPECT_EQ(g.get_string("empty_text"), "");

  const std::vector<std::pair<std::string, VT>> arrays = {
      {"a_u8", VT::kUint8},    {"a_i8", VT::kInt8},    {"a_u16", VT::kUint16},
      {"a_i16", VT::kInt16},   {"a_u32", VT::kUint32}, {"a_i32", VT::kInt32},
      {"a_u64", VT::kUint64},  {"a_i64", VT::kInt64},  {"a_f32", VT::kFloat32},
      {"a_f64", VT::kFloat64}, {"a_bool", VT::kBool},  {"a_empty", VT::kInt32}};
  for (const auto& [key, type] : arrays) {
    EXPECT_EQ(g.find(key)->type, VT::kArray) << key;
    EXPECT_EQ(g.find(key)->element_type, type) << key;
  }
  using Numbers = std::vector<double>;
  EXPECT_EQ(g.get_number_array("a_u8"), (Numbers{0, 255}));
  EXPECT_EQ(g.get_number_array("a_i8"), (Numbers{-128, 127}));
  EXPECT_EQ(g.get_number_array("a_u16"), (Numbers{0, 65535}));
  EXPECT_EQ(g.get_number_array("a_i16"), (Numbers{-32768, 32767}));
  EXPECT_EQ(g.get_number_array("a_u32"), (Numbers{0, 4294967295.0}));
  EXPECT_EQ(g.get_number_array("a_i32"), (Numbers{-2147483648.0, 2147483647}));
  EXPECT_EQ(g.get_number_array("a_u64"), (Numbers{0, 9007199254740992.0, 18446744073709549568.0}));
  EXPECT_EQ(g.get_number_array("a_i64"), (Numbers{-9223372036854775808.0, -1, 9007199254740992.0}));
  EXPECT_EQ(g.get_number_array("a_f32"), (Numbers{0.25, -3.5, static_cast<double>(1e30f)}));
  EXPECT_EQ(g.get_number_array("a_f64"), (Numbers{std::numbers::pi, -1e300, 5e-324}));
  EXPECT_EQ(g.get_number_array("a_bool"), (Numbers{1, 0, 1}));
  EXPECT_TRUE(g.get_number_array("a_empty").empty());
  EXPECT_EQ(g.get_string_array("a_str"),
            (std::vector<std::string>{"alpha", "", "\xe2\x96\x81gamma"}));
  EXPECT_EQ(g.find("a_str_empty")->element_type, VT::kString);
  EXPECT_TRUE(g.get_string_array("a_str_empty").empty());
}

// GgufFile sorts keys, so the order is checked on the raw bytes: each key's length prefix and
// text appear in the file in insertion order.
TEST(GgufWriter, KeepsInsertionOrderAndOverwritesInPlace) {
  ScratchFile file("writer_order.gguf");
  GgufWriter w;
  w.set_string("zeta", "first");
  w.set_int("alpha", 1);
  w.set_bool("mid", true);
  w.set_string("gone", "removed below");
  w.set_float("alpha", 2.5, VT::kFloat64);  // replaces the uint32 in its original position
  w.remove("gone");
  w.remove("never.set");
  w.write(file.path());

  GgufFile g(file.path());
  ASSERT_EQ(g.metadata().size(), 3u);
  EXPECT_FALSE(g.has("gone"));
  EXPECT_EQ(g.find("alpha")->type, VT::kFloat64);
  EXPECT_EQ(g.get_float("alpha"), 2.5);

  const std::string bytes = read_bytes(file.path());
  auto position = [&](const std::string& key) {
    uint64_t len = key.size();
    std::string encoded(reinterpret_cast<const char*>(&len), 8);
    return bytes.find(encoded + key);
  };
  EXPECT_EQ(position("zeta"), 24u);  // right after magic, version and the two counts
  EXPECT_LT(position("zeta"), position("alpha"));
  EXPECT_LT(position("alpha"), position("mid"));
}

TEST(GgufWriter, RejectsValuesTheirTypeCannotHold) {
  GgufWriter w;
  expect_error([&] { w.set_int("k.u8", 256, VT::kUint8); }, {"k.u8", "256", "uint8"});
  expect_error([&] { w.set_int("k.i8", -129, VT::kInt8); }, {"k.i8", "int8"});
  expect_error([&] { w.set_int("k.u32", -1); }, {"k.u32", "uint32"});
  expect_error([&] { w.set_int("k.u64", -1, VT::kUint64); }, {"k.u64", "uint64"});
  expect_error([&] { w.set_int("k.i32", int64_t{1} << 31, VT::kInt32); }, {"k.i32"});
  expect_error([&] { w.set_int("k.f", 1, VT::kFloat32); }, {"k.f", "float32"});
  expect_error([&] { w.set_float("k.big", 1e39); }, {"k.big", "float32"});
  expect_error([&] { w.set_float("k.int", 1.0, VT::kInt32); }, {"k.int", "int32"});
  expect_error(
      [&] {
        w.set_number_array("k.frac", {1, 2.5}, VT::kInt32);
      },
      {"k.frac", "element 1"});
  expect_error([&] { w.set_number_array("k.nan", {NAN}, VT::kInt64); }, {"k.nan"});
  expect_error([&] { w.set_number_array("k.neg", {-1}, VT::kUint16); }, {"k.neg", "uint16"});
  expect_error([&] { w.set_number_array("k.u64", {18446744073709551616.0}, VT::kUint64); },
               {"k.u64"});
  expect_error([&] { w.set_number_array("k.bool", {2}, VT::kBool); }, {"k.bool", "bool"});
  expect_error([&] { w.set_number_array("k.f32", {1e39}, VT::kFloat32); }, {"k.f32"});
  expect_error([&] { w.set_number_array("k.str", {1}, VT::kString); }, {"k.str", "string"});
  expect_error([&] { w.set_string("", "x"); }, {"empty"});
}

// ---- Tensors -------------------------------------------------------------------------------

TEST(GgufWriter, TensorsOfSeveralTypesAndShapesRoundTrip) {
  ScratchFile file("writer_tensors.gguf");
  // F32 values whose bits must survive: signed zero, a subnormal, infinity and a NaN payload.
  std::vector<float> v1 = {0.0f, -0.0f, 1e-45f, INFINITY, 3.25f, -7.0f, 1e38f};
  v1.push_back(std::bit_cast<float>(uint32_t{0x7fc12345}));
  std::vector<float> v2(3 * 5), v3(2 * 3 * 4);
  for (size_t i = 0; i < v2.size(); ++i) v2[i] = std::sin(static_cast<float>(i)) * 1000.0f;
  for (size_t i = 0; i < v3.size(); ++i) v3[i] = static_cast<float>(i) / 7.0f - 1.0f;
  const auto q8 = random_bytes(2 * 2 * 34, 1);  // 2 rows of 64 numbers: 2 blocks of 34 bytes
  const auto f16 = random_bytes(4 * 8 * 2, 2);
  const auto q4k = random_bytes(1 * 144, 3);  // one row of 256 numbers

  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.add_f32_tensor("one_d", {static_cast<int64_t>(v1.size())}, v1.data());
  w.add_f32_tensor("two_d", {3, 5}, v2.data());
  w.add_f32_tensor("three_d", {2, 3, 4}, v3.data());
  w.add_tensor("q8", TensorType::kQ8_0, {2, 64}, q8.data(), q8.size());
  w.add_tensor("half", TensorType::kF16, {4, 8}, f16.data(), f16.size());
  w.add_tensor("four_d.q4k", TensorType::kQ4_K, {1, 1, 1, 256}, q4k.data(), q4k.size());
  w.write(file.path());

  GgufFile g(file.path());
  ASSERT_EQ(g.tensors().size(), 6u);
  const std::vector<std::string> order = {"one_d", "two_d", "three_d", "q8", "half", "four_d.q4k"};
  for (size_t i = 0; i < order.size(); ++i) EXPECT_EQ(g.tensors()[i].name, order[i]);

  auto expect_tensor = [&](const std::string& name, TensorType type, std::vector<int64_t> shape,
                           const void* data, size_t nbytes) {
    SCOPED_TRACE(name);
    const TensorView& t = g.tensor(name);
    EXPECT_EQ(t.type, type);
    EXPECT_EQ(t.shape, shape);
    ASSERT_EQ(t.nbytes, nbytes);
    EXPECT_EQ(std::memcmp(t.data, data, nbytes), 0);
  };
  expect_tensor("one_d", TensorType::kF32, {8}, v1.data(), v1.size() * 4);
  expect_tensor("two_d", TensorType::kF32, {3, 5}, v2.data(), v2.size() * 4);
  expect_tensor("three_d", TensorType::kF32, {2, 3, 4}, v3.data(), v3.size() * 4);
  expect_tensor("q8", TensorType::kQ8_0, {2, 64}, q8.data(), q8.size());
  expect_tensor("half", TensorType::kF16, {4, 8}, f16.data(), f16.size());
  expect_tensor("four_d.q4k", TensorType::kQ4_K, {1, 1, 1, 256}, q4k.data(), q4k.size());

  // GGUF stores dimensions innermost first: "three_d" must read 4, 3, 2 in the raw header.
  const std::string bytes = read_bytes(file.path());
  const size_t name_at = bytes.find("three_d");
  ASSERT_NE(name_at, std::string::npos);
  uint32_t n_dims;
  uint64_t dims[3];
  std::memcpy(&n_dims, bytes.data() + name_at + 7, 4);
  std::memcpy(dims, bytes.data() + name_at + 11, sizeof(dims));
  EXPECT_EQ(n_dims, 3u);
  EXPECT_EQ(dims[0], 4u);
  EXPECT_EQ(dims[1], 3u);
  EXPECT_EQ(dims[2], 2u);
}

TEST(GgufWriter, RejectsBadTensorsNamingThem) {
  const std::vector<float> data(64, 1.0f);
  const auto q8 = random_bytes(34, 4);
  GgufWriter w;
  w.add_f32_tensor("taken", {4}, data.data());
  expect_error([&] { w.add_f32_tensor("taken", {4}, data.data()); }, {"'taken'", "twice"});
  expect_error([&] { w.add_f32_tensor("", {4}, data.data()); }, {"name"});
  expect_error([&] { w.add_f32_tensor(std::string(64, 'x'), {4}, data.data()); },
               {std::string(64, 'x'), "64 bytes"});
  expect_error(
      [&] {
        w.add_tensor("short", TensorType::kF32, {4, 4}, data.data(), 60);
      },
      {"'short'", "64 bytes", "60"});
  expect_error(
      [&] {
        w.add_tensor("q8.size", TensorType::kQ8_0, {1, 32}, q8.data(), 32);
      },
      {"'q8.size'", "34"});
  expect_error(
      [&] {
        w.add_tensor("q8.rows", TensorType::kQ8_0, {2, 16}, q8.data(), 34);
      },
      {"'q8.rows'", "block size 32"});
  expect_error([&] { w.add_f32_tensor("zero", {4, 0}, data.data()); }, {"'zero'", "[4, 0]"});
  expect_error([&] { w.add_f32_tensor("negative", {-4}, data.data()); }, {"'negative'", "[-4]"});
  expect_error(
      [&] {
        w.add_f32_tensor("huge", {int64_t{1} << 40, int64_t{1} << 40}, data.data());
      },
      {"'huge'"});
  expect_error([&] { w.add_f32_tensor("scalar", {}, data.data()); }, {"'scalar'", "[]"});
  expect_error(
      [&] {
        w.add_f32_tensor("five_d", {1, 1, 1, 1, 4}, data.data());
      },
      {"'five_d'", "dimensions"});
  expect_error([&] { w.add_f32_tensor("null", {4}, nullptr); }, {"'null'", "no data"});

  // None of the rejected tensors was kept.
  ScratchFile file("writer_rejected.gguf");
  w.write(file.path());
  GgufFile g(file.path());
  ASSERT_EQ(g.tensors().size(), 1u);
  EXPECT_EQ(g.tensors()[0].name, "taken");
}

// ---- A real model ---------------------------------------------------------------------------

std::string stories_path() {
  for (const std::string& p : {eigenkv::testing::shared_path("models/stories260K.gguf"),
                               eigenkv::testing::source_path("models/stories260K.gguf")}) {
    if (fs::exists(p)) return p;
  }
  return "";
}

TEST(GgufWriter, CopiesStories260KExactly) {
  const std::string source_path = stories_path();
  if (source_path.empty()) GTEST_SKIP() << "skipped: stories260K.gguf is absent";
  ScratchFile file("writer_stories.gguf");
  {
    GgufFile source(source_path);
    GgufWriter w;
    w.copy_metadata(source);
    for (const auto& t : source.tensors()) w.add_tensor(t.name, t.type, t.shape, t.data, t.nbytes);
    w.write(file.path());

    GgufFile copy(file.path());
    EXPECT_EQ(copy.version(), 3u);
    EXPECT_EQ(copy.alignment(), source.alignment());
    ASSERT_EQ(copy.metadata().size(), source.metadata().size());
    for (const auto& [key, value] : source.metadata()) {
      ASSERT_TRUE(copy.has(key)) << key;
      expect_same_value(key, value, *copy.find(key));
    }
    ASSERT_EQ(copy.tensors().size(), source.tensors().size());
    for (size_t i = 0; i < source.tensors().size(); ++i) {
      const TensorView& a = source.tensors()[i];
      const TensorView& b = copy.tensors()[i];
      SCOPED_TRACE(a.name);
      EXPECT_EQ(a.name, b.name);
      EXPECT_EQ(a.type, b.type);
      EXPECT_EQ(a.shape, b.shape);
      ASSERT_EQ(a.nbytes, b.nbytes);
      EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes), 0);
    }
  }
  EXPECT_TRUE(file.temporaries().empty());
}

TEST(GgufWriter, CopyMetadataHonoursSkip) {
  const std::string source_path = stories_path();
  if (source_path.empty()) GTEST_SKIP() << "skipped: stories260K.gguf is absent";
  GgufFile source(source_path);
  ScratchFile file("writer_skip.gguf");
  GgufWriter w;
  w.set_string("eigenkv.extra", "kept");
  w.set_string("general.architecture", "replaced by the copy");
  w.copy_metadata(source, [](const std::string& key) { return key.rfind("tokenizer.", 0) == 0; });
  w.write(file.path());

  GgufFile copy(file.path());
  size_t kept = 0;
  for (const auto& [key, value] : source.metadata()) {
    if (key.rfind("tokenizer.", 0) == 0) {
      EXPECT_FALSE(copy.has(key)) << key;
    } else {
      ASSERT_TRUE(copy.has(key)) << key;
      expect_same_value(key, value, *copy.find(key));
      ++kept;
    }
  }
  EXPECT_GT(kept, 0u);
  EXPECT_LT(kept, source.metadata().size());
  EXPECT_EQ(copy.get_string("eigenkv.extra"), "kept");
  EXPECT_EQ(copy.get_string("general.architecture"), source.get_string("general.architecture"));
}

// ---- Atomicity -----------------------------------------------------------------------------

TEST(GgufWriter, MissingDirectoryIsAnErrorNamingThePath) {
  const std::string dir = temp_path("writer_no_such_dir");
  fs::remove_all(dir);
  const std::string path = dir + "/model.gguf";
  GgufWriter w;
  w.set_int("k", 1);
  expect_error([&] { w.write(path); }, {path, "No such file or directory"});
  EXPECT_FALSE(fs::exists(dir));
}

TEST(GgufWriter, DirectoryThatIsAFileIsAnError) {
  ScratchFile blocker("writer_blocker");
  std::ofstream(blocker.path()) << "not a directory";
  const std::string path = blocker.path() + "/model.gguf";
  GgufWriter w;
  expect_error([&] { w.write(path); }, {path});
  EXPECT_EQ(read_bytes(blocker.path()), "not a directory");
}

// Lowers the process's file-size limit so that a write past it fails with EFBIG (SIGXFSZ,
// which would kill the process, is ignored meanwhile): a disk filling up halfway through.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &saved_);
    saved_handler_ = ::signal(SIGXFSZ, SIG_IGN);
    rlimit lowered = saved_;
    lowered.rlim_cur = bytes;
    ok_ = ::setrlimit(RLIMIT_FSIZE, &lowered) == 0;
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    ::signal(SIGXFSZ, saved_handler_);
  }
  bool ok() const { return ok_; }

 private:
  rlimit saved_;
  void (*saved_handler_)(int);
  bool ok_ = false;
};

TEST(GgufWriter, FailureMidwayLeavesNoFileAndNoTemporary) {
  ScratchFile file("writer_midway.gguf");
  const std::vector<float> big(256 * 1024, 0.5f);  // 1 MiB of tensor data
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.add_f32_tensor("big", {256, 1024}, big.data());
  {
    FileSizeLimit limit(64 * 1024);
    ASSERT_TRUE(limit.ok());
    expect_error([&] { w.write(file.path()); }, {file.path(), "too large"});
  }
  EXPECT_FALSE(fs::exists(file.path()));
  EXPECT_TRUE(file.temporaries().empty());
}

TEST(GgufWriter, FailureMidwayKeepsThePreviousFile) {
  ScratchFile file("writer_keep.gguf");
  const std::vector<float> small(8, 1.0f), big(256 * 1024, 0.5f);
  GgufWriter first;
  first.add_f32_tensor("small", {8}, small.data());
  first.write(file.path());
  const std::string before = read_bytes(file.path());

  GgufWriter second;
  second.add_f32_tensor("big", {256, 1024}, big.data());
  {
    FileSizeLimit limit(64 * 1024);
    ASSERT_TRUE(limit.ok());
    expect_error([&] { second.write(file.path()); }, {file.path()});
  }
  EXPECT_EQ(read_bytes(file.path()), before);
  EXPECT_TRUE(file.temporaries().empty());

  // Without the limit the same writer replaces the file.
  second.write(file.path());
  GgufFile g(file.path());
  ASSERT_EQ(g.tensors().size(), 1u);
  EXPECT_EQ(g.tensors()[0].name, "big");
  EXPECT_TRUE(file.temporaries().empty());
}

TEST(GgufWriter, BadAlignmentFailsBeforeAnythingIsWritten) {
  ScratchFile file("writer_bad_alignment.gguf");
  const std::vector<float> data(4, 1.0f);
  GgufWriter w;
  w.add_f32_tensor("t", {4}, data.data());
  w.set_int("general.alignment", 48);
  expect_error([&] { w.write(file.path()); }, {file.path(), "power of two"});
  w.set_int("general.alignment", 32, VT::kUint64);
  expect_error([&] { w.write(file.path()); }, {file.path(), "uint32"});
  EXPECT_FALSE(fs::exists(file.path()));
  EXPECT_TRUE(file.temporaries().empty());
}

// ---- Generated tensors --------------------------------------------------------------------

TEST(GgufWriter, GeneratedTensorsRoundTripBesideBorrowedOnes) {
  ScratchFile file("writer_generated.gguf");
  const std::vector<float> norm(8, 1.0f);
  const auto q8 = random_bytes(3 * 34, 6);
  std::vector<std::string> calls;
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.add_f32_tensor("norm", {8}, norm.data());
  // A generated F32 matrix: element i is i / 4.
  w.add_tensor_generated("gen.f32", TensorType::kF32, {3, 5}, [&](uint8_t* out) {
    calls.push_back("gen.f32");
    for (int i = 0; i < 15; ++i) {
      const float x = static_cast<float>(i) / 4.0f;
      std::memcpy(out + 4 * i, &x, 4);
    }
  });
  w.add_tensor("q8", TensorType::kQ8_0, {3, 32}, q8.data(), q8.size());
  // A generated Q8_0 tensor that writes only its first byte: the rest arrive zeroed.
  w.add_tensor_generated("gen.q8", TensorType::kQ8_0, {2, 64}, [&](uint8_t* out) {
    calls.push_back("gen.q8");
    out[0] = 0x5a;
  });
  w.write(file.path());
  EXPECT_EQ(calls, (std::vector<std::string>{"gen.f32", "gen.q8"}));

  GgufFile g(file.path());
  ASSERT_EQ(g.tensors().size(), 4u);
  const std::vector<std::string> order = {"norm", "gen.f32", "q8", "gen.q8"};
  for (size_t i = 0; i < order.size(); ++i) EXPECT_EQ(g.tensors()[i].name, order[i]);
  const TensorView& f = g.tensor("gen.f32");
  EXPECT_EQ(f.type, TensorType::kF32);
  EXPECT_EQ(f.shape, (std::vector<int64_t>{3, 5}));
  ASSERT_EQ(f.nbytes, 60u);
  for (int i = 0; i < 15; ++i) {
    float x;
    std::memcpy(&x, f.data + 4 * i, 4);
    EXPECT_EQ(x, static_cast<float>(i) / 4.0f) << i;
  }
  EXPECT_EQ(std::memcmp(g.tensor("q8").data, q8.data(), q8.size()), 0);
  const TensorView& q = g.tensor("gen.q8");
  EXPECT_EQ(q.type, TensorType::kQ8_0);
  ASSERT_EQ(q.nbytes, 4u * 34);
  EXPECT_EQ(q.data[0], 0x5a);
  EXPECT_TRUE(std::all_of(q.data + 1, q.data + q.nbytes, [](uint8_t b) { return b == 0; }));
  EXPECT_EQ(std::memcmp(g.tensor("norm").data, norm.data(), 32), 0);

  // Each write() makes the tensors again, and the same fill gives the same file.
  const std::string first = read_bytes(file.path());
  w.write(file.path());
  EXPECT_EQ(calls.size(), 4u);
  EXPECT_EQ(read_bytes(file.path()), first);
  EXPECT_TRUE(file.temporaries().empty());
}

// A tensor is made only once the ones before it are on disk, so at most one is in memory.
TEST(GgufWriter, GeneratedTensorsAreMadeOneAtATimeAfterThePreviousIsWritten) {
  ScratchFile file("writer_streamed.gguf");
  constexpr int kTensors = 4;
  constexpr int64_t kRows = 64, kCols = 256;  // 64 KiB of F32 each, a multiple of the alignment
  const size_t tensor_bytes = kRows * kCols * 4;
  GgufWriter w;
  std::vector<uintmax_t> temp_size_at_fill;
  for (int k = 0; k < kTensors; ++k) {
    w.add_tensor_generated(cat("t", k), TensorType::kF32, {kRows, kCols}, [&, k](uint8_t* out) {
      const auto temps = file.temporaries();
      temp_size_at_fill.push_back(temps.size() == 1 ? fs::file_size(temps[0]) : 0);
      std::memset(out, k + 1, tensor_bytes);
    });
  }
  w.write(file.path());
  ASSERT_EQ(temp_size_at_fill.size(), size_t{kTensors});
  GgufFile g(file.path());
  // The tensors need no padding, so the header and directory take what they do not.
  const size_t data_start = fs::file_size(file.path()) - kTensors * tensor_bytes;
  for (int k = 0; k < kTensors; ++k) {
    SCOPED_TRACE(k);
    // The temporary held the header and exactly the k tensors before this one.
    EXPECT_EQ(temp_size_at_fill[k], data_start + k * tensor_bytes);
    const TensorView& t = g.tensor(cat("t", k));
    EXPECT_TRUE(std::all_of(t.data, t.data + t.nbytes, [&](uint8_t b) { return b == k + 1; }));
  }
}

TEST(GgufWriter, FillThatThrowsFailsTheWriteAndKeepsThePreviousFile) {
  ScratchFile file("writer_fill_throws.gguf");
  const std::vector<float> small(8, 1.0f);
  GgufWriter first;
  first.add_f32_tensor("small", {8}, small.data());
  first.write(file.path());
  const std::string before = read_bytes(file.path());

  GgufWriter w;
  w.add_tensor_generated("fine", TensorType::kF32, {1024}, [](uint8_t*) {});
  w.add_tensor_generated("broken", TensorType::kF16, {2, 8},
                         [](uint8_t*) { fail("the generator ran out of numbers"); });
  expect_error([&] { w.write(file.path()); }, {"ran out of numbers"});
  EXPECT_EQ(read_bytes(file.path()), before);
  EXPECT_TRUE(file.temporaries().empty());
}

TEST(GgufWriter, RejectsBadGeneratedTensorsNamingThem) {
  const std::vector<float> data(4, 1.0f);
  const auto noop = [](uint8_t*) {};
  GgufWriter w;
  w.add_f32_tensor("taken", {4}, data.data());
  w.add_tensor_generated("made", TensorType::kQ8_0, {1, 32}, noop);
  expect_error([&] { w.add_tensor_generated("taken", TensorType::kF32, {4}, noop); },
               {"'taken'", "twice"});
  expect_error([&] { w.add_f32_tensor("made", {4}, data.data()); }, {"'made'", "twice"});
  expect_error([&] { w.add_tensor_generated("", TensorType::kF32, {4}, noop); }, {"name"});
  expect_error([&] { w.add_tensor_generated("rows", TensorType::kQ4_0, {2, 16}, noop); },
               {"'rows'", "block size 32"});
  expect_error([&] { w.add_tensor_generated("zero", TensorType::kF32, {4, 0}, noop); },
               {"'zero'", "[4, 0]"});
  expect_error([&] { w.add_tensor_generated("scalar", TensorType::kF32, {}, noop); },
               {"'scalar'", "[]"});
  expect_error(
      [&] {
        w.add_tensor_generated("type", static_cast<TensorType>(99), {4}, noop);
      },
      {"'type'", "99"});
  expect_error([&] { w.add_tensor_generated("empty", TensorType::kF32, {4}, nullptr); },
               {"'empty'", "no fill"});

  ScratchFile file("writer_generated_rejected.gguf");
  w.write(file.path());
  GgufFile g(file.path());
  ASSERT_EQ(g.tensors().size(), 2u);
  EXPECT_EQ(g.tensors()[1].name, "made");
}

// ---- Alignment -----------------------------------------------------------------------------

void expect_aligned_tensors(std::optional<int64_t> alignment_key, size_t expected) {
  SCOPED_TRACE(cat("alignment ", expected));
  ScratchFile file(cat("writer_align_", expected, ".gguf"));
  // Sizes that are not multiples of any alignment, so each tensor needs padding after it.
  const std::vector<float> a(3, 1.0f), b(5, 2.0f), c(17, 3.0f);
  const auto q8 = random_bytes(34, 5);
  GgufWriter w;
  w.set_string("general.name", "odd");  // odd header length before the tensor directory
  if (alignment_key) w.set_int("general.alignment", *alignment_key);
  w.add_f32_tensor("a", {3}, a.data());
  w.add_tensor("q8", TensorType::kQ8_0, {1, 32}, q8.data(), q8.size());
  w.add_f32_tensor("b", {5}, b.data());
  w.add_f32_tensor("c", {17}, c.data());
  w.write(file.path());

  GgufFile g(file.path());
  EXPECT_EQ(g.alignment(), expected);
  // The file is mapped at a page boundary, so addresses show the alignment of file offsets.
  for (const auto& t : g.tensors()) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % expected, 0u) << t.name;
  }
  EXPECT_EQ(std::memcmp(g.tensor("c").data, c.data(), c.size() * 4), 0);
  EXPECT_EQ(fs::file_size(file.path()) % expected, 0u);
}

TEST(GgufWriter, AlignsTensorDataToTheDefault32) { expect_aligned_tensors(std::nullopt, 32); }
TEST(GgufWriter, AlignsTensorDataTo32) { expect_aligned_tensors(32, 32); }
TEST(GgufWriter, AlignsTensorDataTo64) { expect_aligned_tensors(64, 64); }

TEST(GgufWriter, WritesAFileWithNoTensors) {
  ScratchFile file("writer_empty.gguf");
  GgufWriter().write(file.path());
  GgufFile g(file.path());
  EXPECT_TRUE(g.metadata().empty());
  EXPECT_TRUE(g.tensors().empty());
}

}  // namespace
}  // namespace eigenkv::io
