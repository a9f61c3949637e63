#include "tokenizer/regex.h"

#include <tuple>
#include <utility>

#include "tokenizer/unicode.h"
#include "util/error.h"

namespace eigenkv::tok {
namespace {

using ClassItem = Regex::ClassItem;
using CharClass = Regex::CharClass;
using Instruction = Regex::Instruction;
using Op = Regex::Instruction::Op;

constexpr int kMaxNesting = 64;
constexpr int kMaxRepeatCount = 1000;
constexpr size_t kMaxProgramSize = 100000;
// Tokenizer patterns need a few steps per character; a budget this large is only reached by
// patterns that backtrack exponentially, which then fail loudly instead of hanging.
constexpr size_t kMaxStepsPerSearch = 200'000'000;
constexpr int kUnbounded = -1;

uint32_t category_bit(GeneralCategory c) { return 1u << static_cast<int>(c); }

uint32_t category_span(GeneralCategory first, GeneralCategory last) {
  uint32_t mask = 0;
  for (int c = static_cast<int>(first); c <= static_cast<int>(last); ++c) mask |= 1u << c;
  return mask;
}

// Masks for \p{..}: one-letter major classes, two-letter categories and L& (cased letters).
bool category_mask_for_name(const std::string& name, uint32_t& mask) {
  using enum GeneralCategory;
  static const std::pair<const char*, uint32_t> kMajor[] = {
      {"L", category_span(kLu, kLo)},  {"M", category_span(kMn, kMe)},
      {"N", category_span(kNd, kNo)},  {"P", category_span(kPc, kPo)},
      {"S", category_span(kSm, kSo)},  {"Z", category_span(kZs, kZp)},
      {"C", category_span(kCc, kCn)},  {"L&", category_span(kLu, kLt)},
      {"LC", category_span(kLu, kLt)},
  };
  static const char* const kMinor[kGeneralCategoryCount] = {
      "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe",
      "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn"};
  for (const auto& [major, major_mask] : kMajor) {
    if (name == major) {
      mask = major_mask;
      return true;
    }
  }
  for (int c = 0; c < kGeneralCategoryCount; ++c) {
    if (name == kMinor[c]) {
      mask = 1u << c;
      return true;
    }
  }
  return false;
}

bool is_word_char(char32_t cp) {
  using enum GeneralCategory;
  const GeneralCategory c = general_category(cp);
  return c <= kMe || c == kNd || c == kPc;  // letters, marks, decimal digits, connectors
}

char32_t other_ascii_case(char32_t cp) {
  if (cp >= 'a' && cp <= 'z') return cp - 'a' + 'A';
  if (cp >= 'A' && cp <= 'Z') return cp - 'A' + 'a';
  return cp;
}

ClassItem single(char32_t cp) {
  ClassItem item;
  item.first = item.last = cp;
  return item;
}

ClassItem set_item(ClassItem::Kind kind, bool negated) {
  ClassItem item;
  item.kind = kind;
  item.negated = negated;
  return item;
}

CharClass class_of(ClassItem item, bool negated = false) {
  CharClass cls;
  cls.items.push_back(item);
  cls.negated = negated;
  return cls;
}

// The parsed pattern: one character class, a sequence or alternatives of children, a repetition
// of children[0], or an assertion (lookahead on children[0], start, end).
struct Node {
  enum class Kind : uint8_t {
    kClass,
    kConcat,
    kAlternation,
    kRepeat,
    kLookahead,
    kAssertStart,
    kAssertEnd
  };
  explicit Node(Kind k = Kind::kConcat) : kind(k) {}

