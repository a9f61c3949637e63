#include "model/save.h"

#include <cctype>
#include <cstring>
#include <deque>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "ops/dequant.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace eigenkv::model {
namespace {

using io::GgufValueType;

// llama.* keys and the tokenizer for a model that did not come from a GGUF file: the
// tokenizer.json text itself (what eigenkv reads back) and, where GGUF can express it, the same
// vocabulary as tokenizer.ggml.* keys for llama.cpp; where it cannot, a note says why.
void write_config_metadata(const Model& model, io::GgufWriter& w,
                           std::vector<std::string>& notes) {
  const ModelConfig& c = model.config();
  const std::string a = c.arch.name + ".";
  w.set_string("general.architecture", c.arch.name);
  w.set_string("general.name",
               c.name.empty() ? std::filesystem::path(model.path()).filename().string() : c.name);
  w.set_int(a + "context_length", c.n_ctx_train);
  w.set_int(a + "embedding_length", c.d_model);
  w.set_int(a + "block_count", c.n_layers);
  w.set_int(a + "feed_forward_length", c.d_ffn);
  w.set_int(a + "attention.head_count", c.n_heads);
  w.set_int(a + "attention.head_count_kv", c.n_kv_heads);
  w.set_int(a + "attention.key_length", c.head_dim);
  w.set_int(a + "attention.value_length", c.head_dim);
  if (c.arch.norm == NormKind::kLayer) {
    w.set_float(a + "attention.layer_norm_epsilon", c.norm_eps);
  } else {
    w.set_float(a + "attention.layer_norm_rms_epsilon", c.norm_eps);
  }
  if (c.rope()) {
    w.set_float(a + "rope.freq_base", c.rope_theta);
    w.set_int(a + "rope.dimension_count", c.rope_dims);
  }
  if (c.arch.position == PositionKind::kAlibi)
    w.set_float(a + "attention.max_alibi_bias", c.arch.alibi_bias_max);
  if (c.arch.clip_qkv > 0) w.set_float(a + "attention.clamp_kqv", c.arch.clip_qkv);
  if (c.arch.name == "opt") w.set_bool(a + "layer_norm_before", !c.arch.post_norm);
  w.set_int(a + "vocab_size", c.n_vocab);
  EKV_CHECK(!model.tokenizer_json().empty(), model.path(),
            ": the model's tokenizer.json text is not available to embed");
  w.set_string("tokenizer.huggingface.json", model.tokenizer_json());
  if (!model.tokenizer_config_json().empty()) {
    w.set_string(kEmbeddedTokenizerConfigKey, model.tokenizer_config_json());
  }
  try {
    tok::write_gguf_vocab(tok::gguf_vocab_from_json(model.tokenizer(), model.tokenizer_json(),
                                                    model.tokenizer_config_json(), c.n_vocab),
                          w);
  } catch (const Error& e) {
    notes.push_back(std::string(e.what()) + "; only tokenizer.huggingface.json is written, " +
                    "which eigenkv reads and llama.cpp does not");
  }
}

// The bytes a weight is written with: its stored bytes, or a computed weight in the fold type.
class WeightWriter {
 public:
  WeightWriter(io::GgufWriter& writer, const SaveOptions& options)
      : writer_(writer), options_(options) {}

  void add(const std::string& name, const Weight& m, const Weight& reference) {
    if (!m.computed) {
      const io::TensorType type =
          options_.stored_type ? options_.stored_type(name, {m.rows, m.cols}, m.type) : m.type;
      if (type == m.type) {
        writer_.add_tensor(name, m.type, {m.rows, m.cols}, m.bytes, m.nbytes());
        return;
      }
      // The weight (and the bytes it borrows) outlives write(): the model is borrowed too.
      writer_.add_tensor_generated(name, type, {m.rows, m.cols}, [&m, type](uint8_t* out) {
        ops::convert_rows(m.type, m.bytes, type, out, m.rows, m.cols);
      });
      return;
    }
    io::TensorType type = options_.fold_type.value_or(
        reference.type == io::TensorType::kF32 ? io::TensorType::kF32 : io::TensorType::kF16);
    const int64_t block = io::tensor_type_info(type).block_size;
    if (m.cols % block != 0) {
      notes_.push_back(name + ": rows of " + std::to_string(m.cols) + " are not whole blocks of " +
                       std::to_string(block) + " for " +
                       io::tensor_type_name(static_cast<uint32_t>(type)) + "; written as f16");
      type = io::TensorType::kF16;
    }
    if (type == io::TensorType::kF32) {
      writer_.add_tensor(name, type, {m.rows, m.cols}, m.bytes, m.nbytes());
      return;
    }
    std::vector<uint8_t>& out = buffers_.emplace_back(io::tensor_bytes(type, m.rows * m.cols));
    const float* x = reinterpret_cast<const float*>(m.bytes);
    const size_t row_out = io::tensor_bytes(type, m.cols);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < m.rows; ++r) {
      ops::quantize(type, x + r * m.cols, out.data() + static_cast<size_t>(r) * row_out, m.cols);
    }
    writer_.add_tensor(name, type, {m.rows, m.cols}, out.data(), out.size());
  }

