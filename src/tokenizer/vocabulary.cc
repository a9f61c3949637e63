#include "tokenizer/vocabulary.h"

#include <algorithm>

namespace eigenkv::tok {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// Markers that chat and base models emit when they are done, across the common families.
constexpr std::string_view kEndMarkers[] = {
    "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>",
    "<|im_end|>", "<|end|>",    "<end_of_turn>",   "<EOT>",
};

}  // namespace

void collect_end_of_generation_ids(Vocabulary& vocab) {
  std::vector<int32_t>& ids = vocab.end_of_generation_ids;
  if (vocab.contains(vocab.eos_id)) ids.push_back(vocab.eos_id);
  for (int32_t id = 0; static_cast<size_t>(id) < vocab.size(); ++id) {
    const std::string& text = vocab.texts[id];
    if (std::find(std::begin(kEndMarkers), std::end(kEndMarkers), text) != std::end(kEndMarkers)) {
      ids.push_back(id);
    }
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
}

std::string byte_token_text(uint8_t byte) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  return std::string{'<', '0', 'x', kHex[byte >> 4], kHex[byte & 15], '>'};
}

int parse_byte_token_text(std::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return -1;
  const int high = hex_value(text[3]);
  const int low = hex_value(text[4]);
  return high < 0 || low < 0 ? -1 : high * 16 + low;
}

}  // namespace eigenkv::tok
