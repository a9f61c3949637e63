#include "ops/matmul.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "ops/dequant.h"
#include "ops/qdot.h"
#include "ops/qgemm.h"
#include "util/error.h"

namespace eigenkv::ops {
namespace {

// Weight bytes below which a product is not worth splitting across threads.
constexpr size_t kParallelBytes = size_t{1} << 16;
// Rows a thread's share of a decode product is rounded to, so shares start on cache lines.
constexpr int64_t kRowAlign = 16;
// Float32 numbers of one dequantized prefill tile (2 MiB). Each SGEMM call packs the whole
// activation block again, so a tile must hold enough weight rows (256 at width 2048) for that
// packing to stay a small share: at 256 KiB it took a third of a Q4_0 pp512 (perf, Xeon).
constexpr int64_t kTileNumbers = int64_t{1} << 19;
// Stored bytes of one weight tile of the integer prefill path.
constexpr size_t kTileBytes = size_t{96} << 10;

// The prefill mode: EIGENKV_PREFILL (auto, exact or integer) until set_prefill_mode is called.
PrefillMode mode_from_environment() {
  const char* v = std::getenv("EIGENKV_PREFILL");
  if (v == nullptr || *v == '\0' || std::string(v) == "auto") return PrefillMode::kAuto;
  if (std::string(v) == "exact") return PrefillMode::kExact;
  if (std::string(v) == "integer") return PrefillMode::kInteger;
  throw Error(std::string("EIGENKV_PREFILL must be auto, exact or integer, not '") +
              std::string(v).substr(0, 40) + "'");
}

std::atomic<int>& mode_setting() {
  static std::atomic<int> mode{-1};  // -1: not read yet
  return mode;
}

int threads_for(size_t bytes) {
  return bytes < kParallelBytes || omp_in_parallel() ? 1 : omp_get_max_threads();
}

// One thread's share of `rows` split over `threads`, rounded up to kRowAlign.
int64_t thread_share(int64_t rows, int64_t threads) {
  const int64_t per = (rows + threads - 1) / threads;
  return (per + kRowAlign - 1) / kRowAlign * kRowAlign;
}

void decode_product(const float* x, int64_t n_tokens, const WeightView& w, float* y) {
  std::vector<uint8_t> act(act_row_bytes(w.type, w.cols) * static_cast<size_t>(n_tokens));
  prepare_act(w.type, x, n_tokens, w.cols, act.data());
  const int threads = threads_for(w.row_bytes * static_cast<size_t>(w.rows));
  if (threads == 1) {
    dot_rows(w.type, w.data, w.row_bytes, w.cols, act.data(), n_tokens, 0, w.rows, y, w.rows);
    return;
  }
  // Contiguous shares of rows, one per thread: each thread streams its own part of the weights.
#pragma omp parallel num_threads(threads)
  {
    const int64_t share = thread_share(w.rows, omp_get_num_threads());
    const int64_t i = omp_get_thread_num();
    const int64_t r0 = std::min(w.rows, i * share), r1 = std::min(w.rows, r0 + share);
    if (r0 < r1) {
      dot_rows(w.type, w.data, w.row_bytes, w.cols, act.data(), n_tokens, r0, r1, y, w.rows);
    }
  }
}

void sgemm(const float* x, int64_t n_tokens, int64_t n_in, const float* w, int64_t n_out,
           float* y, int64_t ldy) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n_tokens),
              static_cast<int>(n_out), static_cast<int>(n_in), 1.0f, x, static_cast<int>(n_in), w,
              static_cast<int>(n_in), 0.0f, y, static_cast<int>(ldy));
}

bool is_float_type(io::TensorType type) {
  return type == io::TensorType::kF32 || type == io::TensorType::kF16 ||
         type == io::TensorType::kBF16;
}

// Block types: the activations are rounded to 8-bit blocks once, then each thread takes tiles of
// weight rows small enough to stay in its L2 and runs every block of kDecodeRows tokens over
// them with the integer dot kernels (each weight block loaded once per token block).
void prefill_integer(const float* x, int64_t n_tokens, const WeightView& w, float* y) {
  const size_t act_bytes = act_row_bytes(w.type, w.cols);
  std::vector<uint8_t> act(act_bytes * static_cast<size_t>(n_tokens));
  const int threads = threads_for(w.row_bytes * static_cast<size_t>(w.rows));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t t0 = 0; t0 < n_tokens; t0 += kDecodeRows) {
    const int64_t n = std::min(kDecodeRows, n_tokens - t0);
    prepare_act(w.type, x + t0 * w.cols, n, w.cols, act.data() + static_cast<size_t>(t0) * act_bytes);
  }
  const int64_t tile = std::max<int64_t>(
      kRowAlign, static_cast<int64_t>(kTileBytes / std::max<size_t>(1, w.row_bytes)) / kRowAlign *
                     kRowAlign);
  const int64_t n_tiles = (w.rows + tile - 1) / tile;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t t = 0; t < n_tiles; ++t) {
    const int64_t r0 = t * tile, r1 = std::min(w.rows, r0 + tile);
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kDecodeRows) {
      const int64_t n = std::min(kDecodeRows, n_tokens - t0);
      dot_rows(w.type, w.data, w.row_bytes, w.cols,
               act.data() + static_cast<size_t>(t0) * act_bytes, n, r0, r1, y + t0 * w.rows,
               w.rows);
    }
  }
}

// Packed bytes of one tile of the qgemm path: its panels stay in L2 while every block of tokens
// passes over them.
constexpr size_t kPackedTileBytes = size_t{256} << 10;

