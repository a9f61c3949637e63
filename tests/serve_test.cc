// The server's parts without HTTP: stop strings and streaming release against a plain search of
// the whole text, token offsets, request parsing, chat template detection on real templates,
// Prometheus histograms.
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "model/model.h"
#include "serve/chat_template.h"
#include "serve/completion_text.h"
#include "serve/metrics.h"
#include "serve/request.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace eigenkv::serve {
namespace {

using nlohmann::json;
using testing::shared_path;
using testing::source_path;

std::unique_ptr<tok::Tokenizer> small_tokenizer() {
  return model::load_tokenizer(shared_path("models/stories260K.gguf"));
}

std::string eval_text() {
  std::ifstream in(source_path("data/tinystories-eval.txt"));
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Released text, put together, is the decoded completion cut before the first stop string;
// nothing released early ever holds a stop string; every kept token sits at its text offset.
TEST(CompletionText, StopStringsAgainstPlainSearch) {
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  const auto tokenizer = small_tokenizer();
  const std::string text = eval_text().substr(0, 3000);
  const std::vector<int32_t> ids = tokenizer->encode(text, false);
  const std::string decoded = tokenizer->decode(ids);
  std::mt19937 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    // Stop strings cut from the text itself (so they occur), or absent ones.
    std::vector<std::string> stop;
    const int n_stop = 1 + trial % 3;
    for (int k = 0; k < n_stop; ++k) {
      const size_t at = std::uniform_int_distribution<size_t>(0, decoded.size() - 8)(rng);
      const size_t len = std::uniform_int_distribution<size_t>(1, 6)(rng);
      stop.push_back(trial % 7 == 0 ? "\x01never" : decoded.substr(at, len));
    }
    const int64_t prompt_chars = 11;
    CompletionText ct(*tokenizer, /*at_text_start=*/true, prompt_chars, stop, true);
    std::string out;
    std::vector<TokenLogprob> tokens;
    for (const int32_t id : ids) {
      TokenLogprob tl;
      tl.id = id;
      const Release r = ct.push(id, tl);
      out += r.text;
      tokens.insert(tokens.end(), r.tokens.begin(), r.tokens.end());
      if (!ct.stopped()) {
        for (const std::string& s : stop) EXPECT_EQ(out.find(s), std::string::npos);
      }
      if (ct.stopped()) break;
    }
    const Release last = ct.finish();
    out += last.text;
    tokens.insert(tokens.end(), last.tokens.begin(), last.tokens.end());
    size_t cut = std::string::npos;
    for (const std::string& s : stop) cut = std::min(cut, decoded.find(s));
    EXPECT_EQ(out, decoded.substr(0, cut)) << "trial " << trial;
    EXPECT_EQ(ct.stopped(), cut != std::string::npos);
    for (const TokenLogprob& t : tokens) {
      const int64_t at = t.text_offset - prompt_chars;
      ASSERT_GE(at, 0);
      ASSERT_LT(at, static_cast<int64_t>(out.size()) + 1);
      EXPECT_EQ(decoded.compare(static_cast<size_t>(at), t.piece.size(), t.piece), 0);
    }
  }
}

TEST(CompletionText, ScoreTokenIsLogSoftmax) {
  const std::vector<float> logits = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f};
  const TokenLogprob t = score_token(logits.data(), 5, 4, 3);
  double z = 0;
  for (const float x : logits) z += std::exp(double{x});
  EXPECT_NEAR(t.logprob, 0.5 - std::log(z), 1e-12);
  ASSERT_EQ(t.top.size(), 3u);
  EXPECT_EQ(t.top[0].first, 1);  // ties: the lower id first
  EXPECT_EQ(t.top[1].first, 3);
  EXPECT_EQ(t.top[2].first, 0);
  EXPECT_NEAR(t.top[2].second, 1.0 - std::log(z), 1e-12);
}

