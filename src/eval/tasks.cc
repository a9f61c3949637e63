#include "eval/tasks.h"

#include <bzlib.h>

#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "util/error.h"

namespace eigenkv::eval {
namespace {

using nlohmann::json;

// A malformed item: caught per item, then skipped or turned into an Error naming file:line.
class BadItem : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Format { kQuestion, kPlain, kCopa, kWinogrande, kHellaswag, kMmlu };

struct TaskInfo {
  const char* name;
  const char* file;  // under data_dir; empty: the user must give a path
  Format format;
};

// kQuestion: "Question: ...\nAnswer:" (ARC, PIQA); kPlain: the query as it is (OpenBookQA's
// question_stem).
constexpr TaskInfo kTasks[] = {
    {"piqa", "piqa.jsonl", Format::kQuestion},
    {"arc_easy", "arc_easy.jsonl", Format::kQuestion},
    {"arc_challenge", "arc_challenge.jsonl", Format::kQuestion},
    {"openbookqa", "openbook_qa.jsonl", Format::kPlain},
    {"copa", "copa.jsonl", Format::kCopa},
    {"winogrande", "winogrande.jsonl", Format::kWinogrande},
    {"hellaswag", "hellaswag_val_full.txt.bz2", Format::kHellaswag},
    {"mmlu", "", Format::kMmlu},
};

const TaskInfo& find_task(const std::string& name) {
  const std::string canonical = name == "openbook_qa" ? "openbookqa" : name;
  for (const TaskInfo& t : kTasks) {
    if (canonical == t.name) return t;
  }
  std::string known;
  for (const TaskInfo& t : kTasks) known += std::string(known.empty() ? "" : ", ") + t.name;
  fail("unknown task '", name, "' (known: ", known, ")");
}

std::string rstrip(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

std::string strip(const std::string& s) {
  size_t b = 0;
  while (b < s.size() && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  return rstrip(s.substr(b));
}

// One left-to-right pass over non-overlapping occurrences, as Python's str.replace: "   "
// becomes "  ", not " " (the harness's HellaSwag clean-up relies on that pass).
std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos).append(to);
  }
  return out.append(s, pos, std::string::npos);
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

const std::string& get_string(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) throw BadItem(cat("expected a string field '", key, "'"));
  return it->get_ref<const std::string&>();
}

std::vector<std::string> get_strings(const json& j, const char* key, size_t min_count) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) throw BadItem(cat("expected an array field '", key, "'"));
  std::vector<std::string> out;
  for (const json& e : *it) {
    if (!e.is_string()) throw BadItem(cat("field '", key, "' must hold strings"));
    out.push_back(e.get<std::string>());
  }
  if (out.size() < min_count) {
    throw BadItem(
        cat("field '", key, "' needs at least ", min_count, " entries, found ", out.size()));
  }
  return out;
}

int get_gold(const json& j, const char* key, size_t n_choices) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) {
    throw BadItem(cat("expected an integer field '", key, "'"));
  }
  const int64_t g = it->get<int64_t>();
  if (g < 0 || g >= static_cast<int64_t>(n_choices)) {
    throw BadItem(cat("'", key, "' is ", g, ", expected 0..", n_choices - 1));
  }
  return static_cast<int>(g);
}

// The continuation of a choice: the harness puts its target delimiter, one space, before it.
McItem choices_item(const std::string& context, const std::vector<std::string>& choices, int gold) {
  McItem item;
  item.gold = gold;
  for (const std::string& c : choices) {
    item.requests.push_back({context, " " + c});
    item.norm_text.push_back(c);
  }
  return item;
}

// ARC and PIQA: "Question: <question>\nAnswer:". The shared files already carry the
// "Question: " prefix (and PIQA a trailing newline); a bare question gets the prefix.
std::string question_prompt(const std::string& query) {
  std::string q = rstrip(query);
  if (q.rfind("Question:", 0) != 0) q = "Question: " + q;
  return q + "\nAnswer:";
}

// COPA: the harness drops the premise's final period and appends " because" / " therefore";
// the shared file writes "premise, because": drop that comma.
std::string copa_prompt(const std::string& query) {
  std::string q = rstrip(query);
  for (const char* connector : {"because", "therefore"}) {
    const std::string with_comma = std::string(", ") + connector;
    if (ends_with(q, with_comma)) {
      return q.substr(0, q.size() - with_comma.size()) + " " + connector;
    }
  }
  throw BadItem("a COPA query must end with 'because' or 'therefore'");
}

