#include "io/tensor_view.h"

#include <sstream>

namespace eigenkv::io {

std::string TensorView::shape_string() const {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

}  // namespace eigenkv::io
