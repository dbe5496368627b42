"""What the Core ML builder needs to know of a model, read from config.json and mlx-lm's own layers.

Supported: the llama family as mlx-lm builds it (llama, mistral, qwen2): grouped-query attention, tied
embeddings, q/k/v biases, RMSNorm eps, and RoPE with its theta and scaling. The RoPE tables are taken from
mlx-lm's own rope module (any scaling it implements: linear, llama3, yarn), so they match the MLX model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.architecture import rope_tables, skeleton
from edge.errors import EdgeError, UnsupportedModelError

SUPPORTED = ("llama", "mistral", "qwen2")
DEFAULT_CONTEXT = 2048


@dataclass(frozen=True)
class Layout:
    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float
    tied: bool
    context: int
    query_scale: float
    """Extra factor on queries when the model's attention scale is not 1/sqrt(head_dim) (the fused op's)."""
    cos: np.ndarray
    """(context, head_dim) fp32: cos of each position's rotation, both halves (rotate-half layout)."""
    sin: np.ndarray

    @property
    def state_shape(self) -> tuple[int, int, int, int, int]:
        return (self.layers, 1, self.kv_heads, self.context, self.head_dim)


def check_architecture(config: dict, where: str | Path) -> None:
    """Refuse what the builder cannot express, from config.json alone, before any weight is read."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        raise UnsupportedModelError(
            f"{where}: model_type '{model_type}' cannot be exported to Core ML yet; "
            f"supported: {', '.join(SUPPORTED)}. Convert it to an MLX folder instead (--to mlx)."
        )
    layer_types = set(config.get("layer_types") or ["full_attention"])
    if layer_types != {"full_attention"}:
        raise UnsupportedModelError(f"{where}: layer_types {sorted(layer_types)}: only full attention is exported.")


def make_layout(config: dict, where: str | Path, context: int | None = None) -> Layout:
    check_architecture(config, where)
    context = DEFAULT_CONTEXT if context is None else int(context)
    limit = config.get("max_position_embeddings")
    if context < 2:
        raise EdgeError(f"--context {context}: give at least 2 positions.")
    if limit and context > int(limit):
        raise EdgeError(
            f"--context {context} is beyond the {limit} positions this model's RoPE supports "
            f"(max_position_embeddings in {where}); choose --context {limit} or less."
        )
    window = config.get("sliding_window")
    uses_window = config.get("use_sliding_window", config.get("model_type") == "mistral")
    if window and uses_window and context > int(window):
        raise EdgeError(
            f"--context {context} is beyond this model's sliding window of {window} tokens ({where}), which the "
            f"exported full attention does not reproduce; choose --context {window} or less."
        )
    model = skeleton(config, where)
    inner = model.model
    attn = inner.layers[0].self_attn
    heads, kv_heads = int(attn.n_heads), int(attn.n_kv_heads)
    head_dim = int(attn.q_proj.weight.shape[0]) // heads
    rope = attn.rope
    if getattr(rope, "traditional", False) or int(getattr(rope, "dims", head_dim)) != head_dim:
        raise UnsupportedModelError(
            f"{where}: the model rotates {'interleaved pairs' if getattr(rope, 'traditional', False) else 'part of each head'}"
            " (RoPE), which the Core ML export does not express yet."
        )
    cos, sin = rope_tables(rope, context, head_dim)
    cos, sin = np.concatenate([cos, cos], axis=-1), np.concatenate([sin, sin], axis=-1)
    hidden = int(inner.embed_tokens.weight.shape[1])
    return Layout(
        model_type=config["model_type"],
        layers=len(inner.layers),
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=int(inner.embed_tokens.weight.shape[0]),
        eps=float(inner.norm.eps),
        tied=not hasattr(model, "lm_head"),
        context=context,
        query_scale=float(attn.scale) * math.sqrt(head_dim),
        cos=cos,
        sin=sin,
    )
