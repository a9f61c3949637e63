// The tokenizer's parts on their own (Unicode tables, the regex matcher, pre-tokenizer splits,
// BPE merging, streaming decode) and its handling of bad input.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "tokenizer/bpe_model.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"
#include "tokenizer_test_util.h"
#include "util/error.h"

namespace eigenkv::testing {
namespace {

using tok::GeneralCategory;

// ---- Unicode ----

TEST(TokenizerUnicodeTest, GeneralCategories) {
  EXPECT_EQ(tok::general_category(U'A'), GeneralCategory::kLu);
  EXPECT_EQ(tok::general_category(U'é'), GeneralCategory::kLl);
  EXPECT_EQ(tok::general_category(U'我'), GeneralCategory::kLo);
  EXPECT_EQ(tok::general_category(0x0663), GeneralCategory::kNd);  // Arabic-Indic three
  EXPECT_EQ(tok::general_category(U'²'), GeneralCategory::kNo);
  EXPECT_EQ(tok::general_category(0x0301), GeneralCategory::kMn);  // combining acute
  EXPECT_EQ(tok::general_category(U'€'), GeneralCategory::kSc);
  EXPECT_EQ(tok::general_category(0x1F999), GeneralCategory::kSo);  // llama emoji
  EXPECT_EQ(tok::general_category(0x3000), GeneralCategory::kZs);
  EXPECT_EQ(tok::general_category(0x10FFFF), GeneralCategory::kCn);
  EXPECT_EQ(tok::general_category(0x110000), GeneralCategory::kCn);
  EXPECT_TRUE(tok::is_letter(U'ß'));
  EXPECT_TRUE(tok::is_number(U'٣'));
  EXPECT_FALSE(tok::is_number(U'a'));
}

TEST(TokenizerUnicodeTest, WhiteSpaceIsTheUnicodeProperty) {
  for (const char32_t cp : {0x09, 0x0A, 0x0D, 0x20, 0x85, 0xA0, 0x2003, 0x2028, 0x3000}) {
    EXPECT_TRUE(tok::is_white_space(cp)) << std::hex << static_cast<uint32_t>(cp);
  }
  for (const char32_t cp : {0x1C, 0x1F, 0x200B, 0x41, 0x180E}) {
    EXPECT_FALSE(tok::is_white_space(cp)) << std::hex << static_cast<uint32_t>(cp);
  }
}

TEST(TokenizerUnicodeTest, DecodeIsLenient) {
  EXPECT_EQ(tok::decode_utf8("\xC3\xA9", 0).cp, U'é');
  EXPECT_EQ(tok::decode_utf8("\xF0\x9F\xA6\x99", 0).length, 4u);
  for (const std::string_view bad :
       {"\xC0\x80", "\xED\xA0\x80", "\xE2\x96", "\x80", "\xFF", "\xF4\x90\x80\x80"}) {
    const tok::DecodedChar c = tok::decode_utf8(bad, 0);
    EXPECT_EQ(c.cp, tok::kReplacementCharacter);
    EXPECT_EQ(c.length, 1u);
  }
  const tok::DecodedText text = tok::decode_text("a\xE2\x96\x81\xFF");
  EXPECT_EQ(text.cps, (std::u32string{U'a', 0x2581, tok::kReplacementCharacter}));
  EXPECT_EQ(text.offsets, (std::vector<size_t>{0, 1, 4, 5}));
}

TEST(TokenizerUnicodeTest, ByteLevelAlphabetRoundTrips) {
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) all_bytes += static_cast<char>(b);
  EXPECT_EQ(tok::level_text_to_bytes(tok::bytes_to_level_text(all_bytes)), all_bytes);
  EXPECT_EQ(tok::bytes_to_level_text(" \n!"), "Ġ\xC4\x8A!");
  EXPECT_EQ(tok::level_text_to_bytes("<|x|>"), "<|x|>");
}

// ---- Regex ----

std::vector<std::string> all_matches(std::string_view pattern, std::string_view text) {
  const tok::Regex regex(pattern);
  const tok::DecodedText decoded = tok::decode_text(text);
  std::vector<std::string> matches;
  size_t begin;
  size_t end;
  for (size_t pos = 0; pos < decoded.cps.size() && regex.search(decoded.cps, pos, begin, end);) {
    matches.emplace_back(
        text.substr(decoded.offsets[begin], decoded.offsets[end] - decoded.offsets[begin]));
    pos = end > begin ? end : begin + 1;
  }
  return matches;
}

using Strings = std::vector<std::string>;

TEST(TokenizerRegexTest, PerlSemantics) {
  EXPECT_EQ(all_matches("ab|a", "aab"), (Strings{"a", "ab"}));  // first alternative that fits
  EXPECT_EQ(all_matches("a+?", "aaa"), (Strings{"a", "a", "a"}));
  EXPECT_EQ(all_matches(R"(\d{2,3})", "12345"), (Strings{"123", "45"}));
  EXPECT_EQ(all_matches("a(?=b)", "ac ab"), (Strings{"a"}));
  EXPECT_EQ(all_matches(R"(\s+(?!\S)|\s+)", "a   b"), (Strings{"  ", " "}));
  EXPECT_EQ(all_matches("(?i:ab)c", "ABc aBC abc"), (Strings{"ABc", "abc"}));
  EXPECT_EQ(all_matches(R"([^\s\p{L}]+)", "ab12!! c"), (Strings{"12!!"}));
  EXPECT_EQ(all_matches("a.c", "a\nc abc"), (Strings{"abc"}));
  EXPECT_EQ(all_matches("^a|b$", "aab ab"), (Strings{"a", "b"}));
  EXPECT_EQ(all_matches(R"(\p{Lu}\p{Ll}+)", "Hello WORLD Ünïcode"), (Strings{"Hello", "Ünïcode"}));
  EXPECT_EQ(all_matches(R"([\x{4E00}-\x{9FFF}]+)", "我想apple工作"), (Strings{"我想", "工作"}));
  EXPECT_EQ(all_matches(R"(\w+)", "snake_case café 42"), (Strings{"snake_case", "café", "42"}));
  EXPECT_EQ(all_matches("[]a]+", "]a]b"), (Strings{"]a]"}));
}

TEST(TokenizerRegexTest, UnsupportedSyntaxIsNamed) {
  const std::pair<std::string, std::string> cases[] = {
      {"(?<=a)b", "group syntax"}, {R"(\p{Han}+)", "Han"},        {"a++", "possessive"},
      {"(a", "missing ')'"},       {"a)", "unbalanced"},          {"(a*)*", "empty string"},
      {"[a-", "missing ']'"},      {R"(\bword)", "escape '\\b'"}, {"[z-a]", "bad range"},
      {"*a", "nothing to repeat"}, {"a{2000}", "above 1000"},     {"[a&&b]", "intersection"},
  };
  for (const auto& [pattern, expected] : cases) {
    try {
      tok::Regex regex(pattern);
      ADD_FAILURE() << "pattern '" << pattern << "' was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos)
          << "pattern '" << pattern << "': " << e.what();
      EXPECT_NE(std::string(e.what()).find(pattern), std::string::npos) << e.what();
    }
  }
}

// ---- Pre-tokenizer ----

TEST(TokenizerPreTokenizerTest, Gpt2AndLlama3Splits) {
  tok::PreTokenizer gpt2;
  gpt2.add_split(tok::kGpt2SplitPattern, tok::SplitBehavior::kIsolated, false);
  EXPECT_EQ(gpt2.split("I'm  here!!\n", true), (Strings{"I", "'m", " ", " here", "!!", "\n"}));

  tok::PreTokenizer llama3;
  llama3.add_split(tok::kLlama3SplitPattern, tok::SplitBehavior::kIsolated, false);
  EXPECT_EQ(llama3.split("3333333 HELLO'S world", true),
            (Strings{"333", "333", "3", " HELLO", "'S", " world"}));
  EXPECT_EQ(llama3.split("\n\n  x", true), (Strings{"\n\n", " ", " x"}));
  EXPECT_EQ(llama3.split("a.b\r\n\r\n", true), (Strings{"a", ".b", "\r\n\r\n"}));
}

TEST(TokenizerPreTokenizerTest, SplitBehaviors) {
  const auto split = [](tok::SplitBehavior behavior, bool invert) {
    tok::PreTokenizer pre;
    pre.add_split("-", behavior, invert);
    return pre.split("a-b--c", true);
  };
  using B = tok::SplitBehavior;
  EXPECT_EQ(split(B::kRemoved, false), (Strings{"a", "b", "c"}));
  EXPECT_EQ(split(B::kIsolated, false), (Strings{"a", "-", "b", "-", "-", "c"}));
  EXPECT_EQ(split(B::kMergedWithPrevious, false), (Strings{"a-", "b-", "-", "c"}));
  EXPECT_EQ(split(B::kMergedWithNext, false), (Strings{"a", "-b", "-", "-c"}));
  EXPECT_EQ(split(B::kContiguous, false), (Strings{"a", "-", "b", "--", "c"}));
  EXPECT_EQ(split(B::kRemoved, true), (Strings{"-", "-", "-"}));
}

TEST(TokenizerPreTokenizerTest, MetaspaceAndByteLevel) {
  tok::PreTokenizer metaspace;
  metaspace.add_metaspace("▁", tok::PrependScheme::kFirst, /*split=*/true);
  EXPECT_EQ(metaspace.split("Hello  world", true), (Strings{"▁Hello", "▁", "▁world"}));
  EXPECT_EQ(metaspace.split("Hello", false), (Strings{"Hello"}));

  tok::PreTokenizer byte_level;
  byte_level.add_byte_level(/*add_prefix_space=*/true, /*use_regex=*/true);
  EXPECT_EQ(byte_level.split("Hi there\n", true), (Strings{"ĠHi", "Ġthere", "Ċ"}));
}

// ---- BPE ----

TEST(TokenizerBpeModelTest, MergesByRankLeftmostFirst) {
  tok::TokenIdMap ids = {{"a", 0}, {"b", 1}, {"ab", 2}, {"ba", 3}, {"aba", 4}, {"<0x63>", 5}};
  // Rank 0: a+b, rank 1: ab+a, rank 2: b+a.
  const std::vector<tok::BpeMerge> merges = {{0, 1, 2}, {2, 0, 4}, {1, 0, 3}};
  tok::BpeOptions options;
  options.byte_fallback = true;
  const tok::BpeModel model(ids, merges, options);
  std::vector<int32_t> out;
  model.encode_word("ababa", out);  // a+b merges at both places first, then ab+a
  EXPECT_EQ(out, (std::vector<int32_t>{2, 4}));
  out.clear();
  model.encode_word("bac", out);  // b+a merges (rank 2); 'c' has no token and falls back
  EXPECT_EQ(out, (std::vector<int32_t>{3, 5}));
}

// ---- Streaming decode ----

bool is_valid_utf8(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    const tok::DecodedChar c = tok::decode_utf8(text, pos);
    if (c.cp == tok::kReplacementCharacter && text.substr(pos, 3) != "\xEF\xBF\xBD") return false;
    pos += c.length;
  }
  return true;
}

