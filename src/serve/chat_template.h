// Chat messages to a prompt. Models ship a Jinja chat template (GGUF tokenizer.chat_template,
// or chat_template in tokenizer_config.json); rather than run Jinja, the server recognises the
// common template families from marker strings in the template text and renders them itself.
// A model with no template, or one not recognised, gets the plain format:
//     "System: ...\nUser: ...\nAssistant: ...\n" ... ending in "Assistant:"
// with generation stopped at the next "\nUser:" or "\nSystem:".
#pragma once

#include <string>
#include <vector>

#include "serve/request.h"

namespace eigenkv::model {
class Model;
}

namespace eigenkv::serve {

enum class ChatFamily { kPlain, kChatml, kLlama2, kLlama3, kZephyr };

// "plain", "chatml", "llama-2", "llama-3", "zephyr".
const char* chat_family_name(ChatFamily family);

// The family whose markers the template text contains; kPlain for an empty or unknown template.
ChatFamily detect_chat_family(const std::string& template_text);

// The template text a model carries (empty when it has none).
std::string model_chat_template(const model::Model& model);

struct ChatPrompt {
  std::string text;               // to tokenize with BOS by the model's rule, specials parsed
  std::vector<std::string> stop;  // stop strings the format needs
};

ChatPrompt render_chat(ChatFamily family, const std::vector<ChatMessage>& messages);

}  // namespace eigenkv::serve