// The harness lowercases the first letter of a COPA choice, which continues the sentence.
std::string lower_first(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(s[0])));
  return s;
}

// {"text": [...], "label": [...]} choices and an answerKey naming one label (ARC, OpenBookQA on
// the Hugging Face hub): the texts and the gold index.
std::pair<std::vector<std::string>, int> labelled_choices(const json& j) {
  const auto it = j.find("choices");
  if (it == j.end() || !it->is_object()) throw BadItem("expected an object field 'choices'");
  std::vector<std::string> texts = get_strings(*it, "text", 2);
  const std::vector<std::string> labels = get_strings(*it, "label", texts.size());
  if (labels.size() != texts.size()) throw BadItem("'choices' has as many labels as texts");
  const std::string& key = get_string(j, "answerKey");
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] == key) return {std::move(texts), static_cast<int>(i)};
  }
  throw BadItem(cat("answerKey '", key, "' is none of the choices' labels"));
}

// A gold index written as a string of digits ("1"), as several hub datasets store labels.
int string_gold(const json& j, const char* key, int first, size_t n_choices) {
  const std::string& s = get_string(j, key);
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos || s.size() > 3) {
    throw BadItem(cat("'", key, "' must be a number written as a string, found '", s, "'"));
  }
  const int g = std::stoi(s) - first;
  if (g < 0 || g >= static_cast<int>(n_choices)) {
    throw BadItem(cat("'", key, "' is ", s, ", expected ", first, "..", n_choices - 1 + first));
  }
  return g;
}

// The same tasks in the schemas the Hugging Face datasets are published in (their jsonl
// exports), with lm-evaluation-harness's prompts: ARC (allenai/ai2_arc: question, choices
// {text, label}, answerKey), OpenBookQA (allenai/openbookqa: question_stem, ...), PIQA (goal,
// sol1, sol2, label) and COPA (super_glue: premise, choice1, choice2, question, label).
McItem parse_hub_item(const json& j, Format format) {
  if (j.contains("goal")) {  // PIQA
    const std::vector<std::string> sols = {get_string(j, "sol1"), get_string(j, "sol2")};
    return choices_item(question_prompt(get_string(j, "goal")), sols,
                        get_gold(j, "label", sols.size()));
  }
  if (j.contains("premise")) {  // COPA
    const std::string& q = get_string(j, "question");
    if (q != "cause" && q != "effect") {
      throw BadItem(cat("COPA 'question' must be cause or effect, found '", q, "'"));
    }
    std::string premise = strip(get_string(j, "premise"));
    if (!premise.empty() && premise.back() == '.') premise.pop_back();
    std::vector<std::string> choices = {lower_first(get_string(j, "choice1")),
                                        lower_first(get_string(j, "choice2"))};
    return choices_item(premise + (q == "cause" ? " because" : " therefore"), choices,
                        get_gold(j, "label", choices.size()));
  }
  auto [choices, gold] = labelled_choices(j);
  if (j.contains("question_stem")) return choices_item(get_string(j, "question_stem"), choices, gold);
  const std::string& question = get_string(j, "question");
  return choices_item(format == Format::kPlain ? question : question_prompt(question), choices,
                      gold);
}

McItem parse_query_item(const json& j, Format format) {
  if (!j.contains("query")) return parse_hub_item(j, format);
  const std::string& query = get_string(j, "query");
  std::vector<std::string> choices = get_strings(j, "choices", 2);
  const int gold = get_gold(j, "gold", choices.size());
  switch (format) {
    case Format::kQuestion:
      return choices_item(question_prompt(query), choices, gold);
    case Format::kCopa:
      for (std::string& c : choices) c = lower_first(c);
      return choices_item(copa_prompt(query), choices, gold);
    default:
      return choices_item(query, choices, gold);
  }
}

