// What the machine's memory holds, for refusing work that cannot fit before it is attempted.
#pragma once

#include <cstdint>
#include <string>

namespace eigenkv {

// Physical memory in bytes (MemTotal), or 0 where it cannot be read.
int64_t physical_memory_bytes();

// Throws Error when `bytes` (what `what` needs resident) exceed physical memory, naming both.
void check_fits_in_memory(int64_t bytes, const std::string& what);

// "1.23 GiB"-style text of a byte count.
std::string format_bytes(int64_t bytes);

}  // namespace eigenkv
