// One thread count for the whole engine: OpenMP loops and OpenBLAS GEMMs use the same number, so
// the two pools never oversubscribe the cores.
#pragma once

namespace eigenkv {

// Sets the thread count (n <= 0: OMP_NUM_THREADS if set, else all hardware threads). Returns the
// count in force.
int set_thread_count(int n);
int thread_count();

}  // namespace eigenkv
