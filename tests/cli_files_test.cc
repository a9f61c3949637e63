// The files a run touches, as a careless user or a hostile neighbour would set them up: an output
// that is one of the inputs (by name, another name, or a hard link), an output that is a device or
// a link, inputs that are FIFOs or devices, text over the size limit. Each is refused with one
// error line before any work, and no input is changed.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

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

}  // namespace
}  // namespace eigenkv
