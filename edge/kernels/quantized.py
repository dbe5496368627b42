"""Drop-in layers: mlx-lm's quantized linear layers and embeddings, with their products on edge's kernel.

Only the class changes (weights, scales, biases and the folder format stay MLX's own), so a model built by
mlx-lm is switched in place; layers the kernel does not cover (other bits or group sizes, odd widths) keep
MLX's `quantized_matmul`.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .cpu import load_extension

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)


def _product(layer, x: mx.array) -> mx.array:
    return load_extension().quantized_matmul(
        x, layer["weight"], layer["scales"], layer["biases"], layer.group_size, layer.bits
    )


class KernelQuantizedLinear(nn.QuantizedLinear):
    def __call__(self, x: mx.array) -> mx.array:
        y = _product(self, x)
        return y + self["bias"] if "bias" in self else y


class KernelQuantizedEmbedding(nn.QuantizedEmbedding):
    def as_linear(self, x: mx.array) -> mx.array:
        return _product(self, x)


def _covered(layer) -> bool:
    return (
        getattr(layer, "mode", "affine") == "affine"
        and layer.bits in BITS
        and layer.group_size in GROUP_SIZES
        and layer["weight"].shape[1] * 32 // layer.bits % 32 == 0
        and layer["scales"].dtype == mx.float32
    )


def use_kernels(model: nn.Module) -> int:
    """Switch every covered quantized layer of `model` to edge's kernel; returns how many were switched."""
    if load_extension() is None:
        return 0
    switched = 0
    for _, layer in model.named_modules():
        if type(layer) is nn.QuantizedLinear and _covered(layer):
            layer.__class__ = KernelQuantizedLinear
            switched += 1
        elif type(layer) is nn.QuantizedEmbedding and _covered(layer):
            layer.__class__ = KernelQuantizedEmbedding
            switched += 1
    return switched
