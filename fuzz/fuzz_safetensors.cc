// libFuzzer entry point for the safetensors reader: every input must parse or throw
// eigenkv::Error. Any other exception escapes and aborts, which libFuzzer reports as a crash.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "io/safetensors.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    eigenkv::io::SafetensorsFile f(data, size, "fuzz.safetensors");
    // The reader promises views inside the input that tile the data section; check both, and
    // read each view's ends so that AddressSanitizer sees a view outside the input.
    volatile uint8_t sink = 0;
    const uint8_t* next = nullptr;
    for (const auto& t : f.tensors()) {
      if (next != nullptr && t.data != next) std::abort();
      next = t.data + t.nbytes;
      if (t.nbytes != 0) sink = sink + t.data[0] + t.data[t.nbytes - 1];
    }
    if (next != nullptr && next != data + size) std::abort();
  } catch (const eigenkv::Error&) {
  }
  return 0;
}
