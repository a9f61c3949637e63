// Responses in the shapes of OpenAI's completions and chat completions APIs, whole and as
// server-sent-event chunks, and the error object. lm-evaluation-harness reads the completions
// shape: choices[i].logprobs.{tokens, token_logprobs, top_logprobs, text_offset}.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "serve/scheduler.h"

namespace eigenkv::tok {
class Tokenizer;
}

namespace eigenkv::serve {

// What every response of one request shares.
struct ResponseMeta {
  std::string id;  // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;
  std::string model;
  std::string chat_template;  // chat responses say which format rendered the messages
};

// One choice's chunks put together.
struct ChoiceResult {
  std::string text;
  std::vector<TokenLogprob> tokens;
  std::string finish_reason;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};
void append_chunk(ChoiceResult& result, const Chunk& chunk);

nlohmann::json error_object(const std::string& message, const std::string& type,
                            const std::string& param, int status);
nlohmann::json usage_object(int64_t prompt_tokens, int64_t completion_tokens);

// {tokens, token_logprobs, top_logprobs, text_offset}; null entries for an unscored token.
nlohmann::json completion_logprobs(const std::vector<TokenLogprob>& tokens,
                                   const tok::Tokenizer& tokenizer);
// `n`: choices per prompt (choice p * n + k); each prompt's tokens count once in the usage.
nlohmann::json completion_response(const ResponseMeta& meta,
                                   const std::vector<ChoiceResult>& choices, bool logprobs,
                                   const tok::Tokenizer& tokenizer, int64_t n = 1);
nlohmann::json completion_chunk(const ResponseMeta& meta, int64_t index, const Chunk& chunk,
                                bool logprobs, const tok::Tokenizer& tokenizer);

// {"content": [{token, logprob, bytes, top_logprobs: [...]}]}
nlohmann::json chat_logprobs(const std::vector<TokenLogprob>& tokens,
                             const tok::Tokenizer& tokenizer);
// One choice per sample of the one prompt, whose tokens count once in the usage.
nlohmann::json chat_response(const ResponseMeta& meta, const std::vector<ChoiceResult>& choices,
                             bool logprobs, const tok::Tokenizer& tokenizer);
// `first`: the chunk opening the message carries the assistant role.
nlohmann::json chat_chunk(const ResponseMeta& meta, int64_t index, const Chunk& chunk, bool first, bool logprobs,
                          const tok::Tokenizer& tokenizer);

// JSON text that survives token pieces holding part of a UTF-8 character (replaced by U+FFFD).
std::string dump(const nlohmann::json& j);

}  // namespace eigenkv::serve