  Kind kind;
  size_t class_index = 0;
  std::vector<Node> children;
  int min = 0;
  int max = 0;  // kUnbounded for * and +
  bool greedy = true;
  bool negated = false;
};

bool can_match_empty(const Node& node) {
  switch (node.kind) {
    case Node::Kind::kClass:
      return false;
    case Node::Kind::kConcat:
      for (const Node& child : node.children) {
        if (!can_match_empty(child)) return false;
      }
      return true;
    case Node::Kind::kAlternation:
      for (const Node& child : node.children) {
        if (can_match_empty(child)) return true;
      }
      return false;
    case Node::Kind::kRepeat:
      return node.min == 0 || can_match_empty(node.children[0]);
    default:
      return true;  // assertions consume nothing
  }
}

// Recursive-descent parser from the pattern's code points to a Node tree; character classes go
// into the shared class table.
class Parser {
 public:
  Parser(std::string_view pattern, std::vector<CharClass>& classes)
      : pattern_(pattern), cps_(decode_text(pattern).cps), classes_(classes) {}

  Node parse() {
    Node root = parse_alternation(0);
    if (pos_ < cps_.size()) fail("unbalanced ')'");
    return root;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    eigenkv::fail("unsupported or malformed regex (", what, ") at character ", pos_,
                  " of pattern '", pattern_, "'");
  }

  bool at_end() const { return pos_ >= cps_.size(); }
  char32_t peek() const { return at_end() ? 0 : cps_[pos_]; }
  bool consume(char32_t cp) {
    if (at_end() || cps_[pos_] != cp) return false;
    ++pos_;
    return true;
  }
  char32_t next() {
    if (at_end()) fail("unexpected end of pattern");
    return cps_[pos_++];
  }

  Node parse_alternation(int depth) {
    if (depth > kMaxNesting) fail("groups nested too deeply");
    Node alternation{Node::Kind::kAlternation};
    alternation.children.push_back(parse_concat(depth));
    while (consume('|')) alternation.children.push_back(parse_concat(depth));
    if (alternation.children.size() == 1) return std::move(alternation.children[0]);
    return alternation;
  }

  Node parse_concat(int depth) {
    Node concat{Node::Kind::kConcat};
    while (!at_end() && peek() != '|' && peek() != ')') {
      Node atom = parse_atom(depth);
      parse_quantifier(atom);
      concat.children.push_back(std::move(atom));
    }
    return concat;
  }

  Node class_node(CharClass cls) {
    cls.case_insensitive = case_insensitive_;
    classes_.push_back(std::move(cls));
    Node node{Node::Kind::kClass};
    node.class_index = classes_.size() - 1;
    return node;
  }

  Node parse_atom(int depth) {
    const char32_t c = next();
    switch (c) {
      case '(':
        return parse_group(depth);
      case '[':
        return class_node(parse_class());
      case '.': {
        return class_node(class_of(single('\n'), /*negated=*/true));
      }
      case '^':
        return Node{Node::Kind::kAssertStart};
      case '$':
        return Node{Node::Kind::kAssertEnd};
      case '\\':
        return parse_escape_atom();
      case '*':
      case '+':
      case '?':
        fail("quantifier with nothing to repeat");
      default:
        return class_node(class_of(single(c)));
    }
  }

  Node parse_group(int depth) {
    const bool saved_case = case_insensitive_;
    Node node;
    if (consume('?')) {
      const char32_t kind = next();
      if (kind == ':') {
        node = parse_alternation(depth + 1);
      } else if (kind == 'i' && consume(':')) {
        case_insensitive_ = true;
        node = parse_alternation(depth + 1);
      } else if (kind == '=' || kind == '!') {
        node = Node{Node::Kind::kLookahead};
        node.negated = kind == '!';
        node.children.push_back(parse_alternation(depth + 1));
      } else {
        fail("group syntax '(?" + std::string(1, static_cast<char>(kind & 0x7F)) + "'");
      }
    } else {
      node = parse_alternation(depth + 1);  // capture groups only group here
    }
    case_insensitive_ = saved_case;
    if (!consume(')')) fail("missing ')'");
    return node;
  }

  Node parse_escape_atom() {
    if (consume('A')) return Node{Node::Kind::kAssertStart};
    if (consume('z')) return Node{Node::Kind::kAssertEnd};
    return class_node(class_of(parse_escape()));
  }

