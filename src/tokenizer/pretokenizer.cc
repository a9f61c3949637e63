#include "tokenizer/pretokenizer.h"

#include <utility>

#include "tokenizer/unicode.h"

namespace eigenkv::tok {

const char kGpt2SplitPattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char kLlama3SplitPattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*)"
    R"(|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char kQwen2SplitPattern[] =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*)"
    R"(|\s*[\r\n]+|\s+(?!\S)|\s+)";

class PreTokenizer::Step {
 public:
  virtual ~Step() = default;
  // Rewrites `pieces`; the first one begins the input when `at_input_start`.
  virtual void apply(std::vector<std::string>& pieces, bool at_input_start) const = 0;
};

namespace {

// A byte range of a piece, and whether the split counts it as a delimiter.
struct Segment {
  size_t begin;
  size_t end;
  bool delimiter;
};

std::vector<Segment> find_segments(std::string_view piece, const Regex& regex, bool invert) {
  const DecodedText decoded = decode_text(piece);
  const std::vector<size_t>& at = decoded.offsets;
  std::vector<Segment> segments;
  size_t gap_start = 0;
  size_t begin;
  size_t end;
  for (size_t pos = 0; pos <= decoded.cps.size() && regex.search(decoded.cps, pos, begin, end);) {
    if (end == begin) {  // empty matches split nothing
      pos = begin + 1;
      continue;
    }
    if (begin > gap_start) segments.push_back({at[gap_start], at[begin], invert});
    segments.push_back({at[begin], at[end], !invert});
    gap_start = pos = end;
  }
  if (gap_start < decoded.cps.size()) segments.push_back({at[gap_start], piece.size(), invert});
  return segments;
}

// Turns segments into pieces the way Hugging Face's split behaviours do.
void emit_segments(std::string_view piece, const std::vector<Segment>& segments,
                   SplitBehavior behavior, std::vector<std::string>& out) {
  std::vector<std::pair<size_t, size_t>> spans;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Segment& s : segments) {
        if (!s.delimiter) spans.emplace_back(s.begin, s.end);
      }
      break;
    case SplitBehavior::kIsolated:
      for (const Segment& s : segments) spans.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (size_t i = 0; i < segments.size(); ++i) {
        const bool joins = segments[i].delimiter && i > 0 && !segments[i - 1].delimiter;
        if (joins) {
          spans.back().second = segments[i].end;
        } else {
          spans.emplace_back(segments[i].begin, segments[i].end);
        }
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (size_t i = 0; i < segments.size(); ++i) {
        const bool previous_joins = i > 0 && segments[i - 1].delimiter && !segments[i].delimiter;
        if (previous_joins) {
          spans.back().second = segments[i].end;
        } else {
          spans.emplace_back(segments[i].begin, segments[i].end);
        }
      }
      break;
    case SplitBehavior::kContiguous:
      for (size_t i = 0; i < segments.size(); ++i) {
        const bool joins = segments[i].delimiter && i > 0 && segments[i - 1].delimiter;
        if (joins) {
          spans.back().second = segments[i].end;
        } else {
          spans.emplace_back(segments[i].begin, segments[i].end);
        }
      }
      break;
  }
  for (const auto& [begin, end] : spans) out.emplace_back(piece.substr(begin, end - begin));
}

class RegexSplit : public PreTokenizer::Step {
 public:
  RegexSplit(std::string_view pattern, SplitBehavior behavior, bool invert)
      : regex_(pattern), behavior_(behavior), invert_(invert) {}

  void apply(std::vector<std::string>& pieces, bool) const override {
    std::vector<std::string> out;
    out.reserve(pieces.size());
    for (const std::string& piece : pieces) {
      emit_segments(piece, find_segments(piece, regex_, invert_), behavior_, out);
    }
    pieces = std::move(out);
  }

 private:
  Regex regex_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevel : public PreTokenizer::Step {
 public:
  ByteLevel(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space),
        regex_(use_regex ? std::make_unique<Regex>(kGpt2SplitPattern) : nullptr) {}

  void apply(std::vector<std::string>& pieces, bool) const override {
    std::vector<std::string> out;
    out.reserve(pieces.size());
    for (std::string& piece : pieces) {
      if (add_prefix_space_ && !piece.starts_with(' ')) piece.insert(0, 1, ' ');
      const size_t first_new = out.size();
      if (regex_) {
        emit_segments(piece, find_segments(piece, *regex_, false), SplitBehavior::kIsolated, out);
      } else {
        out.push_back(std::move(piece));
      }
      for (size_t i = first_new; i < out.size(); ++i) out[i] = bytes_to_level_text(out[i]);
    }
    pieces = std::move(out);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class Metaspace : public PreTokenizer::Step {
 public:
  Metaspace(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)),
        scheme_(scheme),
        split_regex_(split ? std::make_unique<Regex>(Regex::escape(replacement_)) : nullptr) {}

  void apply(std::vector<std::string>& pieces, bool at_input_start) const override {
    std::vector<std::string> out;
    out.reserve(pieces.size());
    for (size_t i = 0; i < pieces.size(); ++i) {
      std::string piece = replace_spaces(pieces[i]);
      const bool prepend = scheme_ == PrependScheme::kAlways ||
                           (scheme_ == PrependScheme::kFirst && i == 0 && at_input_start);
      if (prepend && !piece.starts_with(replacement_)) piece.insert(0, replacement_);
      if (split_regex_) {
        emit_segments(piece, find_segments(piece, *split_regex_, false),
                      SplitBehavior::kMergedWithNext, out);
      } else {
        out.push_back(std::move(piece));
      }
    }
    pieces = std::move(out);
  }

 private:
  std::string replace_spaces(std::string_view text) const {
    std::string out;
    out.reserve(text.size());
    for (const char c : text) {
      if (c == ' ') {
        out += replacement_;
      } else {
        out += c;
      }
    }
    return out;
  }

  std::string replacement_;
  PrependScheme scheme_;
  std::unique_ptr<Regex> split_regex_;
};

}  // namespace

PreTokenizer::PreTokenizer() = default;
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

void PreTokenizer::add_split(std::string_view pattern, SplitBehavior behavior, bool invert) {
  steps_.push_back(std::make_unique<RegexSplit>(pattern, behavior, invert));
}

void PreTokenizer::add_byte_level(bool add_prefix_space, bool use_regex) {
  steps_.push_back(std::make_unique<ByteLevel>(add_prefix_space, use_regex));
}

void PreTokenizer::add_metaspace(std::string replacement, PrependScheme scheme, bool split) {
  steps_.push_back(std::make_unique<Metaspace>(std::move(replacement), scheme, split));
}

std::vector<std::string> PreTokenizer::split(std::string_view text, bool at_input_start) const {
  std::vector<std::string> pieces;
  if (!text.empty()) pieces.emplace_back(text);
  for (const auto& step : steps_) step->apply(pieces, at_input_start);
  return pieces;
}

}  // namespace eigenkv::tok
