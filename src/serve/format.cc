#include "serve/format.h"

#include <algorithm>

#include "tokenizer/tokenizer.h"

namespace eigenkv::serve {
namespace {

using nlohmann::json;

json bytes_of(const std::string& s) {
  json out = json::array();
  for (const char c : s) out.push_back(static_cast<int>(static_cast<unsigned char>(c)));
  return out;
}

json choice_logprobs_or_null(const std::vector<TokenLogprob>& tokens, bool logprobs,
                             const tok::Tokenizer& tokenizer) {
  return logprobs ? completion_logprobs(tokens, tokenizer) : json(nullptr);
}

json finish_or_null(const std::string& reason) {
  return reason.empty() ? json(nullptr) : json(reason);
}

}  // namespace

void append_chunk(ChoiceResult& result, const Chunk& chunk) {
  result.text += chunk.text;
  result.tokens.insert(result.tokens.end(), chunk.tokens.begin(), chunk.tokens.end());
  if (!chunk.finish_reason.empty()) {
    result.finish_reason = chunk.finish_reason;
    result.prompt_tokens = chunk.prompt_tokens;
    result.completion_tokens = chunk.completion_tokens;
  }
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json error_object(const std::string& message, const std::string& type, const std::string& param,
                  int status) {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", status}}}};
}

json usage_object(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

json completion_logprobs(const std::vector<TokenLogprob>& tokens, const tok::Tokenizer& tokenizer) {
  json out = {{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  for (const TokenLogprob& t : tokens) {
    out["tokens"].push_back(t.piece);
    out["text_offset"].push_back(t.text_offset);
    if (!t.scored) {
      out["token_logprobs"].push_back(nullptr);
      out["top_logprobs"].push_back(nullptr);
      continue;
    }
    out["token_logprobs"].push_back(t.logprob);
    json top = json::object();
    for (const auto& [id, lp] : t.top) {
      const std::string piece = tokenizer.token_to_piece(id);
      if (!top.contains(piece)) top[piece] = lp;  // pieces shared by several ids: the likelier
    }
    out["top_logprobs"].push_back(std::move(top));
  }
  return out;
}

json completion_response(const ResponseMeta& meta, const std::vector<ChoiceResult>& choices,
                         bool logprobs, const tok::Tokenizer& tokenizer, int64_t n) {
  json out = {{"id", meta.id},
              {"object", "text_completion"},
              {"created", meta.created},
              {"model", meta.model},
              {"choices", json::array()}};
  int64_t prompt = 0, completion = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceResult& c = choices[i];
    out["choices"].push_back({{"index", i},
                              {"text", c.text},
                              {"logprobs", choice_logprobs_or_null(c.tokens, logprobs, tokenizer)},
                              {"finish_reason", c.finish_reason}});
    if (static_cast<int64_t>(i) % std::max<int64_t>(n, 1) == 0) prompt += c.prompt_tokens;
    completion += c.completion_tokens;
  }
  out["usage"] = usage_object(prompt, completion);
  return out;
}

json completion_chunk(const ResponseMeta& meta, int64_t index, const Chunk& chunk, bool logprobs,
                      const tok::Tokenizer& tokenizer) {
  json choice = {{"index", index},
                 {"text", chunk.text},
                 {"logprobs", choice_logprobs_or_null(chunk.tokens, logprobs, tokenizer)},
                 {"finish_reason", finish_or_null(chunk.finish_reason)}};
  return {{"id", meta.id},
          {"object", "text_completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", json::array({choice})}};
}

json chat_logprobs(const std::vector<TokenLogprob>& tokens, const tok::Tokenizer& tokenizer) {
  json content = json::array();
  for (const TokenLogprob& t : tokens) {
    json top = json::array();
    for (const auto& [id, lp] : t.top) {
      const std::string piece = tokenizer.token_to_piece(id);
      top.push_back({{"token", piece}, {"logprob", lp}, {"bytes", bytes_of(piece)}});
    }
    content.push_back({{"token", t.piece},
                       {"logprob", t.logprob},
                       {"bytes", bytes_of(t.piece)},
                       {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}};
}

json chat_response(const ResponseMeta& meta, const std::vector<ChoiceResult>& choices,
                   bool logprobs, const tok::Tokenizer& tokenizer) {
  json out = json::array();
  int64_t completion = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceResult& c = choices[i];
    out.push_back({{"index", i},
                   {"message", {{"role", "assistant"}, {"content", c.text}}},
                   {"logprobs", logprobs ? chat_logprobs(c.tokens, tokenizer) : json(nullptr)},
                   {"finish_reason", c.finish_reason}});
    completion += c.completion_tokens;
  }
  const int64_t prompt = choices.empty() ? 0 : choices[0].prompt_tokens;
  return {{"id", meta.id},
          {"object", "chat.completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"chat_template", meta.chat_template},
          {"choices", std::move(out)},
          {"usage", usage_object(prompt, completion)}};
}

json chat_chunk(const ResponseMeta& meta, int64_t index, const Chunk& chunk, bool first,
                bool logprobs, const tok::Tokenizer& tokenizer) {
  json delta = json::object();
  if (first) delta["role"] = "assistant";
  if (!chunk.text.empty() || first) delta["content"] = chunk.text;
  json choice = {{"index", index},
                 {"delta", std::move(delta)},
                 {"logprobs", logprobs ? chat_logprobs(chunk.tokens, tokenizer) : json(nullptr)},
                 {"finish_reason", finish_or_null(chunk.finish_reason)}};
  return {{"id", meta.id},
          {"object", "chat.completion.chunk"},
          {"created", meta.created},
          {"model", meta.model},
          {"chat_template", meta.chat_template},
          {"choices", json::array({choice})}};
}

}  // namespace eigenkv::serve
