"""GGUF files: metadata -> config.json, tensors -> Hugging Face names, Q4_0/Q4_1/Q8_0 -> MLX affine, exactly.

Q4_0, Q4_1 and Q8_0 are group-32 affine formats, so each block becomes one MLX group bit for bit:
  Q4_1: w = d*q + m          -> scale d, bias m        (q in 0..15)
  Q4_0: w = d*(q - 8)        -> scale d, bias -8d      (q in 0..15)
  Q8_0: w = d*q, q in int8   -> scale d, bias -128d    (stored as q + 128 in 0..255)
All d, m are fp16 and -8d, -128d are exact in fp16, so scales and biases stay fp16 without rounding.
The file is memory-mapped (`gguf_file.GGUFFile`); one tensor is materialised at a time.
"""

from __future__ import annotations

import re
from pathlib import Path

import mlx.core as mx
import numpy as np

from edge.errors import ModelFormatError, UnsupportedModelError

from .gguf_file import GGUFFile, GGUFTensor
from .gguf_tokenizer import tokenizer_files_from_gguf
from .source import Quantized, SourceTensor, TokenizerFiles

# GGUF tensor name (after "blk.N.") -> Hugging Face name (after "model.layers.N.")
LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
ARCHITECTURES = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM")}
# GGUF type name -> (block bytes, MLX bits) for the types kept quantized; F32/F16 are plain.
BLOCK_TYPES = {"Q4_0": (18, 4), "Q4_1": (20, 4), "Q8_0": (34, 8)}
PLAIN_TYPES = {"F32": 4, "F16": 2}


def hf_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")
    if base in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[base]}.{suffix}"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if m and m.group(2) in LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{LAYER_NAMES[m.group(2)]}.{suffix}"
    return None


