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

// A model's decoder layers, their weights checked once, a forward pass built in one call (30 calls of a
// per-layer function from Python, each converting 21 arrays and three lists, cost ~100 us of graph building a
// token: a synchronous verify step pays that in full, plain decoding in CPU time taken from the compute threads).
//
// Each layer maps h (M, D) to h after the layer. It writes the keys and values of the M new positions into its
// k_cache (kv_heads, capacity / 16, head_dim, 16: blocks of 16 positions, transposed, so scores vectorise over
// positions) and v_cache (kv_heads, capacity, head_dim), fp16, evaluated, owned by the caller, at
// offset..offset+M-1, and attends causally over positions 0..offset+i. cos / sin: (positions, head_dim / 2),
// rotate-half RoPE. quantized: 21 arrays, the packed (weight, scales, biases) of q, k, v, o, gate, up, down
// (packed.h).
class DecoderStack {
 public:
  DecoderStack(array cos, array sin) : cos_(std::move(cos)), sin_(std::move(sin)) {}
  void add_layer(array attn_norm, array mlp_norm, std::vector<array> quantized, LayerShape shape);
  // h (M, D) through every layer; keys / values / offsets: each layer's cache and its valid positions.
  array operator()(const array& h, const std::vector<array>& keys, const std::vector<array>& values,
                   const std::vector<int>& offsets, StreamOrDevice s = {}) const;
  int size() const {
    return static_cast<int>(layers_.size());
  }

 private:
  struct Layer {
    array attn_norm, mlp_norm;
    std::vector<array> quantized;
    LayerShape shape;
  };
  array cos_, sin_;
  std::vector<Layer> layers_;
};

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
