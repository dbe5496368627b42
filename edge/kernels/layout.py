"""edge's packed layout of 4/8-bit weights, the form its CPU kernels read (described in csrc/kernels/packed.h).

Output columns go in panels of 16, and each block of 32 along K is stored so that shifting and masking one
64-byte chunk gives the (q[2t], q[2t+1]) integer pairs of all 16 columns, one pair per 32-bit lane: a
product keeps 16 columns in one vector and needs no horizontal sums, and each unpacked vector serves every
input row (a verify pass over 8 positions then costs far less than 8 decode steps). Weights are repacked
once at load from MLX's affine arrays (the same integers, scales and biases: nothing is re-quantized), as
llama.cpp repacks Q4_0 for its CPU kernels; folders on disk stay MLX's format.

`pack` runs once per layer at load (NumPy); `dequantize` reads rows back with MLX ops (embedding lookups of
a tied embedding, and the lower-bit self-draft, which re-quantizes the target's float weights).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

PANEL = 16


def _fields(bits: int) -> int:
    """Integer pairs per 16-bit word: 4 nibbles or 2 bytes."""
    return 16 // bits


def integers(w: np.ndarray, bits: int) -> np.ndarray:
    """MLX's packed uint32 (N, K * bits / 32) as the integers themselves, (N, K) uint8 (weight k of a row sits
    at bits (k % (32 / bits)) * bits of word k // (32 / bits), little-endian: byte k // 2 for 4-bit)."""
    raw = np.ascontiguousarray(w).view(np.uint8)
    if bits == 8:
        return raw
    q = np.empty((raw.shape[0], raw.shape[1] * 2), dtype=np.uint8)
    q[:, 0::2] = raw & 0x0F
    q[:, 1::2] = raw >> 4
    return q


def _panels(a: np.ndarray) -> np.ndarray:
    """Pad the rows (output columns) of `a` up to a multiple of PANEL with zeros."""
    pad = -a.shape[0] % PANEL
    return np.pad(a, ((0, pad), (0, 0))) if pad else a


def _exact_in_half(v: np.ndarray) -> bool:
    """Every value of `v` (fp32) is exactly an fp16."""
    with np.errstate(over="ignore"):
        return bool(np.array_equal(v.astype(np.float16).astype(np.float32), v))


def pack(w, scales, biases, bits: int, group_size: int) -> tuple[mx.array, mx.array, mx.array]:
    """MLX affine arrays (w uint32 (N, K * bits / 32), scales and biases (N, K / group_size)) in edge's layout:
    w (panels, 2 * K * bits) uint8, scales and biases (panels, K / group_size, 16), fp16 when every one of them
    is exactly an fp16 (GGUF's are, and most MLX folders': at groups of 32, fp32 would be a third of the bytes
    a token reads), else fp32."""
    q = _panels(integers(np.asarray(w), bits))
    n_pad, k = q.shape
    panels, per = n_pad // PANEL, _fields(bits)
    # q[16 P + l, 32 j + 2 (per c + f) + e] goes to field f of word (P, j, c, l, e)
    a = q.reshape(panels, PANEL, k // 32, 16 // per, per, 2).transpose(0, 2, 3, 1, 5, 4).astype(np.uint16)
    words = np.zeros(a.shape[:-1], dtype=np.uint16)
    for f in range(per):
        words |= a[..., f] << (bits * f)
    wp = words.astype("<u2").reshape(panels, -1).view(np.uint8)

    s, b = (np.asarray(v.astype(mx.float32)) for v in (scales, biases))
    dtype = np.float16 if _exact_in_half(s) and _exact_in_half(b) else np.float32

    def table(v: np.ndarray) -> np.ndarray:  # (N, G) -> (panels, G, 16)
        return np.ascontiguousarray(_panels(v).astype(dtype).reshape(panels, PANEL, -1).transpose(0, 2, 1))

    return mx.array(wp), mx.array(table(s)), mx.array(table(b))


def dequantize(w: mx.array, scales: mx.array, biases: mx.array, n: int, bits: int, group_size: int, rows=None):
    """Float weights (fp32) from the packed arrays: all n rows (output columns), or `rows` (an int array of
    any shape; the result then has that shape + (K,), like an embedding lookup)."""
    per = _fields(bits)
    panels, k = w.shape[0], w.shape[1] // (2 * bits)
    words = mx.view(w, mx.uint16).reshape(panels, k // 32, 16 // per, PANEL, 2)  # (P, j, c, l, e)
    groups = scales.shape[1]
    if rows is None:
        sel = words.transpose(0, 3, 1, 2, 4).reshape(panels * PANEL, k // 32, 16 // per, 2)[:n]
        s = scales.transpose(0, 2, 1).reshape(panels * PANEL, groups)[:n]
        b = biases.transpose(0, 2, 1).reshape(panels * PANEL, groups)[:n]
        shape = (n,)
    else:
        ids = mx.array(rows).flatten()
        panel, lane = ids // PANEL, ids % PANEL
        sel = words[panel, :, :, lane, :]  # (r, j, c, e)
        s, b = scales[panel, :, lane], biases[panel, :, lane]  # (r, G)
        shape = tuple(mx.array(rows).shape)
    shifts = mx.arange(per, dtype=mx.uint16) * bits
    q = (sel[..., None] >> shifts) & ((1 << bits) - 1)  # (r, j, c, e, f)
    q = q.transpose(0, 1, 2, 4, 3).reshape(-1, groups, group_size).astype(mx.float32)
    out = q * s.astype(mx.float32)[..., None] + b.astype(mx.float32)[..., None]
    return out.reshape(*shape, k)


__all__ = ["PANEL", "pack", "dequantize", "integers"]
