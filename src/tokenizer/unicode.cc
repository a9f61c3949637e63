#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>
#include <memory>

namespace eigenkv::tok {
namespace {

constexpr uint32_t kMaxCodepoint = 0x10FFFF;
constexpr uint32_t kBmpSize = 0x10000;

GeneralCategory lookup_category(char32_t cp) {
  using unicode_tables::kCategoryRangeCount;
  using unicode_tables::kCategoryRanges;
  const CategoryRange* end = kCategoryRanges + kCategoryRangeCount;
  const CategoryRange* it =
      std::upper_bound(kCategoryRanges, end, cp,
                       [](char32_t value, const CategoryRange& r) { return value < r.first; });
  return it == kCategoryRanges ? GeneralCategory::kCn : (it - 1)->category;
}

// Text is mostly in the Basic Multilingual Plane, so its categories sit in a flat table built
// once; the rest goes through the binary search.
const std::array<GeneralCategory, kBmpSize>& bmp_categories() {
  static const std::unique_ptr<std::array<GeneralCategory, kBmpSize>> table = [] {
    auto t = std::make_unique<std::array<GeneralCategory, kBmpSize>>();
    for (uint32_t cp = 0; cp < kBmpSize; ++cp) (*t)[cp] = lookup_category(cp);
    return t;
  }();
  return *table;
}

bool is_continuation(uint8_t byte) { return (byte & 0xC0) == 0x80; }

// GPT-2 keeps the printable Latin-1 bytes as themselves and moves the other 68 bytes to
// U+0100 onwards, in byte order.
bool byte_is_printable(int b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct ByteLevelAlphabet {
  std::array<std::string, 256> byte_to_text;
  std::array<int16_t, 0x200> char_to_byte;  // -1 where the character is not in the alphabet

  ByteLevelAlphabet() {
    char_to_byte.fill(-1);
    char32_t next_moved = 0x100;
    for (int b = 0; b < 256; ++b) {
      const char32_t cp = byte_is_printable(b) ? static_cast<char32_t>(b) : next_moved++;
      append_utf8(cp, byte_to_text[b]);
      char_to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet alphabet;
  return alphabet;
}

}  // namespace

GeneralCategory general_category(char32_t cp) {
  if (cp < kBmpSize) return bmp_categories()[cp];
  return cp > kMaxCodepoint ? GeneralCategory::kCn : lookup_category(cp);
}

bool is_letter(char32_t cp) { return general_category(cp) <= GeneralCategory::kLo; }

bool is_number(char32_t cp) {
  const GeneralCategory c = general_category(cp);
  return c >= GeneralCategory::kNd && c <= GeneralCategory::kNo;
}

bool is_white_space(char32_t cp) {
  using unicode_tables::kWhiteSpaceRangeCount;
  using unicode_tables::kWhiteSpaceRanges;
  for (size_t i = 0; i < kWhiteSpaceRangeCount; ++i) {
    if (cp < kWhiteSpaceRanges[i].first) return false;
    if (cp <= kWhiteSpaceRanges[i].last) return true;
  }
  return false;
}

DecodedChar decode_utf8(std::string_view text, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[pos + i]); };
  const uint8_t first = byte(0);
  if (first < 0x80) return {first, 1};
  const DecodedChar invalid{kReplacementCharacter, 1};
  // The lead byte announces the length and carries the top bits.
  size_t length;
  if ((first & 0xE0) == 0xC0) {
    length = 2;
  } else if ((first & 0xF0) == 0xE0) {
    length = 3;
  } else if ((first & 0xF8) == 0xF0) {
    length = 4;
  } else {
    return invalid;
  }
  static constexpr char32_t kMinValue[5] = {0, 0, 0x80, 0x800, 0x10000};
  char32_t cp = first & (0x7F >> length);
  if (text.size() - pos < length) return invalid;
  for (size_t i = 1; i < length; ++i) {
    if (!is_continuation(byte(i))) return invalid;
    cp = (cp << 6) | (byte(i) & 0x3F);
  }
  if (cp < kMinValue[length] || cp > kMaxCodepoint || (cp >= 0xD800 && cp <= 0xDFFF)) {
    return invalid;  // overlong, beyond U+10FFFF, or a surrogate
  }
  return {cp, length};
}

void append_utf8(char32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

DecodedText decode_text(std::string_view text) {
  DecodedText decoded;
  decoded.cps.reserve(text.size());
  decoded.offsets.reserve(text.size() + 1);
  size_t pos = 0;
  while (pos < text.size()) {
    const DecodedChar c = decode_utf8(text, pos);
    decoded.cps.push_back(c.cp);
    decoded.offsets.push_back(pos);
    pos += c.length;
  }
  decoded.offsets.push_back(text.size());
  return decoded;
}

const std::string& byte_to_level_char(uint8_t byte) {
  return byte_level_alphabet().byte_to_text[byte];
}

std::string bytes_to_level_text(std::string_view bytes) {
  const ByteLevelAlphabet& alphabet = byte_level_alphabet();
  std::string text;
  text.reserve(bytes.size() * 2);
  for (const char b : bytes) text += alphabet.byte_to_text[static_cast<uint8_t>(b)];
  return text;
}

std::string level_text_to_bytes(std::string_view text) {
  const ByteLevelAlphabet& alphabet = byte_level_alphabet();
  std::string bytes;
  bytes.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const DecodedChar c = decode_utf8(text, pos);
    if (c.cp < alphabet.char_to_byte.size() && alphabet.char_to_byte[c.cp] >= 0) {
      bytes += static_cast<char>(alphabet.char_to_byte[c.cp]);
    } else {
      bytes.append(text.substr(pos, c.length));
    }
    pos += c.length;
  }
  return bytes;
}

}  // namespace eigenkv::tok
