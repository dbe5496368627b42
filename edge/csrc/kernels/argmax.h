// Row argmax on CPUs: greedy decoding and greedy verification take the argmax of a 49k-entry logits row every
// token, and MLX's CPU argmax is scalar (~64 us a row on SmolLM2's vocabulary, 1.2% of a plain token; NumPy's,
// which the verify step used, ~8 us).
#pragma once

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace edge {

using namespace mlx::core;

// The index of the largest value along the last axis of x (fp32, or converted to it), the first of equal
// maxima as MLX's and NumPy's argmax take it; int32, shape x.shape without the last axis. NaNs are skipped
// (a row of NaNs gives 0).
array argmax_rows(const array& x, StreamOrDevice s = {});

class ArgmaxRows : public UnaryPrimitive {
 public:
  explicit ArgmaxRows(Stream stream) : UnaryPrimitive(stream) {}
  void eval_cpu(const std::vector<array>& inputs, array& out) override;
  void eval_gpu(const std::vector<array>& inputs, array& out) override;
  const char* name() const override {
    return "EdgeArgmaxRows";
  }
  bool is_equivalent(const Primitive&) const override {
    return true;
  }
};

} // namespace edge