// WinoGrande by partial scoring: each option substituted into the sentence is a context, and the
// rest of the sentence after the blank is scored after each.
McItem parse_winogrande_item(const json& j) {
  if (j.contains("sentence")) {  // allenai/winogrande: sentence with "_", option1/2, answer "1"/"2"
    const std::string& sentence = get_string(j, "sentence");
    const size_t blank = sentence.find('_');
    if (blank == std::string::npos) throw BadItem("a WinoGrande 'sentence' needs a '_' blank");
    const std::string rest = strip(sentence.substr(blank + 1));
    if (rest.empty()) throw BadItem("nothing follows the blank to score");
    McItem item;
    item.gold = string_gold(j, "answer", 1, 2);
    for (const char* option : {"option1", "option2"}) {
      item.requests.push_back({sentence.substr(0, blank) + get_string(j, option), " " + rest});
      item.norm_text.push_back(rest);
    }
    return item;
  }
  const std::vector<std::string> contexts = get_strings(j, "context_options", 2);
  const std::string rest = strip(get_string(j, "continuation"));
  if (rest.empty()) throw BadItem("'continuation' is empty");
  McItem item;
  item.gold = get_gold(j, "gold", contexts.size());
  for (const std::string& c : contexts) {
    item.requests.push_back({c, " " + rest});
    item.norm_text.push_back(rest);
  }
  return item;
}

// MMLU-style: {"question", "choices", "answer" (index or letter), "subject" (optional)}.
struct MmluDoc {
  std::string question;
  std::vector<std::string> choices;
  int gold = 0;
  std::string subject;
  int64_t line = 0;
};

MmluDoc parse_mmlu_doc(const json& j) {
  MmluDoc d;
  d.question = strip(get_string(j, "question"));
  d.choices = get_strings(j, "choices", 2);
  if (d.choices.size() > 26) throw BadItem("more than 26 choices cannot be lettered A..Z");
  auto it = j.find("answer");
  if (it != j.end() && it->is_string()) {
    const std::string& a = it->get_ref<const std::string&>();
    const int g = a.size() == 1 ? a[0] - 'A' : -1;
    if (g < 0 || g >= static_cast<int>(d.choices.size())) {
      throw BadItem(cat("'answer' is '", a, "', expected a letter A..",
                        static_cast<char>('A' + d.choices.size() - 1)));
    }
    d.gold = g;
  } else {
    d.gold = get_gold(j, "answer", d.choices.size());
  }
  if (auto s = j.find("subject"); s != j.end() && s->is_string()) d.subject = s->get<std::string>();
  return d;
}

std::string letter(size_t i) { return std::string(1, static_cast<char>('A' + i)); }

// The harness's MMLU prompt: the question, "A. choice" lines, "Answer:".
std::string mmlu_text(const MmluDoc& d) {
  std::string s = d.question;
  for (size_t i = 0; i < d.choices.size(); ++i) s += "\n" + letter(i) + ". " + d.choices[i];
  return s + "\nAnswer:";
}

std::string mmlu_description(const std::string& subject) {
  if (subject.empty()) return "";
  std::string words = subject;
  for (char& c : words) {
    if (c == '_') c = ' ';
  }
  return "The following are multiple choice questions (with answers) about " + words + ".\n\n";
}

// k-shot: the first k dev questions of the same subject (the harness's first_n sampler), each
// with its answer letter, separated by blank lines.
McItem mmlu_item(const MmluDoc& d, const std::vector<MmluDoc>& dev, int64_t k) {
  std::string prompt = mmlu_description(d.subject);
  int64_t used = 0;
  for (const MmluDoc& shot : dev) {
    if (used == k) break;
    if (!d.subject.empty() && shot.subject != d.subject) continue;
    prompt += mmlu_text(shot) + " " + letter(static_cast<size_t>(shot.gold)) + "\n\n";
    ++used;
  }
  if (used < k) {
    fail("the few-shot file has ", used, " questions for subject '", d.subject, "', ", k,
         " asked (--num-fewshot)");
  }
  McItem item;
  item.gold = d.gold;
  item.line = d.line;
  const std::string context = prompt + mmlu_text(d);
  for (size_t i = 0; i < d.choices.size(); ++i) {
    item.requests.push_back({context, " " + letter(i)});
    item.norm_text.push_back(letter(i));
  }
  return item;
}

// Runs `parse` on every non-empty line of a jsonl text; a malformed line is skipped and counted
// or stops the load with file:line. Stops after `limit` good items.
template <typename Item>
std::vector<Item> parse_jsonl(const std::string& path, const std::string& text, int64_t limit,
                              bool skip_bad, int64_t* bad_lines,
                              const std::function<Item(const json&)>& parse) {
  std::vector<Item> items;
  std::istringstream in(text);
  std::string line;
  for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
    if (limit > 0 && static_cast<int64_t>(items.size()) == limit) break;
    if (strip(line).empty()) continue;
    try {
      const json j = json::parse(line);
      if (!j.is_object()) throw BadItem("expected a JSON object");
      Item item = parse(j);
      item.line = line_no;
      items.push_back(std::move(item));
    } catch (const std::exception& e) {  // BadItem or nlohmann's parse/type errors
      if (!skip_bad) fail(path, ":", line_no, ": ", e.what());
      ++*bad_lines;
    }
  }
  return items;
}

