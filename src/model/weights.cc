#include "model/weights.h"

#include <Eigen/Dense>

#include <algorithm>
#include <cstring>
#include <set>

#include "ops/dequant.h"
#include "ops/qdot.h"
#include "util/error.h"

namespace eigenkv::model {
namespace {

const io::TensorView& require(const TensorSource& source, const std::string& name) {
  const io::TensorView* t = source.find(name);
  if (!t) fail(source.label(), ": tensor '", name, "' is missing");
  return *t;
}

void check_shape(const TensorSource& source, const io::TensorView& t,
                 const std::vector<int64_t>& expected) {
  io::TensorView want;
  want.shape = expected;
  if (t.shape != expected) {
    fail(source.label(), ": tensor '", t.name, "' has shape ", t.shape_string(), ", expected ",
         want.shape_string(), " from the model's config");
  }
}

std::vector<float> to_float(const TensorSource& source, const io::TensorView& t) {
  if (!ops::can_dequantize(t.type)) {
    fail(source.label(), ": tensor '", t.name, "' has type ",
         io::tensor_type_name(static_cast<uint32_t>(t.type)), " which eigenkv cannot convert");
  }
  std::vector<float> out(static_cast<size_t>(t.numel()));
  ops::dequantize_parallel(t.type, t.data, out.data(), t.numel());
  return out;
}

// Hugging Face stores each head's q/k rows as [first halves; second halves] for its rotate-half
// RoPE; reorder them to interleaved pairs so the adjacent-pair kernel applies: row 2i of a head
// takes HF row i, row 2i+1 takes HF row i + head_dim/2. Whole rows move, so this works on the
// stored bytes of any type; the result owns its bytes (the source's order cannot be used).
Weight interleave_rotary_rows(const Weight& m, int64_t n_heads, int64_t head_dim) {
  const size_t rb = m.row_bytes();
  std::vector<uint8_t> out(m.nbytes());
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      const int64_t base = h * head_dim;
      std::memcpy(out.data() + (base + 2 * i) * rb, m.row_data(base + i), rb);
      std::memcpy(out.data() + (base + 2 * i + 1) * rb, m.row_data(base + i + half), rb);
    }
  }
  return Weight::from_bytes(m.type, m.rows, m.cols, std::move(out));
}

// The same permutation of a bias vector (one entry per row); empty stays empty.
void interleave_rotary_entries(std::vector<float>& b, int64_t n_heads, int64_t head_dim) {
  if (b.empty()) return;
  std::vector<float> out(b.size());
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      out[h * head_dim + 2 * i] = b[h * head_dim + i];
      out[h * head_dim + 2 * i + 1] = b[h * head_dim + i + half];
    }
  }
  b = std::move(out);
}

