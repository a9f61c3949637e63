#include "serve/server.h"

#include <httplib.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>

#include "serve/connection_guard.h"
#include "serve/format.h"
#include "serve/peer_socket.h"
#include "tokenizer/tokenizer.h"
#include "util/progress.h"

namespace eigenkv::serve {

// httplib's library build listens with a backlog of 5, so a burst of clients connecting at once
// overflows the accept queue and some of them fail; listen() again widens it.
class HttpServer : public httplib::Server {
 public:
  void widen_backlog() { ::listen(svr_sock_, SOMAXCONN); }
};

// One request's sequences, shared by the handler and (when streaming) the content provider.
struct Generation {
  explicit Generation(PeerSocket client) : peer(client) {}

  std::vector<std::shared_ptr<Sequence>> sequences;
  PeerSocket peer;
  ResponseMeta meta;
  bool chat = false;
  bool logprobs = false;
  bool include_usage = false;
  int64_t n = 1;  // choices per prompt: the prompt's tokens count once in the usage
  std::string endpoint;
  double start = 0;
  double peer_checked = 0;  // when the client's connection was last looked at
  // Called once with the request's status when a stream ends: before its last chunk goes out
  // (so a client that has read the whole stream finds it in the metrics), or, when the client
  // went away, from the connection's release.
  std::function<void(int)> on_end;
  bool ended = false;

  void end(int status) {
    if (ended) return;
    ended = true;
    if (on_end) on_end(status);
  }

