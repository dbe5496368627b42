"""Hugging Face model folders (and MLX folders, whose quantized weights are read back as `Quantized`)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from edge.architecture import model_classes
from edge.checkpoint import SafetensorsFile, read_config, weight_files
from edge.errors import ModelFormatError

from .source import Quantized, SourceTensor, TokenizerFiles

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


class HFSource:
    kind = "hf"

    def __init__(self, folder: Path):
        self.path = folder
        self.config = read_config(folder)
        model_classes(
            self.config, folder / "config.json"
        )  # an unsupported architecture is refused before any weight file is read
        self.inputs = weight_files(folder)
        self._files: dict[str, SafetensorsFile] = {}
        entries = {}
        for f in self.inputs:
            st = SafetensorsFile(f)
            for name, e in st.entries.items():
                self._files[name] = st
                entries[name] = e
        q = self.config.get("quantization") or {}
        self.tensors: list[SourceTensor] = []
        self._quant: dict[str, tuple[int, int]] = {}
        for name, e in sorted(entries.items()):
            base = name.removesuffix(".weight")
            if name.endswith((".scales", ".biases")) and f"{name.rsplit('.', 1)[0]}.weight" in entries:
                continue
            if name.endswith(".weight") and f"{base}.scales" in entries:
                bits, gs = _mlx_quant(base, e.shape, entries[f"{base}.scales"].shape, q)
                shape = (*e.shape[:-1], e.shape[-1] * 32 // bits)
                nbytes = sum(entries[f"{base}.{s}"].nbytes for s in ("weight", "scales", "biases"))
                self.tensors.append(SourceTensor(name, shape, f"MLX{bits}", nbytes, (bits, gs)))
                self._quant[name] = (bits, gs)
            else:
                self.tensors.append(SourceTensor(name, e.shape, e.dtype, e.nbytes))

    def read(self, name: str) -> mx.array | Quantized:
        if name in self._quant:
            base = name.removesuffix(".weight")
            bits, gs = self._quant[name]
            parts = [self._files[f"{base}.{s}"].read(f"{base}.{s}") for s in ("weight", "scales", "biases")]
            return Quantized(*parts, bits=bits, group_size=gs)
        return self._files[name].read(name)

    def tokenizer_files(self) -> TokenizerFiles:
        out = TokenizerFiles()
        for n in TOKENIZER_FILES:
            p = self.path / n
            if p.exists():
                out.files[n] = p.read_bytes()
        return out


def _mlx_quant(base: str, wshape: tuple, sshape: tuple, q: dict) -> tuple[int, int]:
    if not q:
        raise ModelFormatError(f"{base} has scales but config.json has no 'quantization' field.")
    per_layer = q.get(base) if isinstance(q.get(base), dict) else None
    bits = (per_layer or q).get("bits", 4)
    gs = (per_layer or q).get("group_size", 64)
    in_dims = wshape[-1] * 32 // bits
    if in_dims // gs != sshape[-1]:  # the config's default is wrong for this layer: infer as mlx-lm does
        for b in (2, 3, 4, 5, 6, 8):
            d = wshape[-1] * 32 // b
            if d % sshape[-1] == 0 and d // sshape[-1] in (32, 64, 128):
                return b, d // sshape[-1]
    return bits, gs
