"""What every checkpoint reader gives the converter: config, tensor list, one-tensor reads, tokenizer files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import mlx.core as mx


@dataclass(frozen=True)
class SourceTensor:
    """A tensor as the model sees it (Hugging Face name, logical shape), before any conversion."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    """Storage type in the source: F32, F16, BF16, Q4_0, Q4_1, Q8_0, or MLX4/MLX8 for MLX-quantized."""
    nbytes: int
    quantized: tuple[int, int] | None = None
    """(bits, group_size) when the source stores it in a form MLX's affine quantization holds exactly."""


@dataclass
class Quantized:
    """An affine-quantized weight in MLX's layout: w = scales * q + biases per group."""

    weight: mx.array
    scales: mx.array
    biases: mx.array
    bits: int
    group_size: int

    def dequantize(self) -> mx.array:
        """fp32 values, exact: scales and biases are cast up first so fp16 arithmetic adds no rounding."""
        s, b = self.scales.astype(mx.float32), self.biases.astype(mx.float32)
        return mx.dequantize(self.weight, s, b, group_size=self.group_size, bits=self.bits)


@dataclass
class TokenizerFiles:
    """File name -> content, written verbatim into the output folder."""

    files: dict[str, bytes] = field(default_factory=dict)


class Source(Protocol):
    path: Path
    kind: str
    config: dict
    tensors: list[SourceTensor]
    inputs: list[Path]

    def read(self, name: str) -> mx.array | Quantized: ...

    def tokenizer_files(self) -> TokenizerFiles: ...


def open_source(path: str | Path) -> Source:
    """Open a Hugging Face / MLX folder or a GGUF file, reading metadata only (no weights)."""
    from edge.errors import ModelFormatError

    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFormatError(f"{p} does not exist: give a Hugging Face model folder, an MLX folder or a .gguf file.")
    if p.is_file():
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            from .gguf_source import GGUFSource

            return GGUFSource(p)
        if p.suffix.lower() == ".gguf":
            raise ModelFormatError(f"{p} does not start with the GGUF magic bytes: the file is damaged or not GGUF.")
        raise ModelFormatError(
            f"{p} is a file but not GGUF: give a model folder (config.json + *.safetensors) or a .gguf file."
        )
    from .hf_source import HFSource

    return HFSource(p)