  void cancel_all(const std::string& reason) {
    for (auto& s : sequences) s->cancel(reason);
  }
};

namespace {

using nlohmann::json;

constexpr auto kPoll = std::chrono::milliseconds(100);  // how often a waiting handler looks
                                                        // whether its client is still there

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string new_id(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  return cat(prefix, "-", unix_seconds(), "-", counter++);
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message,
                const std::string& type, const std::string& param = "",
                const std::string& code = "") {
  json body = error_object(message, type, param, status);
  if (!code.empty()) body["error"]["code"] = code;
  send_json(res, status, body);
}

void send_api_error(httplib::Response& res, const ApiError& e) {
  send_error(res, e.status(), e.what(), e.type(), e.param(), e.code());
}

// Compares in time that depends on the lengths only, so a key cannot be guessed byte by byte.
bool same_secret(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// The host part of a Host header: "[::1]:8080" -> "::1", "localhost:80" -> "localhost".
std::string host_name(const std::string& header) {
  if (!header.empty() && header[0] == '[') {
    const size_t end = header.find(']');
    return end == std::string::npos ? header : header.substr(1, end - 1);
  }
  return header.substr(0, header.rfind(':'));  // npos: the whole header
}

// An IPv4 or IPv6 address literal (which DNS rebinding cannot forge), or a loopback name.
bool names_this_machine(const std::string& name, const std::string& bound) {
  if (name == "localhost" || name == bound) return true;
  unsigned char buf[16];
  return inet_pton(AF_INET, name.c_str(), buf) == 1 || inet_pton(AF_INET6, name.c_str(), buf) == 1;
}

// Waits for sequence i's next chunk; nullopt when the client went away meanwhile. Chunks may
// arrive faster than kPoll, so the client is looked at by the clock, not only when idle.
std::optional<Chunk> next_chunk(Generation& g, size_t i) {
  while (true) {
    std::optional<Chunk> c = g.sequences[i]->next(kPoll);
    const double now = now_seconds();
    if (now - g.peer_checked >= 0.001 * kPoll.count()) {
      g.peer_checked = now;
      if (g.peer.closed()) {
        g.cancel_all("disconnect");
        return std::nullopt;
      }
    }
    if (c) return c;
  }
}

bool finish_stream(Generation& g, httplib::DataSink& sink) {
  const std::string done = "data: [DONE]\n\n";
  sink.write(done.data(), done.size());
  g.end(200);
  sink.done();
  return true;
}

// Writes the whole event stream; false when the client went away.
bool stream_events(Generation& g, httplib::DataSink& sink, const tok::Tokenizer& tokenizer) {
  auto event = [&](const json& j) {
    const std::string line = "data: " + dump(j) + "\n\n";
    return sink.write(line.data(), line.size());
  };
  int64_t prompt_tokens = 0, completion_tokens = 0;
  for (size_t i = 0; i < g.sequences.size(); ++i) {
    for (bool first = true;; first = false) {
      std::optional<Chunk> c = next_chunk(g, i);
      if (!c) return false;
      if (c->error_status != 0) {  // one error event ends the whole stream
        g.cancel_all("error");
        event(error_object(c->error_message, c->error_type, "", c->error_status));
        return finish_stream(g, sink);
      }
      const int64_t index = static_cast<int64_t>(i);
      const json j =
          g.chat ? chat_chunk(g.meta, index, *c, first, g.logprobs, tokenizer)
                 : completion_chunk(g.meta, index, *c, g.logprobs, tokenizer);
      if (!event(j)) {
        g.cancel_all("disconnect");
        return false;
      }
      if (c->last()) {
        if (index % g.n == 0) prompt_tokens += c->prompt_tokens;  // once per prompt
        completion_tokens += c->completion_tokens;
        break;
      }
    }
  }
  if (g.include_usage) {
    event({{"id", g.meta.id},
           {"object", g.chat ? "chat.completion.chunk" : "text_completion"},
           {"created", g.meta.created},
           {"model", g.meta.model},
           {"choices", json::array()},
           {"usage", usage_object(prompt_tokens, completion_tokens)}});
  }
  return finish_stream(g, sink);
}

}  // namespace

Server::Server(const model::Model& model, ServerOptions options)
    : model_(model),
      options_(std::move(options)),
      chat_family_(detect_chat_family(model_chat_template(model))),
      scheduler_(model, options_.scheduler, metrics_),
      http_(std::make_unique<HttpServer>()) {
  info_.model_id = options_.model_id;
  info_.compressed = model.is_compressed();
  info_.chat_template = chat_family_name(chat_family_);
  const int threads = options_.http_threads > 0
                          ? options_.http_threads
                          : static_cast<int>(2 * options_.scheduler.parallel + 16);
  EKV_CHECK(options_.read_timeout_seconds > 0, "the read timeout must be positive, found ",
            options_.read_timeout_seconds);
  guard_ = std::make_unique<ConnectionGuard>(ConnectionGuardOptions{
      options_.read_timeout_seconds,
      options_.max_reading > 0 ? options_.max_reading : std::max(2, threads / 2)});
  http_->new_task_queue = [this, threads] { return guard_->queue(threads); };
  // After each response the connection reads again (keep-alive): its read clock restarts.
  http_->set_logger([](const httplib::Request&, const httplib::Response&) {
    ConnectionGuard::response_written();
  });
  http_->set_payload_max_length(options_.max_body_bytes);
  // httplib's default also sets SO_REUSEPORT, which lets a second server bind a port in use and
  // silently share its clients; SO_REUSEADDR alone still allows a quick restart.
  http_->set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  install_routes();
}

Server::~Server() { stop(0); }

int Server::bind() {
  if (options_.port == 0) {
    bound_port_ = http_->bind_to_any_port(options_.host);
  } else if (http_->bind_to_port(options_.host, options_.port)) {
    bound_port_ = options_.port;
  }
  EKV_CHECK(bound_port_ > 0, "cannot listen on ", options_.host, ":", options_.port,
            " (address in use, or not an address of this machine)");
  http_->widen_backlog();
  return bound_port_;
}

bool Server::run() { return http_->listen_after_bind(); }

void Server::stop(double drain_seconds) {
  stopping_ = true;
  scheduler_.shutdown(drain_seconds);
  http_->stop();
}

bool Server::admit(const httplib::Request& req, httplib::Response& res) {
  const std::string origin = req.get_header_value("Origin");
  if (!origin.empty()) {
    const auto& allowed = options_.allowed_origins;
    const bool listed = std::find(allowed.begin(), allowed.end(), origin) != allowed.end() ||
                        std::find(allowed.begin(), allowed.end(), "*") != allowed.end();
    if (!listed) {
      send_error(res, 403,
                 cat("cross-origin requests from '", brief(origin),
                     "' are refused (eigenkv serve --allow-origin lists the allowed ones)"),
                 "permission_error");
      return false;
    }
    res.set_header("Access-Control-Allow-Origin", origin);
    res.set_header("Vary", "Origin");
  }
  const bool open = options_.open_health && (req.path == "/health" || req.path == "/metrics");
  if (!options_.api_keys.empty()) {
    if (open || req.method == "OPTIONS") return true;
    const std::string auth = req.get_header_value("Authorization");
    const std::string prefix = "Bearer ";
    bool ok = false;
    if (auth.compare(0, prefix.size(), prefix) == 0) {
      const std::string given = auth.substr(prefix.size());
      for (const std::string& key : options_.api_keys) ok |= same_secret(given, key);
    }
    if (!ok) {
      res.set_header("WWW-Authenticate", "Bearer");
      send_json(res, 401,
                {{"error",
                  {{"message", auth.empty() ? "this server needs an API key: send "
                                              "'Authorization: Bearer KEY'"
                                            : "the API key is not valid"},
                   {"type", "invalid_request_error"},
                   {"param", nullptr},
                   {"code", "invalid_api_key"}}}});
      return false;
    }
    return true;
  }
  const std::string host = req.get_header_value("Host");
  if (!names_this_machine(host_name(host), options_.host)) {
    send_error(res, 403,
               cat("the Host header '", brief(host),
                   "' does not name this server (a guard against DNS rebinding; give the "
                   "server an --api-key to serve other names)"),
               "permission_error");
    return false;
  }
  return true;
}

void Server::install_routes() {
  http_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    // A request without a body is whole once its head is in; POST bodies are read by `wrap`.
    if (req.method != "POST") ConnectionGuard::request_read();
    if (admit(req, res)) return httplib::Server::HandlerResponse::Unhandled;
    res.set_header("Connection", "close");
    metrics_.count_request("refused", res.status);
    return httplib::Server::HandlerResponse::Handled;
  });
  // A browser's preflight for an allowed origin (admit() has refused the others).
  http_->Options(".*", [](const httplib::Request& req, httplib::Response& res) {
    res.status = 204;
    res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    res.set_header("Access-Control-Allow-Headers",
                   req.get_header_value("Access-Control-Request-Headers").empty()
                       ? "Content-Type, Authorization"
                       : req.get_header_value("Access-Control-Request-Headers"));
  });
  // Every JSON endpoint turns engine errors into an error object and records the request.
  // The body is read here, chunked or not, under max_body_bytes: httplib's own limit holds for
  // Content-Length bodies only.
  auto wrap = [this](const std::string& endpoint, auto handler) {
    return [this, endpoint, handler](const httplib::Request& req, httplib::Response& res,
                                     const httplib::ContentReader& reader) {
      const double start = now_seconds();
      try {
        std::string body;
        bool too_large = false;
        const bool read = reader([&](const char* data, size_t n) {
          if (body.size() + n > options_.max_body_bytes) {
            too_large = true;
            return false;
          }
          body.append(data, n);
          return true;
        });
        if (too_large || (!read && res.status == 413)) {
          res.set_header("Connection", "close");  // the rest of the body is never read
          throw ApiError(413, cat("the body is larger than the server's limit of ",
                                  options_.max_body_bytes, " bytes"));
        }
        if (!read) throw ApiError(400, "the body could not be read");
        ConnectionGuard::request_read();  // generation time is --timeout's, not the guard's
        (this->*handler)(req, body, res);
      } catch (const ApiError& e) {
        send_api_error(res, e);
      } catch (const std::exception& e) {
        send_error(res, 500, cat("internal error: ", e.what()), "server_error");
      }
      // Streams count when they end (respond's completion handler), whatever res.status says now.
      if (res.get_header_value("Content-Type") != "text/event-stream") {
        metrics_.count_request(endpoint, res.status);
        metrics_.observe_latency(endpoint, now_seconds() - start);
      }
    };
  };
  http_->Post("/v1/completions", wrap("completions", &Server::handle_completions));
  http_->Post("/v1/chat/completions", wrap("chat", &Server::handle_chat));
  http_->Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    handle_models(res);
    metrics_.count_request("models", res.status);
  });
  http_->Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
    handle_model(req.matches[1], res);
    metrics_.count_request("models", res.status);
  });
  // vLLM's tokenizer endpoints (lm-evaluation-harness's remote tokenizer calls them).
  http_->Post("/tokenize", wrap("tokenize", &Server::handle_tokenize));
  http_->Post("/detokenize", wrap("detokenize", &Server::handle_detokenize));
  http_->Get("/tokenizer_info", [this](const httplib::Request&, httplib::Response& res) {
    handle_tokenizer_info(res);
    metrics_.count_request("tokenizer_info", res.status);
  });
  http_->Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const bool up = !stopping_;
    send_json(res, up ? 200 : 503, {{"status", up ? "ok" : "shutting down"}});
    metrics_.count_request("health", res.status);
  });
  http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    EngineGauges g = scheduler_.gauges();
    g.ctx = options_.limits.ctx;
    res.set_content(metrics_.render(g, info_), "text/plain; version=0.0.4");
    metrics_.count_request("metrics", 200);
  });
  // Unknown paths, bodies over the cap (413) and other failures httplib answers itself get an
  // error object too.
  using WithResponse = httplib::Server::HandlerWithResponse;
  http_->set_error_handler(WithResponse([this](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    const std::string message =
        res.status == 413   ? cat("the body is larger than the server's limit of ",
                                  options_.max_body_bytes, " bytes")
        : res.status == 404 ? std::string("no such endpoint")
                            : cat("the request failed with HTTP status ", res.status);
    send_error(res, res.status, message, "invalid_request_error");
    metrics_.count_request("other", res.status);
    return httplib::Server::HandlerResponse::Handled;
  }));
}

