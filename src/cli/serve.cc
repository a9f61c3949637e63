// eigenkv serve: an OpenAI-compatible HTTP server with continuous batching (docs/SERVER.md).
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <thread>

#include "cli/common.h"
#include "serve/server.h"
#include "util/error.h"
#include "util/files.h"

namespace eigenkv::cli {
namespace {

struct ServeFlags {
  ModelFlags model;
  std::string host = "127.0.0.1";
  int port = 8080;
  int64_t parallel = 8;
  int64_t ctx = 0;
  double kv_mem_mib = 0;
  int64_t max_tokens = 0;
  double timeout = 600;
  int64_t max_body = int64_t{8} << 20;
  double drain = 10;
  double read_timeout = 20;
  int max_reading = 0;
  std::string model_id;
  std::vector<std::string> aliases;
  std::vector<std::string> api_keys;
  std::string api_key_file;
  bool open_health = false;
  std::vector<std::string> allowed_origins;
};

// --api-key values and the lines of --api-key-file (blank lines and # comments skipped).
std::vector<std::string> api_keys(const ServeFlags& f) {
  std::vector<std::string> keys = f.api_keys;
  if (!f.api_key_file.empty()) {
    std::istringstream in(read_regular_file(f.api_key_file, uint64_t{1} << 20));
    for (std::string line; std::getline(in, line);) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (!line.empty() && line[0] != '#') keys.push_back(line);
    }
    EKV_CHECK(keys.size() > f.api_keys.size(), f.api_key_file, ": holds no API key");
  }
  for (const std::string& k : keys) {
    EKV_CHECK(!k.empty() && k.find_first_of(" \t") == std::string::npos,
              "an API key must be non-empty and hold no spaces");
  }
  return keys;
}

std::string default_model_id(const std::string& path) {
  std::filesystem::path p(path);
  if (p.filename().empty()) p = p.parent_path();  // a directory given with a trailing slash
  return p.extension() == ".gguf" ? p.stem().string() : p.filename().string();
}

serve::ServerOptions server_options(const ServeFlags& f, const model::Model& model) {
  serve::ServerOptions o;
  o.host = f.host;
  o.port = f.port;
  o.model_id = f.model_id.empty() ? default_model_id(f.model.model) : f.model_id;
  o.aliases = f.aliases;
  o.limits.ctx = f.ctx > 0 ? f.ctx : model.config().n_ctx_train;
  o.limits.max_tokens_cap = f.max_tokens > 0 ? f.max_tokens : o.limits.ctx;
  o.limits.parse_special = parse_special_text();
  o.max_body_bytes = static_cast<size_t>(f.max_body);
  o.read_timeout_seconds = f.read_timeout;
  o.max_reading = f.max_reading;
  o.api_keys = api_keys(f);
  o.open_health = f.open_health;
  o.allowed_origins = f.allowed_origins;
  EKV_CHECK(!f.open_health || !o.api_keys.empty(), "--open-health needs --api-key or --api-key-file");
  o.scheduler.parallel = f.parallel;
  o.scheduler.timeout_seconds = f.timeout;
  // By default every slot can hold a full context; --kv-mem sets the budget instead.
  const int64_t full = f.parallel * o.limits.ctx * model.kv_bytes_per_token();
  o.scheduler.kv_budget_bytes =
      f.kv_mem_mib > 0 ? static_cast<int64_t>(f.kv_mem_mib * 1024 * 1024) : full;
  return o;
}

void run(const ServeFlags& f) {
  // SIGINT/SIGTERM are taken by one thread with sigwait, so they must be blocked before any
  // other thread starts (threads inherit the mask).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto model = load_model(f.model);
  const serve::ServerOptions options = server_options(f, *model);
  serve::Server server(*model, options);
  const int port = server.bind();
  const int64_t bpt = model->kv_bytes_per_token();
  const int64_t at_ctx = options.scheduler.kv_budget_bytes / (bpt * options.limits.ctx);
  std::fprintf(stderr,
               "eigenkv serve: %s (%s), chat template %s\n"
               "  KV cache %lld bytes/token; budget %.1f MiB admits %lld sequences of %lld "
               "tokens (--parallel %lld)\n",
               options.model_id.c_str(), model->is_compressed() ? "compressed" : "uncompressed",
               server.info().chat_template.c_str(), static_cast<long long>(bpt),
               options.scheduler.kv_budget_bytes / 1048576.0, static_cast<long long>(at_ctx),
               static_cast<long long>(options.limits.ctx),
               static_cast<long long>(options.scheduler.parallel));
  if (options.limits.ctx > model->config().n_ctx_train) {
    std::fprintf(stderr,
                 "  warning: --ctx %lld is beyond the %lld tokens the model was trained on\n",
                 static_cast<long long>(options.limits.ctx),
                 static_cast<long long>(model->config().n_ctx_train));
  }
  std::printf("eigenkv serve: listening on http://%s:%d\n", options.host.c_str(), port);
  std::fflush(stdout);

  std::atomic<bool> signalled{false};
  std::thread stopper([&] {
    int signal_number = 0;
    sigwait(&stop_signals, &signal_number);
    if (signalled.exchange(true)) return;  // woken by main after the listener failed
    std::fprintf(stderr, "eigenkv serve: signal %d, finishing active requests\n", signal_number);
    server.stop(f.drain);
  });
  const bool listened = server.run();
  if (!signalled.exchange(true)) pthread_kill(stopper.native_handle(), SIGTERM);
  stopper.join();
  EKV_CHECK(listened, "the server stopped listening on ", options.host, ":", port, " on its own");
  std::fprintf(stderr, "eigenkv serve: stopped\n");
}

}  // namespace

