// Python bindings (nanobind, in MLX's domain so mx.array arguments are shared with mlx.core).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include "decoder.h"
#include "quantized.h"
#include "sampling.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_edge_kernels, m) {
  m.doc() = "edge's CPU kernels for MLX";
  m.def(
      "packed_matmul",
      &edge::packed_matmul,
      "x"_a,
      "w"_a,
      "scales"_a,
      "biases"_a,
      "n"_a,
      "group_size"_a,
      "bits"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      "x @ dequantize(w).T in fp32, for 4/8-bit weights in edge's packed layout (edge.kernels.layout).");
  m.def(
      "packed_rows",
      &edge::packed_rows,
      "ids"_a,
      "w"_a,
      "scales"_a,
      "biases"_a,
      "n"_a,
      "group_size"_a,
      "bits"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      "dequantize(w)[ids] in fp32 (an embedding lookup), for weights in edge's packed layout.");
  m.def(
      "exp_mass",
      [](nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu> x, float top) {
        return edge::exp_mass(x.data(), x.shape(0), top);
      },
      "x"_a,
      "top"_a,
      "sum(exp(x - top)) in fp64 over a contiguous fp32 vector (a row of logits), vectorised.");
  m.def("simd", &edge::simd_name, "The vector unit the kernels were compiled for.");
  nb::class_<edge::DecoderStack>(m, "DecoderStack", "A model's decoder layers, checked once, built in one call.")
      .def(nb::init<mlx::core::array, mlx::core::array>(), "cos"_a, "sin"_a)
      .def(
          "add_layer",
          [](edge::DecoderStack& self, const mlx::core::array& attn_norm, const mlx::core::array& mlp_norm,
             const std::vector<mlx::core::array>& quantized, int heads, int kv_heads, int head_dim, float eps,
             float scale, const std::vector<int>& bits, const std::vector<int>& group_sizes,
             const std::vector<int>& outputs) {
            self.add_layer(attn_norm, mlp_norm, quantized,
                           edge::LayerShape{heads, kv_heads, head_dim, eps, scale, bits, group_sizes, outputs});
          },
          "attn_norm"_a, "mlp_norm"_a, "quantized"_a, "heads"_a, "kv_heads"_a, "head_dim"_a, "eps"_a, "scale"_a,
          "bits"_a, "group_sizes"_a, "outputs"_a, "The next layer's weights and shape.")
      .def("__len__", &edge::DecoderStack::size)
      .def(
          "__call__",
          [](const edge::DecoderStack& self, const mlx::core::array& h, const std::vector<mlx::core::array>& keys,
             const std::vector<mlx::core::array>& values, const std::vector<int>& offsets) {
            return self(h, keys, values, offsets);
          },
          "h"_a, "keys"_a, "values"_a, "offsets"_a,
          "h through every layer, each writing its new keys and values into its caches in place.");
}