json Server::model_entry(const std::string& id) const {
  const model::ModelConfig& c = model_.config();
  json meta = {{"n_ctx", options_.limits.ctx},
               {"n_ctx_train", c.n_ctx_train},
               {"n_vocab", c.n_vocab},
               {"n_layers", c.n_layers},
               {"kv_bytes_per_token", model_.kv_bytes_per_token()},
               {"compressed", model_.is_compressed()},
               {"chat_template", info_.chat_template}};
  return {{"id", id},
          {"object", "model"},
          {"created", unix_seconds()},
          {"owned_by", "eigenkv"},
          {"root", options_.model_id},
          {"max_model_len", options_.limits.ctx},
          {"meta", std::move(meta)}};
}

void Server::handle_models(httplib::Response& res) const {
  json data = json::array({model_entry(options_.model_id)});
  for (const std::string& alias : options_.aliases) data.push_back(model_entry(alias));
  send_json(res, 200, {{"object", "list"}, {"data", std::move(data)}});
}

void Server::check_model(const std::string& name) const {
  if (name.empty() || name == options_.model_id) return;
  const auto& a = options_.aliases;
  if (std::find(a.begin(), a.end(), name) != a.end()) return;
  throw ApiError(404,
                 cat("the model '", brief(name), "' does not exist; this server serves '",
                     options_.model_id, "'", a.empty() ? "" : " and its --alias names"),
                 "model", "invalid_request_error", "model_not_found");
}

