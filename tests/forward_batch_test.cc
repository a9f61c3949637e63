// Model::forward_batch against Model::forward run one sequence at a time: mixed prompt lengths,
// all-logits and last-logits sequences, prefill and decode in the same step.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "model/model.h"
#include "model_test_util.h"
#include "test_util.h"
#include "util/error.h"

namespace eigenkv {
namespace {

using testing::shared_path;

std::vector<int32_t> random_tokens(std::mt19937& rng, int64_t n, int64_t n_vocab) {
  std::uniform_int_distribution<int32_t> pick(1, static_cast<int32_t>(n_vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = pick(rng);
  return ids;
}

void check_model(const std::string& rel) {
  const auto model = model::Model::load(shared_path(rel));
  const int64_t nv = model->config().n_vocab;
  std::mt19937 rng(7);
  // Step 1 prefills prompts of mixed lengths (one of them a single token); step 2 decodes one
  // token for some and prefills more for others, so a step mixes prefill and decode rows.
  const std::vector<int64_t> first_lengths = {5, 1, 17, 9};
  const std::vector<int64_t> second_lengths = {1, 3, 1, 12};
  const std::vector<bool> all_logits = {true, false, false, true};
  const size_t n_seq = first_lengths.size();
  std::vector<kv::KvCache> single, batched;
  for (size_t i = 0; i < n_seq; ++i) {
    single.push_back(model->new_cache(64));
    batched.push_back(model->new_cache(64));
  }
  for (const auto& lengths : {first_lengths, second_lengths}) {
    std::vector<std::vector<int32_t>> tokens;
    std::vector<std::vector<float>> want(n_seq), got(n_seq);
    std::vector<model::BatchSequence> batch;
    for (size_t i = 0; i < n_seq; ++i) {
      tokens.push_back(random_tokens(rng, lengths[i], nv));
      const int64_t rows = all_logits[i] ? lengths[i] : 1;
      want[i].resize(static_cast<size_t>(rows * nv));
      got[i].resize(want[i].size());
      model->forward(tokens[i], single[i], want[i].data(), all_logits[i]);
    }
    for (size_t i = 0; i < n_seq; ++i) {
      batch.push_back({tokens[i], &batched[i], got[i].data(), all_logits[i]});
    }
    model->forward_batch(batch);
    for (size_t i = 0; i < n_seq; ++i) {
      EXPECT_EQ(batched[i].size(), single[i].size()) << rel << " sequence " << i;
      EXPECT_LT(testing::max_relative_diff(got[i], want[i]), 1e-5) << rel << " sequence " << i;
    }
  }
}

TEST(ForwardBatch, EqualsPerSequenceForwardStories260K) {
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  check_model("models/stories260K.gguf");
}

TEST(ForwardBatch, EqualsPerSequenceForwardGqa) {
  EKV_REQUIRE_SHARED("models/tinystories-c4-gqa.gguf");
  check_model("models/tinystories-c4-gqa.gguf");
}

TEST(ForwardBatch, RejectsBadBatchesWithoutTouchingCaches) {
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  const auto model = model::Model::load(shared_path("models/stories260K.gguf"));
  const int64_t nv = model->config().n_vocab;
  kv::KvCache a = model->new_cache(4), b = model->new_cache(4);
  std::vector<float> la(static_cast<size_t>(nv)), lb(static_cast<size_t>(nv));
  const std::vector<int32_t> two = {1, 2}, five = {1, 2, 3, 4, 5};
  const std::vector<int32_t> bad = {1, static_cast<int32_t>(nv)};
  const std::vector<int32_t> none;

  std::vector<model::BatchSequence> shared = {{two, &a, la.data()}, {two, &a, lb.data()}};
  EXPECT_THROW(model->forward_batch(shared), Error);
  std::vector<model::BatchSequence> full = {{two, &a, la.data()}, {five, &b, lb.data()}};
  EXPECT_THROW(model->forward_batch(full), Error);
  std::vector<model::BatchSequence> out_of_vocab = {{two, &a, la.data()}, {bad, &b, lb.data()}};
  EXPECT_THROW(model->forward_batch(out_of_vocab), Error);
  std::vector<model::BatchSequence> empty = {{none, &a, la.data()}};
  EXPECT_THROW(model->forward_batch(empty), Error);
  EXPECT_EQ(a.size(), 0);
  EXPECT_EQ(b.size(), 0);
}

}  // namespace
}  // namespace eigenkv
