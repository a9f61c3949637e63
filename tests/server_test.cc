// eigenkv serve, end to end: the binary is started on 127.0.0.1 with a free port and checked
// against independent results (eigenkv generate, eigenkv perplexity, Model::forward), against
// itself (streamed vs whole, concurrent vs one at a time), under bad input, load, client
// disconnects, timeouts, KV budgets and SIGTERM.
#include <arpa/inet.h>
#include <fcntl.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <tuple>
#include <vector>

#include "model/model.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace eigenkv {
namespace {

using nlohmann::json;
using testing::eigenkv_binary;
using testing::run_command;
using testing::shared_path;
using testing::source_path;

const char* kSmall = "models/stories260K.gguf";
const char* kGqa = "models/tinystories-c4-gqa.gguf";

// The server binary as a child process; its first stdout line names the port.
class ServerProcess {
 public:
  explicit ServerProcess(std::vector<std::string> args) {
    args.insert(args.begin(), {eigenkv_binary(), "serve", "--port", "0", "-t", "1"});
    int out[2];
    if (pipe(out) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      close(out[1]);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out[1]);
    stdout_ = fdopen(out[0], "r");
    char line[512] = {};
    if (stdout_ && std::fgets(line, sizeof(line), stdout_)) {
      const std::string text = line;
      const size_t colon = text.rfind(':');
      if (text.find("listening on") != std::string::npos && colon != std::string::npos) {
        port_ = std::atoi(text.c_str() + colon + 1);
      }
    }
  }
  ~ServerProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (stdout_) std::fclose(stdout_);
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }

  // SIGTERM, then the exit status (-1 if it had not exited within `seconds`).
  int terminate(double seconds = 20) {
    kill(pid_, SIGTERM);
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
  FILE* stdout_ = nullptr;
  int port_ = 0;
  bool exited_ = false;
};

struct Reply {
  int status = 0;
  json body;
  std::string raw;
};

Reply post(int port, const std::string& path, const std::string& body) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(120, 0);
  Reply r;
  auto res = client.Post(path.c_str(), body, "application/json");
  if (!res) {
    r.raw = "no response: " + httplib::to_string(res.error());
    return r;
  }
  r.status = res->status;
  r.raw = res->body;
  r.body = json::parse(res->body, nullptr, false);
  return r;
}

Reply post(int port, const std::string& path, const json& body) {
  return post(port, path, body.dump());
}

Reply get(int port, const std::string& path) {
  httplib::Client client("127.0.0.1", port);
  Reply r;
  auto res = client.Get(path.c_str());
  if (!res) return r;
  r.status = res->status;
  r.raw = res->body;
  r.body = json::parse(res->body, nullptr, false);
  return r;
}

// One sample of a Prometheus metric (name with its labels as printed), or NaN.
double metric(int port, const std::string& sample) {
  const std::string text = get(port, "/metrics").raw;
  const size_t at = text.find("\n" + sample + " ");
  if (at == std::string::npos) return std::nan("");
  return std::atof(text.c_str() + at + sample.size() + 2);
}

// The events of a server-sent-event stream, put together as an unstreamed reply would be:
// text, logprob lists and finish_reason per choice.
json merge_stream(const std::string& raw, bool chat, bool* done) {
  json merged = json::object();
  *done = false;
  size_t pos = 0;
  while ((pos = raw.find("data: ", pos)) != std::string::npos) {
    const size_t end = raw.find("\n\n", pos);
    const std::string data = raw.substr(pos + 6, end - pos - 6);
    pos = end;
    if (data == "[DONE]") {
      *done = true;
      break;
    }
    const json event = json::parse(data);
    for (const json& c : event["choices"]) {
      json& m = merged[std::to_string(c["index"].get<int>())];
      const std::string delta =
          chat ? c["delta"].value("content", "") : c["text"].get<std::string>();
      m["text"] = (m.contains("text") ? m["text"].get<std::string>() : "") + delta;
      if (!c["finish_reason"].is_null()) m["finish_reason"] = c["finish_reason"];
      if (!chat && c["logprobs"].is_object()) {
        for (const char* key : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) {
          for (const json& v : c["logprobs"][key]) m["logprobs"][key].push_back(v);
        }
      }
    }
  }
  return merged;
}

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(shared_path(kSmall))) return;
    server_ = new ServerProcess(
        {"-m", shared_path(kSmall), "--parallel", "16", "--ctx", "256", "--max-tokens", "200",
         "--alias", "tiny-llama", "--alias", "org/stories"});
  }
  static void TearDownTestSuite() {
    if (server_) {
      EXPECT_EQ(server_->terminate(), 0) << "the server did not stop cleanly";
    }
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    EKV_REQUIRE_SHARED(kSmall);
    ASSERT_GT(server_->port(), 0) << "the server did not start";
  }
  int port() const { return server_->port(); }
  pid_t pid() const { return server_->pid(); }

  static ServerProcess* server_;
};
ServerProcess* ServerTest::server_ = nullptr;

TEST_F(ServerTest, HealthModelsAndMetrics) {
  EXPECT_EQ(get(port(), "/health").body["status"], "ok");
  const Reply models = get(port(), "/v1/models");
  ASSERT_EQ(models.status, 200);
  EXPECT_EQ(models.body["data"][0]["id"], "stories260K");
  EXPECT_EQ(models.body["data"][0]["meta"]["kv_bytes_per_token"], 1280);
  EXPECT_EQ(metric(port(), "eigenkv_kv_bytes_per_token"), 1280);
  EXPECT_EQ(metric(port(), "eigenkv_parallel"), 16);
}

