// The files a run touches, as a careless user or a hostile neighbour would set them up: an output
// that is one of the inputs (by name, another name, or a hard link), an output that is a device or
// a link, inputs that are FIFOs or devices, text over the size limit. Each is refused with one
// error line before any work, and no input is changed.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#include <filesystem>
#include <fstream>
#include <string>

#include "test_util.h"

namespace eigenkv {
namespace {

namespace fs = std::filesystem;
using testing::source_path;

const std::string kBundled = source_path("models/stories260K.gguf");
const std::string kText = source_path("data/tinystories-calib.txt");

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A scratch directory with a copy of the bundled model and of the calibration text.
class CliFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::temp_path("files_" + std::string(::testing::UnitTest::GetInstance()
                                                          ->current_test_info()
                                                          ->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    model_ = dir_ + "/model.gguf";
    text_ = dir_ + "/text.txt";
    fs::copy_file(kBundled, model_);
    fs::copy_file(kText, text_);
    model_bytes_ = slurp(model_);
    text_bytes_ = slurp(text_);
  }
  void TearDown() override {
    EXPECT_EQ(slurp(model_), model_bytes_) << "the input model was changed";
    EXPECT_EQ(slurp(text_), text_bytes_) << "the input text was changed";
    for (const auto& e : fs::directory_iterator(dir_)) {
      EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << "left behind: " << e.path();
    }
    fs::remove_all(dir_);
  }

  // The command fails with status 1, one "eigenkv: error:" line holding `fragment`.
  void expect_refused(const std::string& args, const std::string& fragment) {
    testing::CliOutcome o;
    o.out = testing::run_command("timeout 30 " + testing::eigenkv_binary() + " " + args + " 2>&1",
                                 &o.status);
    EXPECT_EQ(o.status, 1) << args << "\n" << o.out;
    EXPECT_NE(o.out.find("eigenkv: error:"), std::string::npos) << o.out;
    EXPECT_NE(o.out.find(fragment), std::string::npos) << args << "\n" << o.out;
  }

  std::string dir_, model_, text_, model_bytes_, text_bytes_;
};

TEST_F(CliFiles, OutputThatIsAnInputIsRefused) {
  const std::string cal = "calibrate --threshold 0.05 --tokens 256 -m " + model_ + " -f " + text_;
  expect_refused(cal + " -o " + model_, "is the input " + model_);
  expect_refused(cal + " -o " + dir_ + "/./model.gguf", "is the input");  // another spelling
  expect_refused(cal + " -o " + text_, "is the input " + text_);
  expect_refused(cal + " -o " + dir_ + "/out.gguf --profile-json " + model_, "--profile-json");
  expect_refused(cal + " -o " + dir_ + "/out.gguf --profile-json " + dir_ + "/out.gguf",
                 "--profile-json");
  fs::create_hard_link(model_, dir_ + "/hard.gguf");
  expect_refused(cal + " -o " + dir_ + "/hard.gguf", "is the input");
  expect_refused("quantize-cache --budget 0.5 -m " + model_ + " -f " + text_ + " -o " + model_,
                 "is the input");
  expect_refused("quantize --type q8_0 -m " + model_ + " -o " + model_, "is the input");
  EXPECT_FALSE(fs::exists(dir_ + "/out.gguf"));
}

TEST_F(CliFiles, OutputThatIsADeviceOrDirectoryIsRefused) {
  expect_refused("quantize --type q8_0 -m " + model_ + " -o /dev/null", "a character device");
  expect_refused("quantize --type q8_0 -m " + model_ + " -o " + dir_, "a directory");
  struct stat st {};
  ASSERT_EQ(::stat("/dev/null", &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode)) << "/dev/null was replaced";
}

// A link planted at the output path is replaced by the new file; what it pointed at is untouched.
TEST_F(CliFiles, LinkAtTheOutputIsReplacedNotFollowed) {
  const std::string victim = dir_ + "/victim.txt";
  std::ofstream(victim) << "keep me";
  const std::string out = dir_ + "/out.gguf";
  fs::create_symlink(victim, out);
  const testing::CliOutcome o =
      testing::run_eigenkv("quantize --type q8_0 -m " + model_ + " -o " + out);
  ASSERT_EQ(o.status, 0) << o.out;
  EXPECT_EQ(slurp(victim), "keep me");
  EXPECT_FALSE(fs::is_symlink(out));
  EXPECT_EQ(slurp(out).substr(0, 4), "GGUF");
}

TEST_F(CliFiles, FifoAndDeviceInputsAreRefusedNotWaitedOn) {
  const std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_refused("info -m " + fifo, "is a FIFO");
  expect_refused("perplexity -m " + model_ + " -f " + fifo, "is a FIFO");
  expect_refused("perplexity -m " + model_ + " -f /dev/zero", "is a character device");
  expect_refused("generate -m " + model_ + " -f /dev/zero -n 2", "is a character device");
  expect_refused("tokenize -m " + model_ + " -f /dev/zero", "is a character device");
  // A Hugging Face directory whose config.json is a FIFO.
  const std::string hf = dir_ + "/hf";
  fs::create_directories(hf);
  ASSERT_EQ(::mkfifo((hf + "/config.json").c_str(), 0600), 0);
  std::ofstream(hf + "/model.safetensors") << "x";
  expect_refused("info -m " + hf, "is a FIFO");
}

TEST_F(CliFiles, TextOverTheLimitIsRefusedWithTheSizes) {
  expect_refused("perplexity --max-text-bytes 1000 -m " + model_ + " -f " + text_,
                 "more than the limit of");
}

TEST_F(CliFiles, ParseErrorsExitWithStatusOne) {
  expect_refused("perplexity -m " + model_ + " -f " + text_ + " --ctx abc", "--ctx");
  expect_refused("generate -m " + model_ + " --no-such-flag", "no-such-flag");
}

// Numbers out of range name the value and the range as a person writes them (CLI11's own said
// "Value 0 not in range 0.000000 to 179769313486231570814527423731704356798070567525844996...").
TEST_F(CliFiles, RangeErrorsNameTheValueAndARange) {
  for (const auto& [args, said] : std::vector<std::pair<std::string, std::string>>{
           {"generate -m " + model_ + " -t 0", "--threads: must be greater than 0, found '0'"},
           {"generate -m " + model_ + " -n abc", "must be a number greater than 0, found 'abc'"},
           {"perplexity -m " + model_ + " -f " + text_ + " --ctx 1",
            "--ctx: must be in [2, 1048576], found '1'"},
           {"generate -m " + model_ + " --top-p 1.5", "must be in [0, 1], found '1.5'"},
           {"generate -m " + model_ + " --temp -1", "found '-1'"},
           {"perplexity -m " + model_ + " -f " + text_ + " --max-windows 1e999", "found '1e999'"}}) {
    testing::CliOutcome o;
    o.out = testing::run_command("timeout 30 " + testing::eigenkv_binary() + " " + args + " 2>&1",
                                 &o.status);
    EXPECT_EQ(o.status, 1) << args << "\n" << o.out;
    EXPECT_NE(o.out.find(said), std::string::npos) << args << "\n" << o.out;
    EXPECT_EQ(o.out.find("179769"), std::string::npos) << o.out;
    EXPECT_EQ(std::count(o.out.begin(), o.out.end(), '\n'), 1) << "one line: " << o.out;
  }
}

// Names and text from files and flags reach the terminal with their control bytes escaped: a
// path holding ESC [2J cannot clear the screen from an error line.
TEST_F(CliFiles, ControlBytesInErrorsAreEscaped) {
  const std::string bad = dir_ + "/no\x1b[2Jsuch\x07" "file.txt";
  testing::CliOutcome o;
  o.out = testing::run_command("timeout 30 " + testing::eigenkv_binary() + " perplexity -m " +
                                   model_ + " -f '" + bad + "' 2>&1",
                               &o.status);
  EXPECT_EQ(o.status, 1) << o.out;
  EXPECT_NE(o.out.find("no\\x1b[2Jsuch\\x07file.txt"), std::string::npos) << o.out;
  EXPECT_EQ(o.out.find('\x1b'), std::string::npos) << "a raw ESC reached the terminal";
  EXPECT_EQ(o.out.find('\x07'), std::string::npos);
}

// A context past the model's trained one is run (users do probe that) but warned about.
TEST_F(CliFiles, ContextPastTheTrainedOneIsWarnedAbout) {
  testing::CliOutcome o;
  o.out = testing::run_command("timeout 60 " + testing::eigenkv_binary() + " perplexity -m " +
                                   model_ + " -f " + text_ + " --ctx 4096 --max-windows 1 --json 2>&1",
                               &o.status);
  EXPECT_EQ(o.status, 0) << o.out;
  EXPECT_NE(o.out.find("warning: --ctx 4096 is past the model's trained context of 2048"),
            std::string::npos)
      << o.out;
  EXPECT_NE(o.out.find("\"past_trained_context\":true"), std::string::npos) << o.out;
  o.out = testing::run_command(testing::eigenkv_binary() + " perplexity -m " + model_ + " -f " +
                                   text_ + " --ctx 256 --max-windows 1 2>&1",
                               &o.status);
  EXPECT_EQ(o.status, 0) << o.out;
  EXPECT_EQ(o.out.find("warning"), std::string::npos) << o.out;
}

// Peak resident memory (KiB) of one run of the command, waited for alone.
long peak_rss_kib(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execv(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  rusage usage{};
  if (wait4(pid, &status, 0, &usage) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return -1;
  return usage.ru_maxrss;
}

// A GGUF claiming a context of 1,048,576 positions costs a short run no more than the real one:
// the KV cache and the RoPE angles are sized by the run (the RoPE table alone used to take
// 2^20 x 32 x 8 bytes = 256 MiB on this head_dim-64 model).
TEST_F(CliFiles, HugeClaimedContextIsNotAllocated) {
  const std::string src = testing::shared_path("models/tinystories-c4-gqa.gguf");
  if (!fs::exists(src)) GTEST_SKIP() << "skipped: ../shared/models/tinystories-c4-gqa.gguf is absent";
  std::string bytes = slurp(src);
  const std::string key = "llama.context_length";
  const size_t at = bytes.find(key);
  ASSERT_NE(at, std::string::npos);
  uint32_t type = 0, value = 0;
  std::memcpy(&type, bytes.data() + at + key.size(), 4);
  std::memcpy(&value, bytes.data() + at + key.size() + 4, 4);
  ASSERT_EQ(type, 4u) << "context_length is not a uint32";
  ASSERT_LT(value, 1u << 20);
  const uint32_t huge = 1u << 20;
  std::memcpy(bytes.data() + at + key.size() + 4, &huge, 4);
  const std::string big = dir_ + "/huge_context.gguf";
  std::ofstream(big, std::ios::binary) << bytes;
  const std::string bin = testing::eigenkv_binary();
  ASSERT_EQ(bin.find(' '), std::string::npos) << "the binary's path is run without a shell";
  const long normal = peak_rss_kib({bin, "generate", "-m", src, "-n", "3", "-p", "Once", "-t", "1"});
  const long claimed = peak_rss_kib({bin, "generate", "-m", big, "-n", "3", "-p", "Once", "-t", "1"});
  ASSERT_GT(normal, 0);
  ASSERT_GT(claimed, 0);
  std::printf("peak RSS: %ld KiB as trained, %ld KiB claiming 2^20 positions\n", normal, claimed);
  EXPECT_LT(claimed, normal + 16 * 1024);
}

}  // namespace
}  // namespace eigenkv