TEST(TokenizerStreamingTest, HoldsBackIncompleteCharacters) {
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  const auto& tokenizer = shared_gguf_tokenizer("models/stories260K.gguf");
  const std::string text = "Lily saw a 🦙 and a ☃ in the Führer's café.";
  const std::vector<int32_t> ids = tokenizer.encode(text, /*add_bos=*/true);
  tok::StreamingDecoder stream(tokenizer, /*at_text_start=*/true);
  std::string streamed;
  size_t held_back = 0;
  for (const int32_t id : ids) {
    const std::string chunk = stream.push(id);
    EXPECT_TRUE(is_valid_utf8(chunk)) << "chunk for id " << id;
    held_back += chunk.empty() && !tokenizer.token_to_piece(id).empty();
    streamed += chunk;
  }
  streamed += stream.finish();
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(streamed, tokenizer.decode(ids));
  EXPECT_GT(held_back, 0u);  // the emoji's byte tokens came one at a time

  tok::StreamingDecoder truncated(tokenizer);
  const std::optional<int32_t> first_byte = tokenizer.find_token("<0xF0>");
  ASSERT_TRUE(first_byte.has_value());
  EXPECT_EQ(truncated.push(*first_byte), "");
  EXPECT_EQ(truncated.finish(), "\xF0");
}