// What OpenAI clients and vLLM users expect beyond the basics: n choices per prompt (distinct
// samples, the prompt counted once), GET /v1/models/{id} and model_not_found for other names,
// aliases, fields some clients always send (response_format text, tools []), and vLLM's
// /tokenize, /detokenize and /tokenizer_info.
TEST_F(ServerTest, ParityWithOpenAiAndVllm) {
  // n = 3 on two prompts: six choices, prompt p's k-th at index 3p + k.
  const json body = {{"prompt", {"Once upon", "Lily"}}, {"n", 3}, {"max_tokens", 6},
                     {"temperature", 1.0}, {"seed", 7}};
  const Reply r = post(port(), "/v1/completions", body);
  ASSERT_EQ(r.status, 200) << r.raw;
  ASSERT_EQ(r.body["choices"].size(), 6u);
  std::set<std::string> texts;
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(r.body["choices"][i]["index"], i);
    texts.insert(r.body["choices"][i]["text"].get<std::string>());
  }
  EXPECT_GE(texts.size(), 4u) << "the samples of a prompt should differ: " << r.raw;
  // The same seed gives the same six (choice k samples with seed + k), and choice k of n = 3
  // equals a single request seeded seed + k.
  EXPECT_EQ(post(port(), "/v1/completions", body).body["choices"], r.body["choices"]);
  json single = body;
  single["prompt"] = "Lily";
  single["n"] = 1;
  single["seed"] = 7 + 2;
  EXPECT_EQ(post(port(), "/v1/completions", single).body["choices"][0]["text"],
            r.body["choices"][5]["text"]);
  const int64_t p0 = post(port(), "/v1/completions",
                          json{{"prompt", "Once upon"}, {"max_tokens", 1}})
                         .body["usage"]["prompt_tokens"];
  const int64_t p1 =
      post(port(), "/v1/completions", json{{"prompt", "Lily"}, {"max_tokens", 1}}).body["usage"]["prompt_tokens"];
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], p0 + p1) << "each prompt counts once";
  EXPECT_EQ(r.body["usage"]["completion_tokens"], 36);
  // The choices of a prompt share its prefill: the engine prefills each prompt once.
  const double prefilled = metric(port(), "eigenkv_prompt_tokens_total");
  json three = body;
  three["seed"] = 11;
  ASSERT_EQ(post(port(), "/v1/completions", three).status, 200);
  EXPECT_EQ(metric(port(), "eigenkv_prompt_tokens_total") - prefilled, p0 + p1)
      << "each prompt is prefilled once, not once per choice";
  // Chat with n = 2, whole and streamed.
  const json chat = {{"messages", {{{"role", "user"}, {"content", "Tell a story"}}}},
                     {"n", 2}, {"max_tokens", 5}, {"seed", 3}, {"model", "tiny-llama"},
                     {"response_format", {{"type", "text"}}}, {"tools", json::array()},
                     {"tool_choice", "none"}};
  const Reply c = post(port(), "/v1/chat/completions", chat);
  ASSERT_EQ(c.status, 200) << c.raw;
  ASSERT_EQ(c.body["choices"].size(), 2u);
  EXPECT_EQ(c.body["choices"][1]["index"], 1);
  json streamed = chat;
  streamed["stream"] = true;
  const Reply s = post(port(), "/v1/chat/completions", streamed);
  ASSERT_EQ(s.status, 200);
  std::string joined[2];
  for (size_t at = 0; (at = s.raw.find("data: {", at)) != std::string::npos; ++at) {
    const json e = json::parse(s.raw.substr(at + 6, s.raw.find("\n", at) - at - 6));
    for (const json& ch : e["choices"]) joined[ch["index"].get<int>()] += ch["delta"].value("content", "");
  }
  EXPECT_EQ(joined[0], c.body["choices"][0]["message"]["content"]);
  EXPECT_EQ(joined[1], c.body["choices"][1]["message"]["content"]);
  // Models: the served name and its aliases; anything else is 404 model_not_found.
  const Reply models = get(port(), "/v1/models");
  ASSERT_EQ(models.body["data"].size(), 3u);
  EXPECT_EQ(models.body["data"][2]["id"], "org/stories");
  EXPECT_EQ(get(port(), "/v1/models/stories260K").body["id"], "stories260K");
  EXPECT_EQ(get(port(), "/v1/models/org/stories").body["root"], "stories260K");
  const Reply missing = get(port(), "/v1/models/gpt-4");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.body["error"]["code"], "model_not_found");
  const Reply wrong = post(port(), "/v1/completions", json{{"prompt", "hi"}, {"model", "gpt-4"}});
  EXPECT_EQ(wrong.status, 404) << wrong.raw;
  EXPECT_EQ(wrong.body["error"]["code"], "model_not_found");
  EXPECT_EQ(wrong.body["error"]["param"], "model");
  EXPECT_EQ(post(port(), "/v1/completions", json{{"prompt", "hi"}, {"max_tokens", 1},
                                                 {"model", "org/stories"}}).status,
            200);
  // vLLM's tokenizer endpoints agree with the completion endpoint's own tokens.
  const Reply t = post(port(), "/tokenize", json{{"prompt", "Once upon a time"}, {"return_token_strs", true}});
  ASSERT_EQ(t.status, 200) << t.raw;
  const std::vector<int32_t> ids = t.body["tokens"].get<std::vector<int32_t>>();
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);  // BOS, as a string prompt gets it
  EXPECT_EQ(t.body["count"], ids.size());
  EXPECT_EQ(t.body["max_model_len"], 256);
  EXPECT_EQ(t.body["token_strs"].size(), ids.size());
  const json echo = post(port(), "/v1/completions",
                         json{{"prompt", "Once upon a time"}, {"max_tokens", 0}, {"echo", true},
                              {"logprobs", 0}}).body;
  EXPECT_EQ(echo["usage"]["prompt_tokens"], ids.size());
  const Reply no_bos =
      post(port(), "/tokenize", json{{"prompt", "Once upon a time"}, {"add_special_tokens", false}});
  EXPECT_EQ(no_bos.body["count"], ids.size() - 1);
  const Reply d = post(port(), "/detokenize", json{{"tokens", ids}});
  EXPECT_EQ(d.body["prompt"], "Once upon a time");
  const Reply chat_tokens =
      post(port(), "/tokenize", json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}});
  EXPECT_EQ(chat_tokens.status, 200) << chat_tokens.raw;
  EXPECT_EQ(post(port(), "/detokenize", json{{"tokens", {1, 999999}}}).status, 400);
  EXPECT_EQ(post(port(), "/tokenize", json{{"prompt", "a"}, {"model", "nope"}}).status, 404);
  const Reply info = get(port(), "/tokenizer_info");
  ASSERT_EQ(info.status, 200);
  EXPECT_EQ(info.body["bos_token_id"], 1);
  EXPECT_EQ(info.body["vocab_size"], 512);
  // A completion with add_special_tokens false (vLLM's extension) scores the string without BOS.
  const json plain = post(port(), "/v1/completions",
                          json{{"prompt", "Once upon a time"}, {"max_tokens", 0}, {"echo", true},
                               {"logprobs", 0}, {"add_special_tokens", false}}).body;
  EXPECT_EQ(plain["usage"]["prompt_tokens"], ids.size() - 1);
}

