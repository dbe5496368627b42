"""Quantization recipe: for each source tensor, what to write (plan) and how to compute it (apply).

Three modes per tensor:
  keep      an already-quantized tensor (GGUF Q4_0/Q4_1/Q8_0, MLX) written as it is, bit for bit
  quantize  MLX affine quantization at the recipe's bits and group size, computed from fp32
  float     cast to the recipe's dtype (norms, biases, layers whose width the group size does not divide)
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from .safetensors_io import OutTensor
from .source import Quantized, SourceTensor

DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
CHUNK_ELEMENTS = 2**20
"""Rows quantized at once hold at most this many weights (4 MB in fp32)."""


@dataclass(frozen=True)
class Recipe:
    bits: int | None
    """Target bits for quantizable layers; None keeps quantized sources as they are and others in float."""
    group_size: int
    dtype: mx.Dtype
    dequantize: bool = False
    """Write every weight in float (`dtype`), quantized sources included."""

    def describe(self) -> dict:
        return {
            "bits": self.bits,
            "group_size": self.group_size,
            "dtype": str(self.dtype).removeprefix("mlx.core."),
            "mode": "affine",
            "dequantize": self.dequantize,
        }


@dataclass(frozen=True)
class TensorPlan:
    source: SourceTensor
    name: str
    """Output name (after the architecture's sanitize)."""
    mode: str
    bits: int | None
    group_size: int | None
    outputs: tuple[OutTensor, ...]


def plan_tensor(src: SourceTensor, name: str, quantizable: bool, recipe: Recipe) -> TensorPlan:
    shape = src.shape
    keep = recipe.bits is None or (recipe.bits, recipe.group_size) == src.quantized
    if src.quantized and keep and quantizable and not recipe.dequantize:
        return _quantized_plan(src, name, "keep", *src.quantized, recipe.dtype)
    if recipe.bits is not None and quantizable and len(shape) == 2 and shape[-1] % recipe.group_size == 0:
        return _quantized_plan(src, name, "quantize", recipe.bits, recipe.group_size, recipe.dtype)
    dtype = recipe.dtype if src.dtype in ("F32", "F16", "BF16") or src.quantized else _int_dtype(src.dtype)
    return TensorPlan(src, name, "float", None, None, (OutTensor(name, dtype, shape),))


def _quantized_plan(src: SourceTensor, name: str, mode: str, bits: int, gs: int, dtype: mx.Dtype) -> TensorPlan:
    base = name.removesuffix(".weight")
    rows, cols = src.shape[:-1], src.shape[-1]
    outs = (
        OutTensor(f"{base}.biases", dtype, (*rows, cols // gs)),
        OutTensor(f"{base}.scales", dtype, (*rows, cols // gs)),
        OutTensor(f"{base}.weight", mx.uint32, (*rows, cols * bits // 32)),
    )
    return TensorPlan(src, name, mode, bits, gs, outs)


def _int_dtype(st_dtype: str) -> mx.Dtype:
    from edge.checkpoint import DTYPES as ST

    return ST[st_dtype][1]


@dataclass
class Applied:
    arrays: list[tuple[str, mx.array]]
    sq_error: float = 0.0
    """Sum of squared quantization error (quantize mode only), for the quality report."""
    sq_norm: float = 0.0


def apply(plan: TensorPlan, value: mx.array | Quantized) -> Applied:
    """Compute the planned outputs of one tensor; the order matches `plan.outputs`."""
    base = plan.name.removesuffix(".weight")
    dtype = plan.outputs[0].dtype
    if plan.mode == "keep":
        assert isinstance(value, Quantized)
        return Applied(
            [
                (f"{base}.biases", value.biases.astype(dtype)),
                (f"{base}.scales", value.scales.astype(dtype)),
                (f"{base}.weight", value.weight),
            ]
        )
    w = value.dequantize() if isinstance(value, Quantized) else value
    if plan.mode == "float":
        return Applied([(plan.name, w.astype(dtype) if mx.issubdtype(w.dtype, mx.floating) else w)])
    parts, sq_error, sq_norm = [], 0.0, 0.0
    rows = max(1, CHUNK_ELEMENTS // w.shape[-1])
    for start in range(0, w.shape[0], rows):  # quantization is per row: chunks bound the fp32 temporaries
        w32 = w[start : start + rows].astype(mx.float32)
        q, scales, biases = mx.quantize(w32, group_size=plan.group_size, bits=plan.bits)
        scales, biases = scales.astype(dtype), biases.astype(dtype)
        err = (
            mx.dequantize(
                q, scales.astype(mx.float32), biases.astype(mx.float32), group_size=plan.group_size, bits=plan.bits
            )
            - w32
        )
        e, n = mx.sum(err * err), mx.sum(w32 * w32)
        mx.eval(q, scales, biases, e, n)
        parts.append((q, scales, biases))
        sq_error, sq_norm = sq_error + e.item(), sq_norm + n.item()
    q, scales, biases = (mx.concatenate(list(p)) if len(parts) > 1 else p[0] for p in zip(*parts, strict=True))
    return Applied([(f"{base}.biases", biases), (f"{base}.scales", scales), (f"{base}.weight", q)], sq_error, sq_norm)
