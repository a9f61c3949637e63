// libFuzzer entry point for the GGUF reader: every input must parse or throw eigenkv::Error. Any
// other exception escapes and aborts, which libFuzzer reports as a crash with the input saved.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "io/gguf.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    eigenkv::io::GgufFile f(data, size, "fuzz.gguf");
    // Reading each view's first and last byte lets AddressSanitizer catch a view that points
    // outside the input.
    volatile uint8_t sink = 0;
    for (const auto& t : f.tensors()) {
      if (t.nbytes != 0) sink = sink + t.data[0] + t.data[t.nbytes - 1];
    }
    for (const auto& [key, value] : f.metadata()) {
      try {
        (void)f.get_int(key);
      } catch (const eigenkv::Error&) {
      }
      try {
        (void)f.get_float(key);
      } catch (const eigenkv::Error&) {
      }
    }
  } catch (const eigenkv::Error&) {
  }
  return 0;
}
