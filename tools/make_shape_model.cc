// eigenkv-shape-model: writes a GGUF model of a real Llama shape (TinyLlama 1.1B, Llama 3.2 1B,
// Llama 2 7B) whose weights are random numbers, for speed and memory benchmarks only. Its
// outputs are meaningless; every file says so in general.name and general.description.
//
// The file is what llama.cpp's converter writes for that shape: the same llama.* keys and tensor
// names and shapes, with the Llama SentencePiece vocabulary copied from a vocabulary-only GGUF,
// so that eigenkv and llama.cpp both load it. Matrices are N(0, 0.02) numbers, norms are 1.
// --type names a llama-quantize mix (q4_0, q8_0, q4_k_m, ...: output.weight in Q6_K and so on,
// as llama-quantize would choose, through ops/quant_mix.h) or else a tensor type (f16, bf16,
// q6_k, ...: every 2-D tensor gets it); --pure gives every 2-D tensor the mix's base type.
// Each row of each tensor draws from its own xoshiro256** stream seeded from the seed, the
// tensor's name and the row, so the file is the same for a seed whatever the thread count.
// Tensors are made while the file is written, one at a time (GgufWriter::add_tensor_generated),
// in parallel chunks of rows, so a 7B file needs memory for its largest tensor, not the model.
//
//   build/tools/eigenkv-shape-model --shape llama-2-7b --type q4_k_m -o /tmp/7b.gguf
//       [--seed S] [--layers N (fewer layers, for quick tests)] [--pure] [-t threads]
#include <CLI/CLI.hpp>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <numbers>
#include <optional>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "io/tensor_type.h"
#include "ops/dequant.h"
#include "ops/quant_mix.h"
#include "util/error.h"
#include "util/progress.h"
#include "util/threads.h"

