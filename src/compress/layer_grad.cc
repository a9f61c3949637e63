#include "compress/layer_grad.h"

#include <cmath>
#include <limits>

#include "util/error.h"

namespace eigenkv::compress {
namespace {

using Eigen::MatrixXd;
using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

MatrixXd to_double(const model::Matrix& m) {
  return Eigen::Map<const RowMajorF>(m.data.data(), m.rows, m.cols).cast<double>();
}

MatrixXd to_double(const model::Weight& w) { return to_double(w.to_float()); }

Eigen::RowVectorXd to_double(const std::vector<float>& v) {
  return Eigen::Map<const Eigen::RowVectorXf>(v.data(), static_cast<int64_t>(v.size()))
      .cast<double>();
}

// Rows of x [T, d_h] rotated by RoPE at positions 0..T-1 (the model's pairs); sign -1 inverts.
void rotate_rows(const LayerConstants& c, MatrixXd& x, double sign) {
  if (!c.rope) return;
  const int64_t half = c.rope_cos.cols();
  for (int64_t t = 0; t < x.rows(); ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const int64_t p0 = c.rope_halves ? i : 2 * i, p1 = c.rope_halves ? i + half : 2 * i + 1;
      const double co = c.rope_cos(t, i), si = sign * c.rope_sin(t, i);
      const double a = x(t, p0), b = x(t, p1);
      x(t, p0) = a * co - b * si;
      x(t, p1) = a * si + b * co;
    }
  }
}

// Rows of x with the bias b added (nothing when b is empty).
void add_bias(MatrixXd& x, const Eigen::RowVectorXd& b) {
  if (b.size() > 0) x.rowwise() += b;
}

Eigen::RowVectorXd bias_to_double(const std::vector<float>& v) {
  if (v.empty()) return Eigen::RowVectorXd();
  return to_double(v);
}

// Per-row statistics a norm keeps for its backward pass.
struct NormRows {
  Eigen::VectorXd inv;   // [T] 1 / RMS (RMSNorm) or 1 / standard deviation (LayerNorm)
  Eigen::VectorXd mean;  // [T] LayerNorm's row means; empty for RMSNorm
};

// The family's norm of the rows of x [T, d] with weight w and bias b (empty: none), as
// ops::rms_norm / ops::layer_norm compute it.
MatrixXd norm_rows(const LayerConstants& c, const MatrixXd& x, const Eigen::RowVectorXd& w,
                   const Eigen::RowVectorXd& b, NormRows* s) {
  const double n = static_cast<double>(x.cols());
  MatrixXd y;
  if (c.norm == model::NormKind::kRms) {
    const Eigen::VectorXd r = ((x.array().square().rowwise().sum() / n) + c.norm_eps).rsqrt();
    y = (x.array().colwise() * r.array()).rowwise() * w.array();
    if (s) *s = NormRows{r, Eigen::VectorXd()};
  } else {
    const Eigen::VectorXd mean = x.rowwise().mean();
    const MatrixXd xc = x.colwise() - mean;
    const Eigen::VectorXd r = ((xc.array().square().rowwise().sum() / n) + c.norm_eps).rsqrt();
    y = (xc.array().colwise() * r.array()).rowwise() * w.array();
    if (s) *s = NormRows{r, mean};
  }
  add_bias(y, b);
  return y;
}

// Gradient of the norm rows: given x, its statistics and dL/dy, dL/dx (the bias drops out).
MatrixXd norm_rows_backward(const LayerConstants& c, const MatrixXd& x,
                            const Eigen::RowVectorXd& w, const NormRows& s, const MatrixXd& dy) {
  const double n = static_cast<double>(x.cols());
  const MatrixXd g = dy.array().rowwise() * w.array();  // [T, d] dL/d(normalised x)
  if (c.norm == model::NormKind::kRms) {
    // y_i = x_i r w_i, r = (mean(x^2) + eps)^-1/2: dx = r g - x r^3 (g.x) / n.
    const Eigen::VectorXd dot = (g.array() * x.array()).rowwise().sum();
    const Eigen::VectorXd coef = dot.array() * s.inv.array().cube() / n;
    return (g.array().colwise() * s.inv.array()) - (x.array().colwise() * coef.array());
  }
  // xhat = (x - mean) r: dx = r (g - mean(g) - xhat mean(g xhat)).
  const MatrixXd xhat = (x.colwise() - s.mean).array().colwise() * s.inv.array();
  const Eigen::VectorXd g_mean = g.rowwise().mean();
  const Eigen::VectorXd gx_mean = (g.array() * xhat.array()).rowwise().sum() / n;
  const MatrixXd inner =
      (g.colwise() - g_mean).array() - (xhat.array().colwise() * gx_mean.array());
  return inner.array().colwise() * s.inv.array();
}

double gelu(double x) { return 0.5 * x * (1.0 + std::erf(x * M_SQRT1_2)); }
double gelu_grad(double x) {
  return 0.5 * (1.0 + std::erf(x * M_SQRT1_2)) + x * std::exp(-0.5 * x * x) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
}

// Everything the forward pass keeps for the backward pass.
struct Forward {
  std::vector<MatrixXd> k_proj;  // per KV head [T, d_h]: U U^T k, then rotated in kPre
  std::vector<MatrixXd> v_proj;  // per KV head [T, d_h]: U U^T v
  std::vector<MatrixXd> attn;    // per query head [T, T] softmax weights (zero above diagonal)
  MatrixXd a;                    // [T, d_model] x + attention (post-norm: before its norm)
  NormRows a_norm;               // post-norm: the statistics of norm(a)
  MatrixXd h1;                   // [T, d_model] residual after attention (post-norm: norm(a))
  NormRows h1_norm;              // pre-norm: the statistics of the FFN's norm of h1
  MatrixXd gate, up;             // [T, d_ffn] before the activation (gate: SwiGLU only)
  MatrixXd z;                    // [T, d_model] h1 + FFN (post-norm: before its norm)
  NormRows z_norm;               // post-norm: the statistics of norm(z)
  MatrixXd y;                    // [T, d_model] layer output
};

MatrixXd project(const MatrixXd& x, const MatrixXd& u, int64_t rank) {
  const auto ur = u.leftCols(rank);
  return (x * ur) * ur.transpose();
}

// The FFN's output [T, d_model] for its input rows; keeps the pre-activations in f.
MatrixXd ffn_forward(const LayerConstants& c, const MatrixXd& in, Forward& f) {
  f.up = in * c.w_up.transpose();
  add_bias(f.up, c.b_up);
  MatrixXd act;
  switch (c.ffn) {
    case model::FfnKind::kSwiGlu:
      f.gate = in * c.w_gate.transpose();
      act = f.gate.array() / (1.0 + (-f.gate.array()).exp()) * f.up.array();
      break;
    case model::FfnKind::kRelu:
      act = f.up.cwiseMax(0.0);
      break;
    case model::FfnKind::kGelu:
      act = f.up.unaryExpr([](double v) { return gelu(v); });
      break;
  }
  MatrixXd out = act * c.w_down.transpose();
  add_bias(out, c.b_down);
  return out;
}

// Given dL/d(FFN output), dL/d(FFN input).
MatrixXd ffn_backward(const LayerConstants& c, const Forward& f, const MatrixXd& dout) {
  const MatrixXd dact = dout * c.w_down;  // [T, d_ffn]
  switch (c.ffn) {
    case model::FfnKind::kSwiGlu: {
      const Eigen::ArrayXXd sig = 1.0 / (1.0 + (-f.gate.array()).exp());
      const MatrixXd dgate =
          dact.array() * f.up.array() * sig * (1.0 + f.gate.array() * (1.0 - sig));
      const MatrixXd dup = dact.array() * f.gate.array() * sig;
      return dgate * c.w_gate + dup * c.w_up;
    }
    case model::FfnKind::kRelu: {
      const MatrixXd dup = (f.up.array() > 0.0).select(dact, 0.0);
      return dup * c.w_up;
    }
    case model::FfnKind::kGelu: {
      const MatrixXd dup = dact.array() * f.up.unaryExpr([](double v) { return gelu_grad(v); }).array();
      return dup * c.w_up;
    }
  }
  return MatrixXd();
}

Forward run_forward(const LayerConstants& c, const WindowInputs& w, const LayerBases& b, int64_t rk,
                    int64_t rv) {
  const int64_t T = w.x.rows(), dh = c.head_dim, g = c.n_heads / c.n_kv;
  Forward f;
  for (int64_t j = 0; j < c.n_kv; ++j) {
    f.k_proj.push_back(project(w.k[j], b.key[j], rk));
    // kPre rotates each rebuilt key with its own position; kPost/kNoRope keys arrive rotated.
    if (c.key_mode == model::KeyMode::kPre) rotate_rows(c, f.k_proj.back(), 1.0);
    f.v_proj.push_back(project(w.v[j], b.value[j], rv));
  }
  MatrixXd heads(T, c.n_heads * dh);  // [T, n_heads * d_h]
  for (int64_t h = 0; h < c.n_heads; ++h) {
    // (U^T q).(U^T k) = q.(U U^T k): projecting the key alone gives the kPost/kNoRope score.
    MatrixXd s = (w.q[h] * f.k_proj[h / g].transpose()) * c.score_scale;  // [T, T]
    const double slope = c.alibi.size() > 0 ? c.alibi(h) : 0.0;
    for (int64_t t = 0; t < T; ++t) {
      // ALiBi: slope * (key position - query position), added after the scale; it does not
      // depend on the bases, so the backward pass sees only the shifted scores.
      if (slope != 0)
        for (int64_t u = 0; u <= t; ++u) s(t, u) += slope * static_cast<double>(u - t);
      const double mx = s.row(t).head(t + 1).maxCoeff();
      double sum = 0;
      for (int64_t u = 0; u <= t; ++u) sum += (s(t, u) = std::exp(s(t, u) - mx));
      s.row(t).head(t + 1) /= sum;
      s.row(t).tail(T - t - 1).setZero();
    }
    heads.middleCols(h * dh, dh) = s * f.v_proj[h / g];
    f.attn.push_back(std::move(s));
  }
  f.a = w.x + heads * c.wo.transpose();
  add_bias(f.a, c.bo);
  if (c.post_norm) {
    f.h1 = norm_rows(c, f.a, c.attn_norm, c.attn_norm_bias, &f.a_norm);
    f.z = f.h1 + ffn_forward(c, f.h1, f);
    f.y = norm_rows(c, f.z, c.ffn_norm, c.ffn_norm_bias, &f.z_norm);
  } else {
    f.h1 = f.a;
    const MatrixXd hn = norm_rows(c, f.h1, c.ffn_norm, c.ffn_norm_bias, &f.h1_norm);
    f.z = f.h1 + ffn_forward(c, hn, f);
    f.y = f.z;
  }
  return f;
}

// dD/dU for U U^T applied to rows x, given dD/d(x U U^T) = dx_proj: (x^T dx + dx^T x) U_r.
void add_projection_grad(const MatrixXd& x, const MatrixXd& dx_proj, const MatrixXd& u,
                         int64_t rank, MatrixXd& grad) {
  const auto ur = u.leftCols(rank);
  grad.leftCols(rank) += x.transpose() * (dx_proj * ur) + dx_proj.transpose() * (x * ur);
}

void run_backward(const LayerConstants& c, const WindowInputs& w, const LayerBases& b, int64_t rk,
                  int64_t rv, const Forward& f, LayerBases& grad) {
  const int64_t dh = c.head_dim, g = c.n_heads / c.n_kv;
  const MatrixXd dy = 2.0 * (f.y - w.target);  // [T, d_model]
  MatrixXd da;                                 // dD/da [T, d_model]
  if (c.post_norm) {
    // y = norm(z), z = h1 + ffn(h1), h1 = norm(a).
    const MatrixXd dz = norm_rows_backward(c, f.z, c.ffn_norm, f.z_norm, dy);
    const MatrixXd dh1 = dz + ffn_backward(c, f, dz);
    da = norm_rows_backward(c, f.a, c.attn_norm, f.a_norm, dh1);
  } else {
    // y = h1 + ffn(norm(h1)), h1 = a.
    da = dy + norm_rows_backward(c, f.h1, c.ffn_norm, f.h1_norm, ffn_backward(c, f, dy));
  }
  const MatrixXd dheads = da * c.wo;  // [T, n_heads * d_h]
  std::vector<MatrixXd> dk(c.n_kv, MatrixXd::Zero(w.x.rows(), dh));
  std::vector<MatrixXd> dv(c.n_kv, MatrixXd::Zero(w.x.rows(), dh));
  for (int64_t h = 0; h < c.n_heads; ++h) {
    const int64_t j = h / g;
    const auto dout = dheads.middleCols(h * dh, dh);  // [T, d_h]
    const MatrixXd& a = f.attn[h];
    dv[j].noalias() += a.transpose() * dout;
    const MatrixXd dattn = dout * f.v_proj[j].transpose();  // [T, T]
    const Eigen::VectorXd row_dot = (dattn.array() * a.array()).rowwise().sum();
    const MatrixXd ds = (a.array() * (dattn.array().colwise() - row_dot.array())) * c.score_scale;
    dk[j].noalias() += ds.transpose() * w.q[h];
  }
  for (int64_t j = 0; j < c.n_kv; ++j) {
    if (c.key_mode == model::KeyMode::kPre) rotate_rows(c, dk[j], -1.0);
    add_projection_grad(w.k[j], dk[j], b.key[j], rk, grad.key[j]);
    add_projection_grad(w.v[j], dv[j], b.value[j], rv, grad.value[j]);
  }
}

void check_bases(const LayerConstants& c, const LayerBases& b, int64_t rk, int64_t rv) {
  EKV_CHECK(static_cast<int64_t>(b.key.size()) == c.n_kv &&
                static_cast<int64_t>(b.value.size()) == c.n_kv,
            "expected one key and one value basis per KV head (", c.n_kv, ")");
  EKV_CHECK(rk >= 1 && rk <= c.head_dim && rv >= 1 && rv <= c.head_dim, "ranks ", rk, "/", rv,
            " are outside [1, head width ", c.head_dim, "]");
  for (const auto* set : {&b.key, &b.value}) {
    for (const MatrixXd& u : *set) {
      EKV_CHECK(u.rows() == c.head_dim && u.cols() == c.head_dim, "a basis must be ", c.head_dim,
                "x", c.head_dim, ", found ", u.rows(), "x", u.cols());
    }
  }
}

}  // namespace

