// The MLX primitive for edge's quantized products on CPUs (the arithmetic is in packed.cpp): MLX's own CPU
// quantized_matmul is scalar, and on x86 its fp16 / bf16 products are too.
#pragma once

#include <string>

#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "packed.h"

namespace edge {

using namespace mlx::core;

// y = x @ dequantize(w).T in fp32, with x (..., K) and w, scales, biases in the packed layout of packed.h
// (edge/kernels/layout.py makes them from MLX's affine 4/8-bit arrays); n is the number of output columns.
array packed_matmul(
    const array& x,
    const array& w,
    const array& scales,
    const array& biases,
    int n,
    int group_size,
    int bits,
    StreamOrDevice s = {});

// dequantize(w)[ids] (fp32, shape ids.shape + (K,)): an embedding lookup of a packed embedding, as one graph
// node (MLX's ops for it were ~10 nodes and 0.27 ms a token).
array packed_rows(
    const array& ids,
    const array& w,
    const array& scales,
    const array& biases,
    int n,
    int group_size,
    int bits,
    StreamOrDevice s = {});

// Refuses arrays that are not the packed layout for these n, k, group size and bits (invalid_argument).
void check_packed(const array& w, const array& scales, const array& biases, int n, int k, int group_size, int bits);

// The packed weight behind three evaluated arrays (checked: dtypes, shapes, contiguity).
PackedWeight packed_weight(const array& w, const array& scales, const array& biases, int n, int group_size, int bits);

// A primitive on one packed weight: n output columns (or rows), its group size and bits.
class PackedPrimitive : public UnaryPrimitive {
 public:
  PackedPrimitive(Stream stream, int n, int group_size, int bits)
      : UnaryPrimitive(stream), n_(n), group_size_(group_size), bits_(bits) {}

  void eval_gpu(const std::vector<array>& inputs, array& out) override;
  bool is_equivalent(const Primitive& other) const override {
    auto& o = static_cast<const PackedPrimitive&>(other);
    return std::string(name()) == o.name() && n_ == o.n_ && group_size_ == o.group_size_ && bits_ == o.bits_;
  }

 protected:
  int n_, group_size_, bits_;
};

// packed_matmul's node.
class PackedMatmul : public PackedPrimitive {
 public:
  using PackedPrimitive::PackedPrimitive;
  void eval_cpu(const std::vector<array>& inputs, array& out) override;
  const char* name() const override {
    return "EdgePackedMatmul";
  }
};

// packed_rows' node.
class PackedRows : public PackedPrimitive {
 public:
  using PackedPrimitive::PackedPrimitive;
  void eval_cpu(const std::vector<array>& inputs, array& out) override;
  const char* name() const override {
    return "EdgePackedRows";
  }
};

} // namespace edge
