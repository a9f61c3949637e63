// Principal directions of a Gram matrix and the rank rule (DESIGN.md §2).
#pragma once

#include <Eigen/Dense>
#include <cstdint>

namespace eigenkv::compress {

// Eigenvectors of a symmetric positive semi-definite matrix, strongest first.
struct EigenBasis {
  Eigen::VectorXd eigenvalues;  // descending, negatives from rounding clamped to 0
  Eigen::MatrixXd vectors;      // [d, d], column i belongs to eigenvalues[i]
};

// From Eigen's SelfAdjointEigenSolver (reads the lower triangle). Throws Error when the matrix
// is not square or holds a non-finite value.
EigenBasis eigen_basis(const Eigen::MatrixXd& gram);

enum class RankRule {
  kEnergy,    // sum of eigenvalues (squared singular values): the energy criterion
  kSingular,  // sum of singular values (square roots of eigenvalues): the authors' code
};

// The smallest r with sum_{i<r} s_i >= (1 - eps) * sum_i s_i, s = eigenvalues or their square
// roots. eps in [0, 1); an all-zero spectrum gives rank 1. Throws Error for eps outside [0, 1).
int64_t rank_for_threshold(const Eigen::VectorXd& eigenvalues, double eps, RankRule rule);

}  // namespace eigenkv::compress
