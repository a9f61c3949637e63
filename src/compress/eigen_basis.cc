#include "compress/eigen_basis.h"

#include <cmath>

#include "util/error.h"

namespace eigenkv::compress {

EigenBasis eigen_basis(const Eigen::MatrixXd& gram) {
  EKV_CHECK(gram.rows() == gram.cols() && gram.rows() > 0, "a Gram matrix must be square, found ",
            gram.rows(), "x", gram.cols());
  EKV_CHECK(gram.allFinite(), "the Gram matrix holds a non-finite value (NaN or inf activations)");
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(gram);
  EKV_CHECK(solver.info() == Eigen::Success, "the eigen-decomposition did not converge");
  const int64_t d = gram.rows();
  EigenBasis b;
  b.eigenvalues.resize(d);
  b.vectors.resize(d, d);
  for (int64_t i = 0; i < d; ++i) {  // the solver sorts ascending
    b.eigenvalues(i) = std::max(0.0, solver.eigenvalues()(d - 1 - i));
    b.vectors.col(i) = solver.eigenvectors().col(d - 1 - i);
  }
  return b;
}

int64_t rank_for_threshold(const Eigen::VectorXd& eigenvalues, double eps, RankRule rule) {
  EKV_CHECK(eps >= 0 && eps < 1, "the error threshold must be in [0, 1), found ", eps);
  const int64_t d = eigenvalues.size();
  EKV_CHECK(d > 0, "empty spectrum");
  Eigen::VectorXd s = eigenvalues.cwiseMax(0.0);
  if (rule == RankRule::kSingular) s = s.cwiseSqrt();
  double total = 0;
  for (int64_t i = 0; i < d; ++i) total += s(i);
  if (total <= 0) return 1;
  const double need = (1.0 - eps) * total;
  double sum = 0;
  for (int64_t r = 1; r <= d; ++r) {
    sum += s(r - 1);
    if (sum >= need) return r;
  }
  return d;
}

}  // namespace eigenkv::compress