TEST_F(ServerTest, SecondServerOnTheSamePortFails) {
  int status = 0;
  const std::string out = run_command(eigenkv_binary() + " serve -t 1 -m " + shared_path(kSmall) +
                                          " --port " + std::to_string(port()) + " 2>&1",
                                      &status);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("eigenkv: error: cannot listen on 127.0.0.1:"), std::string::npos) << out;
  EXPECT_EQ(get(port(), "/health").status, 200);
}

TEST_F(ServerTest, GreedyCompletionEqualsGenerate) {
  for (const std::string prompt : {"Once upon a time", "The cat sat", "Lily and Ben went"}) {
    const Reply r = post(port(), "/v1/completions",
                         json{{"prompt", prompt}, {"max_tokens", 40}, {"temperature", 0}});
    ASSERT_EQ(r.status, 200) << r.raw;
    int status = 0;
    const json want =
        json::parse(run_command(eigenkv_binary() + " generate -t 1 -m " + shared_path(kSmall) +
                                    " -p '" + prompt + "' -n 40 --temp 0 --json",
                                &status));
    ASSERT_EQ(status, 0);
    EXPECT_EQ(r.body["choices"][0]["text"], want["text"]) << prompt;
    // The server reports the end-of-sequence token too (with empty text); generate does not.
    const size_t eos = want["stop_reason"] == "eos" ? 1 : 0;
    EXPECT_EQ(r.body["usage"]["completion_tokens"], want["ids"].size() + eos) << prompt;
    EXPECT_EQ(r.body["choices"][0]["finish_reason"],
              want["stop_reason"] == "eos" ? "stop" : "length");
  }
}

// The first 64 tokens of the evaluation text (with BOS), as the perplexity tool windows it.
std::vector<int32_t> first_window(const model::Model& m, int64_t n) {
  std::ifstream in(source_path("data/tinystories-eval.txt"));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<int32_t> ids = m.tokenizer().encode(text, true);
  ids.resize(static_cast<size_t>(n));
  return ids;
}

TEST_F(ServerTest, EchoLogprobsEqualForwardAndPerplexity) {
  const auto m = model::Model::load(shared_path(kSmall));
  const int64_t n = 64, nv = m->config().n_vocab;
  const std::vector<int32_t> ids = first_window(*m, n);
  const Reply r = post(port(), "/v1/completions",
                       json{{"prompt", ids}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 1}});
  ASSERT_EQ(r.status, 200) << r.raw;
  const json& lp = r.body["choices"][0]["logprobs"];
  ASSERT_EQ(lp["token_logprobs"].size(), static_cast<size_t>(n));
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());

  // Independent: log-softmax of Model::forward's logits, in double.
  kv::KvCache cache = m->new_cache(n);
  std::vector<float> logits(static_cast<size_t>(n * nv));
  m->forward(ids, cache, logits.data(), true);
  double sum = 0;
  for (int64_t t = 1; t < n; ++t) {
    const float* row = logits.data() + (t - 1) * nv;
    double mx = row[0], z = 0;
    for (int64_t i = 0; i < nv; ++i) mx = std::max(mx, double{row[i]});
    for (int64_t i = 0; i < nv; ++i) z += std::exp(row[i] - mx);
    const double want = row[ids[t]] - mx - std::log(z);
    const double got = lp["token_logprobs"][t].get<double>();
    EXPECT_NEAR(got, want, 1e-4) << "token " << t;
    double best = -1e300;
    for (const auto& [piece, v] : lp["top_logprobs"][t].items())
      best = std::max(best, v.get<double>());
    EXPECT_NEAR(best, std::log(1.0) - std::log(z), 1e-4) << "top-1 at token " << t;
    EXPECT_GE(best, got - 1e-12);
    sum += got;
  }
  EXPECT_EQ(r.body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r.body["usage"]["completion_tokens"], 0);

  // Independent: eigenkv perplexity scores the same window the same way.
  int status = 0;
  const json ppl = json::parse(run_command(
      eigenkv_binary() + " perplexity -t 1 -m " + shared_path(kSmall) + " -f " +
          source_path("data/tinystories-eval.txt") + " --ctx 64 --max-windows 1 --json 2>/dev/null",
      &status));
  ASSERT_EQ(status, 0);
  ASSERT_EQ(ppl["tokens_scored"], n - 1);
  EXPECT_NEAR(-sum / (n - 1), ppl["nll_mean"].get<double>(), 1e-5);
}

// lm-evaluation-harness's local-completions request: token lists, echo, max_tokens 1,
// logprobs 1. It drops the last entry as the generated token, so one must be there even when
// the model ends the sequence (forced here with logit_bias on the end-of-sequence token).
TEST_F(ServerTest, LmEvalLoglikelihoodShape) {
  const auto m = model::Model::load(shared_path(kSmall));
  const int64_t n = 64, nv = m->config().n_vocab;
  const std::vector<int32_t> ids = first_window(*m, n);
  kv::KvCache cache = m->new_cache(n);
  std::vector<float> logits(static_cast<size_t>(n * nv));
  m->forward(ids, cache, logits.data(), true);
  const std::vector<std::vector<int32_t>> prompts = {
      std::vector<int32_t>(ids.begin(), ids.begin() + 40), ids};
  const int32_t eos = m->tokenizer().eos_id();
  for (const bool force_eos : {false, true}) {
    json body = {
        {"model", "stories260K"}, {"prompt", prompts}, {"temperature", 0}, {"max_tokens", 1},
        {"logprobs", 1},          {"seed", 1234},      {"echo", true}};
    if (force_eos) body["logit_bias"] = {{std::to_string(eos), 100}};
    const Reply r = post(port(), "/v1/completions", body);
    ASSERT_EQ(r.status, 200) << r.raw;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const json& choice = r.body["choices"][i];
      EXPECT_EQ(choice["index"], i);
      const json& lp = choice["logprobs"];
      ASSERT_EQ(lp["token_logprobs"].size(), prompts[i].size() + 1) << "choice " << i;
      EXPECT_EQ(choice["finish_reason"], force_eos ? "stop" : "length");
      if (force_eos) {
        EXPECT_EQ(lp["tokens"].back(), "") << "end-of-sequence has no text";
        EXPECT_EQ(choice["text"].get<std::string>().size(),
                  m->tokenizer().decode(prompts[i]).size());
      }
      // is_greedy as the harness computes it: a token's value equals its top_logprobs maximum
      // exactly when the model's argmax is that token.
      for (size_t t = 1; t < prompts[i].size(); ++t) {
        double best = -1e300;
        for (const auto& [piece, v] : lp["top_logprobs"][t].items()) {
          best = std::max(best, v.get<double>());
        }
        const float* row = logits.data() + (t - 1) * nv;
        const bool greedy = std::max_element(row, row + nv) - row == prompts[i][t];
        EXPECT_EQ(lp["token_logprobs"][t].get<double>() == best, greedy) << "token " << t;
      }
    }
  }
}

