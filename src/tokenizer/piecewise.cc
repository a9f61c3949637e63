#include "tokenizer/piecewise.h"

namespace eigenkv::tok {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581

}  // namespace

WordEdges find_word_edges(const TokenIdMap& token_ids) {
  bool marks_only_lead = true;
  bool marks_only_trail = true;
  for (const auto& [text, id] : token_ids) {
    size_t lead = 0;
    while (text.compare(lead, kSpaceMark.size(), kSpaceMark) == 0) lead += kSpaceMark.size();
    size_t trail = text.size();
    while (trail >= lead + kSpaceMark.size() &&
           text.compare(trail - kSpaceMark.size(), kSpaceMark.size(), kSpaceMark) == 0) {
      trail -= kSpaceMark.size();
    }
    const std::string_view body = std::string_view(text).substr(lead, trail - lead);
    const bool has_lead = lead > 0;
    const bool has_trail = trail < text.size() && trail > lead;
    const bool inner_mark = body.find(kSpaceMark) != std::string_view::npos;
    marks_only_lead &= !inner_mark && !has_trail;
    marks_only_trail &= !inner_mark && !(has_lead && trail > lead);
  }
  if (marks_only_lead) return WordEdges::kBeforeSpaceRuns;
  if (marks_only_trail) return WordEdges::kAfterSpaceRuns;
  return WordEdges::kNone;
}

std::vector<std::string_view> split_words(std::string_view text, WordEdges edges) {
  if (edges == WordEdges::kNone) return {text};
  std::vector<std::string_view> words;
  size_t word_start = 0;
  size_t pos = 0;
  while ((pos = text.find(kSpaceMark, pos)) != std::string_view::npos) {
    // [pos, run_end) is a maximal run of marks.
    size_t run_end = pos;
    while (text.compare(run_end, kSpaceMark.size(), kSpaceMark) == 0) run_end += kSpaceMark.size();
    const size_t cut = edges == WordEdges::kBeforeSpaceRuns ? pos : run_end;
    if (cut > word_start && cut < text.size()) {
      words.push_back(text.substr(word_start, cut - word_start));
      word_start = cut;
    }
    pos = run_end;
  }
  if (word_start < text.size()) words.push_back(text.substr(word_start));
  return words;
}

}  // namespace eigenkv::tok
