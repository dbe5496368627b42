"""Memory plan: what a model and its context will take, against what this machine has, before loading.

Also the compute policy on a CPU: MLX's CPU quantized products are slow (about 0.6 GB/s of packed
weights, 50x slower again with fp16 scales), while fp32 products go through OpenBLAS at memory bandwidth,
so a CPU computes in fp32 (weights dequantized at load) whenever that fits; otherwise quantized weights
stay quantized with fp32 scales, biases and activations.
"""

from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import EdgeError

HEADROOM_BYTES = 512 * 2**20
"""Scratch for activations, the sampler and the Python process itself."""


def machine_memory() -> tuple[int, int]:
    """(available, total) bytes. `EDGE_MEMORY_LIMIT` (e.g. '4GB') caps both, to plan for a smaller device."""
    total = available = 0
    if sys.platform == "darwin":
        import mlx.core as mx

        info = mx.device_info() if mx.metal.is_available() else {}
        total = int(info.get("memory_size", 0)) or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        available = int(info.get("max_recommended_working_set_size", 0)) or total * 3 // 4
    else:
        meminfo = Path("/proc/meminfo")
        if meminfo.exists():
            fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", meminfo.read_text(), re.M))
            total = int(fields.get("MemTotal", 0)) * 1024
            available = int(fields.get("MemAvailable", fields.get("MemFree", 0))) * 1024
    limit = os.environ.get("EDGE_MEMORY_LIMIT")
    if limit:
        cap = parse_bytes(limit)
        total, available = min(total or cap, cap), min(available or cap, cap)
    return available, total


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B?)\s*", text, re.I)
    if not m:
        raise EdgeError(f"cannot read '{text}' as a size; write e.g. 512MB or 4GB.")
    unit = m.group(2).upper().rstrip("B").rstrip("I")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(unit or " "))


def kv_bytes_per_token(config: dict, dtype_bytes: int) -> int:
    """Keys and values of every layer for one token (standard multi-head / grouped-query attention)."""
    cfg = {**config.get("text_config", {}), **config}
    layers = int(cfg.get("num_hidden_layers", 0))
    heads = int(cfg.get("num_attention_heads", 1))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or cfg.get("hidden_size", 0) // max(heads, 1))
    return 2 * layers * kv_heads * head_dim * dtype_bytes


@dataclass
class MemoryPlan:
    """Bytes a model will take at a given context, and whether that fits this machine."""

    model: str
    parameters: int
    stored_bytes: int
    """Weights as stored on disk."""
    compute: str
    """'float32' (dequantized at load, CPU), 'kernels' (as stored, products on edge's CPU kernels) or 'native'
    (as stored, MLX's own ops)."""
    weights_bytes: int
    """Weights as they will sit in memory under `compute`."""
    kv_bytes_per_token: int
    context: int
    model_context: int
    available_bytes: int
    total_bytes: int
    headroom_bytes: int = HEADROOM_BYTES

    @property
    def kv_bytes(self) -> int:
        return self.kv_bytes_per_token * self.context

    @property
    def needed_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.headroom_bytes

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.available_bytes

    @property
    def max_context(self) -> int:
        """The longest context that fits next to the weights (capped at the model's own limit)."""
        room = self.available_bytes - self.weights_bytes - self.headroom_bytes
        return max(0, min(self.model_context, room // max(self.kv_bytes_per_token, 1)))

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(kv_bytes=self.kv_bytes, needed_bytes=self.needed_bytes, fits=self.fits, max_context=self.max_context)
        return d

    def __str__(self) -> str:
        return (
            f"{self.model}: weights {_gib(self.weights_bytes)} ({self.compute}) + KV cache {_gib(self.kv_bytes)} "
            f"at {self.context} tokens + headroom {_gib(self.headroom_bytes)} = {_gib(self.needed_bytes)} of "
            f"{_gib(self.available_bytes)} available: {'fits' if self.fits else 'does NOT fit'} "
            f"(longest context here {self.max_context} of {self.model_context})"
        )

    def advice(self) -> str:
        if self.fits:
            return "fits"
        return (
            f"needs {_gib(self.needed_bytes)} (weights {_gib(self.weights_bytes)}, KV cache {_gib(self.kv_bytes)} at "
            f"context {self.context}) but {_gib(self.available_bytes)} is available. Convert with fewer bits "
            f"(edge convert --bits 4), or use a shorter context (fits: {self.max_context} tokens)."
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def make_plan(
    name: str,
    config: dict,
    parameters: int,
    stored_bytes: int,
    *,
    context: int | None = None,
    on_cpu: bool = True,
    compute: str = "auto",
) -> MemoryPlan:
    """Plan from config and sizes alone. `compute`: 'auto' (fp32 on a CPU when it fits), 'float32', 'native'."""
    from .kernels.fused import KV_DTYPE, fusable

    available, total = machine_memory()
    model_context = int(
        config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings") or 4096
    )
    ctx = min(context or model_context, model_context)
    stored_dtype_bytes = 2 if str(config.get("torch_dtype", "float16")) in ("float16", "bfloat16") else 4

    def build(mode: str) -> MemoryPlan:
        weights = parameters * 4 if mode == "float32" else stored_bytes
        if mode == "kernels" and fusable(config):
            kv_dtype_bytes = KV_DTYPE.size  # the fused layers' own KV cache
        else:
            kv_dtype_bytes = 4 if (mode == "float32" or on_cpu) else stored_dtype_bytes
        kv = kv_bytes_per_token(config, kv_dtype_bytes)
        return MemoryPlan(name, parameters, stored_bytes, mode, weights, kv, ctx, model_context, available, total)

    if compute == "auto":
        fp32 = build("float32")
        return fp32 if on_cpu and fp32.fits else build("native")
    if compute not in ("float32", "native", "kernels"):
        raise EdgeError(f"compute='{compute}' is not one of auto, kernels, float32, native.")
    return build(compute)


@contextmanager
def wired_limit(plan: MemoryPlan):
    """On Apple silicon, wire model + KV + headroom (not the whole working set) while generating; restore after."""
    import mlx.core as mx

    if not mx.metal.is_available():
        yield
        return
    info = mx.device_info()
    limit = min(plan.needed_bytes, int(info.get("max_recommended_working_set_size", plan.needed_bytes)))
    old = mx.set_wired_limit(limit)
    try:
        yield
    finally:
        mx.synchronize()
        mx.set_wired_limit(old)
