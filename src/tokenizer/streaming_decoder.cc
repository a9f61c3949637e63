#include <algorithm>

#include "tokenizer/tokenizer.h"

namespace eigenkv::tok {
namespace {

// Length of a UTF-8 sequence announced by `lead`, or 0 when `lead` cannot start one.
size_t announced_length(uint8_t lead) {
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 0;
}

// How many bytes of `text` can be released: all but a final sequence that has started and could
// still be completed by more bytes. Malformed bytes are released, since nothing can fix them.
size_t releasable_length(const std::string& text) {
  const size_t size = text.size();
  for (size_t back = 1; back <= std::min<size_t>(3, size); ++back) {
    const auto byte = static_cast<uint8_t>(text[size - back]);
    if ((byte & 0xC0) == 0x80) continue;  // continuation byte: look further back
    return announced_length(byte) > back ? size - back : size;
  }
  return size;
}

}  // namespace

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool at_text_start)
    : tokenizer_(tokenizer), strip_space_(at_text_start && tokenizer.strips_leading_space()) {}

std::string StreamingDecoder::push(int32_t id) {
  std::string piece = tokenizer_.token_to_piece(id);
  if (strip_space_ && !piece.empty()) {
    if (piece.starts_with(' ')) piece.erase(0, 1);
    strip_space_ = false;
  }
  pending_ += piece;
  const size_t ready = releasable_length(pending_);
  std::string text = pending_.substr(0, ready);
  pending_.erase(0, ready);
  return text;
}

std::string StreamingDecoder::finish() {
  std::string rest;
  rest.swap(pending_);
  return rest;
}

}  // namespace eigenkv::tok
