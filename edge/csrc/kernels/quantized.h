// edge's CPU kernels for MLX: products with MLX's affine-quantized weights (4 and 8 bits, groups of 32,
// 64 or 128, scales and biases as stored), fp32 accumulation, vectorised (AVX2 / AVX-512 on x86, NEON on
// ARM, a portable loop elsewhere) and split over the cores. MLX's own CPU quantized_matmul is scalar.
#pragma once

#include <functional>

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace edge {

using namespace mlx::core;

// y = x @ dequantize(w, scales, biases).T with x (..., K) in fp32 and y (..., N) in fp32.
array quantized_matmul(
    const array& x,
    const array& w,
    const array& scales,
    const array& biases,
    int group_size,
    int bits,
    StreamOrDevice s = {});

// The raw product for other kernels: y (M x N) = x (M x K) @ dequantize(w).T, split over edge's worker pool.
struct QWeight {
  const uint32_t* w;
  const float* s;
  const float* b;
  int N, K, gs, bits;
};
void qmatmul(const float* x, int M, const QWeight& q, float* y);
// Several products of the same x (same K, group size and bits), split over the cores in one round.
void qmatmul_many(const float* x, int M, const QWeight* qs, float* const* ys, int count);

// body(begin, end) over [0, n) split across edge's worker pool when `work` (multiply-adds) makes it pay.
void parallel_for(int n, long work, const std::function<void(int, int)>& body);

// Which vector unit the kernels were compiled for ("avx512", "avx2", "neon" or "portable").
const char* simd_name();

class QuantizedMatmul : public UnaryPrimitive {
 public:
  QuantizedMatmul(Stream stream, int group_size, int bits)
      : UnaryPrimitive(stream), group_size_(group_size), bits_(bits) {}

  void eval_cpu(const std::vector<array>& inputs, array& out) override;
  void eval_gpu(const std::vector<array>& inputs, array& out) override;

  const char* name() const override {
    return "EdgeQuantizedMatmul";
  }
  bool is_equivalent(const Primitive& other) const override {
    auto& o = static_cast<const QuantizedMatmul&>(other);
    return group_size_ == o.group_size_ && bits_ == o.bits_;
  }

 private:
  int group_size_;
  int bits_;
};

} // namespace edge
