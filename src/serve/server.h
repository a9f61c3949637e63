// The HTTP front: OpenAI-style endpoints over cpp-httplib, feeding the continuous-batching
// scheduler. POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
// GET /metrics. Bad requests get HTTP 400 with an OpenAI error object; nothing a client sends
// stops the server.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/model.h"
#include "serve/chat_template.h"
#include "serve/metrics.h"
#include "serve/request.h"
#include "serve/scheduler.h"

namespace httplib {
class Server;
class Request;
class Response;
}  // namespace httplib

namespace eigenkv::serve {

struct Generation;
class HttpServer;
class ConnectionGuard;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (bind() returns it)
  RequestLimits limits;
  SchedulerOptions scheduler;
  size_t max_body_bytes = size_t{8} << 20;
  std::string model_id;  // what /v1/models lists and responses name
  // Other names a request's "model" may give (--alias); any other name gets 404
  // model_not_found. A request without "model" is served.
  std::vector<std::string> aliases;
  int http_threads = 0;  // 0: enough for every sequence to have a waiting client, plus spare
  // A connection has read_timeout_seconds to deliver each request (head and body), and at most
  // max_reading connections (0: half the HTTP threads) may be delivering at once; over that, the
  // one reading longest is closed (ConnectionGuard: slow clients cannot take every thread).
  double read_timeout_seconds = 20;
  int max_reading = 0;
  // Access. With keys, every request needs "Authorization: Bearer KEY" (401 otherwise), except
  // /health and /metrics when open_health. Without keys, the Host header must name this machine
  // (a loopback name, an IP address or `host`), which stops DNS rebinding. A request with an
  // Origin header (a browser's cross-site request) is refused unless that origin is listed
  // ("*": any).
  std::vector<std::string> api_keys;
  bool open_health = false;
  std::vector<std::string> allowed_origins;
};

class Server {
 public:
  Server(const model::Model& model, ServerOptions options);
  ~Server();

  // Binds the listening socket; returns the port. Throws Error when it cannot.
  int bind();
  // Serves until stop(); returns false when the listener failed instead.
  bool run();
  // Graceful: /health turns 503, queued requests fail with 503, active sequences finish (cut off
  // after `drain_seconds`), open responses are written, then run() returns. Thread-safe.
  void stop(double drain_seconds);

  const ServerInfo& info() const { return info_; }

 private:
  void install_routes();
  // The access rules above: true when the request may go on, else `res` holds the refusal.
  bool admit(const httplib::Request& req, httplib::Response& res);
  // body: the request's body, read by the route under max_body_bytes.
  void handle_completions(const httplib::Request& req, const std::string& body,
                          httplib::Response& res);
  void handle_chat(const httplib::Request& req, const std::string& body, httplib::Response& res);
  void handle_models(httplib::Response& res) const;
  void handle_model(const std::string& id, httplib::Response& res) const;
  void handle_tokenize(const httplib::Request& req, const std::string& body, httplib::Response& res);
  void handle_detokenize(const httplib::Request& req, const std::string& body,
                         httplib::Response& res);
  void handle_tokenizer_info(httplib::Response& res) const;
  // Throws ApiError(404, model_not_found) unless `name` is empty, the model id or an alias.
  void check_model(const std::string& name) const;
  nlohmann::json model_entry(const std::string& id) const;
  // Submits the n choices of one prompt (params.n) to the scheduler, appending them to g: choice k
  // of the prompt is seeded seed + k, and the choices after the first reuse its prefill.
  void submit_choices(Generation& g, const std::vector<int32_t>& prompt,
                      const GenerationParams& params);
  // Streams the generation's chunks as server-sent events, or waits for them and answers once.
  void respond(const std::shared_ptr<Generation>& g, bool stream, httplib::Response& res);

  const model::Model& model_;
  ServerOptions options_;
  ChatFamily chat_family_;
  ServerInfo info_;
  Metrics metrics_;
  Scheduler scheduler_;
  std::unique_ptr<ConnectionGuard> guard_;  // outlives http_, whose task queue it made
  std::unique_ptr<HttpServer> http_;
  int bound_port_ = 0;
  std::atomic<bool> stopping_{false};
};

}  // namespace eigenkv::serve