TEST(TokenizerStreamingTest, KeepsSpaceAfterAPrompt) {
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  const auto& tokenizer = shared_gguf_tokenizer("models/stories260K.gguf");
  const std::vector<int32_t> ids = tokenizer.encode(" upon a time", false);
  tok::StreamingDecoder stream(tokenizer);  // continues a prompt: the leading space is text
  std::string streamed;
  for (const int32_t id : ids) streamed += stream.push(id);
  EXPECT_EQ(streamed + stream.finish(), "  upon a time");
}

// ---- Special tokens and ids ----

TEST(TokenizerSpecialTest, ParseSpecialControlsMatching) {
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  const auto& tokenizer = shared_gguf_tokenizer("models/stories260K.gguf");
  const std::vector<int32_t> parsed = tokenizer.encode("<s>Hi</s>", false, /*parse_special=*/true);
  ASSERT_GE(parsed.size(), 3u);
  EXPECT_EQ(parsed.front(), tokenizer.bos_id());
  EXPECT_EQ(parsed.back(), tokenizer.eos_id());
  // The default matches them, as llama.cpp and Hugging Face do; false spells them out.
  EXPECT_EQ(tokenizer.encode("<s>Hi</s>", false), parsed);
  const std::vector<int32_t> plain = tokenizer.encode("<s>Hi</s>", false, /*parse_special=*/false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), tokenizer.bos_id()), 0);
  EXPECT_EQ(tokenizer.decode(plain), "<s>Hi</s>");
  EXPECT_TRUE(tokenizer.is_end_of_generation(tokenizer.eos_id()));
  EXPECT_FALSE(tokenizer.is_end_of_generation(tokenizer.bos_id()));
  EXPECT_EQ(tokenizer.token_to_piece(tokenizer.bos_id()), "");
  EXPECT_EQ(tokenizer.encode("", true), (std::vector<int32_t>{tokenizer.bos_id()}));
  EXPECT_TRUE(tokenizer.encode("", false).empty());
}