TEST(Request, PromptFormsAndDefaults) {
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  const auto tokenizer = small_tokenizer();
  RequestLimits limits;
  limits.ctx = 20;
  const auto parse = [&](const json& body) {
    return parse_completion_request(body, *tokenizer, limits);
  };
  EXPECT_EQ(parse({{"prompt", "Once upon"}}).prompts[0], tokenizer->encode("Once upon", true));
  EXPECT_EQ(parse({{"prompt", {1, 2, 3}}}).prompts.size(), 1u);
  EXPECT_EQ(parse({{"prompt", {"a", "b", "c"}}}).prompts.size(), 3u);
  EXPECT_EQ(parse({{"prompt", {{1, 2}, {3}}}}).prompts[1], std::vector<int32_t>{3});
  // max_tokens left out: 16, or the room the longest prompt leaves; null counts as absent.
  EXPECT_EQ(parse({{"prompt", {1, 2}}}).params.max_tokens, 16);
  EXPECT_EQ(parse({{"prompt", std::vector<int>(10, 5)}, {"max_tokens", nullptr}}).params.max_tokens,
            10);
  EXPECT_EQ(parse({{"prompt", std::vector<int>(20, 5)}, {"max_tokens", 0}}).params.max_tokens, 0);
  EXPECT_THROW(parse({{"prompt", std::vector<int>(20, 5)}, {"max_tokens", 1}}), ApiError);
  EXPECT_THROW(parse({{"prompt", std::vector<int>(21, 5)}, {"max_tokens", 0}}), ApiError);
  const CompletionRequest r = parse({{"prompt", "x"},
                                     {"temperature", 0},
                                     {"top_k", 5},
                                     {"seed", 9},
                                     {"stop", "\n"},
                                     {"logprobs", 2},
                                     {"echo", true},
                                     {"n", 1},
                                     {"user", "me"},
                                     {"model", "m"}});
  EXPECT_EQ(r.params.sampler.temperature, 0);
  EXPECT_EQ(r.params.sampler.top_k, 5);
  EXPECT_EQ(r.params.sampler.seed, 9u);
  EXPECT_EQ(r.params.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(r.params.logprobs, 2);
  EXPECT_TRUE(r.params.echo);
  try {
    parse({{"prompt", "x"}, {"temprature", 0.5}});
    ADD_FAILURE() << "a misspelt field was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.param(), "temprature");
  }
}

// A string prompt reads special-token strings as the tokens (llama.cpp's and vLLM's servers do),
// unless serve --no-parse-special.
TEST(Request, SpecialTokenStringsInPromptsAreTheTokens) {
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  auto tokenizer = model::load_tokenizer(testing::shared_path("models/stories260K.gguf"));
  RequestLimits limits;
  const json body = {{"prompt", "Lily said <unk> and</s>"}};
  const std::vector<int32_t> parsed = parse_completion_request(body, *tokenizer, limits).prompts[0];
  EXPECT_EQ(std::count(parsed.begin(), parsed.end(), 0), 1) << "<unk> (id 0) not matched";
  EXPECT_EQ(parsed.back(), tokenizer->eos_id());
  limits.parse_special = false;
  const std::vector<int32_t> plain = parse_completion_request(body, *tokenizer, limits).prompts[0];
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 0), 0);
  EXPECT_NE(plain.back(), tokenizer->eos_id());
  EXPECT_GT(plain.size(), parsed.size());
}