  // After a backslash: one class item (a set such as \s or \p{L}, or a single code point).
  ClassItem parse_escape() {
    const char32_t c = next();
    switch (c) {
      case 's':
      case 'S':
        return set_item(ClassItem::Kind::kWhiteSpace, c == 'S');
      case 'w':
      case 'W':
        return set_item(ClassItem::Kind::kWord, c == 'W');
      case 'd':
      case 'D': {
        ClassItem digit = set_item(ClassItem::Kind::kCategories, c == 'D');
        digit.category_mask = category_bit(GeneralCategory::kNd);
        return digit;
      }
      case 'p':
      case 'P':
        return parse_property(c == 'P');
      case 'r':
        return single('\r');
      case 'n':
        return single('\n');
      case 't':
        return single('\t');
      case 'f':
        return single('\f');
      case 'v':
        return single('\v');
      case 'e':
        return single(0x1B);
      case 'x':
        return single(parse_hex_escape());
      case 'u':
        return single(parse_fixed_hex(4));
      default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
          fail("escape '\\" + std::string(1, static_cast<char>(c)) + "'");
        }
        return single(c);
    }
  }

  ClassItem parse_property(bool negated) {
    std::string name;
    if (consume('{')) {
      if (consume('^')) negated = !negated;
      while (!at_end() && peek() != '}') name += static_cast<char>(next() & 0x7F);
      if (!consume('}')) fail("missing '}' in \\p{...}");
    } else {
      name = std::string(1, static_cast<char>(next() & 0x7F));
    }
    ClassItem item = set_item(ClassItem::Kind::kCategories, negated);
    if (!category_mask_for_name(name, item.category_mask)) fail("Unicode property '" + name + "'");
    return item;
  }

  int hex_digit(char32_t c) const {
    if (c >= '0' && c <= '9') return static_cast<int>(c - '0');
    if (c >= 'a' && c <= 'f') return static_cast<int>(c - 'a' + 10);
    if (c >= 'A' && c <= 'F') return static_cast<int>(c - 'A' + 10);
    return -1;
  }

  char32_t parse_fixed_hex(int digits) {
    char32_t value = 0;
    for (int i = 0; i < digits; ++i) {
      const int d = hex_digit(next());
      if (d < 0) fail("bad hexadecimal escape");
      value = value * 16 + d;
    }
    return value;
  }

  char32_t parse_hex_escape() {
    if (!consume('{')) return parse_fixed_hex(2);
    char32_t value = 0;
    int digits = 0;
    while (!consume('}')) {
      const int d = hex_digit(next());
      if (d < 0 || ++digits > 6) fail("bad \\x{...} escape");
      value = value * 16 + d;
    }
    if (digits == 0 || value > 0x10FFFF) fail("bad \\x{...} escape");
    return value;
  }

  // After '['.
  CharClass parse_class() {
    CharClass cls;
    cls.negated = consume('^');
    bool first = true;
    while (true) {
      if (at_end()) fail("missing ']'");
      if (peek() == ']' && !first) break;
      first = false;
      ClassItem item = parse_class_atom();
      if (peek() == '-' && pos_ + 1 < cps_.size() && cps_[pos_ + 1] != ']') {
        ++pos_;
        const ClassItem last = parse_class_atom();
        if (item.kind != ClassItem::Kind::kRange || last.kind != ClassItem::Kind::kRange ||
            item.first != item.last || last.first != last.last || last.first < item.first) {
          fail("bad range in character class");
        }
        item.last = last.first;
      }
      cls.items.push_back(item);
    }
    ++pos_;  // the ']'
    return cls;
  }

  ClassItem parse_class_atom() {
    const char32_t c = next();
    if (c == '\\') return parse_escape();
    if (c == '[') fail("nested character class");
    if (c == '&' && peek() == '&') fail("class intersection '&&'");
    return single(c);
  }