TEST(TokenizerSpecialTest, Llama3EndOfTurnStopsGeneration) {
  EKV_REQUIRE_SHARED("tokenizers/llama3/tokenizer.json");
  const auto& tokenizer = shared_json_tokenizer("tokenizers/llama3/tokenizer.json");
  const std::optional<int32_t> eot = tokenizer.find_token("<|eot_id|>");
  ASSERT_TRUE(eot.has_value());
  EXPECT_TRUE(tokenizer.is_end_of_generation(*eot));
  EXPECT_TRUE(tokenizer.is_end_of_generation(tokenizer.eos_id()));
  EXPECT_EQ(tokenizer.token_text(tokenizer.bos_id()), "<|begin_of_text|>");
  EXPECT_EQ(tokenizer.token_to_piece(*tokenizer.find_token("Ġthe")), " the");
}

TEST(TokenizerSpecialTest, DecodeRejectsIdsOutOfRange) {
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  const auto& tokenizer = shared_gguf_tokenizer("models/stories260K.gguf");
  for (const int32_t bad : {-1, 512, 1 << 30}) {
    try {
      tokenizer.decode({1, bad});
      ADD_FAILURE() << "id " << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(bad)), std::string::npos) << e.what();
    }
    EXPECT_THROW(tokenizer.token_to_piece(bad), Error);
  }
}

// ---- Bad tokenizer.json files ----

class TokenizerJsonErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("eigenkv_tokenizer_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& content) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }

  // Loads `content` as a tokenizer.json and returns the Error message ("" if it loaded).
  std::string load_error(const std::string& content) {
    const std::string path = write("tokenizer.json", content);
    try {
      tok::tokenizer_from_json(path);
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(dir_.string()), std::string::npos) << "names no file: " << message;
      return message;
    }
    return "";
  }

  std::filesystem::path dir_;
};

// A three-token BPE, with `extra` top-level members.
std::string tiny_with(const std::string& extra) {
  return R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})" +
         extra + "}";
}

TEST_F(TokenizerJsonErrorTest, LoadsTheTinyTokenizer) {
  const std::string path = write("tokenizer.json", tiny_with(""));
  const auto tokenizer = tok::tokenizer_from_json(path);
  EXPECT_EQ(tokenizer->encode("abba", false), (std::vector<int32_t>{2, 1, 0}));
  EXPECT_EQ(tokenizer->decode({2, 1, 0}), "abba");
}