LayerConstants layer_constants(const model::ModelConfig& config, const model::LayerWeights& layer,
                               model::KeyMode key_mode, const std::vector<float>& inv_freq,
                               int64_t ctx) {
  EKV_CHECK(layer.key_mode == model::KeyMode::kFull, "the layer is already compressed");
  EKV_CHECK(key_mode != model::KeyMode::kFull, "StiefAttention needs a low-rank key mode");
  LayerConstants c;
  c.n_heads = config.n_heads;
  c.n_kv = config.n_kv_heads;
  c.head_dim = config.head_dim;
  c.d_model = config.d_model;
  c.d_ffn = config.d_ffn;
  c.norm_eps = config.norm_eps;
  c.key_mode = key_mode;
  c.rope = config.rope();
  EKV_CHECK(c.rope == (key_mode != model::KeyMode::kNoRope), "key mode ",
            model::key_mode_name(key_mode), " does not fit the model's positions");
  c.wq = to_double(layer.wq);
  c.wk = to_double(layer.wk);
  c.wv = to_double(layer.wv);
  c.wo = to_double(layer.wo);
  c.bq = bias_to_double(layer.bq);
  c.bk = bias_to_double(layer.bk);
  c.bv = bias_to_double(layer.bv);
  c.bo = bias_to_double(layer.bo);
  c.rope_halves = config.arch.rope_layout == model::RopeLayout::kHalves;
  const model::ArchSpec& arch = config.arch;
  // What ArchSpec describes but neither the engine nor this layer runs yet.
  EKV_CHECK(arch.sliding_window == 0, "StiefAttention's layer gradient has no sliding window (",
            arch.sliding_window, ") of architecture ", arch.name);
  EKV_CHECK(arch.attn_softcap == 0, "StiefAttention's layer gradient has no attention softcap (",
            arch.attn_softcap, ") of architecture ", arch.name);
  c.norm = arch.norm;
  c.ffn = arch.ffn;
  c.post_norm = arch.post_norm;
  c.score_scale = arch.query_scale > 0 ? arch.query_scale
                                       : 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  // The engine scales in float32: the same float, then in double.
  c.score_scale = static_cast<float>(c.score_scale);
  c.clip_qkv = static_cast<float>(arch.clip_qkv);  // the engine clamps at the float
  if (arch.position == model::PositionKind::kAlibi) {
    const std::vector<float> slopes = model::alibi_slopes(c.n_heads, arch.alibi_bias_max);
    c.alibi = Eigen::Map<const Eigen::VectorXf>(slopes.data(), c.n_heads).cast<double>();
  }
  c.w_gate = arch.ffn == model::FfnKind::kSwiGlu ? to_double(layer.w_gate) : MatrixXd();
  c.w_up = to_double(layer.w_up);
  c.w_down = to_double(layer.w_down);
  c.b_up = bias_to_double(layer.b_up);
  c.b_down = bias_to_double(layer.b_down);
  c.attn_norm = to_double(layer.attn_norm);
  c.ffn_norm = to_double(layer.ffn_norm);
  c.attn_norm_bias = bias_to_double(layer.attn_norm_bias);
  c.ffn_norm_bias = bias_to_double(layer.ffn_norm_bias);
  EKV_CHECK(c.w_up.rows() == c.d_ffn && c.w_down.cols() == c.d_ffn &&
                (arch.ffn != model::FfnKind::kSwiGlu || c.w_gate.rows() == c.d_ffn),
            "the layer's FFN weights do not match d_ffn ", c.d_ffn);
  EKV_CHECK(c.attn_norm.size() == c.d_model && c.ffn_norm.size() == c.d_model,
            "the layer's norm weights do not match d_model ", c.d_model);
  const int64_t half = c.rope ? static_cast<int64_t>(inv_freq.size()) : 0;
  EKV_CHECK(2 * half <= c.head_dim, "RoPE rotates ", 2 * half, " dimensions of a ", c.head_dim,
            "-wide head");
  c.rope_cos.resize(ctx, half);
  c.rope_sin.resize(ctx, half);
  for (int64_t t = 0; t < ctx; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      // The angle in float32, as the engine's RoPE table forms it, then cos/sin in double.
      const double angle = static_cast<float>(t) * inv_freq[i];
      c.rope_cos(t, i) = std::cos(angle);
      c.rope_sin(t, i) = std::sin(angle);
    }
  }
  return c;
}

