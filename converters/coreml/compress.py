"""Weight compression for Core ML packages, one tensor at a time, in NumPy.

  fp16          plain fp16 constants
  int4          4-bit per block of 32 input weights with fp16 scale and offset (the block-32 granularity of
                Apple's recipe for LLMs on iOS 18; a GGUF Q4_0/Q4_1 or MLX 4-bit source is carried over exactly)
  int8          symmetric int8 per output channel, fp16 scales
  palettize 4|6 a look-up table of 16 or 64 fp16 values per group of 16 output channels, fitted by 1-D k-means

Each is emitted as the iOS 18 constexpr op Core ML decompresses itself (`constexpr_blockwise_shift_scale`,
`constexpr_lut_to_dense`). Norm weights stay fp32 and biases fp16: they are tiny and precision-sensitive.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from edge.coreml.contract import import_coremltools
from edge.errors import EdgeError

from ..source import Quantized

BLOCK = 32
LUT_GROUP = 16
"""Output channels sharing one look-up table."""
KMEANS_ITERATIONS = 12


@dataclass(frozen=True)
class Compression:
    kind: str
    """'fp16', 'int4', 'int8' or 'palettize'."""
    bits: int

    def describe(self) -> str:
        return {
            "fp16": "fp16",
            "int4": f"int4 per block of {BLOCK} (scale and offset)",
            "int8": "int8 per channel",
            "palettize": f"{self.bits}-bit palette per {LUT_GROUP} channels",
        }[self.kind]


def make_compression(bits: int | None = None, palettize: int | None = None) -> Compression:
    if bits is not None and palettize is not None:
        raise EdgeError("--bits and --palettize are two ways to compress weights; choose one.")
    if palettize is not None:
        if palettize not in (4, 6):
            raise EdgeError(f"--palettize {palettize} is not supported for Core ML; choose 4 or 6.")
        return Compression("palettize", palettize)
    if bits is None or bits == 16:
        return Compression("fp16", 16)
    if bits not in (4, 8):
        raise EdgeError(f"--bits {bits} is not supported for Core ML; choose 4 (int4 per block) or 8 (int8).")
    return Compression(f"int{bits}", bits)


@dataclass
class Compressed:
    """Arrays for the constexpr op, with what they cost and how far they are from the original."""

    op: str
    """'const', 'constexpr_blockwise_shift_scale' or 'constexpr_lut_to_dense'."""
    arrays: dict[str, np.ndarray]
    nbytes: int
    sq_error: float
    sq_norm: float
    form: str = ""
    """How it is stored, e.g. 'int4 block 32', 'int8 per channel', '4-bit palette', 'fp16'."""

    @property
    def size(self) -> int:
        return int(np.prod(next(iter(self.arrays.values())).shape))


def _stats(w: np.ndarray, restored: np.ndarray) -> tuple[float, float]:
    return float(np.sum((w - restored) ** 2, dtype=np.float64)), float(np.sum(w.astype(np.float64) ** 2))


def _blockwise(data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None, w: np.ndarray, bits: int) -> Compressed:
    """A constexpr_blockwise_shift_scale weight: w ~ scale * (data - offset), blocks along the input axis."""
    rows, cols = data.shape
    s32 = np.repeat(scale.astype(np.float32), cols // scale.shape[1], axis=1)
    o32 = 0.0 if offset is None else np.repeat(offset.astype(np.float32), cols // offset.shape[1], axis=1)
    err, norm = _stats(w, s32 * (data.astype(np.float32) - o32))
    arrays = {"data": data, "scale": scale} | ({} if offset is None else {"offset": offset})
    extra = scale.nbytes + (0 if offset is None else offset.nbytes)
    block = cols // scale.shape[1]
    form = f"int{bits} " + ("per channel" if block == cols else f"block {block}")
    return Compressed("constexpr_blockwise_shift_scale", arrays, data.size * bits // 8 + extra, err, norm, form)


def _affine_int4(w: np.ndarray, block: int) -> Compressed:
    """uint4 per block with an fp16 scale and offset: w ~ scale * (q - offset), q in 0..15 (min to max)."""
    from coremltools.converters.mil.mil import types

    rows, cols = w.shape
    g = w.reshape(rows, cols // block, block)
    lo, hi = g.min(axis=-1), g.max(axis=-1)
    scale = ((hi - lo) / 15).astype(np.float16)
    safe = np.where(scale == 0, np.float16(1), scale).astype(np.float32)
    offset = (-lo / safe).astype(np.float16)
    q = np.clip(np.rint(g / safe[..., None] + offset.astype(np.float32)[..., None]), 0, 15).astype(np.uint8)
    return _blockwise(q.reshape(rows, cols).astype(types.np_uint4_dtype), scale, offset, w, 4)


def _symmetric_int8(w: np.ndarray) -> Compressed:
    """int8 per output channel with an fp16 scale: w ~ scale * q, q in -127..127."""
    scale = (np.abs(w).max(axis=1, keepdims=True) / 127).astype(np.float16)
    safe = np.where(scale == 0, np.float16(1), scale).astype(np.float32)
    q = np.clip(np.rint(w / safe), -127, 127).astype(np.int8)
    return _blockwise(q, scale, None, w, 8)


def _from_affine(value: Quantized) -> Compressed:
    """An MLX affine weight (w = s*q + b per group, as GGUF Q4_0/Q4_1/Q8_0 become) carried over exactly:
    the same integers, scale s, offset -b/s (fp16)."""
    from coremltools.converters.mil.mil import types

    packed = np.array(value.weight).view(np.uint8)
    rows = packed.shape[0]
    q = np.stack([packed & 15, packed >> 4], axis=-1).reshape(rows, -1) if value.bits == 4 else packed
    s = np.array(value.scales.astype(mx.float32))
    b = np.array(value.biases.astype(mx.float32))
    scale = s.astype(np.float16)
    safe = np.where(scale == 0, np.float16(1), scale).astype(np.float32)
    offset = (-b / safe).astype(np.float16)
    w = np.array(value.dequantize())
    dtype = types.np_uint4_dtype if value.bits == 4 else np.uint8
    return _blockwise(q.astype(dtype), scale, offset, w, value.bits)


def _panter_dite_start(xs: np.ndarray, k: int, bins: int = 512) -> np.ndarray:
    """Starting centroids at quantiles of density^(1/3), the asymptotically optimal quantizer density: far
    closer to the optimum in the tails than plain quantiles, so a few Lloyd steps suffice."""
    groups = xs.shape[0]
    lo, span = xs[:, :1], np.maximum(xs[:, -1:] - xs[:, :1], 1e-12)
    b = np.clip(((xs - lo) / span * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount((b + (np.arange(groups) * bins)[:, None]).ravel(), minlength=groups * bins)
    cdf = np.cumsum(counts.reshape(groups, bins) ** (1 / 3), axis=1)
    cdf /= cdf[:, -1:]
    targets = (np.arange(k) + 0.5) / k
    offsets = np.arange(groups)[:, None] * 2.0  # cdf values lie in [0, 1]: rows side by side
    at = np.searchsorted((cdf + offsets).ravel(), (targets[None] + offsets).ravel()).reshape(groups, k)
    at -= (np.arange(groups) * bins)[:, None]
    return lo + (np.clip(at, 0, bins - 1) + 0.5) / bins * span


def kmeans_1d(x: np.ndarray, k: int, iterations: int = KMEANS_ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on each row of x (groups, n): (centroids (groups, k) ascending, indices (groups, n)).

    In one dimension clusters are runs of the sorted values, so each step is a searchsorted of the midpoints
    and a difference of prefix sums. Rows are laid side by side with a gap wider than any row's range, so one
    searchsorted serves every row.
    """
    groups, n = x.shape
    xs = np.sort(x, axis=1).astype(np.float64)
    gap = float(xs[:, -1].max() - xs[:, 0].min()) * 2 + 1.0
    shift = (np.arange(groups, dtype=np.float64) * gap)[:, None]
    flat = (xs + shift).ravel()
    prefix = np.concatenate([np.zeros((groups, 1)), np.cumsum(xs, axis=1)], axis=1)
    c = _panter_dite_start(xs, k)
    row_start = (np.arange(groups) * n)[:, None]
    for _ in range(iterations):
        mids = (c[:, 1:] + c[:, :-1]) / 2
        cut = np.searchsorted(flat, (mids + shift).ravel(), side="left").reshape(groups, k - 1) - row_start
        bounds = np.concatenate([np.zeros((groups, 1), np.int64), cut, np.full((groups, 1), n)], axis=1)
        counts = np.diff(bounds, axis=1)
        sums = np.take_along_axis(prefix, bounds[:, 1:], 1) - np.take_along_axis(prefix, bounds[:, :-1], 1)
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        c = np.sort(c, axis=1)
    mids = (c[:, 1:] + c[:, :-1]) / 2
    edges = (mids + shift).ravel()
    idx = np.searchsorted(edges, (x.astype(np.float64) + shift).ravel(), side="left").reshape(groups, n)
    idx -= (np.arange(groups) * (k - 1))[:, None]
    return c, np.clip(idx, 0, k - 1)


