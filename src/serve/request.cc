#include "serve/request.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "serve/format.h"
#include "tokenizer/tokenizer.h"

namespace eigenkv::serve {
namespace {

using nlohmann::json;

using serve::brief;  // the string overload (request.h), beside this one
std::string brief(const json& v) { return serve::brief(dump(v)); }

ApiError bad(const std::string& param, const std::string& message) {
  return ApiError(400, message, brief(param));
}

// Arrays and objects may nest at most this deep: the JSON library parses and prints nesting by
// recursion, and a body of 100 KB of brackets would overflow the handler thread's stack.
constexpr int kMaxNesting = 64;

// Throws ApiError(400) when body's arrays and objects nest deeper than kMaxNesting (brackets in
// strings do not count). Runs before parsing, in one pass without recursion.
void check_nesting(const std::string& body) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : body) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxNesting) {
        throw ApiError(400, cat("the body nests arrays and objects deeper than ", kMaxNesting,
                                " levels"));
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

const char* type_name(const json& v) {
  if (v.is_number_float()) return "a non-integer number";
  if (v.is_number()) return "an integer";
  return v.type_name();
}

// Reads the fields of one request object; every field read is remembered so that whatever is
// left over can be reported as unknown. A null value counts as absent, as in OpenAI's API.
class Fields {
 public:
  Fields(const json& object, std::string where) : object_(object), where_(std::move(where)) {}

  const json* find(const std::string& key) {
    seen_.insert(key);
    const auto it = object_.find(key);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }

  int64_t integer(const std::string& key, int64_t lo, int64_t hi, int64_t fallback) {
    const json* v = find(key);
    if (!v) return fallback;
    if (!v->is_number_integer()) {
      throw bad(key, cat("'", key, "' must be an integer, found ", type_name(*v)));
    }
    // Positive integers parse as unsigned and may not fit int64_t.
    const bool in_range = v->is_number_unsigned()
                              ? v->get<uint64_t>() <= static_cast<uint64_t>(hi) &&
                                    (lo <= 0 || v->get<int64_t>() >= lo)
                              : v->get<int64_t>() >= lo && v->get<int64_t>() <= hi;
    if (!in_range) {
      throw bad(key, cat("'", key, "' must be in [", lo, ", ", hi, "], found ", brief(*v)));
    }
    return v->get<int64_t>();
  }

  double number(const std::string& key, double lo, double hi, double fallback,
                bool open_low = false) {
    const json* v = find(key);
    if (!v) return fallback;
    if (!v->is_number()) throw bad(key, cat("'", key, "' must be a number, found ", type_name(*v)));
    const double x = v->get<double>();
    if (x > hi || (open_low ? x <= lo : x < lo)) {
      throw bad(key, cat("'", key, "' must be in ", open_low ? "(" : "[", lo, ", ", hi, "], found ",
                         brief(*v)));
    }
    return x;
  }

  bool boolean(const std::string& key, bool fallback) {
    const json* v = find(key);
    if (!v) return fallback;
    if (!v->is_boolean())
      throw bad(key, cat("'", key, "' must be a boolean, found ", type_name(*v)));
    return v->get<bool>();
  }

  std::string string(const std::string& key, const std::string& fallback) {
    const json* v = find(key);
    if (!v) return fallback;
    if (!v->is_string()) throw bad(key, cat("'", key, "' must be a string, found ", type_name(*v)));
    return v->get<std::string>();
  }

  // Fields the server accepts only at the value that changes nothing (e.g. n = 1).
  void require_neutral(const std::string& key, const json& neutral) {
    const json* v = find(key);
    if (v && *v != neutral && !(v->is_number() && neutral.is_number() && *v == neutral)) {
      throw bad(key,
                cat("'", key, "' is only supported at ", neutral.dump(), ", found ", brief(*v)));
    }
  }

  void reject_unknown() const {
    for (const auto& [key, value] : object_.items()) {
      if (!seen_.count(key)) throw bad(key, cat("unknown field '", brief(key), "' in ", where_));
    }
  }

 private:
  const json& object_;
  std::string where_;
  std::set<std::string> seen_;
};

// OpenAI allows 4; lm-evaluation-harness may send more (its stop sequences plus EOS).
constexpr size_t kMaxStopStrings = 16;

std::vector<std::string> parse_stop(Fields& f) {
  const json* v = f.find("stop");
  if (!v) return {};
  std::vector<std::string> stop;
  if (v->is_string()) {
    stop.push_back(v->get<std::string>());
  } else if (v->is_array() && v->size() <= kMaxStopStrings) {
    for (const json& s : *v) {
      if (!s.is_string()) throw bad("stop", "'stop' must be a string or a list of strings");
      stop.push_back(s.get<std::string>());
    }
  } else {
    throw bad("stop",
              cat("'stop' must be a string or a list of at most ", kMaxStopStrings, " strings"));
  }
  for (const std::string& s : stop) {
    if (s.empty()) throw bad("stop", "'stop' strings must not be empty");
  }
  return stop;
}

// The fields both endpoints share: sampling, stop strings, streaming, and the OpenAI fields that
// are accepted only at their neutral value.
// {"token id": bias}: added to the logits before sampling, as in OpenAI's API.
std::vector<std::pair<int32_t, float>> parse_logit_bias(Fields& f, size_t n_vocab) {
  const json* v = f.find("logit_bias");
  if (!v) return {};
  if (!v->is_object() || v->size() > 300) {
    throw bad("logit_bias", "'logit_bias' must be an object of at most 300 {\"token id\": bias}");
  }
  std::vector<std::pair<int32_t, float>> bias;
  for (const auto& [key, value] : v->items()) {
    char* end = nullptr;
    const long id = std::strtol(key.c_str(), &end, 10);
    if (key.empty() || *end != '\0' || id < 0 || static_cast<size_t>(id) >= n_vocab) {
      throw bad("logit_bias",
                cat("'logit_bias' key '", brief(key), "' is not a token id below ", n_vocab));
    }
    if (!value.is_number() || value.get<double>() < -100 || value.get<double>() > 100) {
      throw bad("logit_bias",
                cat("'logit_bias' values must be numbers in [-100, 100], found ", brief(value)));
    }
    bias.emplace_back(static_cast<int32_t>(id), value.get<float>());
  }
  return bias;
}

// response_format: "text" is what the server gives anyway; JSON modes are not built.
void parse_response_format(Fields& f) {
  const json* v = f.find("response_format");
  if (!v) return;
  if (!v->is_object() || !v->contains("type") || !(*v)["type"].is_string()) {
    throw bad("response_format", "'response_format' must be an object with a \"type\"");
  }
  const std::string type = (*v)["type"].get<std::string>();
  if (type != "text" || v->size() != 1) {
    throw bad("response_format", cat("'response_format' type '", brief(type),
                                     "' is not supported (only {\"type\": \"text\"})"));
  }
}

void parse_common(Fields& f, GenerationParams& p, size_t n_vocab, const RequestLimits& limits) {
  p.sampler.temperature = f.number("temperature", 0.0, 2.0, 1.0);
  p.sampler.top_p = f.number("top_p", 0.0, 1.0, 1.0, /*open_low=*/true);
  p.sampler.top_k = f.integer("top_k", 0, 100000, 0);
  const int64_t seed = f.integer("seed", 0, std::numeric_limits<int64_t>::max(), -1);
  p.sampler.seed = seed >= 0 ? static_cast<uint64_t>(seed) : std::random_device{}();
  p.stop = parse_stop(f);
  p.stream = f.boolean("stream", false);
  p.ignore_eos = f.boolean("ignore_eos", false);
  if (const json* so = f.find("stream_options")) {
    if (!so->is_object()) throw bad("stream_options", "'stream_options' must be an object");
    Fields options(*so, "stream_options");
    p.include_usage = options.boolean("include_usage", false);
    options.reject_unknown();
    if (!p.stream) throw bad("stream_options", "'stream_options' needs \"stream\": true");
  }
  p.n = f.integer("n", 1, limits.max_n, 1);
  if (p.n > 1 && p.echo) throw bad("n", "'n' > 1 with \"echo\" is not supported");
  parse_response_format(f);
  f.require_neutral("presence_penalty", 0);
  f.require_neutral("frequency_penalty", 0);
  p.logit_bias = parse_logit_bias(f, n_vocab);
  f.string("user", "");  // accepted and ignored, as it only labels the caller
}

std::vector<int32_t> token_list(const json& v, const tok::Tokenizer& tokenizer, size_t index) {
  std::vector<int32_t> ids;
  for (const json& t : v) {
    if (!t.is_number_integer()) {
      throw bad("prompt", cat("prompt ", index, ": token ids must be integers, found ", brief(t)));
    }
    const bool ok = !t.is_number_unsigned() || t.get<uint64_t>() < tokenizer.vocab_size();
    const int64_t id = ok ? t.get<int64_t>() : -1;
    if (id < 0 || id >= static_cast<int64_t>(tokenizer.vocab_size())) {
      throw bad("prompt", cat("prompt ", index, ": token id ", brief(t),
                              " is outside the vocabulary of ", tokenizer.vocab_size()));
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

// A string, a list of token ids, a list of strings or a list of token lists.
std::vector<std::vector<int32_t>> parse_prompts(Fields& f, const tok::Tokenizer& tokenizer,
                                                const RequestLimits& limits, bool add_special) {
  const json* v = f.find("prompt");
  if (!v) throw bad("prompt", "'prompt' is required");
  auto encode = [&](const json& s) {
    return tokenizer.encode(s.get<std::string>(), add_special && tokenizer.add_bos_by_default(),
                            limits.parse_special);
  };
  std::vector<std::vector<int32_t>> prompts;
  if (v->is_string()) {
    prompts.push_back(encode(*v));
  } else if (v->is_array() && !v->empty() && (*v)[0].is_number()) {
    prompts.push_back(token_list(*v, tokenizer, 0));
  } else if (v->is_array() && !v->empty()) {
    if (static_cast<int64_t>(v->size()) > limits.max_prompts) {
      throw bad("prompt",
                cat("at most ", limits.max_prompts, " prompts per request, found ", v->size()));
    }
    for (size_t i = 0; i < v->size(); ++i) {
      const json& p = (*v)[i];
      if (p.is_string()) {
        prompts.push_back(encode(p));
      } else if (p.is_array()) {
        prompts.push_back(token_list(p, tokenizer, i));
      } else {
        throw bad("prompt", cat("prompt ", i, " must be a string or a list of token ids, found ",
                                type_name(p)));
      }
    }
  } else {
    throw bad("prompt", cat("'prompt' must be a string, a list of token ids, or a list of those; ",
                            "found ", v->is_array() ? "an empty list" : type_name(*v)));
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) {
      throw bad("prompt", cat("prompt ", i,
                              " is empty and the model has no BOS token to start "
                              "from"));
    }
  }
  return prompts;
}

// A message's content: a string, or a list of {"type": "text", "text": ...} parts (the newer
// form), concatenated.
std::string message_content(Fields& mf, size_t index) {
  const json* v = mf.find("content");
  if (!v) return "";
  if (v->is_string()) return v->get<std::string>();
  if (!v->is_array()) {
    throw bad("messages", cat("message ", index,
                              ": content must be a string or a list of text "
                              "parts, found ",
                              type_name(*v)));
  }
  std::string text;
  for (const json& part : *v) {
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") ||
        !part["text"].is_string() || part.size() != 2) {
      throw bad("messages", cat("message ", index,
                                ": only {\"type\": \"text\", \"text\": "
                                "...} content parts are supported, found ",
                                brief(part)));
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

// "messages": a non-empty list of {role, content[, name]}.
std::vector<ChatMessage> parse_messages(Fields& f) {
  std::vector<ChatMessage> messages_out;
  const json* messages = f.find("messages");
  if (!messages || !messages->is_array() || messages->empty()) {
    throw bad("messages", "'messages' must be a non-empty list of {role, content} objects");
  }
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    if (!m.is_object()) throw bad("messages", cat("message ", i, " must be an object"));
    Fields mf(m, cat("message ", i));
    ChatMessage msg;
    msg.role = mf.string("role", "");
    msg.content = message_content(mf, i);
    mf.string("name", "");
    mf.reject_unknown();
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant") {
      throw bad("messages", cat("message ", i, ": role must be system, user or assistant, found '",
                                brief(msg.role), "'"));
    }
    messages_out.push_back(std::move(msg));
  }
  return messages_out;
}

// Tools: an empty list (some clients always send one) changes nothing; function calling is not
// built, so tools themselves are refused by name, and tool_choice may only say none or auto.
void parse_tools(Fields& f) {
  const json* tools = f.find("tools");
  if (tools && (!tools->is_array() || !tools->empty())) {
    throw bad("tools", "'tools' (function calling) is not supported; only an empty list is");
  }
  if (const json* choice = f.find("tool_choice")) {
    if (!choice->is_string() || (*choice != "none" && *choice != "auto")) {
      throw bad("tool_choice", cat("'tool_choice' must be \"none\" or \"auto\" (no tools are "
                                   "supported), found ", brief(*choice)));
    }
  }
  f.boolean("parallel_tool_calls", true);  // no tools: nothing to call in parallel
}

}  // namespace

std::string brief(const std::string& s) {
  constexpr size_t kQuoteBytes = 100;
  if (s.size() <= kQuoteBytes + 20) return s;
  size_t n = kQuoteBytes;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return cat(s.substr(0, n), "... (", s.size(), " bytes)");
}

nlohmann::json parse_body(const std::string& body) {
  check_nesting(body);
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    throw ApiError(400, cat("the body is not valid JSON (UTF-8): ", brief(std::string(e.what()))));
  } catch (const json::out_of_range& e) {  // a number too large for a double, e.g. 1e999
    throw ApiError(400, cat("the body holds a number out of range: ", brief(std::string(e.what()))));
  }
  if (!j.is_object())
    throw ApiError(400, cat("the body must be a JSON object, found ", type_name(j)));
  return j;
}

void finish_max_tokens(GenerationParams& params, bool given, int64_t default_tokens,
                       int64_t prompt_tokens, const RequestLimits& limits) {
  const int64_t room = limits.ctx - prompt_tokens;
  if (room < 0) {
    throw bad("prompt", cat("the prompt has ", prompt_tokens, " tokens, more than the context of ",
                            limits.ctx));
  }
  if (!given) {
    const int64_t wanted = default_tokens < 0 ? limits.max_tokens_cap : default_tokens;
    params.max_tokens = std::min({wanted, room, limits.max_tokens_cap});
    return;
  }
  if (params.max_tokens > room) {
    throw bad("max_tokens", cat("the context is ", limits.ctx, " tokens, but ", prompt_tokens,
                                " prompt tokens + max_tokens ", params.max_tokens, " exceed it"));
  }
}

CompletionRequest parse_completion_request(const nlohmann::json& body,
                                           const tok::Tokenizer& tokenizer,
                                           const RequestLimits& limits) {
  Fields f(body, "/v1/completions request");
  CompletionRequest r;
  r.model = f.string("model", "");
  GenerationParams& p = r.params;
  p.add_special_tokens = f.boolean("add_special_tokens", true);  // vLLM's extension
  r.prompts = parse_prompts(f, tokenizer, limits, p.add_special_tokens);
  const bool given = f.find("max_tokens") != nullptr;
  p.max_tokens = f.integer("max_tokens", 0, limits.max_tokens_cap, 16);
  p.logprobs = f.integer("logprobs", 0, limits.max_logprobs, -1);
  p.echo = f.boolean("echo", false);
  parse_common(f, p, tokenizer.vocab_size(), limits);
  if (static_cast<int64_t>(r.prompts.size()) * p.n > limits.max_prompts) {
    throw bad("n", cat("prompts x n must be at most ", limits.max_prompts, ", found ",
                       r.prompts.size() * p.n));
  }
  f.require_neutral("best_of", 1);
  f.require_neutral("suffix", "");
  f.reject_unknown();
  // Every choice gets the same max_tokens: the given one, which must fit each prompt, or the
  // default clamped to the room the longest prompt leaves.
  int64_t fits = limits.max_tokens_cap;
  for (const auto& prompt : r.prompts) {
    GenerationParams checked = p;
    finish_max_tokens(checked, given, 16, static_cast<int64_t>(prompt.size()), limits);
    fits = std::min(fits, checked.max_tokens);
  }
  p.max_tokens = fits;
  return r;
}

ChatRequest parse_chat_request(const nlohmann::json& body, const tok::Tokenizer& tokenizer,
                               const RequestLimits& limits) {
  Fields f(body, "/v1/chat/completions request");
  ChatRequest r;
  r.model = f.string("model", "");
  r.messages = parse_messages(f);
  GenerationParams& p = r.params;
  // max_completion_tokens is the newer name of max_tokens; it wins when both are given.
  const int64_t max_tokens = f.integer("max_tokens", 0, limits.max_tokens_cap, -1);
  const int64_t max_completion = f.integer("max_completion_tokens", 0, limits.max_tokens_cap, -1);
  r.max_tokens_given = max_tokens >= 0 || max_completion >= 0;
  p.max_tokens = max_completion >= 0 ? max_completion : max_tokens;
  const bool logprobs = f.boolean("logprobs", false);
  const int64_t top = f.integer("top_logprobs", 0, limits.max_logprobs, 0);
  if (!logprobs && f.find("top_logprobs")) {
    throw bad("top_logprobs", "'top_logprobs' needs \"logprobs\": true");
  }
  p.logprobs = logprobs ? top : -1;
  parse_common(f, p, tokenizer.vocab_size(), limits);
  parse_tools(f);
  f.reject_unknown();
  return r;
}

TokenizeRequest parse_tokenize_request(const nlohmann::json& body) {
  if (!body.is_object()) throw bad("", "the body must be a JSON object");
  Fields f(body, "/tokenize request");
  TokenizeRequest r;
  r.model = f.string("model", "");
  const bool chat = f.find("messages") != nullptr;
  if (chat) {
    if (f.find("prompt")) throw bad("prompt", "give 'prompt' or 'messages', not both");
    r.messages = parse_messages(f);
    if (!f.boolean("add_generation_prompt", true)) {
      throw bad("add_generation_prompt",
                "'add_generation_prompt' false is not supported (the chat format adds it)");
    }
  } else {
    r.prompt = f.string("prompt", "");
    if (!f.find("prompt")) throw bad("prompt", "'prompt' (a string) or 'messages' is required");
  }
  r.add_special_tokens = f.boolean("add_special_tokens", !chat);
  r.return_token_strs = f.boolean("return_token_strs", false);
  f.reject_unknown();
  return r;
}

DetokenizeRequest parse_detokenize_request(const nlohmann::json& body,
                                           const tok::Tokenizer& tokenizer) {
  if (!body.is_object()) throw bad("", "the body must be a JSON object");
  Fields f(body, "/detokenize request");
  DetokenizeRequest r;
  r.model = f.string("model", "");
  const json* tokens = f.find("tokens");
  if (!tokens || !tokens->is_array()) throw bad("tokens", "'tokens' must be a list of token ids");
  r.tokens = token_list(*tokens, tokenizer, 0);
  f.reject_unknown();
  return r;
}

}  // namespace eigenkv::serve
