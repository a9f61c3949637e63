#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <utility>

#include "util/error.h"

namespace eigenkv::tok {

Tokenizer::Tokenizer(Vocabulary vocab) : vocab_(std::move(vocab)) {
  ids_by_text_.reserve(vocab_.size());
  for (int32_t id = 0; static_cast<size_t>(id) < vocab_.size(); ++id) {
    if (!vocab_.texts[id].empty()) ids_by_text_.try_emplace(vocab_.texts[id], id);
  }
}

void Tokenizer::check_id(int32_t id) const {
  EKV_CHECK(vocab_.contains(id), "token id ", id, " is out of range: the vocabulary has ",
            vocab_.size(), " tokens");
}

std::string Tokenizer::token_to_piece(int32_t id) const {
  check_id(id);
  return vocab_.pieces[id];
}

const std::string& Tokenizer::token_text(int32_t id) const {
  check_id(id);
  return vocab_.texts[id];
}

TokenKind Tokenizer::token_kind(int32_t id) const {
  check_id(id);
  return vocab_.kinds[id];
}

std::optional<int32_t> Tokenizer::find_token(std::string_view text) const {
  const auto it = ids_by_text_.find(text);
  if (it == ids_by_text_.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string text;
  for (const int32_t id : ids) {
    check_id(id);
    text += vocab_.pieces[id];
  }
  if (vocab_.strip_leading_space && text.starts_with(' ')) text.erase(0, 1);
  return text;
}

bool Tokenizer::is_end_of_generation(int32_t id) const {
  return std::binary_search(vocab_.end_of_generation_ids.begin(),
                            vocab_.end_of_generation_ids.end(), id);
}

}  // namespace eigenkv::tok