void Server::handle_model(const std::string& id, httplib::Response& res) const {
  try {
    check_model(id.empty() ? std::string("?") : id);
    send_json(res, 200, model_entry(id));
  } catch (const ApiError& e) {
    send_api_error(res, e);
  }
}

void Server::handle_tokenize(const httplib::Request&, const std::string& text,
                             httplib::Response& res) {
  const TokenizeRequest r = parse_tokenize_request(parse_body(text));
  check_model(r.model);
  const tok::Tokenizer& tokenizer = model_.tokenizer();
  std::vector<int32_t> ids;
  if (r.messages.empty()) {
    ids = tokenizer.encode(r.prompt, r.add_special_tokens && tokenizer.add_bos_by_default(),
                           options_.limits.parse_special);
  } else {  // the chat endpoint's own rendering; its BOS rule unless add_special_tokens
    const ChatPrompt rendered = render_chat(chat_family_, r.messages);
    ids = tokenizer.encode(rendered.text, tokenizer.add_bos_by_default() || r.add_special_tokens,
                           /*parse_special=*/true);
  }
  json out = {{"count", ids.size()}, {"max_model_len", options_.limits.ctx}, {"tokens", ids}};
  if (r.return_token_strs) {
    json strs = json::array();
    for (const int32_t id : ids) strs.push_back(tokenizer.token_text(id));
    out["token_strs"] = std::move(strs);
  }
  send_json(res, 200, out);
}

void Server::handle_detokenize(const httplib::Request&, const std::string& text,
                               httplib::Response& res) {
  const DetokenizeRequest r = parse_detokenize_request(parse_body(text), model_.tokenizer());
  check_model(r.model);
  send_json(res, 200, {{"prompt", model_.tokenizer().decode(r.tokens)}});
}

void Server::handle_tokenizer_info(httplib::Response& res) const {
  const tok::Tokenizer& t = model_.tokenizer();
  auto text_of = [&](int32_t id) { return id >= 0 ? json(t.token_text(id)) : json(nullptr); };
  send_json(res, 200,
            {{"tokenizer_class", "eigenkv"},
             {"vocab_size", t.vocab_size()},
             {"bos_token", text_of(t.bos_id())},
             {"bos_token_id", t.bos_id() >= 0 ? json(t.bos_id()) : json(nullptr)},
             {"eos_token", text_of(t.eos_id())},
             {"eos_token_id", t.eos_id() >= 0 ? json(t.eos_id()) : json(nullptr)},
             {"add_bos_token", t.add_bos_by_default()},
             {"model_max_length", options_.limits.ctx},
             {"chat_template", info_.chat_template}});
}