TEST_F(TokenizerJsonErrorTest, MalformedJson) {
  EXPECT_NE(load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0)").find("malformed JSON"),
            std::string::npos);
  EXPECT_NE(load_error("").find("malformed JSON"), std::string::npos);
  EXPECT_NE(load_error("[1, 2]").find("not a JSON object"), std::string::npos);
}

TEST_F(TokenizerJsonErrorTest, TruncatedFile) {
  EKV_REQUIRE_SHARED("models/stories260K-hf/tokenizer.json");
  const std::string full = read_file(shared_path("models/stories260K-hf/tokenizer.json"));
  for (const size_t keep : {size_t{1}, full.size() / 3, full.size() / 2, full.size() - 2}) {
    EXPECT_NE(load_error(full.substr(0, keep)), "") << "kept " << keep << " bytes";
  }
}

TEST_F(TokenizerJsonErrorTest, UnsupportedComponentsAreNamed) {
  const std::pair<std::string, std::string> cases[] = {
      {R"({"model": {"type": "Unigram", "vocab": []}})", "Unigram"},
      {tiny_with(R"(, "normalizer": {"type": "NFC"})"), "normalizer 'NFC'"},
      {tiny_with(R"(, "pre_tokenizer": {"type": "BertPreTokenizer"})"), "BertPreTokenizer"},
      {tiny_with(R"(, "decoder": {"type": "WordPiece", "prefix": "##"})"), "decoder 'WordPiece'"},
      {tiny_with(R"json(, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(?<=x)"},
          "behavior": "Isolated", "invert": false})json"),
       "(?<=x)"},
      {tiny_with(R"(, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "x"},
          "behavior": "Sideways", "invert": false})"),
       "Sideways"},
  };
  for (const auto& [json, expected] : cases) {
    const std::string message = load_error(json);
    EXPECT_NE(message.find(expected), std::string::npos) << "got: '" << message << "'";
  }
}

TEST_F(TokenizerJsonErrorTest, MissingOrInconsistentKeys) {
  const std::pair<std::string, std::string> cases[] = {
      {R"({"version": "1.0"})", "\"model\""},
      {R"({"model": {"type": "BPE"}})", "\"vocab\""},
      {R"({"model": {"type": "BPE", "vocab": {}}})", "empty"},
      {R"({"model": {"type": "BPE", "vocab": {"a": -3}}})", "-3"},
      {R"({"model": {"type": "BPE", "vocab": {"a": "zero"}}})", "not an integer"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a c"]}})", "not in model.vocab"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}})", "merges[0]"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "unk_token": "<unk>"}})", "<unk>"},
      {tiny_with(R"(, "added_tokens": [{"content": "<s>"}])"), "\"id\""},
      {tiny_with(R"(, "added_tokens": [{"id": 99999999, "content": "<s>"}])"), "99999999"},
  };
  for (const auto& [json, expected] : cases) {
    const std::string message = load_error(json);
    EXPECT_NE(message.find(expected), std::string::npos) << "got: '" << message << "'";
  }
}

TEST_F(TokenizerJsonErrorTest, MissingFileAndBadConfig) {
  try {
    tok::tokenizer_from_json((dir_ / "absent.json").string());
    ADD_FAILURE() << "an absent file loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("absent.json"), std::string::npos);
  }
  write("tokenizer_config.json", "{not json");
  EXPECT_NE(load_error(tiny_with("")).find("tokenizer_config.json"), std::string::npos);
}

// Seeded mutations of a real tokenizer.json: every outcome is a tokenizer or an Error.
TEST_F(TokenizerJsonErrorTest, MutatedFilesNeverCrash) {
  EKV_REQUIRE_SHARED("models/stories260K-hf/tokenizer.json");
  const std::string original = read_file(shared_path("models/stories260K-hf/tokenizer.json"));
  std::mt19937 rng(1234);
  size_t loaded = 0;
  for (int iteration = 0; iteration < 300; ++iteration) {
    std::string mutated = original;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng() % mutated.size();
      switch (rng() % 3) {
        case 0:
          mutated[at] = static_cast<char>(rng());
          break;
        case 1:
          mutated.erase(at, 1 + rng() % 16);
          break;
        default:
          mutated.insert(at, 1, "{}[]\",:0-9 \\u"[rng() % 14]);
          break;
      }
    }
    const std::string path = write("tokenizer.json", mutated);
    try {
      const auto tokenizer = tok::tokenizer_from_json(path);
      const std::vector<int32_t> ids = tokenizer->encode("Once upon a time 🦙", true, true);
      tokenizer->decode(ids);
      ++loaded;
    } catch (const Error&) {
    }
  }
  EXPECT_GT(loaded, 0u);
}

