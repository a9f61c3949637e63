// The processes of one job. Under `mpirun -np N` this is MPI_COMM_WORLD (OpenMPI, built with
// -DEIGENKV_MPI=ON); otherwise, and in a build without MPI, it is this process alone (rank 0 of
// 1) and every call is a no-op, so single-process runs behave exactly as without MPI.
//
// Work splits by index (item i belongs to rank i % size) and results are gathered in index
// order, so a reduction sees the same numbers in the same order whatever the number of ranks:
// the outputs do not depend on N or on timing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace eigenkv::dist {

class Comm {
 public:
  // The job's communicator; MPI is initialised on first use when the process was started by
  // mpirun (and finalised at exit).
  static const Comm& world();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool distributed() const { return size_ > 1; }
  bool root() const { return rank_ == 0; }
  // Whether item i (of a split by index) is this rank's.
  bool owns(int64_t i) const { return i % size_ == rank_; }

  // Every rank's `mine`, in rank order, on every rank.
  std::vector<std::vector<double>> allgather(const std::vector<double>& mine) const;
  // The sum over ranks (exact for integers).
  int64_t sum(int64_t mine) const;
  // The largest over ranks.
  double max(double mine) const;
  // Ends every rank of the job with status 1 after printing `message` (from this rank) to stderr.
  [[noreturn]] void abort(const std::string& message) const;

 private:
  Comm();
  int rank_ = 0;
  int size_ = 1;
};

// Merges the per-rank results of a split by index back into index order: ranks' vectors hold
// `per_item` numbers for each of their items (items r, r + size, ... of `n_items`).
std::vector<double> interleave(const std::vector<std::vector<double>>& by_rank, int64_t n_items,
                               int64_t per_item);

// Whether this build can run under mpirun.
bool built_with_mpi();

}  // namespace eigenkv::dist