namespace eigenkv::tools {
namespace {

constexpr const char* kWarning = "RANDOM WEIGHTS FOR SPEED/MEMORY BENCHMARKS ONLY";
constexpr float kMatrixStd = 0.02f;
// llama.cpp's quantization version (GGML_QNT_VERSION), which its tools write beside file_type.
constexpr int64_t kQuantizationVersion = 2;
// llama.cpp's token type for a placeholder token (gguf-py TokenType.UNUSED), and the text and
// score its converter gives one when a model has more embeddings than the tokenizer has tokens.
constexpr double kUnusedTokenType = 5;
constexpr double kPaddingScore = -10000.0;

struct Shape {
  std::string name;
  std::string display_name;
  int64_t d_model, n_layers, n_heads, n_kv_heads, head_dim, d_ffn, n_vocab, n_ctx;
  double rope_theta, norm_eps;
  bool tied_embeddings;
};

// The shapes of the real models' config.json files. Llama 3.2's llama3 RoPE scaling (llama.cpp's
// rope_freqs.weight) is left out: it changes no tensor size and no step's cost.
const std::vector<Shape>& shapes() {
  static const std::vector<Shape> all = {
      {"tinyllama-1.1b", "TinyLlama-1.1B", 2048, 22, 32, 4, 64, 5632, 32000, 2048, 10000.0, 1e-5,
       false},
      {"llama-3.2-1b", "Llama-3.2-1B", 2048, 16, 32, 8, 64, 8192, 128256, 131072, 500000.0, 1e-5,
       true},
      {"llama-2-7b", "Llama-2-7B", 4096, 32, 32, 32, 128, 11008, 32000, 4096, 10000.0, 1e-5,
       false},
  };
  return all;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// general.file_type (llama.cpp's llama_ftype) of a file whose matrices are all `type`; for a
// K type, the _S mix whose main type it is.
int64_t file_type_of(io::TensorType type) {
  using T = io::TensorType;
  switch (type) {
    case T::kF32: return 0;
    case T::kF16: return 1;
    case T::kQ4_0: return 2;
    case T::kQ4_1: return 3;
    case T::kQ8_0: return 7;
    case T::kQ5_0: return 8;
    case T::kQ5_1: return 9;
    case T::kQ2_K: return 10;
    case T::kQ3_K: return 11;
    case T::kQ4_K: return 14;
    case T::kQ5_K: return 16;
    case T::kQ6_K: return 18;
    case T::kBF16: return 32;
    default: fail("no llama.cpp file type holds ", io::tensor_type_info(type).name, " matrices");
  }
}

// ---- Random numbers -------------------------------------------------------------------------

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

class Xoshiro256 {
 public:
  explicit Xoshiro256(uint64_t seed) {
    for (uint64_t& word : s_) word = splitmix64(seed);
  }
  uint64_t next() {
    const uint64_t result = std::rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = std::rotl(s_[3], 45);
    return result;
  }

 private:
  uint64_t s_[4];
};

uint64_t tensor_seed(uint64_t seed, const std::string& name) {
  uint64_t state = seed ^ fnv1a(name);
  return splitmix64(state);
}

uint64_t row_seed(uint64_t tensor, int64_t row) {
  uint64_t state = tensor + static_cast<uint64_t>(row) * 0xd1b54a32d192ed03ull;
  return splitmix64(state);
}

// Natural log of x in (0, 1) (a normal float): Cephes' logf, written as plain arithmetic on the
// exponent and mantissa so that loops over arrays of it vectorize; within 2 ulp.
inline float log_unit(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 126);
  float m = std::bit_cast<float>((bits & 0x7fffffu) | 0x3f000000u);  // in [0.5, 1)
  const float small = m < 0.70710678f ? 1.0f : 0.0f;
  e -= small;
  m = m * (1.0f + small) - 1.0f;  // in [sqrt(1/2) - 1, sqrt(2) - 1)
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * z * m;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}

// Box-Muller, two numbers of N(0, stddev^2) from each 64-bit draw: the top 24 bits give
// u1 in (0, 1) (never 0, so the log is finite) and the radius stddev * sqrt(-2 ln u1); the low
// 32 give the angle, uniform on the circle as a quadrant (2 bits) and an angle in (-pi/4, pi/4)
// (22 bits) whose sine and cosine are Cephes' sinf/cosf polynomials. Everything past the
// generator is arithmetic on arrays, which the compiler vectorizes.
void normal_row(uint64_t seed, float stddev, float* out, int64_t n) {
  constexpr int kBatch = 256;  // pairs
  constexpr float kQuarterPi = std::numbers::pi_v<float> / 4;
  Xoshiro256 rng(seed);
  uint32_t hi[kBatch], lo[kBatch];
  float a[kBatch], b[kBatch];
  for (int64_t pair = 0; pair < (n + 1) / 2; pair += kBatch) {
    const int m = static_cast<int>(std::min<int64_t>(kBatch, (n + 1) / 2 - pair));
    for (int j = 0; j < m; ++j) {
      const uint64_t bits = rng.next();
      hi[j] = static_cast<uint32_t>(bits >> 32);
      lo[j] = static_cast<uint32_t>(bits);
    }
    for (int j = 0; j < m; ++j) {
      const float u1 = (static_cast<float>(hi[j] >> 8) + 0.5f) * 0x1p-24f;
      const float r = stddev * std::sqrt(-2.0f * log_unit(u1));
      const float x =
          (static_cast<float>((lo[j] >> 8) & 0x3fffffu) + 0.5f) * (0x1p-22f * 2 * kQuarterPi) -
          kQuarterPi;
      const float z = x * x;
      const float sin_x = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) *
                              z * x + x;
      const float cos_x = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z +
                           4.166664568298827e-2f) * z * z - 0.5f * z + 1.0f;
      // Rotated by the quadrant q: (cos, sin) of x + q pi/2, as a swap and two signs.
      const uint32_t q = lo[j] >> 30;
      const uint32_t swap = 0u - (q & 1);  // all ones for odd q
      const uint32_t cos_bits = std::bit_cast<uint32_t>(cos_x);
      const uint32_t sin_bits = std::bit_cast<uint32_t>(sin_x);
      const uint32_t cos_sign = ((q ^ (q >> 1)) & 1) << 31;
      const uint32_t sin_sign = (q >> 1) << 31;
      a[j] = r * std::bit_cast<float>(((sin_bits & swap) | (cos_bits & ~swap)) ^ cos_sign);
      b[j] = r * std::bit_cast<float>(((cos_bits & swap) | (sin_bits & ~swap)) ^ sin_sign);
    }
    float* dst = out + 2 * pair;
    const int whole = static_cast<int>(std::min<int64_t>(m, (n - 2 * pair) / 2));
    for (int j = 0; j < whole; ++j) {
      dst[2 * j] = a[j];
      dst[2 * j + 1] = b[j];
    }
    if (whole < m) dst[2 * whole] = a[whole];  // an odd row's last number
  }
}

