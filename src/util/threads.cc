#include "util/threads.h"

#include <cblas.h>
#include <omp.h>

#include <cstdlib>
#include <thread>

namespace eigenkv {
namespace {
int g_threads = 0;
}

int set_thread_count(int n) {
  // The default honours OMP_NUM_THREADS, as OpenMP programs do, so that a caller running several
  // processes side by side (ctest -j) can keep them from oversubscribing the cores.
  if (n <= 0) {
    if (const char* env = std::getenv("OMP_NUM_THREADS")) n = std::atoi(env);
  }
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  g_threads = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
  return n;
}

int thread_count() { return g_threads > 0 ? g_threads : set_thread_count(0); }

}  // namespace eigenkv
