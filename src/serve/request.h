// The requests the server accepts, parsed and validated from untrusted JSON. Anything the server
// cannot honour exactly (an unknown field, a wrong type, a number out of range, a prompt over
// the context) is an ApiError with HTTP status 400 naming the field, never a silent default.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

#include "model/sampler.h"
#include "util/error.h"

namespace eigenkv::tok {
class Tokenizer;
}

namespace eigenkv::serve {

// An error the client sees as an OpenAI-style error object with this HTTP status.
class ApiError : public Error {
 public:
  ApiError(int status, const std::string& message, std::string param = "",
           std::string type = "invalid_request_error", std::string code = "")
      : Error(message),
        status_(status),
        param_(std::move(param)),
        type_(std::move(type)),
        code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& type() const { return type_; }
  // OpenAI's error code ("model_not_found"); empty: the HTTP status stands for it.
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string param_;
  std::string type_;
  std::string code_;
};

// What one sequence generates and reports.
struct GenerationParams {
  int64_t max_tokens = 16;
  model::SamplerOptions sampler{1.0, 0, 1.0, 0};
  std::vector<std::string> stop;  // generation ends before the first of these strings
  int64_t logprobs = -1;          // -1: none; k >= 0: the token's log-probability + top k
  bool echo = false;              // also return the prompt and its tokens' log-probabilities
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool ignore_eos = false;     // extension (as llama.cpp and vLLM): generate past EOS
  int64_t n = 1;               // choices per prompt; choice k samples with seed + k
  // String prompts get the tokenizer's BOS rule (vLLM's add_special_tokens, default true).
  bool add_special_tokens = true;
  std::vector<std::pair<int32_t, float>> logit_bias;  // (token id, added to its logit)
};

// Limits the server enforces on every request.
struct RequestLimits {
  int64_t ctx = 2048;             // tokens per sequence (prompt + completion)
  int64_t max_tokens_cap = 4096;  // largest max_tokens accepted
  int64_t max_prompts = 256;      // prompts in one /v1/completions request
  int64_t max_logprobs = 20;      // largest logprobs / top_logprobs
  int64_t max_n = 16;             // largest n (choices per prompt)
  // String prompts: special-token strings ("<s>") are those tokens, as llama.cpp's and vLLM's
  // servers read them; false (serve --no-parse-special) spells them letter by letter.
  bool parse_special = true;
};

struct ChatMessage {
  std::string role;  // system, user or assistant
  std::string content;
};

struct CompletionRequest {
  std::string model;
  std::vector<std::vector<int32_t>> prompts;  // token ids, one choice each
  GenerationParams params;
};

struct ChatRequest {
  std::string model;
  std::vector<ChatMessage> messages;
  GenerationParams params;  // logprobs: top_logprobs when "logprobs": true, else -1
  bool max_tokens_given = false;
};

// Client text as an error may quote it: s, or its first 100 bytes (not splitting a UTF-8
// sequence) and how long it was, so that an error never echoes a huge value.
std::string brief(const std::string& s);

// Parses the body text; throws ApiError(400) for invalid JSON (including non-UTF-8 bytes) or a
// body that is not an object.
nlohmann::json parse_body(const std::string& body);

// /v1/completions. String prompts are tokenized with the model's default BOS rule. Checks token
// ids against the vocabulary and prompt + max_tokens against the context.
CompletionRequest parse_completion_request(const nlohmann::json& body,
                                           const tok::Tokenizer& tokenizer,
                                           const RequestLimits& limits);

// /v1/chat/completions, up to the messages; the caller renders and tokenizes them and then calls
// finish_max_tokens.
ChatRequest parse_chat_request(const nlohmann::json& body, const tok::Tokenizer& tokenizer,
                               const RequestLimits& limits);

// POST /tokenize (vLLM's shape): a prompt string ("add_special_tokens", default true: the BOS
// rule) or chat messages (rendered with the generation prompt; "add_special_tokens" default
// false, as the template writes BOS itself). "return_token_strs" adds each token's text.
struct TokenizeRequest {
  std::string model;
  std::string prompt;                 // when messages is empty
  std::vector<ChatMessage> messages;  // chat form
  bool add_special_tokens = true;
  bool return_token_strs = false;
};
TokenizeRequest parse_tokenize_request(const nlohmann::json& body);

// POST /detokenize: {"tokens": [ids]} (ids checked against the vocabulary).
struct DetokenizeRequest {
  std::string model;
  std::vector<int32_t> tokens;
};
DetokenizeRequest parse_detokenize_request(const nlohmann::json& body,
                                           const tok::Tokenizer& tokenizer);

// Fills in max_tokens when the request left it out (`default_tokens`, -1: up to the context) and
// checks prompt + max_tokens against the context. `given`: the request set max_tokens.
void finish_max_tokens(GenerationParams& params, bool given, int64_t default_tokens,
                       int64_t prompt_tokens, const RequestLimits& limits);

}  // namespace eigenkv::serve
