#include "util/threads.h"

#include <cblas.h>
#include <omp.h>

#include <thread>

namespace eigenkv {
namespace {
int g_threads = 0;
}

int set_thread_count(int n) {
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  g_threads = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
  return n;
}

int thread_count() { return g_threads > 0 ? g_threads : set_thread_count(0); }

}  // namespace eigenkv
