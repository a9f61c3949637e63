#include "compress/cache_bits.h"

#include <algorithm>
#include <cmath>
#include <queue>

#include "ops/kv_format.h"
#include "util/error.h"
#include "util/progress.h"

namespace eigenkv::compress {

namespace {

using model::LayerWeights;
using model::Matrix;

// Keeps the first `keep` of every block of `block` rows.
Matrix keep_rows(const Matrix& m, int64_t block, int64_t keep) {
  Matrix out;
  out.cols = m.cols;
  for (int64_t r = 0; r < m.rows; ++r) {
    if (r % block < keep) out.data.insert(out.data.end(), m.row(r), m.row(r) + m.cols);
  }
  out.rows = static_cast<int64_t>(out.data.size()) / std::max<int64_t>(1, m.cols);
  return out;
}

// Keeps the first `keep` of every block of `block` entries (a bias); empty stays empty.
std::vector<float> keep_entries(const std::vector<float>& b, int64_t block, int64_t keep) {
  std::vector<float> out;
  for (size_t i = 0; i < b.size(); ++i) {
    if (static_cast<int64_t>(i) % block < keep) out.push_back(b[i]);
  }
  return out;
}

// Keeps the first `keep` of every block of `block` columns.
Matrix keep_cols(const Matrix& m, int64_t block, int64_t keep) {
  Matrix out;
  out.rows = m.rows;
  out.cols = m.cols / block * keep;
  out.data.reserve(static_cast<size_t>(out.rows * out.cols));
  for (int64_t r = 0; r < m.rows; ++r) {
    for (int64_t c = 0; c < m.cols; ++c) {
      if (c % block < keep) out.data.push_back(m.row(r)[c]);
    }
  }
  return out;
}

// Per layer, kind, KV head and direction: sums over calibration tokens.
struct DirectionStats {
  std::vector<double> energy;  // sum x^2
  std::vector<double> err8;    // sum (x - Q8(x))^2 with the direction's sigma
  std::vector<double> err4;    // sum (x - Q4(x))^2
};

// One allotment unit: direction i of one layer and kind (shared by the KV heads).
struct Unit {
  int64_t layer = 0;
  int kind = 0;  // 0 keys, 1 values
  int64_t index = 0;
  double d0 = 0, d4 = 0, d8 = 0;  // predicted squared error per token at 0, 4, 8 bits
  int bits = 0;
};

}  // namespace

LayerWeights truncate_layer(const LayerWeights& L, int64_t rk, int64_t rv) {
  EKV_CHECK(L.key_mode != model::KeyMode::kFull, "truncate_layer needs a compressed layer");
  EKV_CHECK(rk >= 1 && rk <= L.key_rank && rv >= 1 && rv <= L.value_rank, "cannot cut ranks ",
            L.key_rank, "/", L.value_rank, " to ", rk, "/", rv);
  LayerWeights out = L;
  using model::Weight;
  out.wo = Weight::from_float(keep_cols(L.wo.to_float(), L.value_rank, rv));
  for (Matrix& u : out.key_basis) u = keep_cols(u, u.cols, rk);
  if (L.bases_after_clamp) {  // W_q, W_k, W_v are full: the bases alone are cut
    for (Matrix& u : out.value_basis) u = keep_cols(u, u.cols, rv);
  } else {
    out.wv = Weight::from_float(keep_rows(L.wv.to_float(), L.value_rank, rv));
    out.bv = keep_entries(L.bv, L.value_rank, rv);
    if (L.key_mode == model::KeyMode::kPre || L.key_mode == model::KeyMode::kNoRope) {
      out.wk = Weight::from_float(keep_rows(L.wk.to_float(), L.key_rank, rk));
      out.bk = keep_entries(L.bk, L.key_rank, rk);
    }
    if (L.key_mode == model::KeyMode::kNoRope) {
      out.wq = Weight::from_float(keep_rows(L.wq.to_float(), L.key_rank, rk));
      out.bq = keep_entries(L.bq, L.key_rank, rk);
    }
  }
  out.key_rank = rk;
  out.value_rank = rv;
  out.key_sigma.clear();
  out.value_sigma.clear();
  out.key_n8 = out.value_n8 = 0;
  return out;
}

CacheBitsResult water_fill_cache(model::Model& model, const std::vector<int32_t>& ids,
                                 const CacheBitsOptions& o) {
  const model::ModelConfig& c = model.config();
  EKV_CHECK(model.is_compressed(),
            "quantize-cache needs an Eigen/Stief-compressed model: the eigenbasis is what makes "
            "the directions worth different bits (run eigenkv calibrate first, e.g. --threshold 0)");
  EKV_CHECK(!model.has_cache_allotment(), "the model already stores a cache allotment");
  EKV_CHECK(o.budget > 0 && o.budget <= 1, "the cache budget must be in (0, 1] of the f16 cache, "
            "found ", o.budget);
  EKV_CHECK(o.ctx >= 2, "calibration window must be >= 2 tokens, found ", o.ctx);
  const int64_t usable = o.max_tokens > 0 ? std::min<int64_t>(o.max_tokens, ids.size())
                                          : static_cast<int64_t>(ids.size());
  const int64_t windows = usable / o.ctx;
  EKV_CHECK(windows >= 1, "too little calibration text: ", ids.size(), " tokens, need at least ",
            o.ctx, " (one window)");
  const int64_t nl = c.n_layers, nkv = c.n_kv_heads;
  auto width = [&](int64_t l, int kind) {
    return kind == 0 ? model.weights().layers[l].key_rank : model.weights().layers[l].value_rank;
  };

  // Pass 1: the spread of every cached direction; pass 2: its error at 8 and 4 bits once divided
  // by that spread (the group scales depend on the whole row, so the error is measured, not
  // modelled).
  std::vector<std::vector<DirectionStats>> stats(static_cast<size_t>(nl),
                                                 std::vector<DirectionStats>(2));
  for (int64_t l = 0; l < nl; ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      const size_t n = static_cast<size_t>(nkv * width(l, kind));
      stats[l][kind] = {std::vector<double>(n), std::vector<double>(n), std::vector<double>(n)};
    }
  }
  std::vector<std::vector<std::vector<float>>> sigma(static_cast<size_t>(nl),
                                                     std::vector<std::vector<float>>(2));
  kv::KvCache cache = model.new_cache(o.ctx, kv::CacheTypes{});
  std::vector<float> logits(static_cast<size_t>(c.n_vocab));
  Progress progress("cache bits", 2 * windows, "windows");
  std::vector<float> x, y;
  std::vector<uint8_t> packed;
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t w = 0; w < windows; ++w) {
      cache.clear();
      model.forward(std::span<const int32_t>(ids.data() + w * o.ctx, o.ctx), cache, logits.data(),
                    false);
      for (int64_t l = 0; l < nl; ++l) {
        for (int kind = 0; kind < 2; ++kind) {
          const int64_t r = width(l, kind);
          DirectionStats& st = stats[l][kind];
          x.resize(static_cast<size_t>(o.ctx * r));
          y.resize(static_cast<size_t>(r));
          for (int64_t j = 0; j < nkv; ++j) {
            const ops::KvRows rows = kind == 0 ? cache.key_rows(l, j) : cache.value_rows(l, j);
            ops::decode_rows(rows, 0, o.ctx, x.data());
            for (int64_t t = 0; t < o.ctx; ++t) {
              const float* xt = x.data() + t * r;
              if (pass == 0) {
                for (int64_t i = 0; i < r; ++i) st.energy[j * r + i] += double{xt[i]} * xt[i];
                continue;
              }
              const float* s = sigma[l][kind].data() + j * r;
              for (ops::KvType type : {ops::KvType::kInt8, ops::KvType::kInt4}) {
                const ops::RowFormat f = ops::RowFormat::uniform(type, r);
                packed.resize(static_cast<size_t>(f.bytes()));
                ops::encode_row(f, xt, s, packed.data());
                ops::decode_row_reference(f, packed.data(), s, y.data());
                std::vector<double>& err = type == ops::KvType::kInt8 ? st.err8 : st.err4;
                for (int64_t i = 0; i < r; ++i) {
                  const double e = double{xt[i]} - y[i];
                  err[j * r + i] += e * e;
                }
              }
            }
          }
          if (pass == 0 && w == windows - 1) {
            sigma[l][kind].resize(st.energy.size());
            for (size_t i = 0; i < st.energy.size(); ++i)
              sigma[l][kind][i] = static_cast<float>(std::sqrt(st.energy[i] / (windows * o.ctx)));
          }
        }
      }
      progress.update(pass * windows + w + 1, static_cast<double>((pass * windows + w + 1) * o.ctx),
                      "tok");
    }
  }
  progress.finish();

  // Units and their predicted distortion per token (summed over KV heads).
  const double tokens = static_cast<double>(windows * o.ctx);
  std::vector<Unit> units;
  for (int64_t l = 0; l < nl; ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      const int64_t r = width(l, kind);
      const DirectionStats& st = stats[l][kind];
      for (int64_t i = 0; i < r; ++i) {
        Unit u{l, kind, i};
        for (int64_t j = 0; j < nkv; ++j) {
          u.d0 += st.energy[j * r + i] / tokens;
          u.d4 += st.err4[j * r + i] / tokens;
          u.d8 += st.err8[j * r + i] / tokens;
        }
        u.d4 = std::min(u.d4, u.d0);
        u.d8 = std::min(u.d8, u.d4);
        units.push_back(u);
      }
    }
  }

  CacheBitsResult result;
  result.tokens = windows * o.ctx;
  result.f16_full_bytes = nl * nkv * 2 * c.head_dim * 2;
  result.budget_bytes = static_cast<int64_t>(std::floor(o.budget * result.f16_full_bytes));
  // Exact bytes per token of the allotment: per layer and kind, a mixed row per KV head.
  auto allotment_of = [&](int64_t l, int kind) {
    KindAllotment a;
    for (const Unit& u : units) {
      if (u.layer == l && u.kind == kind && u.bits > 0) {
        ++a.rank;
        if (u.bits == 8) ++a.n8;
      }
    }
    return a;
  };
  auto bytes_of = [&]() {
    int64_t bytes = 0;
    for (int64_t l = 0; l < nl; ++l) {
      for (int kind = 0; kind < 2; ++kind) {
        const KindAllotment a = allotment_of(l, kind);
        bytes += nkv * ops::RowFormat::mixed(std::max<int64_t>(a.rank, 1), a.n8).bytes();
      }
    }
    return bytes;
  };
  // Every layer and kind keeps its leading direction at 4 bits at least (a cache of rank 0 does
  // not exist); that is the smallest cache.
  for (Unit& u : units) u.bits = u.index == 0 ? 4 : 0;
  const int64_t min_bytes = bytes_of();
  EKV_CHECK(min_bytes <= result.budget_bytes, "a cache budget of ", o.budget, " (",
            result.budget_bytes, " bytes per token) cannot be met: the smallest cache, one 4-bit "
            "direction per layer, kind and KV head, takes ", min_bytes, " bytes per token (",
            static_cast<double>(min_bytes) / result.f16_full_bytes, " of f16)");

  // Greedy by distortion removed per byte: the next step of a unit is 0 -> 4 or 4 -> 8 bits; a
  // unit may only rise to the level of the direction before it (bits never increase along a
  // row), which keeps the 8-bit directions a prefix and the dropped ones a suffix.
  // Either step adds 4 bits (half a byte) per KV head, plus a share of a group scale.
  const double step_bytes = nkv * (0.5 + 2.0 / ops::kQuantGroup);
  auto step_gain = [](const Unit& u) { return u.bits == 0 ? u.d0 - u.d4 : u.d4 - u.d8; };
  auto allowed = [&](size_t k) {
    const Unit& u = units[k];
    if (u.bits >= 8) return false;
    return u.index == 0 || units[k - 1].bits > u.bits;
  };
  using Entry = std::pair<double, size_t>;
  auto push = [&](std::priority_queue<Entry>& q, size_t k) {
    if (!allowed(k)) return;
    q.push({step_gain(units[k]) / step_bytes, k});
  };
  std::priority_queue<Entry> queue;
  for (size_t k = 0; k < units.size(); ++k) push(queue, k);
  while (!queue.empty()) {
    const size_t k = queue.top().second;
    queue.pop();
    if (!allowed(k)) continue;
    Unit& u = units[k];
    const int before = u.bits;
    u.bits = before == 0 ? 4 : 8;
    if (bytes_of() > result.budget_bytes) {
      u.bits = before;  // does not fit; a cheaper step elsewhere still may
      continue;
    }
    push(queue, k);
    if (k + 1 < units.size() && units[k + 1].layer == u.layer && units[k + 1].kind == u.kind)
      push(queue, k + 1);
  }

  // Apply: cut the ranks, store scales and 8-bit counts.
  model::ModelWeights weights = model.weights();
  double kept = 0, total = 0;
  for (const Unit& u : units) {
    total += u.d0;
    result.distortion += u.bits == 0 ? u.d0 : (u.bits == 4 ? u.d4 : u.d8);
    if (u.bits > 0) kept += u.d0;
  }
  result.retained = total > 0 ? kept / total : 1.0;
  for (int64_t l = 0; l < nl; ++l) {
    const KindAllotment ka = allotment_of(l, 0), va = allotment_of(l, 1);
    result.keys.push_back(ka);
    result.values.push_back(va);
    LayerWeights& L = weights.layers[l];
    const int64_t rk = L.key_rank, rv = L.value_rank;
    L = truncate_layer(L, ka.rank, va.rank);
    for (int64_t j = 0; j < nkv; ++j) {
      const auto& sk = sigma[l][0];
      const auto& sv = sigma[l][1];
      L.key_sigma.insert(L.key_sigma.end(), sk.begin() + j * rk, sk.begin() + j * rk + ka.rank);
      L.value_sigma.insert(L.value_sigma.end(), sv.begin() + j * rv,
                           sv.begin() + j * rv + va.rank);
    }
    L.key_n8 = ka.n8;
    L.value_n8 = va.n8;
  }
  model.set_weights(std::move(weights));
  result.bytes_per_token = model.kv_bytes_per_token();
  EKV_CHECK(result.bytes_per_token <= result.budget_bytes, "internal: the allotment takes ",
            result.bytes_per_token, " bytes per token, over the budget of ", result.budget_bytes);
  return result;
}

}  // namespace eigenkv::compress
