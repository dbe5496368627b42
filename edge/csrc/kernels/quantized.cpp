// See quantized.h.

#include "quantized.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

namespace edge {

namespace {

// Fill `out` (row-contiguous) from a strided fp32 array (MLX does not export its own copy kernels). Rare:
// activations are fresh and contiguous.
void strided_fill(const array& a, array& out) {
  const float* src = a.data<float>();
  float* dst = out.data<float>();
  std::vector<int> idx(a.ndim(), 0);
  for (size_t i = 0; i < a.size(); ++i) {
    int64_t loc = 0;
    for (int d = 0; d < a.ndim(); ++d) loc += idx[d] * a.strides()[d];
    dst[i] = src[loc];
    for (int d = a.ndim() - 1; d >= 0 && ++idx[d] == a.shape(d); --d) idx[d] = 0;
  }
}

} // namespace

void check_packed(const array& w, const array& scales, const array& biases, int n, int k, int group_size, int bits) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("edge packed_matmul: " + what); };
  if (bits != 4 && bits != 8) fail("bits must be 4 or 8");
  if (group_size != 32 && group_size != 64 && group_size != 128) fail("group_size must be 32, 64 or 128");
  if (k % group_size != 0) fail("x's last axis is not a multiple of group_size");
  const int panels = (n + PANEL - 1) / PANEL;
  if (w.dtype() != uint8 || w.ndim() != 2 || w.shape(0) != panels || w.shape(1) != 2 * k * bits)
    fail("w is not a packed (panels, 2 * K * bits) uint8 array for these n, K and bits (x's last axis does not match w?)");
  const Shape sb{panels, k / group_size, PANEL};
  if (scales.shape() != sb || biases.shape() != sb || scales.dtype() != biases.dtype() ||
      (scales.dtype() != float32 && scales.dtype() != float16))
    fail("scales and biases must be packed (panels, K / group_size, 16) arrays, both fp32 or both fp16");
}

PackedWeight packed_weight(const array& w, const array& scales, const array& biases, int n, int group_size, int bits) {
  const int k = w.shape(1) / (2 * bits);
  check_packed(w, scales, biases, n, k, group_size, bits);
  for (const array* a : {&w, &scales, &biases})
    if (!a->flags().row_contiguous) throw std::invalid_argument("edge packed_matmul: packed weights must be contiguous");
  return PackedWeight{w.data<uint8_t>(), scales.data<void>(), biases.data<void>(), n, k, group_size, bits,
                      scales.dtype() == float16};
}

array packed_matmul(
    const array& x,
    const array& w,
    const array& scales,
    const array& biases,
    int n,
    int group_size,
    int bits,
    StreamOrDevice s) {
  check_packed(w, scales, biases, n, x.shape(-1), group_size, bits);
  // One graph node per product: no reshape / astype wrappers unless the inputs need them (MLX spends a few
  // microseconds per node on a CPU, which adds up over the ~200 products of a token).
  auto stream = to_stream(s);
  Shape out_shape = x.shape();
  out_shape.back() = n;
  const array xf = x.dtype() == float32 ? x : astype(x, float32, stream);
  return array(
      out_shape, float32, std::make_shared<PackedMatmul>(stream, n, group_size, bits), {xf, w, scales, biases});
}

void PackedMatmul::eval_cpu(const std::vector<array>& inputs, array& out) {
  auto& enc = cpu::get_command_encoder(stream());
  array x = inputs[0];
  bool copy = !x.flags().row_contiguous;
  if (copy) { // a strided view (rare): copied inside the task, when its values exist
    x = array(allocator::malloc(x.nbytes()), x.shape(), x.dtype());
    enc.add_temporary(x);
  }
  const int K = x.shape(-1), M = static_cast<int>(x.size() / std::max(K, 1));
  const PackedWeight pw = packed_weight(inputs[1], inputs[2], inputs[3], n_, group_size_, bits_);
  out.set_data(allocator::malloc(out.nbytes()));
  for (auto& in : inputs) enc.set_input_array(in);
  enc.set_output_array(out);
  const float* xp = x.data<float>();
  float* yp = out.data<float>();
  enc.dispatch([pw, xp, yp, M, copy, src = inputs[0], dst = x]() mutable {
    if (copy) strided_fill(src, dst);
    packed_gemm(xp, M, pw, yp);
  });
}

array packed_rows(
    const array& ids,
    const array& w,
    const array& scales,
    const array& biases,
    int n,
    int group_size,
    int bits,
    StreamOrDevice s) {
  const int k = w.ndim() == 2 ? w.shape(1) / (2 * bits) : 0;
  check_packed(w, scales, biases, n, k, group_size, bits);
  if (!issubdtype(ids.dtype(), integer)) throw std::invalid_argument("edge packed_rows: ids must be integers");
  auto stream = to_stream(s);
  Shape out_shape = ids.shape();
  out_shape.push_back(k);
  const array idx = ids.dtype() == int32 ? ids : astype(ids, int32, stream);
  return array(out_shape, float32, std::make_shared<PackedRows>(stream, n, group_size, bits), {idx, w, scales, biases});
}

void PackedRows::eval_cpu(const std::vector<array>& inputs, array& out) {
  auto& enc = cpu::get_command_encoder(stream());
  const array& ids = inputs[0];
  if (!ids.flags().row_contiguous) throw std::runtime_error("edge packed_rows: ids must be contiguous");
  const PackedWeight pw = packed_weight(inputs[1], inputs[2], inputs[3], n_, group_size_, bits_);
  out.set_data(allocator::malloc(out.nbytes()));
  for (auto& in : inputs) enc.set_input_array(in);
  enc.set_output_array(out);
  const int32_t* ip = ids.data<int32_t>();
  const int count = static_cast<int>(ids.size()), n = n_;
  float* op = out.data<float>();
  enc.dispatch([pw, ip, count, n, op]() {
    // ids past the vocabulary (which no tokenizer gives) are clamped, not read out of bounds
    std::vector<int32_t> safe(ip, ip + count);
    for (auto& id : safe) id = std::min(std::max(id, 0), n - 1);
    dequantize_rows(pw, safe.data(), count, op);
  });
}

void PackedPrimitive::eval_gpu(const std::vector<array>&, array&) {
  throw std::runtime_error(std::string(name()) + " is one of edge's CPU kernels; on the GPU edge uses MLX's own ops.");
}

} // namespace edge