// llama.cpp's HellaSwag text format: per question six lines: the context, the gold index,
// and four endings.
void parse_hellaswag(const std::string& text, const TaskOptions& o, Task& task) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  while (!lines.empty() && strip(lines.back()).empty()) lines.pop_back();
  for (size_t i = 0; i < lines.size(); i += 6) {
    if (o.limit > 0 && static_cast<int64_t>(task.items.size()) == o.limit) break;
    const int64_t line_no = static_cast<int64_t>(i) + 1;
    try {
      if (i + 6 > lines.size()) throw BadItem("the file ends inside a question (6 lines each)");
      const std::string gold_text = strip(lines[i + 1]);
      if (gold_text.size() != 1 || gold_text[0] < '0' || gold_text[0] > '3') {
        throw BadItem(
            cat("line ", line_no + 1, " should be the answer 0..3, found '", lines[i + 1], "'"));
      }
      std::vector<std::string> endings;
      for (size_t e = 0; e < 4; ++e) endings.push_back(hellaswag_preprocess(lines[i + 2 + e]));
      McItem item = choices_item(hellaswag_preprocess(lines[i]), endings, gold_text[0] - '0');
      item.line = line_no;
      task.items.push_back(std::move(item));
    } catch (const BadItem& e) {
      if (!o.skip_bad_lines) fail(task.path, ":", line_no, ": ", e.what());
      ++task.bad_lines;
    }
  }
}

std::vector<MmluDoc> load_mmlu_docs(const std::string& path, int64_t limit, bool skip_bad,
                                    int64_t* bad_lines) {
  return parse_jsonl<MmluDoc>(path, read_maybe_bz2(path), limit, skip_bad, bad_lines,
                              parse_mmlu_doc);
}

void load_mmlu(const TaskOptions& o, Task& task) {
  std::vector<MmluDoc> dev;
  if (o.num_fewshot > 0) {
    EKV_CHECK(!o.fewshot_path.empty(), "--num-fewshot ", o.num_fewshot,
              " needs a dev split (--fewshot-file)");
    int64_t dev_bad = 0;
    dev = load_mmlu_docs(o.fewshot_path, 0, false, &dev_bad);
  }
  for (const MmluDoc& d : load_mmlu_docs(task.path, o.limit, o.skip_bad_lines, &task.bad_lines)) {
    task.items.push_back(mmlu_item(d, dev, o.num_fewshot));
  }
}

}  // namespace

std::vector<std::string> known_task_names() {
  std::vector<std::string> names;
  for (const TaskInfo& t : kTasks) names.push_back(t.name);
  return names;
}

std::string hellaswag_preprocess(const std::string& text) {
  std::string s = replace_all(strip(text), " [title]", ". ");
  // re.sub(r"\[.*?\]", "", s): drop each "[" up to the nearest "]" after it.
  std::string out;
  size_t pos = 0;
  for (size_t open; (open = s.find('[', pos)) != std::string::npos;) {
    const size_t close = s.find(']', open + 1);
    if (close == std::string::npos) break;
    out.append(s, pos, open - pos);
    pos = close + 1;
  }
  out.append(s, pos, std::string::npos);
  return replace_all(out, "  ", " ");
}

namespace {

// Python's str.capitalize (ASCII): the first letter upper case, every other letter lower case.
std::string capitalize(std::string s) {
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    s[i] = static_cast<char>(i == 0 ? std::toupper(c) : std::tolower(c));
  }
  return s;
}

// Rowan/hellaswag on the Hugging Face hub: ctx_a, ctx_b, activity_label, endings, label ("2"):
// the harness's query is preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()).
McItem parse_hellaswag_hub_item(const json& j) {
  const std::string ctx = get_string(j, "ctx_a") + " " + capitalize(get_string(j, "ctx_b"));
  std::vector<std::string> endings = get_strings(j, "endings", 2);
  for (std::string& e : endings) e = hellaswag_preprocess(e);
  return choices_item(hellaswag_preprocess(get_string(j, "activity_label") + ": " + ctx), endings,
                      string_gold(j, "label", 0, endings.size()));
}

}  // namespace