TEST_F(ServerTest, StreamedEqualsUnstreamed) {
  const json base = {{"prompt", {"Once upon a time", "The dog"}},
                     {"max_tokens", 30},
                     {"temperature", 0.9},
                     {"seed", 42},
                     {"logprobs", 3},
                     {"echo", true},
                     {"stop", {" said"}}};
  const Reply whole = post(port(), "/v1/completions", base);
  ASSERT_EQ(whole.status, 200) << whole.raw;
  json streamed_request = base;
  streamed_request["stream"] = true;
  const Reply streamed = post(port(), "/v1/completions", streamed_request);
  ASSERT_EQ(streamed.status, 200);
  bool done = false;
  const json merged = merge_stream(streamed.raw, false, &done);
  EXPECT_TRUE(done) << "no [DONE] event";
  for (int i = 0; i < 2; ++i) {
    const json& want = whole.body["choices"][i];
    const json& got = merged[std::to_string(i)];
    EXPECT_EQ(got["text"], want["text"]) << i;
    EXPECT_EQ(got["finish_reason"], want["finish_reason"]) << i;
    // Batches differ between the two runs, and a batched GEMM rounds differently from a
    // per-row one: tokens and offsets are equal, log-probabilities to float rounding.
    for (const char* key : {"tokens", "text_offset", "top_logprobs"}) {
      ASSERT_EQ(got["logprobs"][key].size(), want["logprobs"][key].size()) << key;
    }
    EXPECT_EQ(got["logprobs"]["tokens"], want["logprobs"]["tokens"]) << i;
    EXPECT_EQ(got["logprobs"]["text_offset"], want["logprobs"]["text_offset"]) << i;
    for (size_t t = 1; t < want["logprobs"]["tokens"].size(); ++t) {
      // float32 sums in a different order: agreement to ~1e-5 relative, checked at 1e-4.
      const double want_lp = want["logprobs"]["token_logprobs"][t].get<double>();
      EXPECT_NEAR(got["logprobs"]["token_logprobs"][t].get<double>(), want_lp,
                  1e-4 * (1 + std::abs(want_lp)));
      for (const auto& [piece, v] : want["logprobs"]["top_logprobs"][t].items()) {
        EXPECT_NEAR(got["logprobs"]["top_logprobs"][t][piece].get<double>(), v.get<double>(),
                    1e-4 * (1 + std::abs(v.get<double>())));
      }
    }
    const std::string text = want["text"];
    EXPECT_EQ(text.find(" said"), std::string::npos) << "stop string left in the text";
  }

  const json chat = {{"messages", {{{"role", "user"}, {"content", "Tell me a story."}}}},
                     {"max_tokens", 25},
                     {"seed", 7}};
  const Reply chat_whole = post(port(), "/v1/chat/completions", chat);
  ASSERT_EQ(chat_whole.status, 200) << chat_whole.raw;
  EXPECT_EQ(chat_whole.body["chat_template"], "plain");
  json chat_stream_request = chat;
  chat_stream_request["stream"] = true;
  const json chat_merged =
      merge_stream(post(port(), "/v1/chat/completions", chat_stream_request).raw, true, &done);
  EXPECT_TRUE(done);
  EXPECT_EQ(chat_merged["0"]["text"], chat_whole.body["choices"][0]["message"]["content"]);
  EXPECT_EQ(chat_merged["0"]["finish_reason"], chat_whole.body["choices"][0]["finish_reason"]);
}

TEST_F(ServerTest, SixteenConcurrentClientsEqualSequential) {
  const std::vector<std::string> starts = {
      "Once", "The",  "Lily", "Tom",     "A big", "One day", "She",      "He",
      "It",   "They", "Mom",  "The sun", "Ben",   "Sue",     "The bird", "In the park"};
  std::vector<json> requests;
  for (size_t i = 0; i < starts.size(); ++i) {
    json r = {{"prompt", starts[i]}, {"max_tokens", 24 + static_cast<int>(i)}, {"logprobs", 1}};
    if (i % 2) {
      r["temperature"] = 0;
    } else {
      r["temperature"] = 0.8;
      r["seed"] = 100 + i;
    }
    requests.push_back(r);
  }
  std::vector<Reply> sequential, concurrent(requests.size());
  for (const json& r : requests) sequential.push_back(post(port(), "/v1/completions", r));
  std::vector<std::thread> clients;
  for (size_t i = 0; i < requests.size(); ++i) {
    clients.emplace_back([&, i] { concurrent[i] = post(port(), "/v1/completions", requests[i]); });
  }
  for (std::thread& t : clients) t.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_EQ(concurrent[i].status, 200) << concurrent[i].raw;
    const json& a = sequential[i].body["choices"][0];
    const json& b = concurrent[i].body["choices"][0];
    EXPECT_EQ(b["text"], a["text"]) << starts[i];
    EXPECT_EQ(b["logprobs"]["tokens"], a["logprobs"]["tokens"]) << starts[i];
    for (size_t t = 0; t < a["logprobs"]["token_logprobs"].size(); ++t) {
      EXPECT_NEAR(b["logprobs"]["token_logprobs"][t].get<double>(),
                  a["logprobs"]["token_logprobs"][t].get<double>(), 1e-4);
    }
  }
  EXPECT_GT(metric(port(), "eigenkv_sequences_active_peak"), 1) << "nothing was batched";
}

