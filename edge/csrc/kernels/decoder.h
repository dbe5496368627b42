// One llama-family decoder layer (RMSNorm, attention with RoPE over an in-place KV cache, SwiGLU MLP) as a
// single MLX primitive on CPUs, with its seven products on edge's quantized kernel. A token's forward pass
// is then ~35 graph nodes instead of ~1000: on a CPU MLX spends microseconds per node, which at 135M
// parameters costs more than the products themselves.
#pragma once

#include "quantized.h"

namespace edge {

struct LayerShape {
  int heads, kv_heads, head_dim;
  float eps, scale;
  std::vector<int> bits, group_sizes, outputs; // of q, k, v, o, gate, up, down (outputs: N)
};

// h (M, D) -> h after the layer. Writes keys and values of the M new positions into k_cache (kv_heads,
// head_dim, capacity: transposed, so scores vectorise over positions) and v_cache (kv_heads, capacity,
// head_dim), fp32, evaluated, owned by the caller, at offset..offset+M-1, and attends
// causally over positions 0..offset+i. cos / sin: (positions, head_dim / 2), rotate-half RoPE.
// quantized: 21 arrays, the packed (weight, scales, biases) of q, k, v, o, gate, up, down (packed.h).
array decoder_layer(
    const array& h,
    const array& attn_norm,
    const array& mlp_norm,
    const array& cos,
    const array& sin,
    const array& k_cache,
    const array& v_cache,
    const std::vector<array>& quantized,
    const LayerShape& shape,
    int offset,
    StreamOrDevice s = {});

class DecoderLayer : public UnaryPrimitive {
 public:
  DecoderLayer(Stream stream, LayerShape shape, int offset)
      : UnaryPrimitive(stream), shape_(std::move(shape)), offset_(offset) {}
  void eval_cpu(const std::vector<array>& inputs, array& out) override;
  void eval_gpu(const std::vector<array>& inputs, array& out) override;
  const char* name() const override {
    return "EdgeDecoderLayer";
  }

 private:
  LayerShape shape_;
  int offset_;
};

} // namespace edge
