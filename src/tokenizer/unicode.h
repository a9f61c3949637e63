// UTF-8 coding, Unicode general categories and the GPT-2 byte-to-character alphabet: the
// character facts the pre-tokenizers need. Decoding is lenient: a byte that does not start a
// valid UTF-8 sequence reads as one U+FFFD of length 1, so every byte of the input keeps a place
// and byte-level tokenizers stay lossless on malformed text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace eigenkv::tok {

// Unicode general categories, two letters each as in UnicodeData.txt, in this order (the
// generated table and the regex's category masks rely on it).
// clang-format off
enum class GeneralCategory : uint8_t {
  kLu, kLl, kLt, kLm, kLo,            // letters
  kMn, kMc, kMe,                      // marks
  kNd, kNl, kNo,                      // numbers
  kPc, kPd, kPs, kPe, kPi, kPf, kPo,  // punctuation
  kSm, kSc, kSk, kSo,                 // symbols
  kZs, kZl, kZp,                      // separators
  kCc, kCf, kCs, kCo, kCn,            // other (Cn: unassigned)
};
// clang-format on
constexpr int kGeneralCategoryCount = 30;

struct CategoryRange {
  uint32_t first;
  uint32_t last;
  GeneralCategory category;
};
struct CodepointRange {
  uint32_t first;
  uint32_t last;
};

// Generated tables (unicode_tables.cc, by scripts/gen_unicode_tables.py). kCategoryRanges covers
// 0..U+10FFFF in ascending order without gaps.
namespace unicode_tables {
extern const CategoryRange kCategoryRanges[];
extern const size_t kCategoryRangeCount;
extern const CodepointRange kWhiteSpaceRanges[];
extern const size_t kWhiteSpaceRangeCount;
}  // namespace unicode_tables

constexpr char32_t kReplacementCharacter = 0xFFFD;

GeneralCategory general_category(char32_t cp);
bool is_letter(char32_t cp);
bool is_number(char32_t cp);
bool is_white_space(char32_t cp);  // the White_Space property, as regex \s

// One decoded code point and the number of input bytes it took (1..4).
struct DecodedChar {
  char32_t cp;
  size_t length;
};

// Decodes the code point starting at text[pos] (pos < text.size()); malformed, overlong, surrogate
// or truncated sequences give {U+FFFD, 1}.
DecodedChar decode_utf8(std::string_view text, size_t pos);

void append_utf8(char32_t cp, std::string& out);

// Code points of `text` with the byte offset where each starts; offsets has one more entry
// holding text.size().
struct DecodedText {
  std::u32string cps;
  std::vector<size_t> offsets;
};
DecodedText decode_text(std::string_view text);

// GPT-2's byte-level alphabet: every byte maps to a printable character, so byte strings become
// vocabulary strings and back.
const std::string& byte_to_level_char(uint8_t byte);  // UTF-8 of the character for `byte`
std::string bytes_to_level_text(std::string_view bytes);
// Inverse mapping; characters outside the alphabet (in added tokens, say) keep their own bytes.
std::string level_text_to_bytes(std::string_view text);

}  // namespace eigenkv::tok