// Fills `out` with a rows x cols matrix of N(0, stddev^2) numbers stored as `type`: chunks of
// rows made and quantized in parallel, each row from its own stream.
void fill_normal(io::TensorType type, int64_t rows, int64_t cols, uint64_t seed, float stddev,
                 uint8_t* out) {
  constexpr int64_t kRowsPerChunk = 16;
  const size_t row_bytes = io::tensor_bytes(type, cols);
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  std::exception_ptr error;
#pragma omp parallel
  {
    std::vector<float> buffer(static_cast<size_t>(kRowsPerChunk * cols));
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      try {
        const int64_t first = c * kRowsPerChunk;
        const int64_t n = std::min(kRowsPerChunk, rows - first);
        for (int64_t r = 0; r < n; ++r) {
          normal_row(row_seed(seed, first + r), stddev, buffer.data() + r * cols, cols);
        }
        ops::quantize(type, buffer.data(), out + static_cast<size_t>(first) * row_bytes,
                      n * cols);
      } catch (...) {
#pragma omp critical
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

// ---- The model ------------------------------------------------------------------------------

struct Options {
  std::string shape = "tinyllama-1.1b";
  std::string type = "f16";
  std::string output;
  std::string vocab = EIGENKV_DEFAULT_VOCAB;
  uint64_t seed = 1234;
  int64_t layers = 0;  // 0: the shape's own count
  bool pure = false;
  int threads = 0;
};

const Shape& find_shape(const std::string& name) {
  for (const Shape& s : shapes()) {
    if (s.name == name) return s;
  }
  std::string known;
  for (const Shape& s : shapes()) known += (known.empty() ? "" : ", ") + s.name;
  fail("unknown shape '", name, "' (known: ", known, ")");
}

// How the matrices are stored: one type for all, or a llama-quantize mix choosing per tensor.
// 1-D tensors (the norms) are F32 in every plan, as llama.cpp writes them.
struct TypePlan {
  std::string label;  // "q4_0", "Q4_K_M mix"
  int64_t file_type;
  std::function<io::TensorType(const std::string& name, const std::vector<int64_t>& shape)> type;
};

TypePlan plan_types(const std::string& name, bool pure, const Shape& s, int64_t n_layers) {
  if (const auto mix = ops::quant_mix_from_name(name)) {
    const io::TensorType base = ops::mix_base_type(*mix);
    if (!pure) {
      ops::QuantModelInfo info;
      info.architecture = "llama";
      info.n_layers = n_layers;
      info.n_heads = s.n_heads;
      info.n_kv_heads = s.n_kv_heads;
      info.has_output = !s.tied_embeddings;
      const auto mix_name = std::string(ops::quant_mix_name(*mix));
      auto type = [mix = *mix, info, mix_name](const std::string& tensor,
                                              const std::vector<int64_t>& shape) {
        const ops::TensorChoice c =
            ops::choose_tensor_type(mix, tensor, shape, io::TensorType::kF32, info);
        if (!c.note.empty()) std::fprintf(stderr, "note: %s: %s\n", tensor.c_str(), c.note.c_str());
        EKV_CHECK(ops::can_quantize(c.type), "the ", mix_name, " mix gives ", tensor, " type ",
                  io::tensor_type_info(c.type).name, ", which this build cannot write");
        return c.type;
      };
      return {mix_name + " mix", ops::mix_file_type(*mix), type};
    }
    return {lower(std::string(io::tensor_type_info(base).name)), file_type_of(base),
            [base](const std::string&, const std::vector<int64_t>& shape) {
              return shape.size() == 1 ? io::TensorType::kF32 : base;
            }};
  }
  const auto types = ops::writable_types();
  const auto it = types.find(lower(name));
  if (it == types.end()) {
    std::string known;
    for (const auto& [n, t] : types) known += (known.empty() ? "" : ", ") + n;
    known += "; mixes: " + ops::quant_mix_names();
    fail("tensor type '", name, "' cannot be written (this build writes: ", known, ")");
  }
  const io::TensorType t = it->second;
  return {it->first, file_type_of(t),
          [t](const std::string&, const std::vector<int64_t>& shape) {
            return shape.size() == 1 ? io::TensorType::kF32 : t;
          }};
}

// The llama.* keys llama.cpp's converter writes for a Llama model, and general.*.
void set_model_metadata(io::GgufWriter& w, const Shape& s, int64_t n_layers, int64_t file_type,
                        uint64_t seed) {
  using VT = io::GgufValueType;
  std::string name = s.display_name + " shape, " + kWarning;
  if (n_layers != s.n_layers) {
    name = cat(s.display_name, " shape (", n_layers, " of ", s.n_layers, " layers), ", kWarning);
  }
  w.set_string("general.architecture", "llama");
  w.set_string("general.type", "model");
  w.set_string("general.name", name);
  w.set_string("general.description",
               cat(kWarning, ": every matrix is N(0, 0.02) noise and every norm 1 (seed ", seed,
                   "), written by eigenkv-shape-model in the shape of ", s.display_name,
                   "; its outputs are meaningless."));
  w.set_int("general.file_type", file_type);
  w.set_int("general.quantization_version", kQuantizationVersion);
  w.set_int("llama.vocab_size", s.n_vocab);
  w.set_int("llama.context_length", s.n_ctx);
  w.set_int("llama.embedding_length", s.d_model);
  w.set_int("llama.block_count", n_layers);
  w.set_int("llama.feed_forward_length", s.d_ffn);
  w.set_int("llama.attention.head_count", s.n_heads);
  w.set_int("llama.attention.head_count_kv", s.n_kv_heads);
  w.set_int("llama.attention.key_length", s.head_dim);
  w.set_int("llama.attention.value_length", s.head_dim);
  w.set_float("llama.attention.layer_norm_rms_epsilon", s.norm_eps, VT::kFloat32);
  w.set_float("llama.rope.freq_base", s.rope_theta, VT::kFloat32);
  w.set_int("llama.rope.dimension_count", s.head_dim);
}

// Copies the tokenizer.* keys of a vocabulary GGUF. llama.cpp sizes token_embd by the token
// count, so a shape with more embeddings than tokens gets placeholder tokens as llama.cpp's
// converter writes them: "[PAD<id>]", score -10000, type unused. Returns the real token count.
int64_t copy_vocabulary(io::GgufWriter& w, const std::string& path, int64_t n_vocab) {
  io::GgufFile vocab(path);
  w.copy_metadata(vocab, [](const std::string& key) { return key.rfind("tokenizer.", 0) != 0; });
  std::vector<std::string> tokens = vocab.get_string_array("tokenizer.ggml.tokens");
  const int64_t n_tokens = static_cast<int64_t>(tokens.size());
  EKV_CHECK(n_tokens <= n_vocab, path, " has ", n_tokens, " tokens, more than the shape's ",
            n_vocab, " embeddings");
  if (n_tokens == n_vocab) return n_tokens;
  for (int64_t id = n_tokens; id < n_vocab; ++id) tokens.push_back(cat("[PAD", id, "]"));
  w.set_string_array("tokenizer.ggml.tokens", std::move(tokens));
  auto pad = [&](const std::string& key, double value) {
    const io::GgufValue* v = vocab.find(key);
    if (!v) return;
    EKV_CHECK(v->type == io::GgufValueType::kArray &&
                  static_cast<int64_t>(v->numbers.size()) == n_tokens,
              path, ": ", key, " is not an array of one number per token");
    std::vector<double> numbers = v->numbers;
    numbers.resize(static_cast<size_t>(n_vocab), value);
    w.set_number_array(key, std::move(numbers), v->element_type);
  };
  pad("tokenizer.ggml.scores", kPaddingScore);
  pad("tokenizer.ggml.token_type", kUnusedTokenType);
  return n_tokens;
}

int run(const Options& o) {
  const Shape& s = find_shape(o.shape);
  EKV_CHECK(o.layers >= 0, "--layers must be positive");
  const int64_t n_layers = o.layers > 0 ? o.layers : s.n_layers;
  const TypePlan plan = plan_types(o.type, o.pure, s, n_layers);
  const int threads = set_thread_count(o.threads);

  io::GgufWriter w;
  set_model_metadata(w, s, n_layers, plan.file_type, o.seed);
  const int64_t n_tokens = copy_vocabulary(w, o.vocab, s.n_vocab);

  int64_t n_tensors = 0, made = 0, numbers = 0;
  std::map<std::string, int64_t> type_counts;
  std::optional<Progress> progress;  // made once the tensors are counted
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    const bool vector = shape.size() == 1;
    const io::TensorType t = plan.type(name, shape);
    const int64_t rows = vector ? 1 : shape[0];
    const int64_t cols = shape.back();
    const uint64_t seed = tensor_seed(o.seed, name);
    w.add_tensor_generated(name, t, shape, [&, t, rows, cols, seed, vector](uint8_t* out) {
      if (vector) {
        std::fill_n(reinterpret_cast<float*>(out), cols, 1.0f);
      } else {
        fill_normal(t, rows, cols, seed, kMatrixStd, out);
      }
      ++made;
      progress->update(made, static_cast<double>(made), "tensors");
    });
    ++n_tensors;
    numbers += rows * cols;
    ++type_counts[std::string(io::tensor_type_info(t).name)];
  };
  const int64_t d = s.d_model, hd = s.head_dim;
  add("token_embd.weight", {s.n_vocab, d});
  for (int64_t l = 0; l < n_layers; ++l) {
    const std::string b = cat("blk.", l, ".");
    add(b + "attn_norm.weight", {d});
    add(b + "attn_q.weight", {s.n_heads * hd, d});
    add(b + "attn_k.weight", {s.n_kv_heads * hd, d});
    add(b + "attn_v.weight", {s.n_kv_heads * hd, d});
    add(b + "attn_output.weight", {d, s.n_heads * hd});
    add(b + "ffn_norm.weight", {d});
    add(b + "ffn_gate.weight", {s.d_ffn, d});
    add(b + "ffn_up.weight", {s.d_ffn, d});
    add(b + "ffn_down.weight", {d, s.d_ffn});
  }
  add("output_norm.weight", {d});
  if (!s.tied_embeddings) add("output.weight", {s.n_vocab, d});
  progress.emplace("generating", n_tensors, "tensors");

  std::printf("shape:    %s: %lld%s layers, d_model %lld, %lld heads / %lld KV heads of %lld, "
              "FFN %lld, vocab %lld (%lld tokens), context %lld, RoPE theta %g, %s embeddings\n",
              s.name.c_str(), static_cast<long long>(n_layers),
              n_layers != s.n_layers ? cat(" of ", s.n_layers).c_str() : "",
              static_cast<long long>(d), static_cast<long long>(s.n_heads),
              static_cast<long long>(s.n_kv_heads), static_cast<long long>(hd),
              static_cast<long long>(s.d_ffn), static_cast<long long>(s.n_vocab),
              static_cast<long long>(n_tokens), static_cast<long long>(s.n_ctx), s.rope_theta,
              s.tied_embeddings ? "tied" : "untied");
  std::string types;
  for (const auto& [name, count] : type_counts) {
    types += cat(types.empty() ? "" : ", ", name, " x", count);
  }
  std::printf("type:     %s (tensors: %s)\n", plan.label.c_str(), types.c_str());
  std::printf("tensors:  %lld (%.3f G numbers), seed %llu, %d threads\n",
              static_cast<long long>(n_tensors), static_cast<double>(numbers) / 1e9,
              static_cast<unsigned long long>(o.seed), threads);
  std::fflush(stdout);

  const double start = now_seconds();
  w.write(o.output);
  progress->finish();
  const double seconds = now_seconds() - start;
  const auto bytes = std::filesystem::file_size(o.output);
  std::printf("file:     %s, %llu bytes (%.2f GiB), written in %.1f s\n", o.output.c_str(),
              static_cast<unsigned long long>(bytes), static_cast<double>(bytes) / (1 << 30),
              seconds);
  std::printf("note:     %s\n", kWarning);
  return 0;
}

}  // namespace
}  // namespace eigenkv::tools

