#include "core/matrix.h"

#include "core/error.h"

namespace dsv3 {

Matrix make_f32_matrix(std::string name, std::int64_t rows, std::int64_t cols, std::vector<float> values) {
  if (static_cast<std::int64_t>(values.size()) != rows * cols)
    fail("{}: {} values for a [{}, {}] matrix", name, values.size(), rows, cols);
  auto owned = std::make_shared<const std::vector<float>>(std::move(values));
  Matrix matrix;
  matrix.name = std::move(name);
  matrix.dtype = DType::F32;
  matrix.rows = rows;
  matrix.cols = cols;
  matrix.data = reinterpret_cast<const std::byte*>(owned->data());
  matrix.owner = owned;
  return matrix;
}

}  // namespace dsv3
