#include "dist/comm.h"

#include <cstdio>
#include <cstdlib>

#include "util/error.h"

#ifdef EIGENKV_WITH_MPI
#include <mpi.h>
#endif

namespace eigenkv::dist {
namespace {

#ifdef EIGENKV_WITH_MPI
// Started by mpirun (OpenMPI, or a PMI launcher), rather than run on its own: a single run never
// pays MPI's start-up.
bool launched_by_mpirun() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"}) {
    if (const char* v = std::getenv(var); v && *v) return true;
  }
  return false;
}

void finalize_mpi() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}
#endif

}  // namespace

Comm::Comm() {
#ifdef EIGENKV_WITH_MPI
  if (!launched_by_mpirun()) return;
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  std::atexit(finalize_mpi);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
#endif
}

const Comm& Comm::world() {
  static const Comm comm;
  return comm;
}

std::vector<std::vector<double>> Comm::allgather(const std::vector<double>& mine) const {
  if (!distributed()) return {mine};
#ifdef EIGENKV_WITH_MPI
  const int n = static_cast<int>(mine.size());
  EKV_CHECK(mine.size() < (size_t{1} << 31), "a rank's result is too large to gather");
  std::vector<int> counts(static_cast<size_t>(size_)), offsets(static_cast<size_t>(size_));
  MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, MPI_COMM_WORLD);
  int64_t total = 0;
  for (int r = 0; r < size_; ++r) {
    offsets[r] = static_cast<int>(total);
    total += counts[r];
  }
  EKV_CHECK(total < (int64_t{1} << 31), "the gathered result is too large");
  std::vector<double> all(static_cast<size_t>(total));
  MPI_Allgatherv(mine.data(), n, MPI_DOUBLE, all.data(), counts.data(), offsets.data(), MPI_DOUBLE,
                 MPI_COMM_WORLD);
  std::vector<std::vector<double>> out(static_cast<size_t>(size_));
  for (int r = 0; r < size_; ++r)
    out[r].assign(all.begin() + offsets[r], all.begin() + offsets[r] + counts[r]);
  return out;
#else
  return {mine};
#endif
}

int64_t Comm::sum(int64_t mine) const {
  if (!distributed()) return mine;
#ifdef EIGENKV_WITH_MPI
  long long in = mine, out = 0;
  MPI_Allreduce(&in, &out, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  return out;
#else
  return mine;
#endif
}

double Comm::max(double mine) const {
  if (!distributed()) return mine;
#ifdef EIGENKV_WITH_MPI
  double out = 0;
  MPI_Allreduce(&mine, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return out;
#else
  return mine;
#endif
}

void Comm::abort(const std::string& message) const {
  std::fprintf(stderr, "eigenkv: error: rank %d of %d: %s\n", rank_, size_,
               escape_control(message).c_str());
  std::fflush(stderr);
#ifdef EIGENKV_WITH_MPI
  if (distributed()) MPI_Abort(MPI_COMM_WORLD, 1);
#endif
  std::_Exit(1);
}

std::vector<double> interleave(const std::vector<std::vector<double>>& by_rank, int64_t n_items,
                               int64_t per_item) {
  const int64_t size = static_cast<int64_t>(by_rank.size());
  std::vector<double> out;
  out.reserve(static_cast<size_t>(n_items * per_item));
  for (int64_t i = 0; i < n_items; ++i) {
    const std::vector<double>& v = by_rank[i % size];
    const int64_t k = i / size;  // this item's place among its rank's items
    EKV_CHECK(static_cast<int64_t>(v.size()) >= (k + 1) * per_item, "rank ", i % size,
              " returned ", v.size(), " numbers, fewer than its items need");
    out.insert(out.end(), v.begin() + k * per_item, v.begin() + (k + 1) * per_item);
  }
  return out;
}

bool built_with_mpi() {
#ifdef EIGENKV_WITH_MPI
  return true;
#else
  return false;
#endif
}

}  // namespace eigenkv::dist