int main(int argc, char** argv) {
  using namespace eigenkv::tools;
  Options o;
  CLI::App app{std::string("eigenkv-shape-model: a GGUF model of a real Llama shape with random "
                           "weights (") +
               kWarning + ")"};
  std::vector<std::string> shape_names;
  for (const Shape& s : shapes()) shape_names.push_back(s.name);
  app.add_option("--shape", o.shape, "Model shape")->check(CLI::IsMember(shape_names))
      ->capture_default_str();
  const std::string type_help =
      "A llama-quantize mix: " + eigenkv::ops::quant_mix_names() +
      " (so q4_0 puts output.weight in Q6_K), or a type for every matrix: f32, f16, bf16, q4_k, "
      "... any type eigenkv quantizes to (1-D tensors are f32)";
  app.add_option("--type", o.type, type_help)->capture_default_str();
  app.add_flag("--pure", o.pure, "With a mix name: give every matrix the mix's base type");
  app.add_option("-o,--output", o.output, "GGUF file to write")->required();
  app.add_option("--seed", o.seed, "Random seed")->capture_default_str();
  app.add_option("--layers", o.layers, "Write only this many layers (quick tests)")
      ->check(CLI::PositiveNumber);
  app.add_option("--vocab", o.vocab, "Vocabulary-only GGUF whose tokenizer.* keys are copied")
      ->capture_default_str();
  app.add_option("-t,--threads", o.threads, "Threads (0: OMP_NUM_THREADS or all cores)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "eigenkv-shape-model: error: %s\n", e.what());
    return 1;
  }
}