WindowInputs window_inputs(const LayerConstants& c, const float* x, const float* target,
                           int64_t n_tokens) {
  EKV_CHECK(n_tokens >= 1 && n_tokens <= c.rope_cos.rows(), "a window of ", n_tokens,
            " tokens does not fit the layer's context of ", c.rope_cos.rows());
  const int64_t dh = c.head_dim;
  WindowInputs w;
  w.x = Eigen::Map<const RowMajorF>(x, n_tokens, c.d_model).cast<double>();
  w.target = Eigen::Map<const RowMajorF>(target, n_tokens, c.d_model).cast<double>();
  w.target_sq = w.target.squaredNorm();
  // Post-norm layers project the residual stream itself; pre-norm ones its norm.
  const MatrixXd xn = c.post_norm ? w.x
                                  : norm_rows(c, w.x, c.attn_norm, c.attn_norm_bias, nullptr);
  MatrixXd q = xn * c.wq.transpose();  // [T, n_heads * d_h]
  MatrixXd k = xn * c.wk.transpose();  // [T, n_kv * d_h]
  MatrixXd v = xn * c.wv.transpose();  // [T, n_kv * d_h]
  add_bias(q, c.bq);
  add_bias(k, c.bk);
  add_bias(v, c.bv);
  if (c.clip_qkv > 0) {  // MPT's clamp, before any basis (and before RoPE)
    for (MatrixXd* m : {&q, &k, &v}) *m = m->cwiseMax(-c.clip_qkv).cwiseMin(c.clip_qkv);
  }
  for (int64_t h = 0; h < c.n_heads; ++h) {
    w.q.push_back(q.middleCols(h * dh, dh));
    rotate_rows(c, w.q.back(), 1.0);
  }
  for (int64_t j = 0; j < c.n_kv; ++j) {
    w.k.push_back(k.middleCols(j * dh, dh));
    if (c.key_mode == model::KeyMode::kPost) rotate_rows(c, w.k.back(), 1.0);
    w.v.push_back(v.middleCols(j * dh, dh));
  }
  return w;
}

Eigen::MatrixXd projected_layer_output(const LayerConstants& c, const WindowInputs& w,
                                       const LayerBases& bases, int64_t key_rank,
                                       int64_t value_rank) {
  check_bases(c, bases, key_rank, value_rank);
  return run_forward(c, w, bases, key_rank, value_rank).y;
}

double window_squared_error(const LayerConstants& c, const WindowInputs& w, const LayerBases& bases,
                            int64_t key_rank, int64_t value_rank, LayerBases* grad) {
  check_bases(c, bases, key_rank, value_rank);
  const Forward f = run_forward(c, w, bases, key_rank, value_rank);
  const double d = (f.y - w.target).squaredNorm();
  if (grad && std::isfinite(d)) run_backward(c, w, bases, key_rank, value_rank, f, *grad);
  return d;
}

}  // namespace eigenkv::compress
