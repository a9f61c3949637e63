// eigenkv: one binary, one subcommand per job.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "cli/common.h"
#include "ops/matmul.h"
#include "util/error.h"

int main(int argc, char** argv) {
  CLI::App app{"eigenkv: run Llama-family models with a low-rank KV cache"};
  app.require_subcommand(1);
  app.failure_message([](const CLI::App* failed, const CLI::Error& e) {
    return "eigenkv: error: " + eigenkv::escape_control(e.what()) + " (see: eigenkv " +
           (failed && failed->get_parent() ? failed->get_name() + " " : std::string()) +
           "--help)\n";
  });
  app.set_version_flag("--version", "eigenkv 0.1.0");
  // Options of the app itself may also follow a subcommand's name.
  app.fallthrough();
  app.add_option("--max-text-bytes", eigenkv::cli::max_text_bytes(),
                 "largest text file (-f, --heldout) a run reads, in bytes")
      ->check(eigenkv::cli::positive_number());
  app.add_flag("--no-parse-special{false}", eigenkv::cli::parse_special_text(),
               "read special-token strings in texts (\"<s>\", \"<|endoftext|>\") letter by "
               "letter instead of as the tokens");
  eigenkv::cli::register_generate(app);
  eigenkv::cli::register_perplexity(app);
  eigenkv::cli::register_tokenize(app);
  eigenkv::cli::register_info(app);
  eigenkv::cli::register_bench(app);
  eigenkv::cli::register_calibrate(app);
  eigenkv::cli::register_compare(app);
  eigenkv::cli::register_quantize_cache(app);
  eigenkv::cli::register_quantize(app);
  eigenkv::cli::register_convert(app);
  eigenkv::cli::register_eval(app);
  eigenkv::cli::register_serve(app);
  try {
    eigenkv::ops::prefill_mode();  // a bad EIGENKV_PREFILL is reported before any work
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every other parse error is one error line and status 1.
    return app.exit(e) == 0 ? 0 : 1;
  } catch (const eigenkv::Error& e) {
    std::fprintf(stderr, "eigenkv: error: %s\n", eigenkv::escape_control(e.what()).c_str());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "eigenkv: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "eigenkv: error: %s\n", eigenkv::escape_control(e.what()).c_str());
    return 1;
  }
  return 0;
}