// ---- Bad GGUF vocabularies ----

// A metadata-only GGUF v3 file assembled in memory.
class GgufBytes {
 public:
  GgufBytes() {
    raw("GGUF", 4);
    u32(3);
    u64(0);  // tensors
    u64(0);  // key count, patched as keys are added
  }
  void add_string(const std::string& key, const std::string& value) {
    begin_key(key, 8);
    str(value);
  }
  void add_u32(const std::string& key, uint32_t value) {
    begin_key(key, 4);
    u32(value);
  }
  void add_strings(const std::string& key, const std::vector<std::string>& values) {
    begin_key(key, 9);
    u32(8);
    u64(values.size());
    for (const std::string& v : values) str(v);
  }
  void add_i32s(const std::string& key, const std::vector<int32_t>& values) {
    begin_key(key, 9);
    u32(5);
    u64(values.size());
    for (const int32_t v : values) u32(static_cast<uint32_t>(v));
  }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  void begin_key(const std::string& key, uint32_t type) {
    uint64_t count;
    std::memcpy(&count, bytes_.data() + 16, 8);
    ++count;
    std::memcpy(bytes_.data() + 16, &count, 8);
    str(key);
    u32(type);
  }
  void raw(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    bytes_.insert(bytes_.end(), p, p + n);
  }
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void str(const std::string& s) {
    u64(s.size());
    raw(s.data(), s.size());
  }
  std::vector<uint8_t> bytes_;
};

