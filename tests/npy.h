// A reader for the .npy files the float64 reference writes (little-endian <f8 or <f4, C order).
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace eigenkv::testing {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<double> data;
};

inline NpyArray read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) {
    throw std::runtime_error(path + ": not a .npy file");
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    offset = 10;
  } else {
    uint32_t len;
    std::memcpy(&len, bytes.data() + 8, 4);
    header_len = len;
    offset = 12;
  }
  const std::string header = bytes.substr(offset, header_len);
  const bool f8 = header.find("'<f8'") != std::string::npos;
  const bool f4 = header.find("'<f4'") != std::string::npos;
  if ((!f8 && !f4) || header.find("'fortran_order': False") == std::string::npos) {
    throw std::runtime_error(path + ": unsupported .npy header " + header);
  }
  NpyArray a;
  const size_t open = header.find('(', header.find("'shape'"));
  const size_t close = header.find(')', open);
  std::stringstream dims(header.substr(open + 1, close - open - 1));
  std::string dim;
  while (std::getline(dims, dim, ',')) {
    if (dim.find_first_not_of(' ') != std::string::npos) a.shape.push_back(std::stoll(dim));
  }
  int64_t n = 1;
  for (int64_t d : a.shape) n *= d;
  const char* p = bytes.data() + offset + header_len;
  const size_t elem = f8 ? 8 : 4;
  if (bytes.size() < offset + header_len + n * elem) throw std::runtime_error(path + ": truncated");
  a.data.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (f8) {
      std::memcpy(&a.data[i], p + i * 8, 8);
    } else {
      float f;
      std::memcpy(&f, p + i * 4, 4);
      a.data[i] = f;
    }
  }
  return a;
}

}  // namespace eigenkv::testing