TEST(Request, ChatMessagesAndTokenLimits) {
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  const auto tokenizer = small_tokenizer();
  const RequestLimits limits;
  const json parts = {
      {"messages",
       {{{"role", "user"},
         {"content",
          {{{"type", "text"}, {"text", "Hello "}}, {{"type", "text"}, {"text", "there"}}}}}}},
      {"max_tokens", 7},
      {"max_completion_tokens", 5}};
  const ChatRequest r = parse_chat_request(parts, *tokenizer, limits);
  EXPECT_EQ(r.messages[0].content, "Hello there");
  EXPECT_EQ(r.params.max_tokens, 5);  // the newer name wins
  EXPECT_TRUE(r.max_tokens_given);
  json image = parts;
  image["messages"][0]["content"][1] = {{"type", "image_url"}, {"image_url", "x"}};
  EXPECT_THROW(parse_chat_request(image, *tokenizer, limits), ApiError);
  json bad_max = parts;
  bad_max["max_tokens"] = "many";
  EXPECT_THROW(parse_chat_request(bad_max, *tokenizer, limits), ApiError);
  const json bias = {{"messages", {{{"role", "user"}, {"content", "a"}}}},
                     {"logit_bias", {{"2", 100}, {"7", -5.5}}}};
  const ChatRequest b = parse_chat_request(bias, *tokenizer, limits);
  ASSERT_EQ(b.params.logit_bias.size(), 2u);
  EXPECT_EQ(b.params.logit_bias[1], std::make_pair(int32_t{7}, -5.5f));
  EXPECT_FALSE(b.max_tokens_given);
}

// Seeded mutations of valid request bodies (bytes flipped, inserted and cut; values swapped for
// other types, huge numbers, deep nesting, long strings; invalid UTF-8): parsing each gives a
// request or an ApiError with a 4xx status and a short message, never another exception.
TEST(Request, MutatedBodiesGiveRequestsOrApiErrors) {
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  const auto tokenizer = small_tokenizer();
  const RequestLimits limits{256, 200, 16, 20};
  const std::vector<std::pair<bool, std::string>> seeds = {
      {false, R"({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0.7})"},
      {false, R"({"prompt": [1, 2, 3], "logprobs": 2, "echo": true, "stop": ["\n", "."]})"},
      {false, R"({"prompt": ["a", "b"], "top_p": 0.9, "seed": 3, "logit_bias": {"5": -100}})"},
      {true, R"({"messages": [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                 "max_tokens": 4, "logprobs": true, "top_logprobs": 2, "stream": true})"},
  };
  const std::vector<std::string> values = {
      "null", "true", "-1", "0", "1e999", "-1e999", std::string(400, '9'), "\"\"", "[]", "{}",
      std::string(100, '[') + std::string(100, ']'), "\"" + std::string(5000, 'x') + "\"",
      "\"\xff\xfe\"", "\"\\ud800\"", "[1, \"a\", null]", "{\"a\": {\"b\": [1]}}"};
  std::mt19937 rng(20261204);
  int requests = 0, errors = 0;
  for (int i = 0; i < 3000; ++i) {
    const auto& [chat, seed] = seeds[rng() % seeds.size()];
    std::string body = seed;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !body.empty(); ++e) {
      const size_t at = rng() % body.size();
      switch (rng() % 6) {
        case 0: body[at] = static_cast<char>(rng() % 256); break;  // flip a byte
        case 1: body.insert(at, 1, "{}[]\",:0-e\\"[rng() % 12]); break;
        case 2: body.erase(at, 1 + rng() % 8); break;
        case 3: body.resize(at); break;  // truncate
        default: {
          // Swap the value after a ':' for another type.
          const size_t colon = body.find(':', at);
          if (colon == std::string::npos) break;
          size_t end = colon + 1, depth = 0;
          bool in_string = false;
          for (; end < body.size(); ++end) {
            const char c = body[end];
            if (in_string) {
              if (c == '\\') ++end;
              else if (c == '"') in_string = false;
            } else if (c == '"') {
              in_string = true;
            } else if (c == '[' || c == '{') {
              ++depth;
            } else if ((c == ']' || c == '}') && depth-- == 0) {
              break;
            } else if (c == ',' && depth == 0) {
              break;
            }
          }
          body = body.substr(0, colon + 1) + " " + values[rng() % values.size()] +
                 body.substr(std::min(end, body.size()));
        }
      }
    }
    try {
      const json j = parse_body(body);
      if (chat) {
        parse_chat_request(j, *tokenizer, limits);
      } else {
        parse_completion_request(j, *tokenizer, limits);
      }
      ++requests;
    } catch (const ApiError& e) {
      ++errors;
      EXPECT_GE(e.status(), 400) << body;
      EXPECT_LT(e.status(), 500) << body;
      EXPECT_LT(std::string(e.what()).size(), 600u) << body;
      EXPECT_LT(e.param().size(), 200u) << body;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not an ApiError: " << e.what() << "\nbody: " << body.substr(0, 300);
    }
  }
  // Both outcomes occur (a mutation that breaks nothing, one that breaks the request).
  EXPECT_GT(requests, 50);
  EXPECT_GT(errors, 1000);
}

