// eigenkv: one binary, one subcommand per job.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "cli/common.h"
#include "dist/comm.h"
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
  // Under mpirun an error on any rank ends every rank (with that rank's message) instead of
  // leaving the others waiting in a collective; one process prints it as always.
  const eigenkv::dist::Comm& comm = eigenkv::dist::Comm::world();
  auto fail = [&](const std::string& message) {
    if (comm.distributed()) comm.abort(message);
    std::fprintf(stderr, "eigenkv: error: %s\n", eigenkv::escape_control(message).c_str());
    return 1;
  };
  try {
    eigenkv::ops::prefill_mode();  // a bad EIGENKV_PREFILL is reported before any work
    if (comm.distributed()) {
      // Only subcommands that split their work run under mpirun: the others would do it N
      // times over (and write the same outputs).
      for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        bool is_subcommand = false;
        for (const CLI::App* sub : app.get_subcommands({})) is_subcommand |= sub->get_name() == arg;
        if (!is_subcommand) continue;
        if (arg != "perplexity" && arg != "eval") {
          return fail("'" + arg + "' runs as one process; under mpirun only perplexity and eval "
                      "split their work across ranks");
        }
        break;
      }
    }
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every other parse error is one error line and status 1
    // (under mpirun, every rank ends with it).
    if (e.get_exit_code() != 0 && comm.distributed()) comm.abort(e.what());
    return app.exit(e) == 0 ? 0 : 1;
  } catch (const eigenkv::Error& e) {
    return fail(e.what());
  } catch (const std::bad_alloc&) {
    return fail("out of memory");
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  return 0;
}
