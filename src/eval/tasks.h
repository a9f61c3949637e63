// Zero-shot multiple-choice tasks: task files (the jsonl files of ../shared/data/zeroshot,
// llama.cpp's HellaSwag text format, MMLU-style jsonl) turned into log-likelihood requests by
// lm-evaluation-harness's prompt conventions, one convention per task (docs/ZEROSHOT.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace eigenkv::eval {

// Score `continuation` given `context`: the sum of the continuation tokens' log-probabilities.
struct Request {
  std::string context;
  std::string continuation;
};

// One question: one request per choice, and the answer.
struct McItem {
  std::vector<Request> requests;
  // Per choice, the text whose length (in characters, as the harness counts) divides the
  // log-likelihood for acc_norm.
  std::vector<std::string> norm_text;
  int gold = 0;
  int64_t line = 0;  // first line of the item in its file, for messages
};

struct Task {
  std::string name;  // canonical task name, e.g. "arc_easy"
  std::string path;
  std::vector<McItem> items;
  bool has_acc_norm = true;  // false where the harness reports acc only (WinoGrande)
  int64_t bad_lines = 0;     // malformed items skipped (TaskOptions::skip_bad_lines)
};

struct TaskOptions {
  std::string data_dir;         // where built-in task names find their files (default_data_dir())
  int64_t limit = 0;            // keep the first `limit` items (0: all), as the harness's --limit
  bool skip_bad_lines = false;  // skip (and count) malformed items instead of stopping
  std::string fewshot_path;     // MMLU-style dev split for k-shot prompts
  int64_t num_fewshot = 0;      // MMLU: examples from the dev split put before each question
};

// The task names load_task knows, in a fixed order.
std::vector<std::string> known_task_names();

// Where built-in task names look when no --data-dir is given: $EIGENKV_ZEROSHOT_DIR, else
// $XDG_DATA_HOME/eigenkv/zeroshot, else ~/.local/share/eigenkv/zeroshot.
std::string default_data_dir();

// `spec` is a task name ("piqa": its file under data_dir) or "name=PATH" (a file in that task's
// format anywhere). Throws Error for an unknown name, a missing file, or (unless skip_bad_lines)
// the first malformed item, naming file:line and what was expected.
Task load_task(const std::string& spec, const TaskOptions& options);

// HellaSwag's text clean-up from the harness: strip, " [title]" -> ". ", drop [bracketed]
// WikiHow artefacts, collapse double spaces.
std::string hellaswag_preprocess(const std::string& text);

// The whole file, decompressed through libbz2 when it is bzip2 ("BZh" magic).
std::string read_maybe_bz2(const std::string& path);

}  // namespace eigenkv::eval
