// eigenkv eval: zero-shot multiple-choice accuracy (lm-evaluation-harness conventions), and with
// --base the original model beside it: both accuracies, the difference, and answer agreement.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/common.h"
#include "eval/tasks.h"
#include "eval/zeroshot.h"
#include "util/error.h"

namespace eigenkv::cli {
namespace {

struct EvalFlags {
  ModelFlags model;
  std::string base;
  std::string tasks;
  std::string data_dir;  // empty: eval::default_data_dir()
  int64_t limit = 0;
  int64_t ctx = 0;
  std::string fewshot_file;
  int64_t num_fewshot = 0;
  bool skip_bad_lines = false;
  bool no_share_prefix = false;
  bool serial_items = false;
  bool json = false;
};

std::vector<std::string> split_tasks(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream in(list);
  for (std::string t; std::getline(in, t, ',');) {
    if (!t.empty()) out.push_back(t);
  }
  EKV_CHECK(!out.empty(), "--tasks is empty (e.g. --tasks piqa,arc_easy)");
  return out;
}

nlohmann::json metrics_json(const eval::TaskResult& r) {
  nlohmann::json j = {{"acc", r.acc.mean},
                      {"acc_stderr", r.acc.stderr_},
                      {"seconds", r.seconds},
                      {"items_per_s", r.seconds > 0 ? r.n / r.seconds : 0.0},
                      {"tokens", r.tokens}};
  if (r.has_acc_norm) {
    j["acc_norm"] = r.acc_norm.mean;
    j["acc_norm_stderr"] = r.acc_norm.stderr_;
  }
  return j;
}

std::string cell(const eval::Metric& m) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.4f +/- %.4f", m.mean, m.stderr_);
  return buf;
}

void print_single(const eval::TaskResult& r) {
  std::printf("%-14s %6lld  %-17s  %-17s  %6.1f items/s\n", r.task.c_str(),
              static_cast<long long>(r.n), cell(r.acc).c_str(),
              r.has_acc_norm ? cell(r.acc_norm).c_str() : "-",
              r.seconds > 0 ? r.n / r.seconds : 0.0);
}

void print_pair(const eval::TaskResult& base, const eval::TaskResult& r) {
  const double agree = eval::agreement(base, r);
  std::printf("%-14s %6lld  %-8s  %-17s  %-17s  %+8.4f  %6.1f %%\n", r.task.c_str(),
              static_cast<long long>(r.n), "acc", cell(base.acc).c_str(), cell(r.acc).c_str(),
              r.acc.mean - base.acc.mean, 100.0 * agree);
  if (r.has_acc_norm) {
    std::printf("%-14s %6s  %-8s  %-17s  %-17s  %+8.4f\n", "", "", "acc_norm",
                cell(base.acc_norm).c_str(), cell(r.acc_norm).c_str(),
                r.acc_norm.mean - base.acc_norm.mean);
  }
}

void run(const EvalFlags& f) {
  report_on_rank_zero_only();  // under mpirun every rank ends with every task's result
  auto model = load_model(f.model);
  std::unique_ptr<model::Model> base;
  if (!f.base.empty()) base = model::Model::load(f.base);
  eval::TaskOptions to;
  to.data_dir = f.data_dir;
  to.limit = f.limit;
  to.skip_bad_lines = f.skip_bad_lines;
  to.fewshot_path = f.fewshot_file;
  to.num_fewshot = f.num_fewshot;
  eval::ScoreOptions so;
  so.max_length = f.ctx;
  so.parse_special = parse_special_text();
  if (f.ctx > 0) warn_past_trained_context(*model, f.ctx);
  so.share_prefix = !f.no_share_prefix;
  so.parallel_items = !f.serial_items;
  // Load every task first, so a bad name or file fails before any scoring.
  std::vector<eval::Task> tasks;
  for (const std::string& spec : split_tasks(f.tasks)) tasks.push_back(eval::load_task(spec, to));

  nlohmann::json out = {{"model", f.model.model}, {"limit", f.limit}};
  if (base) out["base"] = f.base;
  nlohmann::json rows = nlohmann::json::array();
  if (!f.json) {
    std::printf("model: %s%s%s\n", f.model.model.c_str(), base ? "\nbase:  " : "",
                base ? f.base.c_str() : "");
    if (base) {
      std::printf("%-14s %6s  %-8s  %-17s  %-17s  %8s  %s\n", "task", "n", "metric", "base",
                  "model", "diff", "agree");
    } else {
      std::printf("%-14s %6s  %-17s  %-17s\n", "task", "n", "acc", "acc_norm");
    }
  }
  std::vector<std::string> notes;
  for (const eval::Task& task : tasks) {
    const eval::TaskResult r = eval::evaluate_task(*model, task, so);
    nlohmann::json row = {{"task", task.name},
                          {"path", task.path},
                          {"n", r.n},
                          {"truncated", r.truncated},
                          {"bad_lines", r.bad_lines},
                          {"boundary_merges", r.boundary_merges},
                          {"model", metrics_json(r)}};
    if (r.truncated > 0 || r.bad_lines > 0 || r.boundary_merges > 0) {
      notes.push_back(cat(task.name, ": ", r.truncated, " items cut from the left to fit the ",
                          "context, ", r.bad_lines, " malformed items skipped, ", r.boundary_merges,
                          " with a token across the context/answer boundary"));
    }
    if (base) {
      const eval::TaskResult b = eval::evaluate_task(*base, task, so);
      row["base"] = metrics_json(b);
      row["diff_acc"] = r.acc.mean - b.acc.mean;
      if (r.has_acc_norm) row["diff_acc_norm"] = r.acc_norm.mean - b.acc_norm.mean;
      row["agree"] = eval::agreement(b, r);
      if (!f.json) print_pair(b, r);
    } else if (!f.json) {
      print_single(r);
    }
    rows.push_back(std::move(row));
  }
  if (f.json) {
    out["tasks"] = std::move(rows);
    std::printf("%s\n", out.dump().c_str());
    return;
  }
  for (const std::string& n : notes) std::printf("note: %s\n", n.c_str());
}

}  // namespace