ModelWeights load_named(const TensorSource& source, const ModelConfig& c, const TensorMap& n,
                        const std::vector<LayerSpec>& specs) {
  ModelWeights w;
  const int64_t d = c.d_model;
  const int64_t e = c.embed_dim();
  w.token_embedding = load_weight(source, n.embedding, c.n_vocab, e);
  if (c.d_embed > 0 && c.d_embed != d) {
    w.project_in = load_weight(source, n.project_in, d, e);
    w.project_out = load_weight(source, n.project_out, e, d);
  }
  const ArchSpec& a = c.arch;
  if (a.final_norm) {
    w.output_norm = load_vector(source, n.output_norm, d);
    if (a.norm_bias) w.output_norm_bias = load_vector(source, n.output_norm_bias, d);
  }
  if (a.position == PositionKind::kLearned) {
    w.position_embedding =
        load_weight(source, n.position_embedding, c.n_ctx_train + a.position_offset, d);
  }
  if (source.find(n.output)) {
    w.output = load_weight(source, n.output, c.n_vocab, e);
  } else if (c.tied_embeddings) {
    w.output = w.token_embedding;
  } else {
    fail(source.label(), ": tensor '", n.output, "' is missing and the embeddings are not tied");
  }
  w.layers.resize(static_cast<size_t>(c.n_layers));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = w.layers[l];
    L.attn_norm = load_vector(source, layer_name(n.attn_norm, l), d);
    if (a.norm_bias) L.attn_norm_bias = load_vector(source, layer_name(n.attn_norm_bias, l), d);
    L.key_rank = c.head_dim;
    L.value_rank = c.head_dim;
    if (!specs.empty()) {
      L.key_mode = specs[l].key_mode;
      L.key_rank = specs[l].key_rank;
      L.value_rank = specs[l].value_rank;
      // A compressed clip_qkv layer keeps W_q, W_k, W_v full and its bases apart.
      L.bases_after_clamp = L.key_mode != KeyMode::kFull && a.clip_qkv > 0;
    }
    const int64_t hd = c.head_dim;
    const int64_t q_rows = c.n_heads * L.stored_query_width(hd);
    const int64_t k_rows = c.n_kv_heads * L.stored_key_width(hd);
    const int64_t v_rows = c.n_kv_heads * L.stored_value_width(hd);
    if (n.fused_qkv()) {  // one matrix [q rows; k rows; v rows], split without a copy
      const Weight qkv = load_weight(source, layer_name(n.wqkv, l), q_rows + k_rows + v_rows, d);
      L.wq = qkv.row_range(0, q_rows);
      L.wk = qkv.row_range(q_rows, k_rows);
      L.wv = qkv.row_range(q_rows + k_rows, v_rows);
      EKV_CHECK(a.q_bias == a.k_bias && a.k_bias == a.v_bias, source.label(),
                ": a fused q/k/v matrix has biases on all three or none");
      if (a.q_bias) {
        const std::vector<float> b =
            load_vector(source, layer_name(n.bqkv, l), q_rows + k_rows + v_rows);
        L.bq.assign(b.begin(), b.begin() + q_rows);
        L.bk.assign(b.begin() + q_rows, b.begin() + q_rows + k_rows);
        L.bv.assign(b.begin() + q_rows + k_rows, b.end());
      }
    } else {
      L.wq = load_weight(source, layer_name(n.wq, l), q_rows, d);
      L.wk = load_weight(source, layer_name(n.wk, l), k_rows, d);
      L.wv = load_weight(source, layer_name(n.wv, l), v_rows, d);
      if (a.q_bias) L.bq = load_vector(source, layer_name(n.bq, l), q_rows);
      if (a.k_bias) L.bk = load_vector(source, layer_name(n.bk, l), k_rows);
      if (a.v_bias) L.bv = load_vector(source, layer_name(n.bv, l), v_rows);
    }
    L.wo = load_weight(source, layer_name(n.wo, l), d, c.n_heads * L.value_rank);
    if (a.o_bias) L.bo = load_vector(source, layer_name(n.bo, l), d);
    // Per KV head [d_h, rank] bases stacked as [n_kv_heads * d_h, rank].
    auto load_bases = [&](const char* pattern, int64_t rank) {
      const Matrix all = load_matrix(source, layer_name(pattern, l), c.n_kv_heads * hd, rank);
      std::vector<Matrix> bases;
      for (int64_t j = 0; j < c.n_kv_heads; ++j) {
        Matrix u;
        u.rows = hd;
        u.cols = rank;
        u.data.assign(all.row(j * hd), all.row(j * hd) + hd * rank);
        bases.push_back(std::move(u));
      }
      return bases;
    };
    if (L.key_mode == KeyMode::kPre || L.key_mode == KeyMode::kPost || L.bases_after_clamp)
      L.key_basis = load_bases(kGgufKeyBasisName, L.key_rank);
    if (L.bases_after_clamp) L.value_basis = load_bases(kGgufValueBasisName, L.value_rank);
    L.ffn_norm = load_vector(source, layer_name(n.ffn_norm, l), d);
    if (a.norm_bias) L.ffn_norm_bias = load_vector(source, layer_name(n.ffn_norm_bias, l), d);
    if (a.ffn == FfnKind::kSwiGlu) L.w_gate = load_weight(source, layer_name(n.w_gate, l), c.d_ffn, d);
    L.w_up = load_weight(source, layer_name(n.w_up, l), c.d_ffn, d);
    L.w_down = load_weight(source, layer_name(n.w_down, l), d, c.d_ffn);
    if (a.ffn_bias) {
      L.b_up = load_vector(source, layer_name(n.b_up, l), c.d_ffn);
      L.b_down = load_vector(source, layer_name(n.b_down, l), d);
    }
  }
  return w;
}

}  // namespace

