// Generated tokens to completion text: incremental UTF-8-safe decoding (tok::StreamingDecoder),
// stop strings, and per-token log-probabilities with their offsets in the text. The same
// sequence of releases feeds streamed and unstreamed responses, so both carry the same text.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace eigenkv::serve {

// One token as the completions API reports it.
struct TokenLogprob {
  int32_t id = 0;
  std::string piece;   // the token's text (may be part of a UTF-8 character)
  bool scored = true;  // false for a prompt's first token: nothing predicts it
  double logprob = 0;  // log p(token | what precedes it), from the model's raw logits
  std::vector<std::pair<int32_t, double>> top;  // the most likely tokens there, best first
  int64_t text_offset = 0;  // bytes before the token in prompt text + completion text
};

// log softmax(logits)[id] and the top_k most likely ids (ties: the lower id first), in double.
TokenLogprob score_token(const float* logits, int64_t n_vocab, int32_t id, int64_t top_k);

// Text offsets of tokens as the tokenizer's decoder lays them out: each token adds its piece,
// the first non-empty piece at the start of a text losing its SentencePiece prefix space.
class PieceCursor {
 public:
  PieceCursor(const tok::Tokenizer& tokenizer, bool at_text_start, int64_t offset);
  // The token's piece as it appears in the text; advances the offset past it.
  std::string next(int32_t id);
  int64_t offset() const { return offset_; }

 private:
  const tok::Tokenizer& tokenizer_;
  bool strip_space_;
  int64_t offset_;
};

// What a sequence releases to its client in one step.
struct Release {
  std::string text;
  std::vector<TokenLogprob> tokens;  // only when log-probabilities were asked for
};

class CompletionText {
 public:
  // `prompt_chars`: bytes of prompt text before the completion (text offsets count from the
  // prompt's start). `at_text_start`: the prompt holds no text (BOS only).
  CompletionText(const tok::Tokenizer& tokenizer, bool at_text_start, int64_t prompt_chars,
                 std::vector<std::string> stop, bool keep_tokens);

  // Adds a generated token (with its scores when kept); returns what can be released. Text that
  // could still turn out to begin a stop string is held back.
  Release push(int32_t id, TokenLogprob scored);
  // True once a stop string appeared: the text ends before it and nothing more is accepted.
  bool stopped() const { return stopped_; }
  // Releases everything still held (generation ended without a stop string).
  Release finish();

 private:
  Release release_up_to(size_t end, bool all_tokens);
  size_t held_back_for_stop() const;

  tok::StreamingDecoder decoder_;
  PieceCursor cursor_;
  int64_t prompt_chars_;
  std::vector<std::string> stop_;
  bool keep_tokens_;
  std::string text_;                                      // decoded completion so far
  size_t released_ = 0;                                   // bytes of text_ already released
  std::deque<std::pair<int64_t, TokenLogprob>> pending_;  // (end offset in text_, token)
  bool stopped_ = false;
};

}  // namespace eigenkv::serve