def _palettize(w: np.ndarray, bits: int) -> Compressed:
    from coremltools.converters.mil.mil import types

    rows, cols = w.shape
    group = LUT_GROUP if rows % LUT_GROUP == 0 else rows
    k = 2**bits
    centroids, idx = kmeans_1d(w.reshape(rows // group, group * cols), k)
    lut = centroids.astype(np.float16)
    restored = np.take_along_axis(lut.astype(np.float32), idx, axis=1).reshape(rows, cols)
    err, norm = _stats(w, restored)
    index_dtype = types.np_uint4_dtype if bits == 4 else types.np_uint6_dtype
    indices = idx.reshape(rows, cols).astype(np.uint8).astype(index_dtype)
    arrays = {"indices": indices, "lut": lut.reshape(rows // group, 1, k, 1)}
    return Compressed(
        "constexpr_lut_to_dense", arrays, w.size * bits // 8 + lut.nbytes, err, norm, f"{bits}-bit palette"
    )


def compress(value: np.ndarray | Quantized, c: Compression) -> Compressed:
    """A 2-D weight (out, in), fp32 or MLX-quantized, in the recipe's form.

    With --bits, a tensor the source already holds in 4 or 8 bits (GGUF Q4_0/Q4_1/Q8_0, MLX folders) keeps its
    integers, scales and bits exactly, as `edge convert` keeps them for MLX (so a Q4_1 file's Q8_0 embedding
    stays 8-bit, as llama.cpp chose); anything else is compressed from fp32.
    """
    import_coremltools()
    if isinstance(value, Quantized):
        if c.kind in ("int4", "int8") and value.bits in (4, 8):
            return _from_affine(value)
        value = np.array(value.dequantize())
    w = np.ascontiguousarray(value, dtype=np.float32)
    if c.kind == "int4":
        return _affine_int4(w, BLOCK if w.shape[1] % BLOCK == 0 else w.shape[1])
    if c.kind == "int8":
        return _symmetric_int8(w)
    if c.kind == "palettize":
        return _palettize(w, c.bits)
    half = w.astype(np.float16)
    err, norm = _stats(w, half.astype(np.float32))
    return Compressed("const", {"val": half}, half.nbytes, err, norm, "fp16")
