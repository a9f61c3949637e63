#include "serve/chat_template.h"

#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "model/model.h"

namespace eigenkv::serve {
namespace {

bool contains(const std::string& text, const char* marker) {
  return text.find(marker) != std::string::npos;
}

std::string capitalised(const std::string& role) {
  std::string out = role;
  if (!out.empty()) out[0] = static_cast<char>(out[0] - 'a' + 'A');
  return out;
}

// Llama 2: the system prompt goes inside the first [INST] block; each exchange is its own
// <s>...</s> (the first <s> comes from the tokenizer's BOS).
std::string render_llama2(const std::vector<ChatMessage>& messages) {
  std::string out, system;
  bool first_turn = true;
  for (const ChatMessage& m : messages) {
    if (m.role == "system") {
      system = m.content;
    } else if (m.role == "user") {
      if (!first_turn) out += "<s>";
      out += "[INST] ";
      if (!system.empty()) out += "<<SYS>>\n" + system + "\n<</SYS>>\n\n";
      system.clear();
      out += m.content + " [/INST]";
      first_turn = false;
    } else {
      out += " " + m.content + " </s>";
    }
  }
  return out;
}

}  // namespace

const char* chat_family_name(ChatFamily family) {
  switch (family) {
    case ChatFamily::kChatml:
      return "chatml";
    case ChatFamily::kLlama2:
      return "llama-2";
    case ChatFamily::kLlama3:
      return "llama-3";
    case ChatFamily::kZephyr:
      return "zephyr";
    case ChatFamily::kPlain:
      break;
  }
  return "plain";
}

ChatFamily detect_chat_family(const std::string& t) {
  if (contains(t, "<|im_start|>")) return ChatFamily::kChatml;
  if (contains(t, "<|start_header_id|>")) return ChatFamily::kLlama3;
  if (contains(t, "[INST]")) return ChatFamily::kLlama2;
  if (contains(t, "<|user|>") && contains(t, "<|assistant|>")) return ChatFamily::kZephyr;
  return ChatFamily::kPlain;
}

std::string model_chat_template(const model::Model& model) {
  const std::string& path = model.path();
  if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".gguf") == 0) {
    const io::GgufFile gguf(path);
    return gguf.find_string("tokenizer.chat_template").value_or("");
  }
  const std::string& config = model.tokenizer_config_json();
  if (config.empty()) return "";
  const nlohmann::json j = nlohmann::json::parse(config, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("chat_template") && j["chat_template"].is_string()) {
    return j["chat_template"].get<std::string>();
  }
  return "";
}

ChatPrompt render_chat(ChatFamily family, const std::vector<ChatMessage>& messages) {
  ChatPrompt p;
  switch (family) {
    case ChatFamily::kChatml:
      for (const ChatMessage& m : messages) {
        p.text += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      }
      p.text += "<|im_start|>assistant\n";
      p.stop = {"<|im_end|>"};
      break;
    case ChatFamily::kLlama3:
      for (const ChatMessage& m : messages) {
        p.text +=
            "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
      }
      p.text += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      p.stop = {"<|eot_id|>"};
      break;
    case ChatFamily::kLlama2:
      p.text = render_llama2(messages);
      break;
    case ChatFamily::kZephyr:
      for (const ChatMessage& m : messages) p.text += "<|" + m.role + "|>\n" + m.content + "</s>\n";
      p.text += "<|assistant|>\n";
      p.stop = {"</s>"};
      break;
    case ChatFamily::kPlain:
      for (const ChatMessage& m : messages) p.text += capitalised(m.role) + ": " + m.content + "\n";
      p.text += "Assistant:";
      p.stop = {"\nUser:", "\nSystem:"};
      break;
  }
  return p;
}

}  // namespace eigenkv::serve
