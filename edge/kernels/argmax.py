"""Greedy's argmax on edge's CPU kernel: MLX's CPU argmax is scalar (~64 us a row of SmolLM2's 49k vocabulary,
1.2% of a plain token; 0.8 ms for a 13-position verify pass). The first of equal maxima, as MLX's and NumPy's
argmax take it, so greedy text does not depend on which one ran. MLX's own where the kernels are off (macOS,
`EDGE_KERNELS=off`) or the default device is not the CPU; it stays the kernel's tested reference.
"""

from __future__ import annotations

import mlx.core as mx

from .cpu import load_extension


def argmax(x: mx.array) -> mx.array:
    """Indices of the largest values along the last axis."""
    ext = load_extension()
    if ext is None or mx.default_device().type != mx.cpu:
        return mx.argmax(x, axis=-1)
    return ext.argmax_rows(x)


__all__ = ["argmax"]