// Block types on a CPU with the packed-panel kernel: the activations are rounded once, then each
// thread packs a tile of panels (16 rows each) and runs every token over it.
void prefill_qgemm(const float* x, int64_t n_tokens, const WeightView& w, float* y) {
  const size_t act_bytes = qgemm_act_row_bytes(w.cols);
  std::vector<uint8_t> act(act_bytes * static_cast<size_t>(n_tokens));
  const int threads = threads_for(w.row_bytes * static_cast<size_t>(w.rows));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t t0 = 0; t0 < n_tokens; t0 += kDecodeRows) {
    const int64_t n = std::min(kDecodeRows, n_tokens - t0);
    qgemm_prepare_act(x + t0 * w.cols, n, w.cols, act.data() + static_cast<size_t>(t0) * act_bytes);
  }
  const size_t panel_bytes = qgemm_panel_bytes(w.type, w.cols);
  const int64_t n_panels = (w.rows + kPanelRows - 1) / kPanelRows;
  const int64_t tile_panels = std::clamp<int64_t>(
      static_cast<int64_t>(kPackedTileBytes / panel_bytes), 1,
      (thread_share(w.rows, threads) + kPanelRows - 1) / kPanelRows);
  const int64_t n_tiles = (n_panels + tile_panels - 1) / tile_panels;
#pragma omp parallel num_threads(threads)
  {
    std::vector<uint8_t> tile(panel_bytes * static_cast<size_t>(tile_panels));
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n_tiles; ++i) {
      const int64_t r0 = i * tile_panels * kPanelRows;
      const int64_t rows = std::min(tile_panels * kPanelRows, w.rows - r0);
      const int64_t panels = (rows + kPanelRows - 1) / kPanelRows;
      for (int64_t p = 0; p < panels; ++p) {
        const int64_t pr0 = r0 + p * kPanelRows;
        qgemm_pack_panel(w.type, w.data + static_cast<size_t>(pr0) * w.row_bytes, w.row_bytes,
                         w.cols, std::min(kPanelRows, w.rows - pr0),
                         tile.data() + static_cast<size_t>(p) * panel_bytes);
      }
      qgemm_tile(w.type, tile.data(), panels, w.cols, act.data(), n_tokens, rows, y + r0, w.rows);
    }
  }
}

void prefill_product(const float* x, int64_t n_tokens, const WeightView& w, float* y) {
  if (w.type == io::TensorType::kF32) {
    sgemm(x, n_tokens, w.cols, reinterpret_cast<const float*>(w.data), w.rows, y, w.rows);
    return;
  }
  if (!is_float_type(w.type) && prefill_rounds_activations()) {
    if (qgemm_fast(w.type)) {
      prefill_qgemm(x, n_tokens, w, y);
    } else {
      prefill_integer(x, n_tokens, w, y);
    }
    return;
  }
  const int threads = threads_for(w.row_bytes * static_cast<size_t>(w.rows));
  // At most a thread's share of the rows, so that a small matrix (a GQA model's wk) still
  // splits over every thread.
  const int64_t tile = std::max<int64_t>(
      kRowAlign,
      std::min(kTileNumbers / w.cols / kRowAlign * kRowAlign, thread_share(w.rows, threads)));
  const int64_t n_tiles = (w.rows + tile - 1) / tile;
  // Inside the parallel region OpenBLAS (its OpenMP build) runs each SGEMM on the calling thread.
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> buffer(static_cast<size_t>(tile * w.cols));
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int64_t r0 = t * tile, rows = std::min(tile, w.rows - r0);
      dequantize(w.type, w.data + static_cast<size_t>(r0) * w.row_bytes, buffer.data(),
                 rows * w.cols);
      sgemm(x, n_tokens, w.cols, buffer.data(), rows, y + r0, w.rows);
    }
  }
}

}  // namespace

void set_prefill_mode(PrefillMode mode) { mode_setting().store(static_cast<int>(mode)); }

PrefillMode prefill_mode() {
  int m = mode_setting().load();
  if (m < 0) {
    m = static_cast<int>(mode_from_environment());
    mode_setting().store(m);
  }
  return static_cast<PrefillMode>(m);
}

bool prefill_rounds_activations() {
  switch (prefill_mode()) {
    case PrefillMode::kExact: return false;
    case PrefillMode::kInteger: return true;
    default: return qgemm_fast(io::TensorType::kQ4_0);
  }
}

const char* prefill_path_name() {
  if (!prefill_rounds_activations()) return "exact (dequantized tiles into SGEMM)";
  if (qgemm_vnni()) return "integer (packed panels, AVX-512 VNNI)";
  return qgemm_fast(io::TensorType::kQ4_0) ? "integer (packed panels, AVX2)"
                                            : "integer (decode kernels over L2 tiles)";
}

float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

void matmul(const float* x, int64_t n_tokens, const WeightView& w, float* y) {
  EKV_CHECK(can_dot(w.type), "matmul: weight type ",
            io::tensor_type_name(static_cast<uint32_t>(w.type)), " is not supported");
  if (n_tokens <= 0 || w.rows == 0) return;
  if (n_tokens <= kDecodeRows) {
    decode_product(x, n_tokens, w, y);
  } else {
    prefill_product(x, n_tokens, w, y);
  }
}

void matmul_reference(const float* x, int64_t n_tokens, const WeightView& w, float* y) {
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t o = 0; o < w.rows; ++o) {
    dequantize(w.type, w.data + static_cast<size_t>(o) * w.row_bytes, row.data(), w.cols);
    for (int64_t t = 0; t < n_tokens; ++t) {
      double acc = 0.0;
      for (int64_t i = 0; i < w.cols; ++i) acc += double{x[t * w.cols + i]} * row[i];
      y[t * w.rows + o] = static_cast<float>(acc);
    }
  }
}

}  // namespace eigenkv::ops
