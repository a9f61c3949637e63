// A read-only memory map of a whole file. Moves, never copies; unmaps on destruction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace eigenkv::io {

class MappedFile {
 public:
  MappedFile() = default;
  // Maps `path`; throws Error naming the file when it cannot be opened or mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release();
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace eigenkv::io
