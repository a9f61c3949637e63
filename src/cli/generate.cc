// eigenkv generate: text from a prompt (or from BOS alone), streamed as it is produced.
#include "model/generate.h"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/common.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace eigenkv::cli {
namespace {

struct GenerateFlags {
  ModelFlags model;
  std::string prompt;
  std::string file;
  int64_t n_tokens = 128;
  int64_t ctx = 0;
  double temperature = 0.8;
  int64_t top_k = 40;
  double top_p = 0.95;
  int64_t seed = -1;
  bool json = false;
  bool no_bos = false;
};

// Length of the longest prefix of s that does not end inside a UTF-8 sequence.
size_t complete_utf8_prefix(const std::string& s) {
  size_t end = s.size();
  size_t i = end;
  for (int back = 0; back < 4 && i > 0; ++back) {
    const unsigned char c = static_cast<unsigned char>(s[--i]);
    if ((c & 0xC0) != 0x80) {  // a lead byte (or ASCII): is its sequence complete?
      const size_t need = c < 0x80           ? 1
                          : (c >> 5) == 0x6  ? 2
                          : (c >> 4) == 0xE  ? 3
                          : (c >> 3) == 0x1E ? 4
                                             : 1;
      return end - i >= need ? end : i;
    }
  }
  return end;
}

void run(const GenerateFlags& f) {
  auto model = load_model(f.model);
  const tok::Tokenizer& tokenizer = model->tokenizer();
  const std::string text = prompt_text(f.prompt, f.file);
  std::vector<int32_t> prompt = tokenizer.encode(text, !f.no_bos, parse_special_text());
  EKV_CHECK(!prompt.empty(), "the prompt is empty and the model has no BOS token to start from");
  model::GenerateOptions options;
  options.max_tokens = f.n_tokens;
  options.ctx = f.ctx;
  options.sampler.temperature = f.temperature;
  options.sampler.top_k = f.top_k;
  options.sampler.top_p = f.top_p;
  options.sampler.seed = f.seed >= 0 ? static_cast<uint64_t>(f.seed) : std::random_device{}();

  // The prompt's text tokens (no BOS) are decoded together with the new ones so that spaces at
  // the boundary come out as the tokenizer means them; only what follows the prompt is printed.
  std::vector<int32_t> context;
  for (int32_t id : prompt) {
    if (id != tokenizer.bos_id()) context.push_back(id);
  }
  const size_t prompt_chars = tokenizer.decode(context).size();
  size_t printed = prompt_chars;
  if (!f.json) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  }
  auto on_token = [&](int32_t id) {
    context.push_back(id);
    if (f.json) return true;
    const std::string all = tokenizer.decode(context);
    const size_t ready = complete_utf8_prefix(all);
    if (ready > printed) {
      std::fwrite(all.data() + printed, 1, ready - printed, stdout);
      std::fflush(stdout);
      printed = ready;
    }
    return true;
  };
  model::GenerateResult r = model::generate(*model, prompt, options, on_token);
  const std::string all = tokenizer.decode(context);
  const double tps = r.decode_seconds > 0 ? r.ids.size() / r.decode_seconds : 0.0;
  if (f.json) {
    nlohmann::json out = {{"text", all.substr(std::min(prompt_chars, all.size()))},
                          {"ids", r.ids},
                          {"prompt_tokens", prompt.size()},
                          {"stop_reason", r.stop_reason},
                          {"seed", options.sampler.seed},
                          {"prefill_seconds", r.prefill_seconds},
                          {"tokens_per_s", tps}};
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return;
  }
  if (all.size() > printed) std::fwrite(all.data() + printed, 1, all.size() - printed, stdout);
  std::printf("\n");
  std::fprintf(stderr, "\n[%zu prompt tokens, %zu generated, %.1f tokens/s, stop: %s]\n",
               prompt.size(), r.ids.size(), tps, r.stop_reason.c_str());
}

}  // namespace

void register_generate(CLI::App& app) {
  auto flags = std::make_shared<GenerateFlags>();
  CLI::App* cmd = app.add_subcommand("generate", "generate text from a prompt (or from BOS)");
  add_model_flags(cmd, flags->model);
  cmd->add_option("-p,--prompt", flags->prompt, "prompt text (default: none, start from BOS)");
  cmd->add_option("-f,--file", flags->file, "read the prompt from a file");
  cmd->add_option("-n,--n-predict", flags->n_tokens, "tokens to generate")
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_option("--ctx", flags->ctx, "KV cache capacity in tokens (default: prompt + -n, at most the model's context)")
      ->check(positive_number());
  cmd->add_option("--temp", flags->temperature, "temperature; 0 = greedy")
      ->check(non_negative_number())
      ->capture_default_str();
  cmd->add_option("--top-k", flags->top_k, "keep the k most likely tokens; 0 = all")
      ->check(non_negative_number())
      ->capture_default_str();
  cmd->add_option("--top-p", flags->top_p, "nucleus sampling mass in (0, 1]")
      ->check(number_in(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--seed", flags->seed, "random seed (default: random)");
  cmd->add_flag("--no-bos", flags->no_bos, "do not prepend the BOS token");
  cmd->add_flag("--json", flags->json, "print one JSON object: text, ids, tokens_per_s");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
