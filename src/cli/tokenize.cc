// eigenkv tokenize: ids for a text, from a model's vocabulary or a tokenizer.json.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace eigenkv::cli {
namespace {

struct TokenizeFlags {
  ModelFlags model;
  std::string tokenizer_json;
  std::string prompt;
  std::string file;
  bool no_bos = false;
  bool bos = false;
  bool parse_special = false;  // the default now; the flag is kept for old command lines
  bool json = false;
  bool pieces = false;
};

std::unique_ptr<tok::Tokenizer> load_tokenizer(const TokenizeFlags& f) {
  EKV_CHECK(f.model.model.empty() != f.tokenizer_json.empty(),
            "give either -m MODEL or --tokenizer tokenizer.json");
  if (!f.tokenizer_json.empty()) return tok::tokenizer_from_json(f.tokenizer_json);
  return model::load_tokenizer(f.model.model);
}

void run(const TokenizeFlags& f) {
  auto tokenizer = load_tokenizer(f);
  const std::string text = prompt_text(f.prompt, f.file);
  EKV_CHECK(!f.prompt.empty() || !f.file.empty(), "no text: give -p TEXT or -f FILE");
  EKV_CHECK(!(f.bos && f.no_bos), "give --bos or --no-bos, not both");
  // BOS as the tokenizer's own default (GGUF add_bos_token; for tokenizer.json its
  // post-processor, or tokenizer_config.json's add_bos_token), as Hugging Face and llama.cpp add it.
  const bool add_bos = f.bos || (!f.no_bos && tokenizer->add_bos_by_default());
  const std::vector<int32_t> ids = tokenizer->encode(text, add_bos, parse_special_text());
  if (f.json) {
    std::printf("%s\n", nlohmann::json{{"ids", ids}}.dump().c_str());
    return;
  }
  if (f.pieces) {
    for (int32_t id : ids) {
      nlohmann::json piece = tokenizer->token_to_piece(id);
      std::printf("%6d %s\n", id,
                  piece.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
    return;
  }
  std::string line = "[";
  for (size_t i = 0; i < ids.size(); ++i) line += (i ? ", " : "") + std::to_string(ids[i]);
  std::printf("%s]\n", line.c_str());
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto flags = std::make_shared<TokenizeFlags>();
  CLI::App* cmd = app.add_subcommand("tokenize", "token ids of a text");
  add_model_flags(cmd, flags->model, false);
  cmd->add_option("--tokenizer", flags->tokenizer_json,
                  "a Hugging Face tokenizer.json (instead of -m)");
  cmd->add_option("-p,--prompt", flags->prompt, "text to tokenize");
  cmd->add_option("-f,--file", flags->file, "read the text from a file");
  cmd->add_flag("--no-bos", flags->no_bos, "do not prepend the BOS token");
  cmd->add_flag("--bos", flags->bos,
                "prepend the BOS token even where the tokenizer does not by default");
  cmd->add_flag("--parse-special", flags->parse_special,
                "match special tokens written in the text (the default; see --no-parse-special)");
  cmd->add_flag("--pieces", flags->pieces, "print one id and its text piece per line");
  cmd->add_flag("--json", flags->json, "print {\"ids\": [...]}");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