void project_rows(const float* x, int64_t n, const Matrix& u, float* out) {
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<RowMajor>(out, n, u.cols).noalias() =
      Eigen::Map<const RowMajor>(x, n, u.rows) * Eigen::Map<const RowMajor>(u.data.data(), u.rows, u.cols);
}

void project_heads(const float* in, int64_t n_tokens, int64_t heads, int64_t heads_per_basis,
                   const std::vector<Matrix>& bases, float* out) {
  const int64_t dh = bases[0].rows, r = bases[0].cols;
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t h = 0; h < heads; h += heads_per_basis) {
      project_rows(in + (t * heads + h) * dh, heads_per_basis, bases[h / heads_per_basis],
                   out + (t * heads + h) * r);
    }
  }
}

void project_rows_reference(const float* x, int64_t n, const Matrix& u, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t c = 0; c < u.cols; ++c) {
      float sum = 0;
      for (int64_t i = 0; i < u.rows; ++i) sum += x[t * u.rows + i] * u.row(i)[c];
      out[t * u.cols + c] = sum;
    }
  }
}

std::string layer_name(const std::string& pattern, int64_t layer) {
  std::string s = pattern;
  s.replace(s.find("{}"), 2, std::to_string(layer));
  return s;
}

const char* key_mode_name(KeyMode mode) {
  switch (mode) {
    case KeyMode::kFull:
      return "full";
    case KeyMode::kNoRope:
      return "norope";
    case KeyMode::kPre:
      return "pre";
    case KeyMode::kPost:
      return "post";
  }
  return "unknown";
}

KeyMode key_mode_from_name(const std::string& name) {
  for (KeyMode m : {KeyMode::kFull, KeyMode::kNoRope, KeyMode::kPre, KeyMode::kPost}) {
    if (name == key_mode_name(m)) return m;
  }
  fail("unknown key mode '", name, "' (expected full, norope, pre or post)");
}

size_t Weight::row_bytes() const { return io::tensor_bytes(type, cols); }

void Weight::row_to_float(int64_t r, float* out) const {
  ops::dequantize(type, row_data(r), out, cols);
}

Matrix Weight::to_float() const {
  Matrix m;
  m.rows = rows;
  m.cols = cols;
  m.data.resize(static_cast<size_t>(rows * cols));
  ops::dequantize_parallel(type, bytes, m.data.data(), rows * cols);
  return m;
}

Weight Weight::row_range(int64_t begin, int64_t n) const {
  EKV_CHECK(begin >= 0 && n >= 0 && begin + n <= rows, "rows [", begin, ", ", begin + n,
            ") of a weight of ", rows, " rows");
  Weight w = *this;
  w.rows = n;
  w.bytes = row_data(begin);
  return w;
}

Weight Weight::from_float(Matrix m) {
  auto data = std::make_shared<std::vector<float>>(std::move(m.data));
  Weight w;
  w.type = io::TensorType::kF32;
  w.rows = m.rows;
  w.cols = m.cols;
  w.bytes = reinterpret_cast<const uint8_t*>(data->data());
  w.owner = std::move(data);
  w.computed = true;
  return w;
}

Weight Weight::from_bytes(io::TensorType type, int64_t rows, int64_t cols,
                          std::vector<uint8_t> data) {
  Weight w;
  w.type = type;
  w.rows = rows;
  w.cols = cols;
  EKV_CHECK(data.size() == w.nbytes(), "weight of ", rows, "x", cols, " ",
            io::tensor_type_name(static_cast<uint32_t>(type)), " needs ", w.nbytes(),
            " bytes, given ", data.size());
  auto owned = std::make_shared<std::vector<uint8_t>>(std::move(data));
  w.bytes = owned->data();
  w.owner = std::move(owned);
  return w;
}