  std::vector<std::string> take_notes() { return std::move(notes_); }

 private:
  io::GgufWriter& writer_;
  const SaveOptions& options_;
  std::vector<std::vector<uint8_t>> buffers_;  // converted bytes, borrowed by the writer
  std::vector<std::string> notes_;
};

// q, k and v as one matrix [q rows; k rows; v rows] (a fused family's layout). Rows that already
// lie that way in one buffer (loaded from a fused tensor) are taken as they are; others of one
// type are copied together; a mix of types becomes one computed float32 matrix.
Weight fuse_rows(const Weight& q, const Weight& k, const Weight& v) {
  const int64_t rows = q.rows + k.rows + v.rows;
  const bool same = q.type == k.type && k.type == v.type && q.computed == k.computed &&
                    k.computed == v.computed;
  if (same && k.bytes == q.bytes + q.nbytes() && v.bytes == k.bytes + k.nbytes()) {
    Weight w = q;
    w.rows = rows;
    return w;
  }
  if (same) {
    std::vector<uint8_t> bytes;
    for (const Weight* m : {&q, &k, &v}) bytes.insert(bytes.end(), m->bytes, m->bytes + m->nbytes());
    Weight w = Weight::from_bytes(q.type, rows, q.cols, std::move(bytes));
    w.computed = q.computed;
    return w;
  }
  Matrix all;
  all.rows = rows;
  all.cols = q.cols;
  for (const Weight* m : {&q, &k, &v}) {
    const Matrix f = m->to_float();
    all.data.insert(all.data.end(), f.data.begin(), f.data.end());
  }
  return Weight::from_float(std::move(all));
}

}  // namespace

io::TensorType fold_type_from_name(const std::string& name) {
  const auto types = ops::writable_types();
  std::string given = name;
  for (char& c : given) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const auto it = types.find(given);
  if (it != types.end()) return it->second;
  std::string known;
  for (const auto& [n, t] : types) known += (known.empty() ? "" : ", ") + n;
  fail("fold type '", name, "' is not one eigenkv writes (", known, ")");
}

void check_can_save_gguf(const Model& model) {
  const ModelConfig& c = model.config();
  EKV_CHECK(c.arch.name == "llama" || c.arch.name == "qwen2" || c.arch.name == "mpt" ||
                c.arch.name == "opt",
            model.path(), ": saving an ", c.arch.name,
            " model to GGUF is not built (llama, qwen2, mpt and opt are)");
  EKV_CHECK(c.arch.query_scale == 0, model.path(), ": the score scale ", c.arch.query_scale,
            " (softmax_scale) has no GGUF key; saving it is not supported");
  std::error_code ec;
  if (std::filesystem::is_directory(model.path(), ec) &&
      c.rope_scaling.kind != RopeScaling::Kind::kNone) {
    fail(model.path(), ": saving a model with Hugging Face rope_scaling to GGUF is not supported");
  }
}

