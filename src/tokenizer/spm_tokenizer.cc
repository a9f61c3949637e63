#include "tokenizer/spm_tokenizer.h"

#include <queue>
#include <string>
#include <utility>

#include "tokenizer/normalizer.h"
#include "tokenizer/piecewise.h"
#include "tokenizer/unicode.h"

namespace eigenkv::tok {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// A run of bytes of the text; merged symbols absorb their right neighbour.
struct Symbol {
  int32_t prev;
  int32_t next;
  uint32_t offset;
  uint32_t length;  // 0 once merged into the left neighbour
};

struct Bigram {
  float score;
  int32_t left;
  int32_t right;
  uint32_t length;
};

// Highest score first; among equal scores the leftmost pair.
struct LowerPriority {
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.score != b.score ? a.score < b.score : a.left > b.left;
  }
};

}  // namespace

SpmTokenizer::SpmTokenizer(Vocabulary vocab, std::vector<float> scores,
                           const std::vector<AddedToken>& added, bool add_space_prefix)
    : Tokenizer(std::move(vocab)),
      scores_(std::move(scores)),
      splitter_(added),
      add_space_prefix_(add_space_prefix) {
  const Vocabulary& v = this->vocab();
  token_ids_.reserve(v.size());
  for (int32_t id = 0; static_cast<size_t>(id) < v.size(); ++id) {
    if (!v.texts[id].empty()) token_ids_.try_emplace(v.texts[id], id);
  }
  word_edges_ = find_word_edges(token_ids_);
  // llama.cpp looks for <0xNN> first and then for the byte as a one-character token.
  for (int b = 0; b < 256; ++b) {
    auto it = token_ids_.find(byte_token_text(static_cast<uint8_t>(b)));
    if (it == token_ids_.end()) it = token_ids_.find(std::string(1, static_cast<char>(b)));
    byte_ids_[b] = it == token_ids_.end() ? -1 : it->second;
  }
}

std::vector<int32_t> SpmTokenizer::encode(std::string_view text, bool add_bos,
                                          bool parse_special) const {
  std::vector<int32_t> out;
  if (add_bos && bos_id() >= 0) out.push_back(bos_id());
  WordCache cache;
  const auto encode_word = [this](std::string_view word, std::vector<int32_t>& ids) {
    encode_escaped(word, ids);
  };
  bool after_token = true;  // the start of the text counts as following a token
  for (const Fragment& fragment : splitter_.split(text, parse_special)) {
    if (fragment.is_token()) {
      out.push_back(fragment.token_id);
      after_token = true;
      continue;
    }
    std::string spaced = add_space_prefix_ && after_token ? " " : "";
    spaced += fragment.text;
    const std::string escaped = replace_all(spaced, " ", kSpaceMark);
    for (const std::string_view word : split_words(escaped, word_edges_)) {
      cache.encode(word, encode_word, out);
    }
    after_token = false;
  }
  return out;
}

void SpmTokenizer::append_bytes(std::string_view text, std::vector<int32_t>& out) const {
  bool all_bytes_known = true;
  for (const char c : text) all_bytes_known &= byte_ids_[static_cast<uint8_t>(c)] >= 0;
  if (!all_bytes_known) {
    if (unk_id() >= 0) out.push_back(unk_id());  // one unknown character, one <unk>
    return;
  }
  for (const char c : text) out.push_back(byte_ids_[static_cast<uint8_t>(c)]);
}

void SpmTokenizer::encode_escaped(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<Symbol> symbols;
  symbols.reserve(text.size());
  // One symbol per character. llama.cpp trusts a lead byte's length even when the bytes after
  // it are no continuation bytes; splitting malformed UTF-8 where it breaks instead gives the
  // same symbols for valid text and keeps the text's spaces intact (every byte round-trips).
  for (size_t offset = 0; offset < text.size();) {
    const size_t length = decode_utf8(text, offset).length;
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({index - 1, offset + length < text.size() ? index + 1 : -1,
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(length)});
    offset += length;
  }

  std::priority_queue<Bigram, std::vector<Bigram>, LowerPriority> queue;
  const auto propose = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const uint32_t length = symbols[left].length + symbols[right].length;
    const auto it = token_ids_.find(text.substr(symbols[left].offset, length));
    if (it != token_ids_.end()) queue.push({scores_[it->second], left, right, length});
  };
  for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) propose(i - 1, i);

  while (!queue.empty()) {
    const Bigram bigram = queue.top();
    queue.pop();
    Symbol& left = symbols[bigram.left];
    Symbol& right = symbols[bigram.right];
    // Stale when either side merged since: then a length is 0 or the sum changed.
    if (left.length == 0 || right.length == 0 || left.length + right.length != bigram.length) {
      continue;
    }
    left.length += right.length;
    right.length = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = bigram.left;
    propose(left.prev, bigram.left);
    propose(bigram.left, left.next);
  }

  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
    const std::string_view piece = text.substr(symbols[i].offset, symbols[i].length);
    const auto it = token_ids_.find(piece);
    if (it != token_ids_.end()) {
      out.push_back(it->second);
    } else {
      append_bytes(piece, out);
    }
  }
}

}  // namespace eigenkv::tok
