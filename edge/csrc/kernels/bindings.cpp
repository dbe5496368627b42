// Python bindings (nanobind, in MLX's domain so mx.array arguments are shared with mlx.core).
#include <nanobind/nanobind.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include "decoder.h"
#include "quantized.h"

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
  m.def("simd", &edge::simd_name, "The vector unit the kernels were compiled for.");
  m.def(
      "decoder_layer",
      [](const mlx::core::array& h, const mlx::core::array& attn_norm, const mlx::core::array& mlp_norm,
         const mlx::core::array& cos, const mlx::core::array& sin, const mlx::core::array& k_cache,
         const mlx::core::array& v_cache, const std::vector<mlx::core::array>& quantized, int heads, int kv_heads,
         int head_dim, float eps, float scale, const std::vector<int>& bits, const std::vector<int>& group_sizes,
         const std::vector<int>& outputs, int offset) {
        return edge::decoder_layer(
            h, attn_norm, mlp_norm, cos, sin, k_cache, v_cache, quantized,
            edge::LayerShape{heads, kv_heads, head_dim, eps, scale, bits, group_sizes, outputs}, offset);
      },
      "h"_a, "attn_norm"_a, "mlp_norm"_a, "cos"_a, "sin"_a, "k_cache"_a, "v_cache"_a, "quantized"_a, "heads"_a,
      "kv_heads"_a, "head_dim"_a, "eps"_a, "scale"_a, "bits"_a, "group_sizes"_a, "outputs"_a, "offset"_a,
      "One llama-family decoder layer on the CPU, writing the new keys and values into the caches in place.");
}
