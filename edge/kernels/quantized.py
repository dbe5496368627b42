"""Drop-in layers: mlx-lm's quantized linear layers and embeddings, repacked for edge's CPU kernel.

`use_kernels(model)` replaces each covered `nn.QuantizedLinear` / `nn.QuantizedEmbedding` in place (one layer
at a time, so the old and new weights of the whole model never coexist) by a layer holding the same integers,
scales and biases in edge's packed layout (`layout.py`); layers the kernel does not cover (other bits or
group sizes, widths not a multiple of 32) keep MLX's `quantized_matmul`. The folder on disk is untouched.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .cpu import load_extension
from .layout import dequantize, pack

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)


class PackedLinear(nn.Module):
    """A 4/8-bit linear layer in edge's packed layout; its product runs on edge's CPU kernel (fp32 out)."""

    def __init__(self, layer: nn.QuantizedLinear | nn.QuantizedEmbedding):
        super().__init__()
        self.bits, self.group_size = layer.bits, layer.group_size
        self.output_dims = int(layer["weight"].shape[0])
        self.input_dims = int(layer["weight"].shape[1]) * 32 // layer.bits
        self.weight, self.scales, self.biases = pack(
            layer["weight"], layer["scales"], layer["biases"], layer.bits, layer.group_size
        )
        if "bias" in layer:
            self.bias = layer["bias"]
        self.freeze()

    def _product(self, x: mx.array) -> mx.array:
        return load_extension().packed_matmul(
            x, self.weight, self.scales, self.biases, self.output_dims, self.group_size, self.bits
        )

    def __call__(self, x: mx.array) -> mx.array:
        y = self._product(x)
        return y + self["bias"] if "bias" in self else y

    def dequantized(self, rows=None) -> mx.array:
        """The float weight (fp32, exact), or the given rows of it."""
        return dequantize(
            self.weight, self.scales, self.biases, self.output_dims, self.bits, self.group_size, rows=rows
        )


class PackedEmbedding(PackedLinear):
    """A 4/8-bit embedding in edge's packed layout: lookups dequantize rows, and `as_linear` (a tied output
    head) multiplies, both on edge's CPU kernels."""

    def __call__(self, ids: mx.array) -> mx.array:
        return load_extension().packed_rows(
            ids, self.weight, self.scales, self.biases, self.output_dims, self.group_size, self.bits
        )

    def as_linear(self, x: mx.array) -> mx.array:
        return self._product(x)


def _covered(layer) -> bool:
    return (
        type(layer) in (nn.QuantizedLinear, nn.QuantizedEmbedding)
        and getattr(layer, "mode", "affine") == "affine"
        and layer.bits in BITS
        and layer.group_size in GROUP_SIZES
        and layer["weight"].shape[1] * 32 // layer.bits % 32 == 0
    )


def use_kernels(model: nn.Module) -> int:
    """Repack every covered quantized layer of `model` for edge's kernel (in place); returns how many."""
    if load_extension() is None:
        return 0
    switched = 0
    for _, parent in list(model.named_modules()):
        for name, child in list(parent.children().items()):
            if isinstance(child, nn.Module) and _covered(child):
                packed = (PackedEmbedding if isinstance(child, nn.QuantizedEmbedding) else PackedLinear)(child)
                mx.eval(packed.parameters())
                setattr(parent, name, packed)  # the old arrays go with the old layer
                switched += 1
    return switched


__all__ = ["PackedLinear", "PackedEmbedding", "use_kernels", "BITS", "GROUP_SIZES"]