Weight load_weight(const TensorSource& source, const std::string& name, int64_t rows,
                   int64_t cols) {
  const io::TensorView& t = require(source, name);
  check_shape(source, t, {rows, cols});
  if (!ops::can_dot(t.type) || !ops::can_dequantize(t.type)) {
    fail(source.label(), ": tensor '", name, "' has type ",
         io::tensor_type_name(static_cast<uint32_t>(t.type)),
         " which eigenkv cannot run (it runs f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_K, "
         "q3_K, q4_K, q5_K and q6_K)");
  }
  Weight w;
  w.type = t.type;
  w.rows = rows;
  w.cols = cols;
  EKV_CHECK(t.nbytes == w.nbytes(), source.label(), ": tensor '", name, "' holds ", t.nbytes,
            " bytes, its shape and type need ", w.nbytes());
  w.bytes = t.data;
  w.owner = source.owner();
  return w;
}

Matrix load_matrix(const TensorSource& source, const std::string& name, int64_t rows,
                   int64_t cols) {
  const io::TensorView& t = require(source, name);
  check_shape(source, t, {rows, cols});
  Matrix m;
  m.rows = rows;
  m.cols = cols;
  m.data = to_float(source, t);
  return m;
}

std::vector<float> load_vector(const TensorSource& source, const std::string& name, int64_t n) {
  const io::TensorView& t = require(source, name);
  check_shape(source, t, {n});
  return to_float(source, t);
}

ModelWeights load_gguf_weights(const TensorSource& source, const ModelConfig& config,
                               const std::vector<LayerSpec>& layers) {
  EKV_CHECK(layers.empty() || static_cast<int64_t>(layers.size()) == config.n_layers,
            source.label(), ": ", layers.size(), " layer ranks recorded for ", config.n_layers,
            " layers");
  ModelWeights w = load_named(source, config, gguf_tensor_map(config.arch), layers);
  if (source.find("rope_freqs.weight")) {
    w.rope_freq_factors = load_vector(source, "rope_freqs.weight", config.rope_dims / 2);
  }
  return w;
}

ModelWeights load_hf_weights(const TensorSource& source, const ModelConfig& config) {
  ModelWeights w = load_named(source, config, hf_tensor_map(config.arch), {});
  if (config.rope() && config.arch.rope_layout == RopeLayout::kAdjacentPairs) {
    // Llama's rows are stored for rotate-half; GGUF's llama layout pairs them up.
    for (LayerWeights& L : w.layers) {
      L.wq = interleave_rotary_rows(L.wq, config.n_heads, config.head_dim);
      L.wk = interleave_rotary_rows(L.wk, config.n_kv_heads, config.head_dim);
      interleave_rotary_entries(L.bq, config.n_heads, config.head_dim);
      interleave_rotary_entries(L.bk, config.n_kv_heads, config.head_dim);
    }
  }
  return w;
}

int64_t ModelWeights::decode_bytes_read() const {
  int64_t bytes = static_cast<int64_t>(
      token_embedding.row_bytes() + output.nbytes() + project_in.nbytes() + project_out.nbytes() +
      (position_embedding.empty() ? 0 : position_embedding.row_bytes()));
  int64_t floats = static_cast<int64_t>(output_norm.size());
  for (const LayerWeights& L : layers) {
    for (const Weight* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) {
      bytes += static_cast<int64_t>(m->nbytes());
    }
    for (const auto* bases : {&L.key_basis, &L.value_basis})
      for (const Matrix& u : *bases) floats += u.rows * u.cols;
    for (const auto* v : {&L.attn_norm, &L.ffn_norm, &L.bq, &L.bk, &L.bv, &L.bo,
                          &L.attn_norm_bias, &L.ffn_norm_bias, &L.b_up, &L.b_down})
      floats += static_cast<int64_t>(v->size());
  }
  return bytes + floats * static_cast<int64_t>(sizeof(float));
}

int64_t ModelWeights::stored_bytes() const {
  std::set<const uint8_t*> seen;
  int64_t bytes = 0;
  auto add = [&](const Weight& m) {
    if (!m.empty() && seen.insert(m.bytes).second) bytes += static_cast<int64_t>(m.nbytes());
  };
  add(token_embedding);
  add(output);
  add(position_embedding);
  add(project_in);
  add(project_out);
  for (const LayerWeights& L : layers) {
    for (const Weight* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) add(*m);
  }
  return bytes;
}

}  // namespace eigenkv::model