TEST_F(ServerTest, BadInputGets400AndServerKeepsServing) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"invalid JSON", "{\"prompt\": \"hi\""},
      {"not an object", "[1, 2]"},
      {"non-UTF-8 body", "{\"prompt\": \"caf\xe9\"}"},
      {"prompt of a wrong type", R"({"prompt": 5})"},
      {"max_tokens as a string", R"({"prompt": "hi", "max_tokens": "10"})"},
      {"max_tokens not an integer", R"({"prompt": "hi", "max_tokens": 2.5})"},
      {"temperature as a string", R"({"prompt": "hi", "temperature": "hot"})"},
      {"stream as a number", R"({"prompt": "hi", "stream": 1})"},
      {"unknown field", R"({"prompt": "hi", "frobnicate": true})"},
      {"negative max_tokens", R"({"prompt": "hi", "max_tokens": -1})"},
      {"huge max_tokens", R"({"prompt": "hi", "max_tokens": 1000000000000})"},
      {"huger max_tokens", R"({"prompt": "hi", "max_tokens": 1e300})"},
      {"negative temperature", R"({"prompt": "hi", "temperature": -0.5})"},
      {"top_p of zero", R"({"prompt": "hi", "top_p": 0})"},
      {"negative seed", R"({"prompt": "hi", "seed": -3})"},
      {"too many logprobs", R"({"prompt": "hi", "logprobs": 1000})"},
      {"token id out of the vocabulary", R"({"prompt": [1, 99999]})"},
      {"negative token id", R"({"prompt": [1, -2]})"},
      {"n of 0", R"({"prompt": "hi", "n": 0})"},
      {"n of 17", R"({"prompt": "hi", "n": 17})"},
      {"n with echo", R"({"prompt": "hi", "n": 2, "echo": true})"},
      {"response_format json", R"({"prompt": "hi", "response_format": {"type": "json_object"}})"},
      {"response_format not an object", R"({"prompt": "hi", "response_format": "text"})"},
      {"logit_bias key not a token", R"({"prompt": "hi", "logit_bias": {"abc": 1}})"},
      {"logit_bias too large", R"({"prompt": "hi", "logit_bias": {"5": 1000}})"},
      {"empty prompt list", R"({"prompt": []})"},
      {"missing prompt", R"({"max_tokens": 3})"},
      {"prompt over the context", json{{"prompt", std::vector<int>(300, 5)}}.dump()},
      {"prompt + max_tokens over the context",
       json{{"prompt", std::vector<int>(200, 5)}, {"max_tokens", 100}}.dump()},
      {"too many stop strings",
       json{{"prompt", "hi"}, {"stop", std::vector<std::string>(17, "a")}}.dump()},
  };
  for (const auto& [name, body] : cases) {
    const Reply r = post(port(), "/v1/completions", body);
    EXPECT_EQ(r.status, 400) << name << ": " << r.raw;
    EXPECT_TRUE(r.body.is_object() && r.body["error"]["message"].is_string()) << name;
    EXPECT_EQ(get(port(), "/health").status, 200) << "after " << name;
  }
  const std::vector<std::pair<std::string, std::string>> chat_cases = {
      {"no messages", R"({"messages": []})"},
      {"bad role", R"({"messages": [{"role": "wizard", "content": "hi"}]})"},
      {"content not a string", R"({"messages": [{"role": "user", "content": 3}]})"},
      {"unknown message field", R"({"messages": [{"role": "user", "content": "a", "x": 1}]})"},
      {"top_logprobs without logprobs",
       R"({"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2})"},
      {"a tool", R"({"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function"}]})"},
      {"tool_choice required",
       R"({"messages": [{"role": "user", "content": "a"}], "tools": [], "tool_choice": "required"})"},
  };
  for (const auto& [name, body] : chat_cases) {
    const Reply r = post(port(), "/v1/chat/completions", body);
    EXPECT_EQ(r.status, 400) << name << ": " << r.raw;
    EXPECT_TRUE(r.body.is_object() && r.body["error"]["message"].is_string()) << name;
  }
  const Reply big = post(port(), "/v1/completions", std::string(9 << 20, ' '));
  EXPECT_EQ(big.status, 413);
  EXPECT_EQ(get(port(), "/nowhere").status, 404);
  EXPECT_EQ(get(port(), "/health").status, 200);
  const Reply ok = post(port(), "/v1/completions", json{{"prompt", "hi"}, {"max_tokens", 2}});
  EXPECT_EQ(ok.status, 200);
}

// Peak resident set of a process in bytes (VmHWM), or 0.
int64_t peak_rss(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  }
  return 0;
}

// What a hostile client sends: bodies nested 60,000 deep (the JSON library recurses), numbers
// past a double, huge values that errors would echo, and a chunked body far over --max-body.
TEST_F(ServerTest, HostileBodiesGet4xxAndServerKeepsServing) {
  const std::string deep = std::string(60000, '[') + std::string(60000, ']');
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"nested prompt", "/v1/completions", "{\"prompt\": " + deep + ", \"max_tokens\": 1}"},
      {"nested content", "/v1/chat/completions",
       "{\"messages\": [{\"role\": \"user\", \"content\": " + deep + "}]}"},
      {"nested unknown field", "/v1/completions", "{\"prompt\": \"hi\", \"x\": " + deep + "}"},
      {"temperature 1e999", "/v1/completions", R"({"prompt": "hi", "temperature": 1e999})"},
      {"5,000-digit max_tokens", "/v1/completions",
       "{\"prompt\": \"hi\", \"max_tokens\": " + std::string(5000, '9') + "}"},
      {"huge neutral-only field", "/v1/completions",
       json{{"prompt", "hi"}, {"n", std::vector<int>(20000, 7)}}.dump()},
      {"huge unknown field name", "/v1/completions",
       json{{"prompt", "hi"}, {std::string(20000, 'k'), 1}}.dump()},
      {"huge bad content part", "/v1/chat/completions",
       json{{"messages", {{{"role", "user"}, {"content", {{{"type", "image"},
                                                           {"url", std::string(20000, 'u')}}}}}}}}
           .dump()},
      {"huge bad token", "/v1/completions", json{{"prompt", {1, std::string(20000, 't')}}}.dump()},
  };
  for (const auto& [name, path, body] : cases) {
    const Reply r = post(port(), path, body);
    EXPECT_EQ(r.status, 400) << name << ": " << r.raw.substr(0, 300);
    EXPECT_TRUE(r.body.is_object() && r.body["error"]["message"].is_string()) << name;
    EXPECT_LT(r.raw.size(), 1000u) << name << ": the error echoes the value";
    ASSERT_EQ(get(port(), "/health").status, 200) << "after " << name;
  }

  // 64 MB chunked (no Content-Length): refused at the 8 MB limit, not buffered. The server closes
  // the connection while this client still writes: ignore SIGPIPE here.
  std::signal(SIGPIPE, SIG_IGN);
  const int64_t rss_before = peak_rss(pid());
  httplib::Client client("127.0.0.1", port());
  client.set_read_timeout(30, 0);
  client.set_write_timeout(30, 0);
  size_t sent = 0;
  const std::string piece(1 << 16, ' ');
  auto res = client.Post(
      "/v1/completions",
      [&](size_t, httplib::DataSink& sink) {
        if (sent >= (size_t{64} << 20)) {
          sink.done();
          return true;
        }
        sent += piece.size();
        return sink.write(piece.data(), piece.size());
      },
      "application/json");
  if (res) {  // else the server closed while we wrote
    EXPECT_EQ(res->status, 413) << res->body;
  }
  EXPECT_LT(sent, size_t{64} << 20) << "the server read the whole chunked body";
  EXPECT_LT(peak_rss(pid()) - rss_before, int64_t{40} << 20);
  EXPECT_EQ(get(port(), "/health").status, 200);
  const Reply ok = post(port(), "/v1/completions", json{{"prompt", "hi"}, {"max_tokens", 2}});
  EXPECT_EQ(ok.status, 200);
}

