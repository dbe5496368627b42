"""Write safetensors shards whose header is planned before any data.

The writer takes the full list of output tensors (name, dtype, shape) up front, writes each shard's
header, then streams the tensors in order: peak memory stays near the largest tensor, not the shard.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from edge.checkpoint import DTYPES

MX_TO_ST = {v[1]: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class OutTensor:
    """One tensor of the output, planned before it is computed."""

    name: str
    dtype: mx.Dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.size


def plan_shards(tensors: list[OutTensor], max_shard_bytes: int) -> list[list[OutTensor]]:
    """Split the ordered tensor list into shards of at most `max_shard_bytes` (one tensor may exceed it)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return [s for s in shards if s]


def shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def _header(shard: list[OutTensor]) -> bytes:
    header: dict = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for t in shard:
        header[t.name] = {
            "dtype": MX_TO_ST[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def write_shards(folder: Path, shards: list[list[OutTensor]], arrays: Iterable[tuple[str, mx.array]]) -> dict[str, str]:
    """Stream `arrays` (in the planned order) into the planned shards; return the weight map name -> file.

    Each array is checked against its plan, so a recipe that disagrees with its own plan fails loudly.
    """
    files = shard_names(len(shards))
    weight_map: dict[str, str] = {}
    it: Iterator[tuple[str, mx.array]] = iter(arrays)
    for fname, shard in zip(files, shards, strict=True):
        with open(folder / fname, "wb") as f:
            f.write(_header(shard))
            for planned in shard:
                name, arr = next(it)
                if name != planned.name or arr.dtype != planned.dtype or tuple(arr.shape) != planned.shape:
                    raise AssertionError(f"converter produced {name} {arr.dtype}{arr.shape}, planned {planned}")
                f.write(_to_bytes(arr))
                weight_map[name] = fname
    if next(it, None) is not None:
        raise AssertionError("converter produced more tensors than planned")
    return weight_map


def _to_bytes(arr: mx.array) -> memoryview:
    """The array's own buffer (no copy): MLX arrays expose the buffer protocol; bf16 goes out as uint16."""
    if arr.dtype == mx.bfloat16:
        arr = arr.view(mx.uint16)
    mx.eval(arr)
    return memoryview(arr).cast("B")