std::string read_maybe_bz2(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open");
  std::ostringstream s;
  s << in.rdbuf();
  std::string raw = s.str();
  if (raw.rfind("BZh", 0) != 0) return raw;
  bz_stream bz{};
  EKV_CHECK(BZ2_bzDecompressInit(&bz, 0, 0) == BZ_OK, path, ": cannot start bzip2 decompression");
  std::string out;
  std::vector<char> buf(1 << 20);
  bz.next_in = raw.data();
  bz.avail_in = static_cast<unsigned>(raw.size());
  int rc = BZ_OK;
  while (rc == BZ_OK) {
    bz.next_out = buf.data();
    bz.avail_out = static_cast<unsigned>(buf.size());
    rc = BZ2_bzDecompress(&bz);
    out.append(buf.data(), buf.size() - bz.avail_out);
    // Concatenated streams (pbzip2 output): start the next one.
    if (rc == BZ_STREAM_END && bz.avail_in > 0) {
      BZ2_bzDecompressEnd(&bz);
      char* next = bz.next_in;
      const unsigned left = bz.avail_in;
      bz = bz_stream{};
      EKV_CHECK(BZ2_bzDecompressInit(&bz, 0, 0) == BZ_OK, path, ": cannot restart bzip2");
      bz.next_in = next;
      bz.avail_in = left;
      rc = BZ_OK;
    } else if (rc == BZ_OK && bz.avail_in == 0 && bz.avail_out > 0) {
      rc = BZ_UNEXPECTED_EOF;
    }
  }
  BZ2_bzDecompressEnd(&bz);
  EKV_CHECK(rc == BZ_STREAM_END, path, ": corrupt or truncated bzip2 data (libbz2 error ", rc, ")");
  return out;
}

std::string default_data_dir() {
  if (const char* dir = std::getenv("EIGENKV_ZEROSHOT_DIR"); dir && *dir) return dir;
  if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg && *xdg) {
    return std::string(xdg) + "/eigenkv/zeroshot";
  }
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.local/share/eigenkv/zeroshot";
}

Task load_task(const std::string& spec, const TaskOptions& o) {
  EKV_CHECK(o.limit >= 0, "--limit must be >= 0, found ", o.limit);
  EKV_CHECK(o.num_fewshot >= 0, "--num-fewshot must be >= 0, found ", o.num_fewshot);
  const size_t eq = spec.find('=');
  const TaskInfo& info = find_task(spec.substr(0, eq));
  Task task;
  task.name = info.name;
  if (eq != std::string::npos) {
    task.path = spec.substr(eq + 1);
  } else {
    EKV_CHECK(info.file[0] != '\0', "task '", info.name, "' has no built-in file: give one as ",
              info.name, "=PATH");
    const std::string dir = o.data_dir.empty() ? default_data_dir() : o.data_dir;
    task.path = dir + "/" + info.file;
    EKV_CHECK(std::filesystem::exists(task.path), "task '", info.name, "' reads ", task.path,
              ", which does not exist: put ", info.file, " in ", dir, " (--data-dir or ",
              "EIGENKV_ZEROSHOT_DIR choose the folder; docs/ZEROSHOT.md says where each file "
              "comes from), or give the task as ", info.name, "=PATH");
  }
  switch (info.format) {
    case Format::kHellaswag:
      if (ends_with(task.path, ".jsonl") || ends_with(task.path, ".jsonl.bz2")) {
        task.items = parse_jsonl<McItem>(task.path, read_maybe_bz2(task.path), o.limit,
                                         o.skip_bad_lines, &task.bad_lines,
                                         parse_hellaswag_hub_item);
      } else {
        parse_hellaswag(read_maybe_bz2(task.path), o, task);
      }
      break;
    case Format::kMmlu:
      task.has_acc_norm = false;  // the choices are single letters: acc_norm would equal acc
      load_mmlu(o, task);
      break;
    case Format::kWinogrande:
      task.has_acc_norm = false;
      task.items = parse_jsonl<McItem>(task.path, read_maybe_bz2(task.path), o.limit,
                                       o.skip_bad_lines, &task.bad_lines, parse_winogrande_item);
      break;
    default: {
      const Format f = info.format;
      task.items = parse_jsonl<McItem>(task.path, read_maybe_bz2(task.path), o.limit,
                                       o.skip_bad_lines, &task.bad_lines,
                                       [f](const json& j) { return parse_query_item(j, f); });
    }
  }
  EKV_CHECK(!task.items.empty(), task.path, ": no usable items for task '", task.name, "'");
  return task;
}

}  // namespace eigenkv::eval