void register_eval(CLI::App& app) {
  auto flags = std::make_shared<EvalFlags>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "zero-shot multiple-choice accuracy (acc, acc_norm), optionally beside a base model");
  add_model_flags(cmd, flags->model);
  cmd->add_option("--base", flags->base,
                  "original model: evaluate it too, print both, the difference and how often "
                  "the two choose the same answer");
  std::string names;
  for (const std::string& n : eval::known_task_names()) names += (names.empty() ? "" : ",") + n;
  cmd->add_option("--tasks", flags->tasks,
                  "comma-separated tasks: " + names +
                      "; NAME=PATH reads a file of that task's format from anywhere")
      ->required();
  cmd->add_option("--data-dir", flags->data_dir,
                  "where the built-in task files are (default: $EIGENKV_ZEROSHOT_DIR, else "
                  "~/.local/share/eigenkv/zeroshot)");
  cmd->add_option("--limit", flags->limit, "score only the first N items of each task")
      ->check(non_negative_number());
  cmd->add_option("--ctx", flags->ctx,
                  "context length; longer inputs are cut from the left (default: the model's)")
      ->check(number_in(int64_t{2}, int64_t{1} << 20));
  cmd->add_option("--fewshot-file", flags->fewshot_file,
                  "MMLU-style dev split the k-shot examples come from");
  cmd->add_option("--num-fewshot", flags->num_fewshot,
                  "MMLU: dev examples (same subject) before each question")
      ->check(non_negative_number());
  cmd->add_flag("--skip-bad-lines", flags->skip_bad_lines,
                "skip and count malformed items instead of stopping at the first");
  cmd->add_flag("--no-share-prefix", flags->no_share_prefix,
                "run every choice from an empty cache (slower; for checking prefix sharing)");
  cmd->add_flag("--serial-items", flags->serial_items,
                "score one question at a time with threaded matmuls, instead of one question "
                "per thread side by side");
  cmd->add_flag("--json", flags->json,
                "print one JSON object: per task n, truncated, bad_lines, model (acc, "
                "acc_stderr, acc_norm, acc_norm_stderr), with --base also base, diff_acc, "
                "diff_acc_norm, agree");
  cmd->callback([flags] { run(*flags); });
}

}  // namespace eigenkv::cli
