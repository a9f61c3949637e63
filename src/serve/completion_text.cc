#include "serve/completion_text.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace eigenkv::serve {

TokenLogprob score_token(const float* logits, int64_t n_vocab, int32_t id, int64_t top_k) {
  double max = logits[0];
  for (int64_t i = 1; i < n_vocab; ++i) max = std::max(max, double{logits[i]});
  double sum = 0;
  for (int64_t i = 0; i < n_vocab; ++i) sum += std::exp(double{logits[i]} - max);
  const double log_z = max + std::log(sum);
  TokenLogprob t;
  t.id = id;
  t.logprob = double{logits[id]} - log_z;
  const int64_t k = std::min(top_k, n_vocab);
  if (k > 0) {
    std::vector<int32_t> ids(static_cast<size_t>(n_vocab));
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int64_t i = 0; i < k; ++i) t.top.emplace_back(ids[i], double{logits[ids[i]]} - log_z);
  }
  return t;
}

PieceCursor::PieceCursor(const tok::Tokenizer& tokenizer, bool at_text_start, int64_t offset)
    : tokenizer_(tokenizer),
      strip_space_(at_text_start && tokenizer.strips_leading_space()),
      offset_(offset) {}

std::string PieceCursor::next(int32_t id) {
  std::string piece = tokenizer_.token_to_piece(id);
  if (strip_space_ && !piece.empty()) {
    if (piece.starts_with(' ')) piece.erase(0, 1);
    strip_space_ = false;
  }
  offset_ += static_cast<int64_t>(piece.size());
  return piece;
}

CompletionText::CompletionText(const tok::Tokenizer& tokenizer, bool at_text_start,
                               int64_t prompt_chars, std::vector<std::string> stop,
                               bool keep_tokens)
    : decoder_(tokenizer, at_text_start),
      cursor_(tokenizer, at_text_start, 0),
      prompt_chars_(prompt_chars),
      stop_(std::move(stop)),
      keep_tokens_(keep_tokens) {}

Release CompletionText::push(int32_t id, TokenLogprob scored) {
  if (stopped_) return {};
  const int64_t start = cursor_.offset();
  scored.piece = cursor_.next(id);
  scored.text_offset = prompt_chars_ + start;
  if (keep_tokens_) pending_.emplace_back(cursor_.offset(), std::move(scored));
  const size_t searched_to = text_.size();
  text_ += decoder_.push(id);
  // A stop string can only end inside the new text, so the search starts that far back.
  size_t longest = 0;
  for (const std::string& s : stop_) longest = std::max(longest, s.size());
  const size_t from = searched_to >= longest ? searched_to - longest + 1 : 0;
  size_t cut = std::string::npos;
  for (const std::string& s : stop_) cut = std::min(cut, text_.find(s, from));
  if (cut != std::string::npos) {
    stopped_ = true;
    text_.resize(cut);
    // Tokens that begin before the stop string are kept; those inside or after it are not.
    while (!pending_.empty() &&
           pending_.back().second.text_offset - prompt_chars_ >= static_cast<int64_t>(cut)) {
      pending_.pop_back();
    }
    return release_up_to(cut, /*all_tokens=*/true);
  }
  return release_up_to(text_.size() - held_back_for_stop(), /*all_tokens=*/false);
}

Release CompletionText::finish() {
  if (stopped_) return {};
  text_ += decoder_.finish();
  return release_up_to(text_.size(), /*all_tokens=*/true);
}

size_t CompletionText::held_back_for_stop() const {
  size_t held = 0;
  for (const std::string& s : stop_) {
    for (size_t n = std::min(s.size() - 1, text_.size()); n > held; --n) {
      if (text_.compare(text_.size() - n, n, s, 0, n) == 0) {
        held = n;
        break;
      }
    }
  }
  return held;
}

Release CompletionText::release_up_to(size_t end, bool all_tokens) {
  Release r;
  if (end > released_) {
    r.text = text_.substr(released_, end - released_);
    released_ = end;
  }
  // A token goes out once all of its bytes have (or at the end, whatever is left).
  while (!pending_.empty() &&
         (all_tokens || pending_.front().first <= static_cast<int64_t>(released_))) {
    r.tokens.push_back(std::move(pending_.front().second));
    pending_.pop_front();
  }
  return r;
}

}  // namespace eigenkv::serve
