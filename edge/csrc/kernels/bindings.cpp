// Python bindings (nanobind, in MLX's domain so mx.array arguments are shared with mlx.core).
#include <nanobind/nanobind.h>
#include <nanobind/stl/variant.h>

#include "quantized.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_edge_kernels, m) {
  m.doc() = "edge's CPU kernels for MLX";
  m.def(
      "quantized_matmul",
      &edge::quantized_matmul,
      "x"_a,
      "w"_a,
      "scales"_a,
      "biases"_a,
      "group_size"_a,
      "bits"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      "x @ dequantize(w, scales, biases).T for MLX affine 4/8-bit weights, in fp32.");
  m.def("simd", &edge::simd_name, "The vector unit the kernels were compiled for.");
}