// A streamed request counts once in the metrics, with its real status.
TEST_F(ServerTest, StreamedRequestsCountOnce) {
  const double ok_before = metric(port(), R"(eigenkv_requests_total{endpoint="completions",code="200"})");
  const Reply r =
      post(port(), "/v1/completions", json{{"prompt", "hi"}, {"max_tokens", 2}, {"stream", true}});
  ASSERT_EQ(r.status, 200);
  const std::string after = get(port(), "/metrics").raw;
  EXPECT_EQ(after.find("code=\"-1\""), std::string::npos) << after;
  const double ok_after = metric(port(), R"(eigenkv_requests_total{endpoint="completions",code="200"})");
  EXPECT_EQ((std::isnan(ok_before) ? 0.0 : ok_before) + 1.0, ok_after);
}

// >= 1,000 requests from 16 clients, streamed and not; none fails and no KV memory is left.
TEST_F(ServerTest, LoadTestLeavesNoKvMemory) {
  constexpr int kClients = 16, kPerClient = 64;
  std::atomic<int> failures{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      httplib::Client client("127.0.0.1", port());
      client.set_read_timeout(60, 0);
      for (int i = 0; i < kPerClient; ++i) {
        const json body = {{"prompt", "Once upon a time " + std::to_string(c * 1000 + i)},
                           {"max_tokens", 1 + (i % 6)},
                           {"stream", i % 3 == 0},
                           {"seed", i}};
        auto res = client.Post("/v1/completions", body.dump(), "application/json");
        if (!res || res->status != 200) ++failures;
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(metric(port(), "eigenkv_kv_bytes_in_use"), 0);
  EXPECT_EQ(metric(port(), "eigenkv_kv_bytes_filled"), 0);
  EXPECT_EQ(metric(port(), "eigenkv_sequences_active"), 0);
  EXPECT_EQ(metric(port(), "eigenkv_queue_length"), 0);
  EXPECT_GE(metric(port(), "eigenkv_requests_total{endpoint=\"completions\",code=\"200\"}"),
            kClients * kPerClient);
}

// A raw connection that sends a request, waits for the first bytes of a streamed reply (or
// 100 ms) and hangs up.
void request_and_hang_up(int port, const std::string& body, bool wait_for_bytes) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string request =
      "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
      "application/json\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  ASSERT_EQ(send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  char buf[256];
  if (wait_for_bytes) {
    ASSERT_GT(recv(fd, buf, sizeof(buf), 0), 0);
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  close(fd);
}

// The slower GQA model, so that a long request is still running when its client leaves.
TEST(ServerLifecycle, DisconnectAndGracefulShutdown) {
  EKV_REQUIRE_SHARED(kGqa);
  // --drain: a sanitizer build may need longer than the default 10 s to finish the request.
  ServerProcess server({"-m", shared_path(kGqa), "--ctx", "2048", "--drain", "300"});
  ASSERT_GT(server.port(), 0);
  const int port = server.port();
  const std::string sample = "eigenkv_sequences_finished_total{reason=\"disconnect\"}";

  for (const bool stream : {true, false}) {
    const json body = {
        {"prompt", "Once"}, {"max_tokens", 2000}, {"temperature", 0}, {"stream", stream}};
    request_and_hang_up(port, body.dump(), /*wait_for_bytes=*/stream);
    double cancelled = 0;
    for (int i = 0; i < 100 && !(cancelled >= (stream ? 1 : 2)); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      cancelled = metric(port, sample);
    }
    EXPECT_EQ(cancelled, stream ? 1 : 2) << "the sequence was not cancelled";
    EXPECT_EQ(metric(port, "eigenkv_kv_bytes_in_use"), 0);
  }

  // SIGTERM while a request runs: it still completes, then the server exits 0.
  Reply during;
  std::thread in_flight([&] {
    during = post(port, "/v1/completions",
                  json{{"prompt", "Once"}, {"max_tokens", 600}, {"ignore_eos", true}});
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  // Still running: 601 tokens reserved at 4096 bytes each, some of them filled by now.
  EXPECT_EQ(metric(port, "eigenkv_kv_bytes_in_use"), 601 * 4096);
  EXPECT_GT(metric(port, "eigenkv_kv_bytes_filled"), 0);
  EXPECT_EQ(server.terminate(/*seconds=*/300), 0);
  in_flight.join();
  EXPECT_EQ(during.status, 200) << during.raw.substr(0, 200);
  EXPECT_EQ(during.body["usage"]["completion_tokens"], 600) << "the request was cut short";
}

TEST(ServerLifecycle, TimeoutEndsTheRequestAndFreesItsCache) {
  EKV_REQUIRE_SHARED(kGqa);
  // 2000 tokens take about 2 s on one core; the request may have 0.2 s.
  ServerProcess server({"-m", shared_path(kGqa), "--ctx", "2048", "--timeout", "0.2"});
  ASSERT_GT(server.port(), 0);
  const json body = {{"prompt", "Once"}, {"max_tokens", 2000}, {"ignore_eos", true}};
  const Reply slow = post(server.port(), "/v1/completions", body);
  EXPECT_EQ(slow.status, 504) << slow.raw.substr(0, 200);
  EXPECT_EQ(slow.body["error"]["type"], "timeout_error");
  json streamed = body;
  streamed["stream"] = true;
  const Reply stream = post(server.port(), "/v1/completions", streamed);
  EXPECT_NE(stream.raw.find("timeout_error"), std::string::npos) << stream.raw.substr(0, 200);
  EXPECT_NE(stream.raw.find("data: [DONE]"), std::string::npos);
  EXPECT_EQ(metric(server.port(), "eigenkv_kv_bytes_in_use"), 0);
  EXPECT_EQ(metric(server.port(), "eigenkv_sequences_finished_total{reason=\"timeout\"}"), 2);
  EXPECT_EQ(server.terminate(), 0);
}

// The same --kv-mem admits twice the sequences with the half-size compressed cache.
TEST(ServerKvBudget, CompressedModelAdmitsMoreSequences) {
  EKV_REQUIRE_SHARED(kSmall);
  const std::string compressed = testing::temp_path("compressed.gguf");
  int status = 0;
  run_command(eigenkv_binary() + " calibrate -t 1 -m " + shared_path(kSmall) + " -f " +
                  source_path("data/tinystories-calib.txt") +
                  " --tokens 4096 --error-windows 2 --kv-budget 0.5 -o " + compressed +
                  " > /dev/null 2>&1",
              &status);
  ASSERT_EQ(status, 0);
  std::vector<double> peaks;
  for (const std::string& path : {shared_path(kSmall), compressed}) {
    // 1 MiB: 4 reservations of 205 tokens x 1280 bytes, or 8 at 640 bytes per token.
    ServerProcess server({"-m", path, "--parallel", "64", "--ctx", "256", "--kv-mem", "1"});
    ASSERT_GT(server.port(), 0);
    std::vector<std::thread> clients;
    std::atomic<int> failures{0};
    for (int i = 0; i < 24; ++i) {
      clients.emplace_back([&, i] {
        const json body = {
            {"prompt", {1, 400 + i, 300, 301, 302}}, {"max_tokens", 200}, {"seed", i}};
        const Reply r = post(server.port(), "/v1/completions", body);
        if (r.status != 200) {
          ++failures;
          ADD_FAILURE() << r.status << " " << r.raw;
        }
      });
    }
    for (std::thread& t : clients) t.join();
    EXPECT_EQ(failures.load(), 0) << get(server.port(), "/metrics").raw;
    peaks.push_back(metric(server.port(), "eigenkv_sequences_active_peak"));
    EXPECT_EQ(metric(server.port(), "eigenkv_kv_bytes_in_use"), 0);
    EXPECT_EQ(server.terminate(), 0);
  }
  std::filesystem::remove(compressed);
  EXPECT_LE(peaks[0], 4);
  EXPECT_LE(peaks[1], 8);
  EXPECT_GT(peaks[1], peaks[0]) << "the compressed cache did not admit more sequences";
}

TEST(ServerKvBudget, RequestLargerThanTheWholeBudgetGets400) {
  EKV_REQUIRE_SHARED(kSmall);
  // 0.1 MiB holds 81 tokens at 1280 bytes each.
  ServerProcess server({"-m", shared_path(kSmall), "--ctx", "256", "--kv-mem", "0.1"});
  ASSERT_GT(server.port(), 0);
  const Reply too_big =
      post(server.port(), "/v1/completions", json{{"prompt", "hi"}, {"max_tokens", 100}});
  EXPECT_EQ(too_big.status, 400) << too_big.raw;
  EXPECT_EQ(too_big.body["error"]["param"], "max_tokens");
  const Reply fits =
      post(server.port(), "/v1/completions", json{{"prompt", "hi"}, {"max_tokens", 50}});
  EXPECT_EQ(fits.status, 200) << fits.raw;
  EXPECT_EQ(server.terminate(), 0);
}

}  // namespace
}  // namespace eigenkv

namespace eigenkv {
namespace {

// One request with chosen headers: (status, body).
std::pair<int, std::string> request(int port, const std::string& method, const std::string& path,
                                    const httplib::Headers& headers, const std::string& body = "",
                                    const std::string& content_type = "application/json") {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(60, 0);
  httplib::Result res = method == "POST" ? client.Post(path.c_str(), headers, body, content_type.c_str())
                        : method == "OPTIONS" ? client.Options(path.c_str(), headers)
                                              : client.Get(path.c_str(), headers);
  if (!res) return {0, "no response: " + httplib::to_string(res.error())};
  return {res->status, res->body};
}

const std::string kTiny = R"({"prompt": "hi", "max_tokens": 2})";

TEST(ServerAccess, ApiKeysGuardEveryEndpoint) {
  EKV_REQUIRE_SHARED(kSmall);
  const std::string keys = testing::temp_path("keys.txt");
  std::ofstream(keys) << "# keys\nsecond-key\n\n";
  ServerProcess server({"-m", shared_path(kSmall), "--api-key", "first-key", "--api-key-file", keys});
  ASSERT_GT(server.port(), 0);
  const int port = server.port();
  for (const char* path : {"/v1/models", "/health", "/metrics"}) {
    EXPECT_EQ(request(port, "GET", path, {}).first, 401) << path;
  }
  auto [status, body] = request(port, "POST", "/v1/completions", {}, kTiny);
  EXPECT_EQ(status, 401);
  EXPECT_EQ(json::parse(body)["error"]["code"], "invalid_api_key") << body;
  EXPECT_EQ(request(port, "POST", "/v1/completions", {{"Authorization", "Bearer wrong"}}, kTiny).first,
            401);
  EXPECT_EQ(request(port, "POST", "/v1/completions", {{"Authorization", "first-key"}}, kTiny).first,
            401);
  EXPECT_EQ(
      request(port, "POST", "/v1/completions", {{"Authorization", "Bearer first-key"}}, kTiny).first,
      200);
  EXPECT_EQ(
      request(port, "POST", "/v1/completions", {{"Authorization", "Bearer second-key"}}, kTiny).first,
      200);
  // With a key, any Host is fine (the key is the guard).
  EXPECT_EQ(request(port, "GET", "/v1/models",
                    {{"Authorization", "Bearer second-key"}, {"Host", "example.com"}})
                .first,
            200);
  std::filesystem::remove(keys);
}

TEST(ServerAccess, OpenHealthLeavesHealthAndMetricsOpen) {
  EKV_REQUIRE_SHARED(kSmall);
  ServerProcess server({"-m", shared_path(kSmall), "--api-key", "k", "--open-health"});
  ASSERT_GT(server.port(), 0);
  EXPECT_EQ(request(server.port(), "GET", "/health", {}).first, 200);
  EXPECT_EQ(request(server.port(), "GET", "/metrics", {}).first, 200);
  EXPECT_EQ(request(server.port(), "GET", "/v1/models", {}).first, 401);
}

// A web page's requests: a foreign Origin, or a rebound name in Host.
TEST(ServerAccess, CrossSiteAndRebindingRequestsAreRefused) {
  EKV_REQUIRE_SHARED(kSmall);
  ServerProcess server({"-m", shared_path(kSmall), "--allow-origin", "http://app.local"});
  ASSERT_GT(server.port(), 0);
  const int port = server.port();
  EXPECT_EQ(request(port, "POST", "/v1/completions", {{"Origin", "http://evil.example"}}, kTiny,
                    "text/plain")
                .first,
            403);
  EXPECT_EQ(request(port, "POST", "/v1/completions", {{"Host", "evil.example:8080"}}, kTiny,
                    "text/plain")
                .first,
            403);
  for (const char* host : {"localhost:1", "127.0.0.1", "[::1]:80"}) {
    EXPECT_EQ(request(port, "GET", "/health", {{"Host", host}}).first, 200) << host;
  }
  httplib::Client client("127.0.0.1", port);
  auto res = client.Post("/v1/completions", {{"Origin", "http://app.local"}}, kTiny,
                         "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Access-Control-Allow-Origin"), "http://app.local");
  EXPECT_EQ(request(port, "OPTIONS", "/v1/completions", {{"Origin", "http://app.local"}}).first, 204);
  EXPECT_EQ(request(port, "OPTIONS", "/v1/completions", {{"Origin", "http://evil.example"}}).first,
            403);
}

// A raw loopback connection to the server.
int connect_raw(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Whether the server has closed the connection (a read gives end of file or an error) within
// `seconds`, while this side keeps sending a header line every `every` seconds.
bool closed_while_trickling(int fd, double seconds, double every) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (send(fd, "X-Slow: 1\r\n", 11, MSG_NOSIGNAL) < 0) return true;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(every * 1000)) > 0) {
      char buf[64];
      if (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) <= 0) return true;
    }
  }
  return false;
}

