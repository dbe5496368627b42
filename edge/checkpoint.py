"""Read a model folder's checkpoint files without loading weights: config.json, shards, safetensors headers.

Shared by `edge.load` (to name the broken file before MLX sees it) and the converters (which read one
tensor at a time). A safetensors file is an 8-byte header length, a JSON header, then raw tensor data;
each tensor is read on demand with a seek, and a truncated file is caught from its header alone.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from .errors import ModelFormatError

PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise ModelFormatError(f"{folder} has no config.json: it is not a Hugging Face or MLX model folder.")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{path} is not valid JSON ({e}).") from None
    if "model_type" not in config:
        raise ModelFormatError(f"{path} has no 'model_type' field: add it (e.g. \"llama\") or re-download the config.")
    return config


def weight_files(folder: Path) -> list[Path]:
    """The safetensors shards of a folder, checked against its index when there is one."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise ModelFormatError(f"{index} is not a valid safetensors index ({e}).") from None
        missing = [n for n in names if not (folder / n).exists()]
        if missing:
            raise ModelFormatError(
                f"{folder} is missing shard {missing[0]} named in {index.name}; copy the whole folder again."
            )
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = [p.name for pat in PICKLED for p in folder.glob(pat)]
        if pickled:
            raise ModelFormatError(
                f"{folder} holds only pickled weights ({pickled[0]}). edge never unpickles (it can run code). "
                "Download the model's safetensors files instead, or convert them with the model's authors' tools."
            )
        raise ModelFormatError(f"{folder} has no *.safetensors weights.")
    return files


# safetensors dtype name -> (numpy storage dtype, mlx dtype, bytes per element)
DTYPES: dict[str, tuple[type, mx.Dtype, int]] = {
    "F32": (np.float32, mx.float32, 4),
    "F16": (np.float16, mx.float16, 2),
    "BF16": (np.uint16, mx.bfloat16, 2),
    "U32": (np.uint32, mx.uint32, 4),
    "I32": (np.int32, mx.int32, 4),
    "I64": (np.int64, mx.int64, 8),
    "U8": (np.uint8, mx.uint8, 1),
    "I8": (np.int8, mx.int8, 1),
    "BOOL": (np.bool_, mx.bool_, 1),
}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class SafetensorsFile:
    """One safetensors file, its header checked against its size; tensors read on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFormatError(f"{self.path} is not a safetensors file (shorter than 8 bytes).")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100 * 2**20:
                raise ModelFormatError(
                    f"{self.path} has a header length of {n} bytes beyond its size: the file is truncated or not safetensors."
                )
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ModelFormatError(f"{self.path} has an unreadable header ({e}); download it again.") from None
        self.metadata: dict = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self._lazy: dict[str, mx.array] = {}
        self.entries: dict[str, TensorEntry] = {}
        for name, spec in header.items():
            begin, end = spec["data_offsets"]
            if spec["dtype"] not in DTYPES:
                raise ModelFormatError(
                    f"{self.path}: tensor {name} has dtype {spec['dtype']}, which edge does not read."
                )
            entry = TensorEntry(name, spec["dtype"], tuple(spec["shape"]), begin, end)
            need = int(np.prod(entry.shape, dtype=np.int64)) * DTYPES[entry.dtype][2]
            if entry.nbytes != need:
                raise ModelFormatError(
                    f"{self.path}: tensor {name} spans {entry.nbytes} bytes but its shape needs {need}."
                )
            if self.data_start + end > size:
                raise ModelFormatError(
                    f"{self.path} is truncated: tensor {name} ends at byte {self.data_start + end} "
                    f"but the file has {size} bytes. Download or copy it again."
                )
            self.entries[name] = entry

    def read(self, name: str) -> mx.array:
        # mx.load is lazy: evaluating one array reads just that tensor from the file into MLX memory (no
        # numpy copy). Pop it, so the dict does not keep an evaluated tensor alive.
        if name not in self._lazy:
            self._lazy = mx.load(str(self.path))
        arr = self._lazy.pop(name)
        mx.eval(arr)
        return arr