std::vector<std::string> save_gguf(const Model& model, const std::string& path,
                                   const SaveOptions& options) {
  const ModelConfig& c = model.config();
  const ModelWeights& weights = model.weights();
  check_can_save_gguf(model);
  io::GgufWriter w;
  std::vector<std::string> notes;
  std::error_code ec;
  const bool from_gguf = !std::filesystem::is_directory(model.path(), ec);
  if (from_gguf) {
    io::GgufFile source(model.path());
    // Unchanged tensors keep their stored type, so the source's file type still describes it.
    w.copy_metadata(source,
                    [](const std::string& key) { return key.rfind("eigenkv.", 0) == 0; });
  } else {
    write_config_metadata(model, w, notes);
  }
  const int64_t d = c.d_model;
  const TensorMap& n = gguf_tensor_map(c.arch);
  WeightWriter weight_writer(w, options);
  weight_writer.add(n.embedding, weights.token_embedding, weights.token_embedding);
  // GGUF's position table starts at position 0: a Hugging Face OPT's two offset rows are left out.
  const Weight positions =
      weights.position_embedding.empty()
          ? Weight()
          : weights.position_embedding.row_range(c.arch.position_offset, c.n_ctx_train);
  if (!positions.empty()) weight_writer.add(n.position_embedding, positions, positions);
  if (!weights.project_in.empty()) {
    weight_writer.add(n.project_in, weights.project_in, weights.project_in);
    weight_writer.add(n.project_out, weights.project_out, weights.project_out);
  }
  if (!weights.output_norm.empty()) w.add_f32_tensor(n.output_norm, {d}, weights.output_norm.data());
  if (!weights.output_norm_bias.empty())
    w.add_f32_tensor(n.output_norm_bias, {d}, weights.output_norm_bias.data());
  if (!c.tied_embeddings) weight_writer.add(n.output, weights.output, weights.output);
  if (!weights.rope_freq_factors.empty()) {
    w.add_f32_tensor("rope_freqs.weight", {static_cast<int64_t>(weights.rope_freq_factors.size())},
                     weights.rope_freq_factors.data());
  }
  // Basis tensors are assembled into contiguous buffers that must outlive write().
  std::vector<std::vector<float>> bases(static_cast<size_t>(c.n_layers));
  std::vector<std::vector<float>> value_bases(static_cast<size_t>(c.n_layers));
  std::deque<Weight> fused;              // fused q/k/v matrices, borrowed by the writer
  std::deque<std::vector<float>> fused_bias;
  std::vector<double> key_ranks, value_ranks, key_bits8, value_bits8;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = weights.layers[l];
    auto add = [&](const std::string& pattern, const Weight& m) {
      if (!m.empty()) weight_writer.add(layer_name(pattern, l), m, L.w_up);
    };
    auto add_vector = [&](const std::string& pattern, const std::vector<float>& v) {
      if (!v.empty())
        w.add_f32_tensor(layer_name(pattern, l), {static_cast<int64_t>(v.size())}, v.data());
    };
    add_vector(n.attn_norm, L.attn_norm);
    add_vector(n.attn_norm_bias, L.attn_norm_bias);
    if (n.fused_qkv()) {
      add(n.wqkv, fused.emplace_back(fuse_rows(L.wq, L.wk, L.wv)));
      if (!L.bq.empty()) {
        std::vector<float>& b = fused_bias.emplace_back(L.bq);
        b.insert(b.end(), L.bk.begin(), L.bk.end());
        b.insert(b.end(), L.bv.begin(), L.bv.end());
        add_vector(n.bqkv, b);
      }
    } else {
      add(n.wq, L.wq);
      add_vector(n.bq, L.bq);
      add(n.wk, L.wk);
      add_vector(n.bk, L.bk);
      add(n.wv, L.wv);
      add_vector(n.bv, L.bv);
    }
    add(n.wo, L.wo);
    add_vector(n.bo, L.bo);
    add_vector(n.ffn_norm, L.ffn_norm);
    add_vector(n.ffn_norm_bias, L.ffn_norm_bias);
    add(n.w_gate, L.w_gate);
    add(n.w_up, L.w_up);
    add_vector(n.b_up, L.b_up);
    add(n.w_down, L.w_down);
    add_vector(n.b_down, L.b_down);
    if (!L.key_basis.empty()) {
      for (const Matrix& u : L.key_basis)
        bases[l].insert(bases[l].end(), u.data.begin(), u.data.end());
      w.add_f32_tensor(layer_name(kGgufKeyBasisName, l), {c.n_kv_heads * c.head_dim, L.key_rank},
                       bases[l].data());
    }
    if (L.bases_after_clamp) {
      for (const Matrix& u : L.value_basis)
        value_bases[l].insert(value_bases[l].end(), u.data.begin(), u.data.end());
      w.add_f32_tensor(layer_name(kGgufValueBasisName, l),
                       {c.n_kv_heads * c.head_dim, L.value_rank}, value_bases[l].data());
    }
    key_ranks.push_back(static_cast<double>(L.key_rank));
    value_ranks.push_back(static_cast<double>(L.value_rank));
    if (model.has_cache_allotment()) {
      w.add_f32_tensor(layer_name(kGgufKeySigmaName, l), {c.n_kv_heads * L.key_rank},
                       L.key_sigma.data());
      w.add_f32_tensor(layer_name(kGgufValueSigmaName, l), {c.n_kv_heads * L.value_rank},
                       L.value_sigma.data());
      key_bits8.push_back(static_cast<double>(L.key_n8));
      value_bits8.push_back(static_cast<double>(L.value_n8));
    }
  }
  if (model.has_cache_allotment()) {
    w.set_number_array("eigenkv.cache.key_bits8", key_bits8, GgufValueType::kUint32);
    w.set_number_array("eigenkv.cache.value_bits8", value_bits8, GgufValueType::kUint32);
  }
  if (model.is_compressed()) {
    const auto meta = nlohmann::json::parse(model.compression_json());
    w.set_int("eigenkv.version", kCompressedFormatVersion);
    w.set_string("eigenkv.method", meta.value("method", "eigen"));
    w.set_string("eigenkv.key_mode", key_mode_name(weights.layers[0].key_mode));
    w.set_number_array("eigenkv.key_ranks", key_ranks, GgufValueType::kUint32);
    w.set_number_array("eigenkv.value_ranks", value_ranks, GgufValueType::kUint32);
    w.set_string("eigenkv.calibration.source", meta.value("calibration_source", ""));
    w.set_int("eigenkv.calibration.tokens", meta.value("calibration_tokens", int64_t{0}),
              GgufValueType::kUint64);
    w.set_string("eigenkv.report", model.compression_json());
  }
  if (options.edit_metadata) options.edit_metadata(w);
  w.write(path);
  for (std::string& note : weight_writer.take_notes()) notes.push_back(std::move(note));
  return notes;
}

}  // namespace eigenkv::model