  void parse_quantifier(Node& atom) {
    int min;
    int max;
    if (consume('?')) {
      min = 0;
      max = 1;
    } else if (consume('*')) {
      min = 0;
      max = kUnbounded;
    } else if (consume('+')) {
      min = 1;
      max = kUnbounded;
    } else if (peek() != '{' || !parse_counted(min, max)) {
      return;
    }
    if (atom.kind == Node::Kind::kLookahead || atom.kind == Node::Kind::kAssertStart ||
        atom.kind == Node::Kind::kAssertEnd) {
      fail("quantified assertion");
    }
    bool greedy = true;
    if (consume('?')) greedy = false;
    if (peek() == '+') fail("possessive quantifier");
    Node repeat{Node::Kind::kRepeat};
    repeat.min = min;
    repeat.max = max;
    repeat.greedy = greedy;
    repeat.children.push_back(std::move(atom));
    if (max == kUnbounded && can_match_empty(repeat.children[0])) {
      fail("unbounded repetition of something that can match the empty string");
    }
    atom = std::move(repeat);
  }

  // {n}, {n,}, {n,m}; leaves pos_ after the '}' and returns true, or leaves pos_ unchanged and
  // returns false when the brace is a literal.
  bool parse_counted(int& min, int& max) {
    const size_t start = pos_;
    ++pos_;
    bool valid = parse_number(min);
    max = min;
    if (valid && consume(',') && !parse_number(max)) max = kUnbounded;
    valid = valid && consume('}') && (max == kUnbounded || max >= min);
    if (!valid) pos_ = start;
    return valid;
  }

  // Reads decimal digits into `value`; false when there are none.
  bool parse_number(int& value) {
    bool any = false;
    value = 0;
    while (peek() >= '0' && peek() <= '9') {
      value = value * 10 + static_cast<int>(next() - '0');
      if (value > kMaxRepeatCount) fail("repeat count above 1000");
      any = true;
    }
    return any;
  }

  std::string pattern_;
  std::u32string cps_;
  std::vector<CharClass>& classes_;
  size_t pos_ = 0;
  bool case_insensitive_ = false;
};

class Compiler {
 public:
  Compiler(std::vector<Instruction>& program, const std::string& pattern)
      : program_(program), pattern_(pattern) {}

  void emit(const Node& node) {
    switch (node.kind) {
      case Node::Kind::kClass:
        push({Op::kClass, false, node.class_index});
        break;
      case Node::Kind::kConcat:
        for (const Node& child : node.children) emit(child);
        break;
      case Node::Kind::kAlternation:
        emit_alternation(node);
        break;
      case Node::Kind::kRepeat:
        emit_repeat(node);
        break;
      case Node::Kind::kLookahead: {
        const size_t at = push({Op::kLookahead, node.negated});
        emit(node.children[0]);
        push({Op::kMatch});
        program_[at].arg = program_.size();
        break;
      }
      case Node::Kind::kAssertStart:
        push({Op::kAssertStart});
        break;
      case Node::Kind::kAssertEnd:
        push({Op::kAssertEnd});
        break;
    }
  }

  size_t push(Instruction instruction) {
    if (program_.size() >= kMaxProgramSize) fail("regex pattern too large: '", pattern_, "'");
    program_.push_back(instruction);
    return program_.size() - 1;
  }

 private:
  void emit_alternation(const Node& node) {
    std::vector<size_t> jumps_to_end;
    for (size_t i = 0; i + 1 < node.children.size(); ++i) {
      const size_t split = push({Op::kSplit});
      program_[split].arg = program_.size();
      emit(node.children[i]);
      jumps_to_end.push_back(push({Op::kJump}));
      program_[split].alt = program_.size();
    }
    emit(node.children.back());
    for (const size_t jump : jumps_to_end) program_[jump].arg = program_.size();
  }

  void set_split(size_t split, size_t body, size_t exit, bool greedy) {
    program_[split].arg = greedy ? body : exit;
    program_[split].alt = greedy ? exit : body;
  }