TEST(ChatTemplate, DetectsFamiliesFromTemplateText) {
  EXPECT_EQ(detect_chat_family(""), ChatFamily::kPlain);
  EXPECT_EQ(detect_chat_family("{% for m in messages %}{{ m.content }}{% endfor %}"),
            ChatFamily::kPlain);
  EXPECT_EQ(detect_chat_family("{{'<|im_start|>' + message['role'] + '\\n'}}"),
            ChatFamily::kChatml);
  EXPECT_EQ(detect_chat_family("{{ bos_token + '[INST] ' + content + ' [/INST]' }}"),
            ChatFamily::kLlama2);
  EXPECT_EQ(detect_chat_family("{{ '<|user|>\\n' + c + eos_token }}{{ '<|assistant|>' }}"),
            ChatFamily::kZephyr);
  EKV_REQUIRE_SHARED("tokenizers/llama3/tokenizer_config.json");
  std::ifstream in(shared_path("tokenizers/llama3/tokenizer_config.json"));
  const json config = json::parse(in);
  EXPECT_EQ(detect_chat_family(config["chat_template"].get<std::string>()), ChatFamily::kLlama3);
  // Rendered with the real Llama 3 tokenizer, the markers become its special tokens.
  const auto tokenizer = tok::tokenizer_from_json(shared_path("tokenizers/llama3/tokenizer.json"));
  const ChatPrompt p = render_chat(ChatFamily::kLlama3, {{"user", "Hi"}});
  const std::vector<int32_t> ids = tokenizer->encode(p.text, true, /*parse_special=*/true);
  const auto header = tokenizer->find_token("<|start_header_id|>");
  ASSERT_TRUE(header.has_value());
  EXPECT_EQ(std::count(ids.begin(), ids.end(), *header), 2);
  EXPECT_EQ(p.stop, std::vector<std::string>{"<|eot_id|>"});
}

TEST(ChatTemplate, RendersFormats) {
  const std::vector<ChatMessage> m = {{"system", "Be brief."}, {"user", "Hi"}};
  EXPECT_EQ(render_chat(ChatFamily::kChatml, m).text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(render_chat(ChatFamily::kLlama2, m).text,
            "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]");
  EXPECT_EQ(render_chat(ChatFamily::kPlain, m).text, "System: Be brief.\nUser: Hi\nAssistant:");
  EXPECT_EQ(render_chat(ChatFamily::kZephyr, m).text,
            "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n");
}

TEST(Metrics, HistogramBucketsAreCumulative) {
  Histogram h({0.1, 1.0});
  for (const double v : {0.05, 0.1, 0.5, 2.0, 3.0}) h.observe(v);
  std::string out;
  h.render(out, "x", "e=\"a\"");
  EXPECT_NE(out.find("x_bucket{e=\"a\",le=\"0.1\"} 2\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_bucket{e=\"a\",le=\"1\"} 3\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_bucket{e=\"a\",le=\"+Inf\"} 5\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_count{e=\"a\"} 5\n"), std::string::npos) << out;
  EXPECT_NE(out.find("x_sum{e=\"a\"} 5.65\n"), std::string::npos) << out;
}

}  // namespace
}  // namespace eigenkv::serve
