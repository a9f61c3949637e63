#include "util/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "util/error.h"

namespace eigenkv {
namespace {

const char* kind_of(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// The temporary files alive now, for the SIGINT/SIGTERM handler: fixed slots of NUL-terminated
// copies, read without locks or allocation (async-signal-safe).
constexpr int kTempSlots = 16;
constexpr size_t kTempPathMax = 4096;
char temp_paths[kTempSlots][kTempPathMax];
std::atomic<bool> temp_used[kTempSlots];
struct sigaction previous_int, previous_term;

extern "C" void remove_temp_files(int sig) {
  for (int i = 0; i < kTempSlots; ++i) {
    if (temp_used[i].load()) ::unlink(temp_paths[i]);
  }
  ::sigaction(sig, sig == SIGINT ? &previous_int : &previous_term, nullptr);
  ::raise(sig);
}

int register_temp(const std::string& path) {
  static std::once_flag installed;
  std::call_once(installed, [] {
    struct sigaction sa {};
    sa.sa_handler = remove_temp_files;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, nullptr, &previous_int);
    ::sigaction(SIGTERM, nullptr, &previous_term);
    // A program that handles these signals itself (serve's graceful stop) keeps its handler.
    if (previous_int.sa_handler == SIG_DFL) ::sigaction(SIGINT, &sa, nullptr);
    if (previous_term.sa_handler == SIG_DFL) ::sigaction(SIGTERM, &sa, nullptr);
  });
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  if (path.size() >= kTempPathMax) return -1;
  for (int i = 0; i < kTempSlots; ++i) {
    if (!temp_used[i].load()) {
      std::memcpy(temp_paths[i], path.c_str(), path.size() + 1);
      temp_used[i].store(true);
      return i;
    }
  }
  return -1;  // too many at once: removed on every other path, only not on a signal
}

void unregister_temp(int slot) {
  if (slot >= 0) temp_used[slot].store(false);
}

}  // namespace

int open_regular_file(const std::string& path, uint64_t* size) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail(path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(path, ": cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, ": is ", kind_of(st.st_mode), ", expected a regular file");
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  if (size) *size = static_cast<uint64_t>(st.st_size);
  return fd;
}

std::string read_regular_file(const std::string& path, uint64_t max_bytes,
                              const std::string& limit_name) {
  uint64_t size = 0;
  const int fd = open_regular_file(path, &size);
  if (size > max_bytes) {
    ::close(fd);
    fail(path, ": the file is ", size, " bytes, more than the limit of ", max_bytes, " bytes",
         limit_name.empty() ? "" : " (", limit_name, limit_name.empty() ? "" : ")");
  }
  std::string text(static_cast<size_t>(size), '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : 0;
      ::close(fd);
      fail(path, ": cannot read", err ? ": " : " (the file shrank while read)",
           err ? std::strerror(err) : "");
    }
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  return text;
}

void check_output_path(const std::string& out, const std::string& flag,
                       const std::vector<std::string>& inputs) {
  struct stat o {};
  const bool exists = ::stat(out.c_str(), &o) == 0;
  if (exists && !S_ISREG(o.st_mode)) {
    fail(flag, " ", out, ": is ", kind_of(o.st_mode),
         "; an output must be a new path or a regular file");
  }
  std::error_code ec;
  const std::filesystem::path out_path = std::filesystem::weakly_canonical(out, ec);
  const auto same = [&](const std::string& p) {
    std::error_code e;
    if (!ec && std::filesystem::weakly_canonical(p, e) == out_path && !e) return true;
    struct stat i {};
    return exists && ::stat(p.c_str(), &i) == 0 && i.st_dev == o.st_dev && i.st_ino == o.st_ino;
  };
  for (const std::string& in : inputs) {
    if (in.empty()) continue;
    bool clash = same(in);
    std::error_code dir_ec;
    if (!clash && exists && std::filesystem::is_directory(in, dir_ec)) {
      for (const auto& entry : std::filesystem::directory_iterator(in, dir_ec)) {
        if (same(entry.path().string())) clash = true;
      }
    }
    if (clash) {
      fail(flag, " ", out, ": is the input ", in,
           "; writing it would destroy the input: choose another output path");
    }
  }
}

TempFile::TempFile(const std::string& path) : path_(path) {
  std::string name = path + ".tmp.XXXXXX";
  fd_ = ::mkostemp(name.data(), O_CLOEXEC);  // O_CREAT | O_EXCL: a link there is never followed
  temp_ = name;
  if (fd_ < 0) fail_errno("cannot create a temporary file beside it");
  slot_ = register_temp(temp_);
  if (::fchmod(fd_, 0644) != 0) fail_errno("cannot set the mode of ", temp_);
}

TempFile::~TempFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !temp_.empty()) ::unlink(temp_.c_str());
  unregister_temp(slot_);
}

void TempFile::write(const void* data, size_t n) {
  constexpr size_t kMaxChunk = size_t{1} << 30;  // Linux moves at most about 2 GiB per write(2)
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t written = ::write(fd_, p, std::min(n, kMaxChunk));
    if (written < 0) {
      if (errno == EINTR) continue;
      fail_errno("cannot write ", temp_);
    }
    p += written;
    n -= static_cast<size_t>(written);
  }
}

// fsync before rename: otherwise a crash could leave `path` naming a file whose data never
// reached the disk. The directory is synced after, to make the rename itself durable (not
// reported: the complete file is in place by then).
void TempFile::commit() {
  if (::fsync(fd_) != 0) fail_errno("cannot sync ", temp_);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail_errno("cannot close ", temp_);
  if (::rename(temp_.c_str(), path_.c_str()) != 0) {
    fail_errno("cannot rename ", temp_, " to ", path_);
  }
  committed_ = true;
  unregister_temp(slot_);
  slot_ = -1;
  std::string dir = std::filesystem::path(path_).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

template <typename... Args>
void TempFile::fail_errno(Args&&... args) const {
  const int error = errno;
  fail(path_, ": cannot write: ", std::forward<Args>(args)..., ": ", std::strerror(error));
}

}  // namespace eigenkv