def unpermute_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's Q/K permutation (HF row (head, half, i) sits at GGUF row (head, i, half))."""
    return np.arange(n_rows).reshape(n_head, n_rows // n_head // 2, 2).transpose(0, 2, 1).reshape(-1)


def blocks_to_mlx(raw: np.ndarray, type_name: str, rows: int, cols: int) -> Quantized:
    """GGUF blocks (rows, cols/32 blocks as bytes) -> MLX affine group-32 (weight uint32, scales, biases fp16)."""
    nb = cols // 32
    size, bits = BLOCK_TYPES[type_name]
    b = np.asarray(raw, dtype=np.uint8).reshape(rows, nb, size)
    d = b[..., 0:2].copy().view(np.float16)[..., 0]
    if type_name == "Q8_0":
        q = b[..., 2:] ^ np.uint8(0x80)  # int8 q + 128 as uint8, without a wider copy: (rows, nb, 32)
        packed = np.ascontiguousarray(q).reshape(rows, cols).view(np.uint32)
        bias = (d * np.float16(-128)).astype(np.float16)
    else:
        qs = b[..., 4:] if type_name == "Q4_1" else b[..., 2:]
        lo, hi = qs & 0x0F, qs >> 4  # elements 0..15 and 16..31 of each block
        q = np.concatenate([lo, hi], axis=-1)  # (rows, nb, 32), element order restored
        pairs = q[..., 0::2] | (q[..., 1::2] << 4)  # two 4-bit values per byte, low nibble first
        packed = np.ascontiguousarray(pairs).reshape(rows, cols // 2).view(np.uint32)
        bias = (
            b[..., 2:4].copy().view(np.float16)[..., 0]
            if type_name == "Q4_1"
            else (d * np.float16(-8)).astype(np.float16)
        )
    return Quantized(mx.array(packed), mx.array(d), mx.array(bias), bits=bits, group_size=32)


class GGUFSource:
    kind = "gguf"

    def __init__(self, path: Path):
        self.path = path
        self.inputs = [path]
        self.file = GGUFFile(path)
        self.meta = self.file.metadata
        arch = self.meta.get("general.architecture", "?")
        if arch not in ARCHITECTURES:
            raise UnsupportedModelError(
                f"{path}: GGUF architecture '{arch}' is not supported (edge reads {', '.join(ARCHITECTURES)}); "
                "convert from the Hugging Face folder instead."
            )
        self._tensors: dict[str, GGUFTensor] = {}
        self.config = self._config(arch, {t.name for t in self.file.tensors})
        self.tensors: list[SourceTensor] = []
        for t in self.file.tensors:
            name = hf_name(t.name)
            if name is None:
                if t.name == "rope_freqs.weight":
                    raise UnsupportedModelError(f"{path}: RoPE scaling factors (rope_freqs) are not supported yet.")
                raise UnsupportedModelError(f"{path}: tensor {t.name} has no Hugging Face equivalent edge knows.")
            if t.type_name not in BLOCK_TYPES and t.type_name not in PLAIN_TYPES:
                raise UnsupportedModelError(
                    f"{path}: tensor {t.name} has GGUF type {t.type_name}; edge reads "
                    f"{', '.join([*BLOCK_TYPES, *PLAIN_TYPES])}. Use a GGUF with those types, or the safetensors release."
                )
            quant = (BLOCK_TYPES[t.type_name][1], 32) if t.type_name in BLOCK_TYPES else None
            self._tensors[name] = t
            self.tensors.append(SourceTensor(name, t.shape, t.type_name, t.nbytes, quant))
        self.tensors.sort(key=lambda s: s.name)

    def _config(self, arch: str, tensor_names: set[str]) -> dict:
        g = lambda key, default=None: self.meta.get(f"{arch}.{key}", default)  # noqa: E731
        needed = ["embedding_length", "block_count", "feed_forward_length", "attention.head_count"]
        missing = [k for k in needed if g(k) is None]
        if missing:
            raise ModelFormatError(f"{self.path}: GGUF metadata lacks {arch}.{missing[0]}.")
        heads = int(g("attention.head_count"))
        hidden = int(g("embedding_length"))
        model_type, cls = ARCHITECTURES[arch]
        config = {
            "architectures": [cls],
            "model_type": model_type,
            "hidden_size": hidden,
            "intermediate_size": int(g("feed_forward_length")),
            "num_hidden_layers": int(g("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(g("attention.head_count_kv", heads)),
            "head_dim": int(g("attention.key_length", g("rope.dimension_count", hidden // heads))),
            "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-5)),
            "rope_theta": float(g("rope.freq_base", 10000.0)),
            "max_position_embeddings": int(g("context_length", 2048)),
            "vocab_size": int(g("vocab_size", len(self.meta.get("tokenizer.ggml.tokens", [])))),
            "tie_word_embeddings": "output.weight" not in tensor_names,
            "hidden_act": "silu",
            "torch_dtype": "float16",
        }
        if model_type == "qwen2":
            config["use_sliding_window"] = False
        for key in ("bos_token_id", "eos_token_id"):
            if f"tokenizer.ggml.{key}" in self.meta:
                config[key] = int(self.meta[f"tokenizer.ggml.{key}"])
        return config

    def read(self, name: str) -> mx.array | Quantized:
        t = self._tensors[name]
        raw = self.file.data(t)
        rows, cols = (t.shape[0], t.shape[1]) if len(t.shape) > 1 else (1, t.shape[0])
        if t.type_name in BLOCK_TYPES:
            out: mx.array | Quantized = blocks_to_mlx(raw, t.type_name, rows, cols)
        else:
            out = mx.array(raw.view(np.float32 if t.type_name == "F32" else np.float16).reshape(t.shape))
        order = self._row_order(name, t.shape[0])
        if order is not None:
            idx = mx.array(order)
            if isinstance(out, Quantized):
                out = Quantized(out.weight[idx], out.scales[idx], out.biases[idx], out.bits, out.group_size)
            else:
                out = out[idx]
        return out

    def _row_order(self, name: str, rows: int) -> np.ndarray | None:
        if self.config["model_type"] != "llama":  # llama.cpp permutes Q/K only for its llama architecture
            return None
        if ".self_attn.q_proj." in name:
            return unpermute_rows(rows, self.config["num_attention_heads"])
        if ".self_attn.k_proj." in name:
            return unpermute_rows(rows, self.config["num_key_value_heads"])
        return None

    def tokenizer_files(self) -> TokenizerFiles:
        return tokenizer_files_from_gguf(self.meta, self.path, self.config)