  void emit_repeat(const Node& node) {
    const Node& body = node.children[0];
    for (int i = 0; i < node.min; ++i) emit(body);
    if (node.max == kUnbounded) {
      const size_t loop = push({Op::kSplit});
      emit(body);
      push({Op::kJump, false, loop});
      set_split(loop, loop + 1, program_.size(), node.greedy);
      return;
    }
    // Optional copies nest: once one is skipped, the rest are too.
    std::vector<size_t> splits;
    for (int i = node.min; i < node.max; ++i) {
      splits.push_back(push({Op::kSplit}));
      emit(body);
    }
    for (const size_t split : splits) set_split(split, split + 1, program_.size(), node.greedy);
  }

  std::vector<Instruction>& program_;
  const std::string& pattern_;
};

}  // namespace

bool Regex::ClassItem::matches(char32_t cp) const {
  bool in = false;
  switch (kind) {
    case Kind::kRange:
      in = cp >= first && cp <= last;
      break;
    case Kind::kCategories:
      in = (category_mask & category_bit(general_category(cp))) != 0;
      break;
    case Kind::kWhiteSpace:
      in = is_white_space(cp);
      break;
    case Kind::kWord:
      in = is_word_char(cp);
      break;
  }
  return in != negated;
}

bool Regex::CharClass::matches(char32_t cp) const {
  const auto any_item = [&](char32_t c) {
    for (const ClassItem& item : items) {
      if (item.matches(c)) return true;
    }
    return false;
  };
  bool in = any_item(cp);
  if (!in && case_insensitive) {
    const char32_t other = other_ascii_case(cp);
    in = other != cp && any_item(other);
  }
  return in != negated;
}

Regex::Regex(std::string_view pattern) : pattern_(pattern) {
  const Node root = Parser(pattern, classes_).parse();
  Compiler compiler(program_, pattern_);
  compiler.emit(root);
  compiler.push({Op::kMatch});
}

bool Regex::run(size_t pc, size_t pos, SearchState& state, size_t& end) const {
  // Entries below `base` belong to an enclosing run (a lookahead runs nested).
  const size_t base = state.backtrack.size();
  const std::u32string_view text = state.text;
  while (true) {
    if (++state.steps > kMaxStepsPerSearch) {
      fail("regex '", pattern_, "' backtracks too much on its input");
    }
    const Instruction& in = program_[pc];
    bool ok = true;
    switch (in.op) {
      case Op::kClass:
        ok = pos < text.size() && classes_[in.arg].matches(text[pos]);
        ++pos;
        ++pc;
        break;
      case Op::kSplit:
        state.backtrack.emplace_back(in.alt, pos);
        pc = in.arg;
        break;
      case Op::kJump:
        pc = in.arg;
        break;
      case Op::kMatch:
        end = pos;
        state.backtrack.resize(base);
        return true;
      case Op::kAssertStart:
        ok = pos == 0;
        ++pc;
        break;
      case Op::kAssertEnd:
        ok = pos == text.size();
        ++pc;
        break;
      case Op::kLookahead: {
        size_t ignored;
        ok = run(pc + 1, pos, state, ignored) != in.negated;
        pc = in.arg;
        break;
      }
    }
    if (!ok) {
      if (state.backtrack.size() == base) return false;
      std::tie(pc, pos) = state.backtrack.back();
      state.backtrack.pop_back();
    }
  }
}

bool Regex::search(std::u32string_view text, size_t from, size_t& begin, size_t& end) const {
  SearchState state;
  state.text = text;
  for (size_t start = from; start <= text.size(); ++start) {
    if (run(0, start, state, end)) {
      begin = start;
      return true;
    }
  }
  return false;
}

std::string Regex::escape(std::string_view literal) {
  std::string pattern;
  for (const char c : literal) {
    const auto b = static_cast<unsigned char>(c);
    const bool alphanumeric =
        (b >= '0' && b <= '9') || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z');
    if (b < 0x80 && !alphanumeric) pattern += '\\';
    pattern += c;
  }
  return pattern;
}

}  // namespace eigenkv::tok
