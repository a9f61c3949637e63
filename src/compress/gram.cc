#include "compress/gram.h"

#include "util/error.h"

namespace eigenkv::compress {

void add_gram(Eigen::MatrixXd& gram, const float* x, int64_t n, int64_t stride, int64_t offset,
              int64_t width) {
  Eigen::MatrixXd rows(n, width);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < width; ++i) rows(t, i) = x[t * stride + offset + i];
  }
  gram.selfadjointView<Eigen::Lower>().rankUpdate(rows.transpose());
}

GramCollector::GramCollector(const model::ModelConfig& config, model::KeyMode key_mode)
    : config_(config), key_mode_(key_mode) {
  EKV_CHECK(key_mode != model::KeyMode::kFull, "calibration needs a low-rank key mode");
  const int64_t dh = config.head_dim;
  grams_.key.assign(static_cast<size_t>(config.n_kv_heads), Eigen::MatrixXd::Zero(dh, dh));
  grams_.value.assign(static_cast<size_t>(config.n_kv_heads), Eigen::MatrixXd::Zero(dh, dh));
}

void GramCollector::on_attention(int64_t layer, int64_t n, int64_t pos0, const float* q_pre,
                                 const float* k_pre, const float* q_post, const float* k_post,
                                 const float* v) {
  const int64_t dh = config_.head_dim, nh = config_.n_heads, nkv = config_.n_kv_heads;
  const int64_t g = config_.group_size();
  if (layer_ < 0) layer_ = layer;
  EKV_CHECK(layer == layer_, "a Gram collector of layer ", layer_, " was given layer ", layer);
  LayerGrams& grams = grams_;
  const bool post = key_mode_ == model::KeyMode::kPost;
  const float* k = post ? k_post : k_pre;
  const float* q = post ? q_post : q_pre;
  for (int64_t j = 0; j < nkv; ++j) {
    add_gram(grams.key[j], k, n, nkv * dh, j * dh, dh);
    if (key_mode_ != model::KeyMode::kPre) {
      for (int64_t h = j * g; h < (j + 1) * g; ++h)
        add_gram(grams.key[j], q, n, nh * dh, h * dh, dh);
    }
    add_gram(grams.value[j], v, n, nkv * dh, j * dh, dh);
  }
}

}  // namespace eigenkv::compress
