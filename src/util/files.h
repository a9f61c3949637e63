// Opening the files a run reads and checking the paths it writes, so that a FIFO or a device
// never hangs or floods a run, and an output never replaces one of the run's own inputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace eigenkv {

// Opens `path` for reading (O_CLOEXEC) without blocking on a FIFO, and throws Error, naming the
// path, unless it is a regular file. Returns the descriptor; *size gets the file's size.
int open_regular_file(const std::string& path, uint64_t* size);

// The whole of a regular file, refused (with the sizes, and the flag that sets the limit when
// limit_name is given) when over max_bytes.
std::string read_regular_file(const std::string& path, uint64_t max_bytes,
                              const std::string& limit_name = "");

// Throws Error unless `out` (the value of `flag`) is a new path or an existing regular file that
// is none of `inputs` (the same path once resolved, or the same device and inode, so another
// name of the same file counts; a directory input's files are compared too). Outputs of one run
// go in `inputs` of each other's checks so that two of them cannot be one file.
void check_output_path(const std::string& out, const std::string& flag,
                       const std::vector<std::string>& inputs);

// A temporary file created exclusively (O_EXCL: never through a planted link) beside `path`, as
// path + ".tmp.XXXXXX", mode 0644; removed when the object dies uncommitted, and by SIGINT or
// SIGTERM while it lives. commit() fsyncs it and renames it over `path`.
class TempFile {
 public:
  explicit TempFile(const std::string& path);
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile();

  void write(const void* data, size_t n);
  void commit();
  const std::string& temp_path() const { return temp_; }

 private:
  template <typename... Args>
  [[noreturn]] void fail_errno(Args&&... args) const;

  std::string path_;
  std::string temp_;
  int fd_ = -1;
  int slot_ = -1;  // its place in the signal handler's list
  bool committed_ = false;
};

}  // namespace eigenkv
