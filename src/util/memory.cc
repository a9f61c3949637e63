#include "util/memory.h"

#include <unistd.h>

#include <cstdio>

#include "util/error.h"

namespace eigenkv {

int64_t physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page_size = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  return static_cast<int64_t>(pages) * page_size;
}

std::string format_bytes(int64_t bytes) {
  char text[32];
  const double b = static_cast<double>(bytes);
  if (b >= 1024.0 * 1024 * 1024) {
    std::snprintf(text, sizeof(text), "%.2f GiB", b / (1024.0 * 1024 * 1024));
  } else {
    std::snprintf(text, sizeof(text), "%.1f MiB", b / (1024.0 * 1024));
  }
  return text;
}

void check_fits_in_memory(int64_t bytes, const std::string& what) {
  const int64_t total = physical_memory_bytes();
  EKV_CHECK(total == 0 || bytes <= total, what, " needs ", format_bytes(bytes),
            " of memory, more than this machine's ", format_bytes(total));
}

}  // namespace eigenkv
