#include "tokenizer/normalizer.h"

#include "tokenizer/unicode.h"

namespace eigenkv::tok {
namespace {

std::string replace_regex(std::string_view text, const Regex& regex, std::string_view content) {
  const DecodedText decoded = decode_text(text);
  std::string out;
  size_t copied = 0;  // code points already in `out`
  size_t begin;
  size_t end;
  for (size_t pos = 0; pos <= decoded.cps.size() && regex.search(decoded.cps, pos, begin, end);) {
    if (end == begin) {
      pos = begin + 1;
      continue;
    }
    out.append(
        text.substr(decoded.offsets[copied], decoded.offsets[begin] - decoded.offsets[copied]));
    out.append(content);
    copied = pos = end;
  }
  out.append(text.substr(decoded.offsets[copied]));
  return out;
}

}  // namespace

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(text);
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  for (size_t hit; (hit = text.find(from, pos)) != std::string_view::npos;
       pos = hit + from.size()) {
    out.append(text.substr(pos, hit - pos));
    out.append(to);
  }
  out.append(text.substr(pos));
  return out;
}

void Normalizer::add_prepend(std::string prefix) {
  steps_.push_back({Step::Kind::kPrepend, std::move(prefix), {}, nullptr});
}

void Normalizer::add_replace(std::string literal, std::string content) {
  steps_.push_back({Step::Kind::kReplace, std::move(literal), std::move(content), nullptr});
}

void Normalizer::add_replace_regex(std::string_view pattern, std::string content) {
  steps_.push_back(
      {Step::Kind::kReplaceRegex, {}, std::move(content), std::make_shared<Regex>(pattern)});
}

std::string Normalizer::apply(std::string_view text) const {
  std::string current(text);
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Step::Kind::kPrepend:
        if (!current.empty()) current.insert(0, step.text);
        break;
      case Step::Kind::kReplace:
        current = replace_all(current, step.text, step.content);
        break;
      case Step::Kind::kReplaceRegex:
        current = replace_regex(current, *step.regex, step.content);
        break;
    }
  }
  return current;
}

}  // namespace eigenkv::tok