void register_serve(CLI::App& app) {
  auto flags = std::make_shared<ServeFlags>();
  CLI::App* cmd = app.add_subcommand(
      "serve", "OpenAI-compatible HTTP server with continuous batching (docs/SERVER.md)");
  add_model_flags(cmd, flags->model);
  cmd->add_option("--host", flags->host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", flags->port, "port; 0 = any free port (printed on stdout)")
      ->check(number_in(0, 65535))
      ->capture_default_str();
  cmd->add_option("--parallel", flags->parallel, "most sequences decoded together")
      ->check(number_in(int64_t{1}, int64_t{1024}))
      ->capture_default_str();
  cmd->add_option("--ctx", flags->ctx, "tokens per sequence (default: the model's context)")
      ->check(number_in(int64_t{2}, int64_t{1} << 20));
  cmd->add_option("--kv-mem", flags->kv_mem_mib,
                  "KV cache budget in MiB shared by all sequences (default: --parallel full "
                  "contexts)")
      ->check(positive_number());
  cmd->add_option("--max-tokens", flags->max_tokens,
                  "largest max_tokens a request may ask for (default: --ctx)")
      ->check(positive_number());
  cmd->add_option("--timeout", flags->timeout, "seconds a request may take, queue included")
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_option("--max-body", flags->max_body, "largest request body in bytes")
      ->check(number_in(int64_t{1024}, int64_t{1} << 30))
      ->capture_default_str();
  cmd->add_option("--drain", flags->drain,
                  "on SIGINT/SIGTERM, seconds active requests may take to finish")
      ->check(non_negative_number())
      ->capture_default_str();
  cmd->add_option("--read-timeout", flags->read_timeout,
                  "seconds a connection has to send each request, head and body (slow clients "
                  "are closed)")
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_option("--max-reading", flags->max_reading,
                  "connections that may be sending a request at once; over that the slowest "
                  "is closed (default: half the HTTP threads)")
      ->check(positive_number());
  cmd->add_option("--api-key", flags->api_keys,
                  "require 'Authorization: Bearer KEY' on every request (repeatable; "
                  "--api-key-file keeps keys out of the process list)");
  cmd->add_option("--api-key-file", flags->api_key_file, "file of API keys, one a line");
  cmd->add_flag("--open-health", flags->open_health,
                "with API keys, leave /health and /metrics open");
  cmd->add_option("--allow-origin", flags->allowed_origins,
                  "browser origin allowed to call the server (repeatable; * for any); others "
                  "get 403");
  cmd->add_option("--alias", flags->aliases,
                  "another name a request's \"model\" may give (repeatable); other names get "
                  "404 model_not_found");
  cmd->add_option("--model-id", flags->model_id,
                  "model name in responses and /v1/models (default: the file's stem)");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