void Server::submit_choices(Generation& g, const std::vector<int32_t>& prompt,
                            const GenerationParams& params) {
  // Choice k of the prompt is seeded seed + k; the others reuse the first one's prefill.
  std::shared_ptr<Sequence> first;
  for (int64_t k = 0; k < params.n; ++k) {
    GenerationParams choice = params;
    choice.sampler.seed += static_cast<uint64_t>(k);
    g.sequences.push_back(scheduler_.submit(prompt, choice, first));
    if (k == 0) first = g.sequences.back();
  }
}

void Server::handle_completions(const httplib::Request& req, const std::string& text,
                                httplib::Response& res) {
  const json body = parse_body(text);
  CompletionRequest r = parse_completion_request(body, model_.tokenizer(), options_.limits);
  check_model(r.model);
  auto g = std::make_shared<Generation>(PeerSocket(req.remote_addr, req.remote_port, bound_port_));
  g->meta = {new_id("cmpl"), unix_seconds(), options_.model_id, ""};
  g->logprobs = r.params.logprobs >= 0;
  g->include_usage = r.params.include_usage;
  g->endpoint = "completions";
  g->n = r.params.n;
  try {
    for (const auto& prompt : r.prompts) submit_choices(*g, prompt, r.params);
  } catch (const ApiError&) {
    g->cancel_all("rejected");  // a later prompt cannot run: the earlier ones need not either
    throw;
  }
  respond(g, r.params.stream, res);
}

void Server::handle_chat(const httplib::Request& req, const std::string& text,
                         httplib::Response& res) {
  const json body = parse_body(text);
  ChatRequest r = parse_chat_request(body, model_.tokenizer(), options_.limits);
  check_model(r.model);
  const ChatPrompt rendered = render_chat(chat_family_, r.messages);
  const tok::Tokenizer& tokenizer = model_.tokenizer();
  std::vector<int32_t> prompt =
      tokenizer.encode(rendered.text, tokenizer.add_bos_by_default(), /*parse_special=*/true);
  if (prompt.empty()) throw ApiError(400, "the messages render to no tokens", "messages");
  finish_max_tokens(r.params, r.max_tokens_given, -1, static_cast<int64_t>(prompt.size()),
                    options_.limits);
  r.params.stop.insert(r.params.stop.end(), rendered.stop.begin(), rendered.stop.end());
  auto g = std::make_shared<Generation>(PeerSocket(req.remote_addr, req.remote_port, bound_port_));
  g->meta = {new_id("chatcmpl"), unix_seconds(), options_.model_id, info_.chat_template};
  g->chat = true;
  g->logprobs = r.params.logprobs >= 0;
  g->include_usage = r.params.include_usage;
  g->endpoint = "chat";
  g->n = r.params.n;
  try {
    submit_choices(*g, prompt, r.params);
  } catch (const ApiError&) {
    g->cancel_all("rejected");
    throw;
  }
  respond(g, r.params.stream, res);
}

void Server::respond(const std::shared_ptr<Generation>& g, bool stream, httplib::Response& res) {
  g->start = now_seconds();
  const tok::Tokenizer& tokenizer = model_.tokenizer();
  if (stream) {
    g->on_end = [g = g.get(), this](int status) {
      metrics_.count_request(g->endpoint, status);
      metrics_.observe_latency(g->endpoint, now_seconds() - g->start);
    };
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [g, &tokenizer](size_t, httplib::DataSink& sink) {
          return stream_events(*g, sink, tokenizer);
        },
        [g](bool success) {
          g->cancel_all("disconnect");  // no effect on sequences that already ended
          g->end(success ? 200 : 499);
        });
    return;
  }
  std::vector<ChoiceResult> choices(g->sequences.size());
  for (size_t i = 0; i < g->sequences.size(); ++i) {
    while (true) {
      std::optional<Chunk> c = next_chunk(*g, i);
      if (!c) {  // nobody is listening; the status only feeds the metrics
        send_error(res, 499, "the client closed the connection", "cancelled");
        return;
      }
      if (c->error_status != 0) {
        g->cancel_all("error");
        send_error(res, c->error_status, c->error_message, c->error_type);
        return;
      }
      append_chunk(choices[i], *c);
      if (c->last()) break;
    }
  }
  send_json(res, 200,
            g->chat ? chat_response(g->meta, choices, g->logprobs, tokenizer)
                    : completion_response(g->meta, choices, g->logprobs, tokenizer, g->n));
}

}  // namespace eigenkv::serve
