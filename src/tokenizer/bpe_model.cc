#include "tokenizer/bpe_model.h"

#include <queue>
#include <utility>

#include "tokenizer/unicode.h"

namespace eigenkv::tok {
namespace {

uint64_t pair_key(int32_t left, int32_t right) {
  return static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32 | static_cast<uint32_t>(right);
}

// A candidate merge of the symbol at `pos` with its right neighbour.
struct Candidate {
  int32_t rank;
  int32_t pos;
  int32_t merged;
};

// Lowest rank first; among equal ranks the leftmost pair.
struct LaterCandidate {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  }
};

}  // namespace

BpeModel::BpeModel(TokenIdMap token_ids, const std::vector<BpeMerge>& merges, BpeOptions options)
    : token_ids_(std::move(token_ids)), options_(std::move(options)) {
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const BpeMerge& m = merges[rank];
    merges_.try_emplace(pair_key(m.left, m.right),
                        RankedMerge{static_cast<int32_t>(rank), m.merged});
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = token_ids_.find(byte_token_text(static_cast<uint8_t>(b)));
    byte_ids_[b] = it == token_ids_.end() ? -1 : it->second;
  }
}

const BpeModel::RankedMerge* BpeModel::find_merge(int32_t left, int32_t right) const {
  const auto it = merges_.find(pair_key(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

std::vector<BpeModel::Symbol> BpeModel::initial_symbols(std::string_view word) const {
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto add = [&](int32_t id) { symbols.push_back({id, -1, -1, true}); };
  bool unk_pending = false;
  const auto flush_unk = [&] {
    if (unk_pending) add(options_.unk_id);
    unk_pending = false;
  };
  const bool affixed =
      !options_.continuing_subword_prefix.empty() || !options_.end_of_word_suffix.empty();
  std::string affixed_char;
  for (size_t pos = 0; pos < word.size();) {
    const size_t length = decode_utf8(word, pos).length;
    std::string_view character = word.substr(pos, length);
    if (affixed) {
      affixed_char.clear();
      if (pos > 0) affixed_char += options_.continuing_subword_prefix;
      affixed_char += character;
      if (pos + length == word.size()) affixed_char += options_.end_of_word_suffix;
      character = affixed_char;
    }
    pos += length;
    if (const auto it = token_ids_.find(character); it != token_ids_.end()) {
      flush_unk();
      add(it->second);
      continue;
    }
    if (options_.byte_fallback) {
      bool all_bytes_known = true;
      for (const char c : character) all_bytes_known &= byte_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all_bytes_known) {
        flush_unk();
        for (const char c : character) add(byte_ids_[static_cast<uint8_t>(c)]);
        continue;
      }
    }
    if (options_.unk_id < 0) continue;
    if (!options_.fuse_unk) flush_unk();
    unk_pending = true;
  }
  flush_unk();
  for (size_t i = 0; i < symbols.size(); ++i) {
    symbols[i].prev = static_cast<int32_t>(i) - 1;
    symbols[i].next = i + 1 < symbols.size() ? static_cast<int32_t>(i + 1) : -1;
  }
  return symbols;
}

void BpeModel::merge_symbols(std::vector<Symbol>& symbols) const {
  std::priority_queue<Candidate, std::vector<Candidate>, LaterCandidate> queue;
  const auto propose = [&](int32_t pos) {
    if (pos < 0 || symbols[pos].next < 0) return;
    if (const RankedMerge* m = find_merge(symbols[pos].id, symbols[symbols[pos].next].id)) {
      queue.push({m->rank, pos, m->merged});
    }
  };
  for (int32_t pos = 0; pos + 1 < static_cast<int32_t>(symbols.size()); ++pos) propose(pos);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // A stale candidate: one of its symbols merged since it was proposed.
    const RankedMerge* m = find_merge(left.id, right.id);
    if (m == nullptr || m->merged != top.merged) continue;
    left.id = top.merged;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    propose(left.prev);
    propose(top.pos);
  }
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (options_.ignore_merges) {
    if (const auto it = token_ids_.find(word); it != token_ids_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<Symbol> symbols = initial_symbols(word);
  merge_symbols(symbols);
  for (const Symbol& s : symbols) {
    if (s.alive) out.push_back(s.id);
  }
}

}  // namespace eigenkv::tok