std::string gguf_error(const GgufBytes& file) {
  try {
    const io::GgufFile gguf(file.bytes().data(), file.bytes().size(), "test.gguf");
    tok::tokenizer_from_gguf(gguf);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TokenizerGgufErrorTest, MissingOrUnknownModel) {
  GgufBytes no_model;
  no_model.add_strings("tokenizer.ggml.tokens", {"a", "b"});
  EXPECT_NE(gguf_error(no_model).find("tokenizer.ggml.model"), std::string::npos);

  GgufBytes bert;
  bert.add_string("tokenizer.ggml.model", "bert");
  bert.add_strings("tokenizer.ggml.tokens", {"a", "b"});
  EXPECT_NE(gguf_error(bert).find("'bert'"), std::string::npos);

  GgufBytes no_tokens;
  no_tokens.add_string("tokenizer.ggml.model", "llama");
  EXPECT_NE(gguf_error(no_tokens).find("tokenizer.ggml.tokens"), std::string::npos);

  GgufBytes short_types;
  short_types.add_string("tokenizer.ggml.model", "llama");
  short_types.add_strings("tokenizer.ggml.tokens", {"a", "b", "c"});
  short_types.add_i32s("tokenizer.ggml.token_type", {1, 1});
  EXPECT_NE(gguf_error(short_types).find("token_type"), std::string::npos);

  GgufBytes duplicate;
  duplicate.add_string("tokenizer.ggml.model", "llama");
  duplicate.add_strings("tokenizer.ggml.tokens", {"a", "b", "a"});
  EXPECT_NE(gguf_error(duplicate).find("twice"), std::string::npos);

  GgufBytes no_merges;
  no_merges.add_string("tokenizer.ggml.model", "gpt2");
  no_merges.add_string("tokenizer.ggml.pre", "gpt-2");
  no_merges.add_strings("tokenizer.ggml.tokens", {"a", "b"});
  EXPECT_NE(gguf_error(no_merges).find("tokenizer.ggml.merges"), std::string::npos);

  GgufBytes unknown_pre;
  unknown_pre.add_string("tokenizer.ggml.model", "gpt2");
  unknown_pre.add_string("tokenizer.ggml.pre", "martian");
  unknown_pre.add_strings("tokenizer.ggml.tokens", {"a", "b"});
  unknown_pre.add_strings("tokenizer.ggml.merges", {"a b"});
  EXPECT_NE(gguf_error(unknown_pre).find("'martian'"), std::string::npos);
}

TEST(TokenizerGgufErrorTest, MinimalVocabularyWorks) {
  GgufBytes file;
  file.add_string("tokenizer.ggml.model", "llama");
  file.add_strings("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "▁a", "b"});
  file.add_i32s("tokenizer.ggml.token_type", {2, 3, 3, 1, 1});
  file.add_u32("tokenizer.ggml.bos_token_id", 1);
  const io::GgufFile gguf(file.bytes().data(), file.bytes().size(), "tiny.gguf");
  const auto tokenizer = tok::tokenizer_from_gguf(gguf);
  // No byte tokens: characters without a token become <unk>.
  EXPECT_EQ(tokenizer->encode("ab c", true), (std::vector<int32_t>{1, 3, 4, 0, 0}));
}

// Seeded mutations of a real GGUF's metadata: every outcome is a tokenizer or an Error.
TEST(TokenizerGgufErrorTest, MutatedFilesNeverCrash) {
  EKV_REQUIRE_SHARED("models/stories260K.gguf");
  const std::string original = read_file(shared_path("models/stories260K.gguf"));
  const size_t metadata_bytes = std::min<size_t>(original.size(), 12000);
  std::mt19937 rng(99);
  for (int iteration = 0; iteration < 200; ++iteration) {
    std::string mutated = original;
    for (int e = 0; e < 1 + static_cast<int>(rng() % 4); ++e) {
      mutated[rng() % metadata_bytes] = static_cast<char>(rng());
    }
    try {
      const io::GgufFile gguf(reinterpret_cast<const uint8_t*>(mutated.data()), mutated.size(),
                              "mutated.gguf");
      const auto tokenizer = tok::tokenizer_from_gguf(gguf);
      tokenizer->decode(tokenizer->encode("Once upon a time", true, true));
    } catch (const Error&) {
    }
  }
}

// ---- Arbitrary bytes and speed ----

std::string random_bytes(std::mt19937& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() % 4 == 0 ? rng() : "ab c\n é🦙"[rng() % 9]);
  return s;
}

// Byte-level and byte-fallback vocabularies are lossless even on malformed UTF-8.
TEST(TokenizerRobustnessTest, ArbitraryBytesRoundTrip) {
  EKV_REQUIRE_SHARED("tokenizers/gpt-2/ggml-vocab-gpt-2.gguf");
  EKV_REQUIRE_SHARED("tokenizers/llama-spm/ggml-vocab-llama-spm.gguf");
  const auto& gpt2 = shared_gguf_tokenizer("tokenizers/gpt-2/ggml-vocab-gpt-2.gguf");
  const auto& spm = shared_gguf_tokenizer("tokenizers/llama-spm/ggml-vocab-llama-spm.gguf");
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    const std::string text = random_bytes(rng, rng() % 64);
    EXPECT_EQ(gpt2.decode(gpt2.encode(text, false, true)), text);
    if (text.find("\xE2\x96\x81") != std::string::npos) continue;  // "▁" decodes as a space
    EXPECT_EQ(spm.decode(spm.encode(text, false)), text);
  }
}

// The engine tokenizes whole WikiText-2 files: a megabyte must take well under a second.
TEST(TokenizerRobustnessTest, MegabyteEncodesQuickly) {
  EKV_REQUIRE_SHARED("data/wikitext-2-raw/wiki.test.raw");
  EKV_REQUIRE_SHARED("tokenizers/gpt-2/ggml-vocab-gpt-2.gguf");
  EKV_REQUIRE_SHARED("tokenizers/llama-spm/ggml-vocab-llama-spm.gguf");
  const std::string text =
      read_file(shared_path("data/wikitext-2-raw/wiki.test.raw")).substr(0, 1 << 20);
  for (const std::string rel : {"tokenizers/gpt-2/ggml-vocab-gpt-2.gguf",
                                "tokenizers/llama-spm/ggml-vocab-llama-spm.gguf"}) {
    const auto& tokenizer = shared_gguf_tokenizer(rel);
    const auto start = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = tokenizer.encode(text, true);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "[          ] " << rel << ": 1 MiB -> " << ids.size() << " tokens in " << seconds
              << " s\n";
    EXPECT_LT(seconds, 2.0);
    EXPECT_EQ(tokenizer.decode(ids), text);
  }
}

}  // namespace
}  // namespace eigenkv::testing
