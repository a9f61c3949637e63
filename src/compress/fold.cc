#include "compress/fold.h"

#include "util/error.h"

namespace eigenkv::compress {
namespace {

using model::Matrix;

// Rows [first, first + count) of m as a float64 matrix.
Eigen::MatrixXd rows_of(const Matrix& m, int64_t first, int64_t count) {
  Eigen::MatrixXd out(count, m.cols);
  for (int64_t r = 0; r < count; ++r) {
    for (int64_t c = 0; c < m.cols; ++c) out(r, c) = m.row(first + r)[c];
  }
  return out;
}

// Writes a float64 block into rows [first, ...) of m.
void set_rows(Matrix& m, int64_t first, const Eigen::MatrixXd& block) {
  for (int64_t r = 0; r < block.rows(); ++r) {
    for (int64_t c = 0; c < block.cols(); ++c) {
      m.data[(first + r) * m.cols + c] = static_cast<float>(block(r, c));
    }
  }
}

Matrix make(int64_t rows, int64_t cols) {
  Matrix m;
  m.rows = rows;
  m.cols = cols;
  m.data.assign(static_cast<size_t>(rows * cols), 0.0f);
  return m;
}

// Per KV head j: U_j^T W[rows of head j] -> [rank, d_model] rows of the result.
Matrix project_heads(const Matrix& w, const std::vector<Eigen::MatrixXd>& bases, int64_t n_heads,
                     int64_t head_dim, int64_t rank, int64_t heads_per_basis) {
  Matrix out = make(n_heads * rank, w.cols);
  for (int64_t h = 0; h < n_heads; ++h) {
    const Eigen::MatrixXd u = bases[h / heads_per_basis].leftCols(rank);
    set_rows(out, h * rank, u.transpose() * rows_of(w, h * head_dim, head_dim));
  }
  return out;
}

// The same for a bias (one entry per row of W): U_j^T b_h per head, exact as for the weights,
// since U^T (W x + b) = (U^T W) x + U^T b. Empty stays empty.
std::vector<float> project_bias(const std::vector<float>& b, const std::vector<Eigen::MatrixXd>& bases,
                                int64_t n_heads, int64_t head_dim, int64_t rank,
                                int64_t heads_per_basis) {
  if (b.empty()) return {};
  std::vector<float> out(static_cast<size_t>(n_heads * rank));
  for (int64_t h = 0; h < n_heads; ++h) {
    const Eigen::MatrixXd u = bases[h / heads_per_basis].leftCols(rank);
    Eigen::VectorXd bh(head_dim);
    for (int64_t i = 0; i < head_dim; ++i) bh(i) = b[h * head_dim + i];
    const Eigen::VectorXd p = u.transpose() * bh;
    for (int64_t r = 0; r < rank; ++r) out[h * rank + r] = static_cast<float>(p(r));
  }
  return out;
}

}  // namespace

model::LayerWeights fold_layer(const model::LayerWeights& full, const model::ModelConfig& c,
                               model::KeyMode mode, const std::vector<Eigen::MatrixXd>& key_bases,
                               const std::vector<Eigen::MatrixXd>& value_bases, int64_t key_rank,
                               int64_t value_rank) {
  const int64_t dh = c.head_dim, nh = c.n_heads, nkv = c.n_kv_heads, g = c.group_size();
  EKV_CHECK(full.key_mode == model::KeyMode::kFull, "the layer is already compressed");
  EKV_CHECK(mode != model::KeyMode::kFull, "folding needs a low-rank key mode");
  EKV_CHECK(key_rank >= 1 && key_rank <= dh, "key rank ", key_rank, " is outside [1, head width ",
            dh, "]");
  EKV_CHECK(value_rank >= 1 && value_rank <= dh, "value rank ", value_rank,
            " is outside [1, head width ", dh, "]");
  EKV_CHECK(static_cast<int64_t>(key_bases.size()) == nkv &&
                static_cast<int64_t>(value_bases.size()) == nkv,
            "expected one key and one value basis per KV head (", nkv, ")");
  for (const auto* bases : {&key_bases, &value_bases}) {
    for (const Eigen::MatrixXd& u : *bases) {
      EKV_CHECK(u.rows() == dh, "a basis must have ", dh, " rows, found ", u.rows(), "x", u.cols());
    }
  }
  EKV_CHECK(key_bases[0].cols() >= key_rank && value_bases[0].cols() >= value_rank,
            "the bases have fewer columns than the ranks asked for");

  // clip_qkv's clamp sits between W x + b and the bases: folding would clamp the projected rows
  // instead, which is not the same function. Such a layer keeps W_q, W_k, W_v and the bases apart.
  const bool clamped = c.arch.clip_qkv > 0;
  EKV_CHECK(!clamped || mode == model::KeyMode::kNoRope, "clip_qkv with key mode ",
            model::key_mode_name(mode), " is not built (only models without RoPE clamp q/k/v)");

  model::LayerWeights L = full;
  L.key_mode = mode;
  L.key_rank = key_rank;
  L.value_rank = value_rank;
  L.key_basis.clear();
  L.value_basis.clear();
  L.bases_after_clamp = clamped;
  // Per KV head, the first `rank` columns of each basis as a float32 [d_h, rank] matrix.
  auto basis_matrices = [&](const std::vector<Eigen::MatrixXd>& bases, int64_t rank) {
    std::vector<Matrix> out;
    for (int64_t j = 0; j < nkv; ++j) {
      Matrix u = make(dh, rank);
      for (int64_t i = 0; i < dh; ++i) {
        for (int64_t r = 0; r < rank; ++r)
          u.data[i * rank + r] = static_cast<float>(bases[j](i, r));
      }
      out.push_back(std::move(u));
    }
    return out;
  };
  // Values: cache U_V^T v; W_o^h takes U_V so the output is formed from rank space directly.
  // The folded matrices are computed in float64 from float32 copies of the stored ones.
  if (clamped) {
    L.value_basis = basis_matrices(value_bases, value_rank);
  } else {
    L.wv = model::Weight::from_float(
        project_heads(full.wv.to_float(), value_bases, nkv, dh, value_rank, 1));
    L.bv = project_bias(full.bv, value_bases, nkv, dh, value_rank, 1);
  }
  const Matrix full_wo = full.wo.to_float();
  Matrix wo = make(c.d_model, nh * value_rank);
  for (int64_t h = 0; h < nh; ++h) {
    const Eigen::MatrixXd u = value_bases[h / g].leftCols(value_rank);
    Eigen::MatrixXd wo_h(c.d_model, dh);
    for (int64_t r = 0; r < c.d_model; ++r) {
      for (int64_t i = 0; i < dh; ++i) wo_h(r, i) = full_wo.row(r)[h * dh + i];
    }
    const Eigen::MatrixXd folded = wo_h * u;  // [d_model, r_V]
    for (int64_t r = 0; r < c.d_model; ++r) {
      for (int64_t i = 0; i < value_rank; ++i) {
        wo.data[r * wo.cols + h * value_rank + i] = static_cast<float>(folded(r, i));
      }
    }
  }
  L.wo = model::Weight::from_float(std::move(wo));
  if (clamped) {  // W_q, W_k stay full; both project onto U_K after the clamp
    L.key_basis = basis_matrices(key_bases, key_rank);
    return L;
  }
  if (mode == model::KeyMode::kPre || mode == model::KeyMode::kNoRope) {
    L.wk = model::Weight::from_float(
        project_heads(full.wk.to_float(), key_bases, nkv, dh, key_rank, 1));
    L.bk = project_bias(full.bk, key_bases, nkv, dh, key_rank, 1);
  }
  if (mode == model::KeyMode::kNoRope) {
    L.wq = model::Weight::from_float(
        project_heads(full.wq.to_float(), key_bases, nh, dh, key_rank, g));
    L.bq = project_bias(full.bq, key_bases, nh, dh, key_rank, g);
  }
  if (mode == model::KeyMode::kPre || mode == model::KeyMode::kPost)
    L.key_basis = basis_matrices(key_bases, key_rank);
  return L;
}

}  // namespace eigenkv::compress
