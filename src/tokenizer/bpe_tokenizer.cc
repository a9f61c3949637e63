#include "tokenizer/bpe_tokenizer.h"

#include <string>
#include <utility>

namespace eigenkv::tok {

BpeTokenizer::BpeTokenizer(Vocabulary vocab, BpeModel model, BpePipeline pipeline)
    : Tokenizer(std::move(vocab)), model_(std::move(model)), pipeline_(std::move(pipeline)) {}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_bos,
                                          bool parse_special) const {
  std::vector<int32_t> out;
  if (add_bos && bos_id() >= 0) out.push_back(bos_id());
  WordCache cache;
  for (const Fragment& fragment : pipeline_.raw_tokens.split(text, parse_special)) {
    if (fragment.is_token()) {
      out.push_back(fragment.token_id);
      continue;
    }
    const std::string normalized = pipeline_.normalizer.apply(fragment.text);
    encode_normalized(normalized, fragment.offset == 0, parse_special, cache, out);
  }
  return out;
}

void BpeTokenizer::encode_normalized(std::string_view text, bool at_input_start, bool parse_special,
                                     WordCache& cache, std::vector<int32_t>& out) const {
  for (const Fragment& fragment : pipeline_.normalized_tokens.split(text, parse_special)) {
    if (fragment.is_token()) {
      out.push_back(fragment.token_id);
      continue;
    }
    const auto encode_word = [this](std::string_view word, std::vector<int32_t>& ids) {
      model_.encode_word(word, ids);
    };
    if (pipeline_.pre_tokenizer.empty()) {
      for (const std::string_view word : split_words(fragment.text, pipeline_.word_edges)) {
        cache.encode(word, encode_word, out);
      }
      continue;
    }
    const bool starts_input = at_input_start && fragment.offset == 0;
    for (const std::string& word : pipeline_.pre_tokenizer.split(fragment.text, starts_input)) {
      cache.encode(word, encode_word, out);
    }
  }
}

}  // namespace eigenkv::tok