// Slowloris: 40 connections that send a header line every 0.4 s, more than the HTTP threads of
// a --parallel 1 server (18). Requests that arrive whole are answered at once all the while, and
// a connection that trickles is closed after --read-timeout even while it keeps sending.
TEST(ServerAccess, SlowClientsCannotHoldTheThreads) {
  EKV_REQUIRE_SHARED(kSmall);
  ServerProcess server(
      {"-m", shared_path(kSmall), "--parallel", "1", "--read-timeout", "2", "--max-reading", "8"});
  ASSERT_GT(server.port(), 0);
  const int port = server.port();
  std::vector<int> slow;
  for (int i = 0; i < 40; ++i) {
    const int fd = connect_raw(port);
    ASSERT_GE(fd, 0);
    const std::string head = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    ASSERT_EQ(send(fd, head.data(), head.size(), MSG_NOSIGNAL), static_cast<ssize_t>(head.size()));
    slow.push_back(fd);
  }
  std::atomic<bool> done{false};
  std::thread trickle([&] {
    while (!done) {
      for (const int fd : slow) send(fd, "X-Slow: 1\r\n", 11, MSG_NOSIGNAL);
      std::this_thread::sleep_for(std::chrono::milliseconds(400));
    }
  });
  // Over --max-reading the longest-reading connections are closed: exactly 8 stay open.
  auto closed_count = [&] {
    int closed = 0;
    for (const int fd : slow) {
      char b;
      const ssize_t got = recv(fd, &b, 1, MSG_DONTWAIT | MSG_PEEK);
      closed += got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
    }
    return closed;
  };
  for (int i = 0; i < 75 && closed_count() < 32; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(closed_count(), 32) << "of 40 trickling connections over --max-reading 8";
  for (int i = 0; i < 6; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    // Clients that give up after 3 s, so a held server fails the test instead of hanging it.
    httplib::Client client("127.0.0.1", port);
    client.set_connection_timeout(3, 0);
    client.set_read_timeout(3, 0);
    auto health = client.Get("/health");
    auto done_reply = client.Post(
        "/v1/completions",
        json{{"prompt", "Once"}, {"max_tokens", 4}, {"temperature", 0}}.dump(), "application/json");
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!health || !done_reply) {
      ADD_FAILURE() << "round " << i << ": no answer within 3 s (the slow clients hold the server)";
      break;
    }
    EXPECT_EQ(health->status, 200) << "round " << i;
    EXPECT_EQ(done_reply->status, 200) << "round " << i << ": " << done_reply->body.substr(0, 200);
    EXPECT_LT(took, 1.5) << "round " << i << ": the slow clients held the server";
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  done = true;
  trickle.join();
  for (const int fd : slow) close(fd);
  // One trickling connection alone (no eviction): closed by the read timeout, not served forever.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const int fd = connect_raw(port);
  ASSERT_GE(fd, 0);
  const std::string head = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  ASSERT_EQ(send(fd, head.data(), head.size(), MSG_NOSIGNAL), static_cast<ssize_t>(head.size()));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(closed_while_trickling(fd, 6.0, 0.3)) << "a trickling connection was never closed";
  const double lasted = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GT(lasted, 1.5) << "closed before its read timeout";
  close(fd);
  EXPECT_EQ(get(port, "/health").status, 200);
  EXPECT_EQ(server.terminate(), 0);
}

}  // namespace
}  // namespace eigenkv
