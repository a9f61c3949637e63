// Zero-shot harness: scores against the float64 reference (tests/data/zeroshot/expected_*.json,
// made by scripts/reference/make_zeroshot_fixture.py), prefix sharing against scoring each
// choice alone, task parsing and its errors, and the eval subcommand.
#include "eval/zeroshot.h"

#include <bzlib.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "eval/tasks.h"
#include "model/model.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/threads.h"

namespace eigenkv {
namespace {

using eval::Task;
using eval::TaskOptions;
using testing::shared_path;
using testing::source_path;

constexpr const char* kModel = "models/stories260K.gguf";

const model::Model& stories260k() {
  static std::unique_ptr<model::Model> m = model::Model::load(shared_path(kModel));
  return *m;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// "name=tests/data/..." with the path made absolute.
std::string absolute_spec(const std::string& spec) {
  const size_t eq = spec.find('=');
  return spec.substr(0, eq + 1) + source_path(spec.substr(eq + 1));
}

Task load(const std::string& spec, TaskOptions o = {}) {
  o.data_dir = shared_path("data/zeroshot");
  return eval::load_task(spec, o);
}

eval::TaskResult score(const Task& task, int64_t max_length, bool share) {
  eval::ScoreOptions so;
  so.max_length = max_length;
  so.share_prefix = share;
  so.progress = false;
  return eval::evaluate_task(stories260k(), task, so);
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(ZeroShot, ScoresEqualTheFloat64ReferenceAndAccuracyIsExact) {
  EKV_REQUIRE_SHARED(kModel);
  const nlohmann::json fixture = nlohmann::json::parse(
      read_file(source_path("tests/data/zeroshot/expected_stories260K.json")));
  ASSERT_GE(fixture["cases"].size(), 7u);
  for (const nlohmann::json& c : fixture["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    TaskOptions o;
    if (c.contains("fewshot_file")) {
      o.fewshot_path = source_path(c["fewshot_file"]);
      o.num_fewshot = c["num_fewshot"];
    }
    const Task task = load(absolute_spec(c["spec"]), o);
    const eval::TaskResult r = score(task, c["max_length"], true);
    ASSERT_EQ(r.n, c["n"].get<int64_t>());
    EXPECT_EQ(r.truncated, c["truncated"].get<int64_t>());
    for (size_t i = 0; i < r.loglik.size(); ++i) {
      const std::vector<double> want = c["loglik"][i];
      ASSERT_EQ(r.loglik[i].size(), want.size());
      for (size_t k = 0; k < want.size(); ++k) {
        EXPECT_NEAR(r.loglik[i][k], want[k], 1e-5 * std::fabs(want[k]) + 1e-5)
            << "item " << i << " choice " << k;
      }
    }
    // The fixture's margins between the best and second-best choice (>= 0.009) are far above
    // the tolerance above, so the chosen answers and the accuracies must match exactly.
    EXPECT_GT(c["min_margin"].get<double>(), 0.005);
    EXPECT_EQ(r.pred, c["pred"].get<std::vector<int>>());
    EXPECT_EQ(r.acc.mean, c["acc"].get<double>());
    EXPECT_NEAR(r.acc.stderr_, c["acc_stderr"].get<double>(), 1e-12);
    EXPECT_EQ(r.has_acc_norm, c.contains("acc_norm"));
    if (c.contains("acc_norm")) {
      EXPECT_EQ(r.pred_norm, c["pred_norm"].get<std::vector<int>>());
      EXPECT_EQ(r.acc_norm.mean, c["acc_norm"].get<double>());
      EXPECT_NEAR(r.acc_norm.stderr_, c["acc_norm_stderr"].get<double>(), 1e-12);
    }
  }
}

// `saves`: the choices share a prefix (not so when each is cut from the left differently).
void expect_same_scores(const Task& task, int64_t max_length, bool saves = true) {
  const eval::TaskResult shared = score(task, max_length, true);
  const eval::TaskResult alone = score(task, max_length, false);
  if (saves) {
    EXPECT_LT(shared.tokens, alone.tokens) << task.name << ": sharing saved nothing";
  }
  ASSERT_EQ(shared.loglik.size(), alone.loglik.size());
  for (size_t i = 0; i < alone.loglik.size(); ++i) {
    for (size_t k = 0; k < alone.loglik[i].size(); ++k) {
      EXPECT_NEAR(shared.loglik[i][k], alone.loglik[i][k], 1e-5 * std::fabs(alone.loglik[i][k]))
          << task.name << " item " << i << " choice " << k;
    }
  }
  EXPECT_EQ(shared.pred, alone.pred);
}

TEST(ZeroShot, PrefixSharingGivesTheScoresOfEachChoiceAlone) {
  EKV_REQUIRE_SHARED(kModel);
  const std::string d = "tests/data/zeroshot/";
  expect_same_scores(load("arc_easy=" + source_path(d + "tiny_arc.jsonl")), 0);
  expect_same_scores(load("arc_easy=" + source_path(d + "tiny_arc.jsonl")), 16, false);
  expect_same_scores(load("winogrande=" + source_path(d + "tiny_winogrande.jsonl")), 0);
  expect_same_scores(load("hellaswag=" + source_path(d + "tiny_hellaswag.txt")), 0);
  TaskOptions real;
  real.limit = 6;
  for (const char* name : {"piqa", "arc_challenge", "hellaswag", "winogrande", "copa"}) {
    if (!std::filesystem::exists(shared_path("data/zeroshot"))) break;
    expect_same_scores(load(name, real), 0);
  }
}

TEST(ZeroShot, ItemsSideBySideGiveTheScoresOfOneAtATime) {
  EKV_REQUIRE_SHARED(kModel);
  TaskOptions o;
  o.limit = 8;
  const Task task = load("arc_easy=" + source_path("tests/data/zeroshot/tiny_arc.jsonl"), o);
  eval::ScoreOptions so;
  so.progress = false;
  so.parallel_items = false;
  const eval::TaskResult serial = eval::evaluate_task(stories260k(), task, so);
  set_thread_count(3);
  so.parallel_items = true;
  const eval::TaskResult parallel = eval::evaluate_task(stories260k(), task, so);
  set_thread_count(0);  // back to OMP_NUM_THREADS
  EXPECT_EQ(parallel.tokens, serial.tokens);
  EXPECT_EQ(parallel.pred, serial.pred);
  for (size_t i = 0; i < serial.loglik.size(); ++i) {
    for (size_t k = 0; k < serial.loglik[i].size(); ++k) {
      EXPECT_NEAR(parallel.loglik[i][k], serial.loglik[i][k],
                  1e-5 * std::fabs(serial.loglik[i][k]));
    }
  }
}

TEST(ZeroShot, PairEncodingMovesTrailingSpaceOntoTheContinuation) {
  EKV_REQUIRE_SHARED(kModel);
  const tok::Tokenizer& tok = stories260k().tokenizer();
  const eval::TokenizedRequest r = eval::tokenize_request(tok, {"The dog ran to the ", " park"});
  EXPECT_EQ(r.context, tok.encode("The dog ran to the", true));
  std::vector<int32_t> whole = r.context;
  whole.insert(whole.end(), r.continuation.begin(), r.continuation.end());
  EXPECT_EQ(whole, tok.encode("The dog ran to the  park", true));
  EXPECT_EQ(r.context.front(), tok.bos_id());
}

// TinyStories-656K's vocabulary has pieces ending in a space ("with the "), which merge across
// the context/continuation boundary: the split falls back to the common prefix, so the whole
// continuation is scored rather than a tail of it.
TEST(ZeroShot, TokenAcrossTheBoundarySplitsAtTheCommonPrefix) {
  EKV_REQUIRE_SHARED("models/TinyStories-656K/tokenizer.json");
  const auto tok = model::load_tokenizer(shared_path("models/TinyStories-656K"));
  const std::string context = "a plane has no friction with the";
  const eval::TokenizedRequest r = eval::tokenize_request(*tok, {context, " wings"});
  EXPECT_TRUE(r.boundary_merged);
  std::vector<int32_t> whole = r.context;
  whole.insert(whole.end(), r.continuation.begin(), r.continuation.end());
  EXPECT_EQ(whole, tok->encode(context + " wings", true));
  const std::vector<int32_t> ctx = tok->encode(context, true);
  ASSERT_LT(r.context.size(), ctx.size());
  EXPECT_TRUE(std::equal(r.context.begin(), r.context.end(), ctx.begin()));
  EXPECT_EQ(tok->decode(r.continuation).find("wings"), tok->decode(r.continuation).size() - 5);
}

TEST(ZeroShot, PromptConventions) {
  const std::string d = source_path("tests/data/zeroshot/");
  const Task arc = load("arc_easy=" + d + "tiny_arc.jsonl");
  EXPECT_EQ(arc.items[1].requests[0].context,
            "Question: Tom was very hungry. What did Tom want to eat?\nAnswer:");
  EXPECT_EQ(arc.items[1].requests[0].continuation, " a cake");
  EXPECT_EQ(arc.items[1].norm_text[0], "a cake");
  const Task copa = load("copa=" + d + "tiny_copa.jsonl");
  EXPECT_EQ(copa.items[0].requests[0].context, "The girl was hungry therefore");
  EXPECT_EQ(copa.items[0].requests[0].continuation, " she ate a big apple.");
  const Task wino = load("winogrande=" + d + "tiny_winogrande.jsonl");
  EXPECT_FALSE(wino.has_acc_norm);
  EXPECT_EQ(wino.items[2].requests[1].context, "Mom hugged Ben because Ben");
  EXPECT_EQ(wino.items[2].requests[1].continuation, " loved him very much.");
  const Task hs = load("hellaswag=" + d + "tiny_hellaswag.txt");
  ASSERT_EQ(hs.items.size(), 2u);
  EXPECT_EQ(hs.items[0].gold, 1);
  EXPECT_EQ(hs.items[0].requests[0].continuation, " ate the. sky.");
  EXPECT_EQ(hs.items[1].requests[0].context, "Baking cookies:. Mom made cookies. she");
  TaskOptions few;
  few.fewshot_path = d + "tiny_mmlu_dev.jsonl";
  few.num_fewshot = 2;
  few.limit = 2;  // the dev split has one "numbers" question
  const Task mmlu = load("mmlu=" + d + "tiny_mmlu_test.jsonl", few);
  EXPECT_EQ(mmlu.items[1].requests[1].context,
            "The following are multiple choice questions (with answers) about little stories."
            "\n\nWhat color is the sky?\nA. blue\nB. green\nC. red\nD. black\nAnswer: A\n\n"
            "What does a dog say?\nA. moo\nB. woof\nC. meow\nD. quack\nAnswer: B\n\n"
            "Where do fish live?\nA. in a tree\nB. in the water\nC. in the sky\nD. in a car"
            "\nAnswer:");
  EXPECT_EQ(mmlu.items[1].requests[1].continuation, " B");
  EXPECT_EQ(mmlu.items[1].gold, 1);
  EXPECT_EQ(mmlu.items.size(), 2u);
}

TEST(ZeroShot, HellaswagPreprocessingFollowsTheHarness) {
  EXPECT_EQ(eval::hellaswag_preprocess("  a [title] b  "), "a. b");
  EXPECT_EQ(eval::hellaswag_preprocess("x [step] y"), "x y");
  // One pass of str.replace("  ", " "): three spaces become two.
  EXPECT_EQ(eval::hellaswag_preprocess("x   y"), "x  y");
  EXPECT_EQ(eval::hellaswag_preprocess("[header] z"), " z");
  EXPECT_EQ(eval::hellaswag_preprocess("a [b] c [d e] f [g"), "a c f [g");
}

TEST(ZeroShot, MetricsAndTies) {
  const eval::Metric m = eval::mean_and_stderr({1, 0, 1, 1});
  EXPECT_DOUBLE_EQ(m.mean, 0.75);
  EXPECT_DOUBLE_EQ(m.stderr_, std::sqrt(0.25 / 4.0));  // sample variance 1/4, n = 4
  EXPECT_EQ(eval::argmax_first({-1.0, -0.5, -0.5}), 1);
}

TEST(ZeroShot, LimitKeepsTheFirstItems) {
  TaskOptions o;
  o.limit = 2;
  const Task t = load("arc_easy=" + source_path("tests/data/zeroshot/tiny_arc.jsonl"), o);
  ASSERT_EQ(t.items.size(), 2u);
  EXPECT_EQ(t.items[1].line, 2);
}

TEST(ZeroShotErrors, MalformedLinesStopWithFileLineOrAreSkippedAndCounted) {
  const std::string bad = source_path("tests/data/zeroshot/bad_lines.jsonl");
  const std::string e = error_of([&] { load("arc_easy=" + bad); });
  EXPECT_NE(e.find("bad_lines.jsonl:2: expected an array field 'choices'"), std::string::npos) << e;
  TaskOptions skip;
  skip.skip_bad_lines = true;
  const Task t = load("arc_easy=" + bad, skip);
  EXPECT_EQ(t.items.size(), 2u);
  EXPECT_EQ(t.bad_lines, 3);
  EXPECT_EQ(t.items[1].line, 6);
}

TEST(ZeroShotErrors, BadNamesFilesAndOptions) {
  EXPECT_NE(error_of([] { load("piqaa"); }).find("unknown task 'piqaa' (known: piqa,"),
            std::string::npos);
  EXPECT_NE(error_of([] { load("piqa=/nonexistent.jsonl"); }).find("/nonexistent.jsonl: cannot"),
            std::string::npos);
  EXPECT_NE(error_of([] { load("mmlu"); }).find("give one as mmlu=PATH"), std::string::npos);
  const std::string d = source_path("tests/data/zeroshot/");
  TaskOptions few;
  few.num_fewshot = 1;
  EXPECT_NE(error_of([&] { load("mmlu=" + d + "tiny_mmlu_test.jsonl", few); }).find("--fewshot"),
            std::string::npos);
  few.fewshot_path = d + "tiny_mmlu_dev.jsonl";
  few.num_fewshot = 3;
  EXPECT_NE(error_of([&] {
              load("mmlu=" + d + "tiny_mmlu_test.jsonl", few);
            }).find("has 2 questions for subject 'little_stories', 3 asked"),
            std::string::npos);
  const std::string cut = testing::temp_path("cut_hellaswag.txt");
  write_file(cut, read_file(d + "tiny_hellaswag.txt").substr(0, 150));
  EXPECT_NE(error_of([&] { load("hellaswag=" + cut); }).find(":7: the file ends inside"),
            std::string::npos);
  std::remove(cut.c_str());
}

TEST(ZeroShot, ContinuationLongerThanTheContextScoresItsLastTokens) {
  EKV_REQUIRE_SHARED(kModel);
  const tok::Tokenizer& tok = stories260k().tokenizer();
  const eval::TokenizedRequest r = eval::tokenize_request(tok, {"Lily", " saw a big red ball"});
  ASSERT_GT(r.continuation.size(), 3u);
  eval::ScoreOptions so;
  so.max_length = 3;
  eval::ItemScorer scorer(stories260k(), so);
  bool truncated = false;
  const double ll = scorer.score({r}, &truncated)[0];
  EXPECT_TRUE(truncated);
  // The same as a request that is exactly the last 4 tokens: 1 of context, 3 scored.
  const std::vector<int32_t> tail(r.continuation.end() - 4, r.continuation.end());
  bool cut = true;
  const double want = scorer.score({{{tail[0]}, {tail.begin() + 1, tail.end()}}}, &cut)[0];
  EXPECT_FALSE(cut);
  EXPECT_DOUBLE_EQ(ll, want);
}

TEST(ZeroShot, Bzip2FilesReadLikeTheirText) {
  const std::string txt = source_path("tests/data/zeroshot/tiny_hellaswag.txt");
  std::string text = read_file(txt);
  std::vector<char> packed(text.size() * 2 + 600);
  unsigned packed_size = static_cast<unsigned>(packed.size());
  ASSERT_EQ(BZ2_bzBuffToBuffCompress(packed.data(), &packed_size, text.data(),
                                     static_cast<unsigned>(text.size()), 9, 0, 0),
            BZ_OK);
  const std::string bz = testing::temp_path("tiny_hellaswag.txt.bz2");
  write_file(bz, std::string(packed.data(), packed_size));
  EXPECT_EQ(eval::read_maybe_bz2(bz), text);
  const Task a = load("hellaswag=" + txt);
  const Task b = load("hellaswag=" + bz);
  ASSERT_EQ(a.items.size(), b.items.size());
  EXPECT_EQ(a.items[1].requests[2].continuation, b.items[1].requests[2].continuation);
  write_file(bz, std::string(packed.data(), packed_size / 2));
  EXPECT_NE(error_of([&] { eval::read_maybe_bz2(bz); }).find("corrupt or truncated bzip2"),
            std::string::npos);
  std::remove(bz.c_str());
}

TEST(ZeroShot, SharedHellaswagFileHasAllTasks) {
  EKV_REQUIRE_SHARED("data/zeroshot/hellaswag_val_full.txt.bz2");
  const Task t = load("hellaswag");
  EXPECT_EQ(t.items.size(), 10042u);  // the file's README: all 10042 validation tasks
  EXPECT_EQ(t.bad_lines, 0);
}

// The same question in the schema its Hugging Face dataset is published in (jsonl export) and
// in the llm-foundry export the shared files use give the same requests, the harness's prompts.
TEST(ZeroShotTasks, HubSchemasGiveTheHarnessPrompts) {
  const std::string dir = testing::temp_path("hub_tasks");
  std::filesystem::create_directories(dir);
  struct Case {
    const char* task;
    std::string hub, foundry;
  };
  const std::vector<Case> cases = {
      {"arc_easy",
       R"({"id": "x", "question": "Which is a metal?", "choices": {"text": ["wood", "iron"], "label": ["A", "B"]}, "answerKey": "B"})",
       R"({"query": "Question: Which is a metal?", "choices": ["wood", "iron"], "gold": 1})"},
      {"piqa", R"({"goal": "Open a jar", "sol1": "twist the lid", "sol2": "paint the lid", "label": 0})",
       R"({"query": "Question: Open a jar\n", "choices": ["twist the lid", "paint the lid"], "gold": 0})"},
      {"openbookqa",
       R"({"id": "y", "question_stem": "The sun is", "choices": {"text": ["a star", "a moon", "cold", "wet"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"})",
       R"({"query": "The sun is", "choices": ["a star", "a moon", "cold", "wet"], "gold": 0})"},
      {"copa",
       R"({"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.", "choice2": "He got a hole in his sock.", "question": "cause", "label": 0})",
       R"({"query": "The man broke his toe, because", "choices": ["He dropped a hammer on his foot.", "He got a hole in his sock."], "gold": 0})"},
      {"winogrande",
       R"({"sentence": "Tom gave Bob a book because _ was done with it.", "option1": "Tom", "option2": "Bob", "answer": "1"})",
       R"({"context_options": ["Tom gave Bob a book because Tom", "Tom gave Bob a book because Bob"], "continuation": "was done with it.", "gold": 0})"},
  };
  for (const Case& c : cases) {
    write_file(dir + "/hub.jsonl", c.hub + "\n");
    write_file(dir + "/foundry.jsonl", c.foundry + "\n");
    const Task hub = eval::load_task(std::string(c.task) + "=" + dir + "/hub.jsonl", {});
    const Task foundry = eval::load_task(std::string(c.task) + "=" + dir + "/foundry.jsonl", {});
    ASSERT_EQ(hub.items.size(), 1u) << c.task;
    ASSERT_EQ(foundry.items.size(), 1u) << c.task;
    const eval::McItem& a = hub.items[0];
    const eval::McItem& b = foundry.items[0];
    EXPECT_EQ(a.gold, b.gold) << c.task;
    ASSERT_EQ(a.requests.size(), b.requests.size()) << c.task;
    for (size_t k = 0; k < a.requests.size(); ++k) {
      EXPECT_EQ(a.requests[k].context, b.requests[k].context) << c.task << " choice " << k;
      EXPECT_EQ(a.requests[k].continuation, b.requests[k].continuation) << c.task << " choice " << k;
    }
  }
  // HellaSwag from the hub's jsonl: the harness's preprocess(activity_label: ctx_a ctx_b.capitalize()).
  write_file(dir + "/hs.jsonl",
             R"({"ctx_a": "A man is sitting on a roof.", "ctx_b": "he [step] starts", "activity_label": "Roof shingle removal", "endings": ["is using wrap.", "starts pulling up roofing.", "is ripping level tiles.", "is holding a rubik's cube."], "label": "1"})"
             "\n");
  const Task hs = eval::load_task("hellaswag=" + dir + "/hs.jsonl", {});
  ASSERT_EQ(hs.items.size(), 1u);
  EXPECT_EQ(hs.items[0].gold, 1);
  EXPECT_EQ(hs.items[0].requests[0].context,
            "Roof shingle removal: A man is sitting on a roof. He starts");
  EXPECT_EQ(hs.items[0].requests[1].continuation, " starts pulling up roofing.");
  // Wrong hub values are errors naming the field.
  write_file(dir + "/bad.jsonl", R"({"sentence": "no blank here", "option1": "a", "option2": "b", "answer": "1"})" "\n");
  try {
    eval::load_task("winogrande=" + dir + "/bad.jsonl", {});
    ADD_FAILURE() << "a sentence without a blank was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blank"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

// Built-in names look in a user location (no path into the development tree): the flag, else
// $EIGENKV_ZEROSHOT_DIR, else ~/.local/share/eigenkv/zeroshot; a missing file says where it
// looked and how to choose the folder.
TEST(ZeroShotTasks, BuiltInNamesReadTheUsersDataDirectory) {
  const std::string dir = testing::temp_path("zeroshot_home");
  std::filesystem::create_directories(dir);
  write_file(dir + "/copa.jsonl",
             R"({"query": "It rained, therefore", "choices": ["we got wet.", "we flew."], "gold": 0})" "\n");
  setenv("EIGENKV_ZEROSHOT_DIR", dir.c_str(), 1);
  EXPECT_EQ(eval::default_data_dir(), dir);
  EXPECT_EQ(eval::load_task("copa", {}).items.size(), 1u);
  try {
    eval::load_task("piqa", {});
    ADD_FAILURE() << "a missing built-in file was accepted";
  } catch (const Error& e) {
    const std::string said = e.what();
    EXPECT_NE(said.find(dir + "/piqa.jsonl"), std::string::npos) << said;
    EXPECT_NE(said.find("EIGENKV_ZEROSHOT_DIR"), std::string::npos) << said;
  }
  unsetenv("EIGENKV_ZEROSHOT_DIR");
  const std::string saved_home = std::getenv("HOME") ? std::getenv("HOME") : "";
  unsetenv("XDG_DATA_HOME");
  setenv("HOME", "/home/someone", 1);
  EXPECT_EQ(eval::default_data_dir(), "/home/someone/.local/share/eigenkv/zeroshot");
  setenv("HOME", saved_home.c_str(), 1);
  std::filesystem::remove_all(dir);
}

constexpr auto& eigenkv = testing::run_eigenkv;

TEST(ZeroShotCli, BaseComparisonOfAModelWithItselfAgreesEverywhere) {
  EKV_REQUIRE_SHARED(kModel);
  const std::string d = source_path("tests/data/zeroshot/");
  const testing::CliOutcome o = eigenkv("eval -m " + shared_path(kModel) + " --base " + shared_path(kModel) +
                              " --tasks arc_easy=" + d + "tiny_arc.jsonl,winogrande=" + d +
                              "tiny_winogrande.jsonl --limit 4 --json");
  ASSERT_EQ(o.status, 0) << o.out;
  const nlohmann::json j = nlohmann::json::parse(o.out);
  ASSERT_EQ(j["tasks"].size(), 2u);
  const nlohmann::json& arc = j["tasks"][0];
  EXPECT_EQ(arc["n"], 4);
  EXPECT_EQ(arc["agree"], 1.0);
  EXPECT_EQ(arc["diff_acc"], 0.0);
  EXPECT_EQ(arc["model"]["acc"], arc["base"]["acc"]);
  EXPECT_TRUE(arc["model"].contains("acc_norm_stderr"));
  EXPECT_FALSE(j["tasks"][1]["model"].contains("acc_norm"));
  EXPECT_EQ(j["tasks"][1]["n"], 3);
}

TEST(ZeroShotCli, ErrorsAreOneLine) {
  EKV_REQUIRE_SHARED(kModel);
  const testing::CliOutcome o = eigenkv("eval -m " + shared_path(kModel) + " --tasks nope");
  EXPECT_EQ(o.status, 1);
  EXPECT_EQ(o.out.rfind("eigenkv: error: unknown task 'nope'", 0), 0u) << o.out;
}

}  // namespace
}  // namespace eigenkv
