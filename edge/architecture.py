"""Architectures come from mlx-lm's registry (one module per `model_type`); edge adds clear errors and
a lazily-initialised skeleton whose parameter shapes are known without allocating any weights."""

from __future__ import annotations

import re
from pathlib import Path

import mlx.nn as nn
from mlx.utils import tree_flatten

from .errors import ModelFormatError, UnsupportedModelError

# Families the streaming converter and the tests cover; others that mlx-lm knows load but are less tested.
TESTED = ("llama", "mistral", "qwen2")


def model_classes(config: dict, where: str | Path = "config.json"):
    """(Model, ModelArgs) for `config['model_type']`, or UnsupportedModelError naming the type."""
    from mlx_lm.utils import _get_classes

    model_type = config.get("model_type")
    if not model_type:
        raise ModelFormatError(f"{where}: config.json has no 'model_type' field.")
    try:
        return _get_classes(config)
    except ValueError:
        raise UnsupportedModelError(
            f"{where}: model_type '{model_type}' is not supported by mlx-lm, which edge uses for architectures. "
            "Check for a newer mlx-lm, or use a model of a supported family (llama, mistral, qwen2, ...)."
        ) from None


def skeleton(config: dict, where: str | Path = "config.json") -> nn.Module:
    """The model built from config with lazy (never evaluated) random weights: shapes without memory."""
    model_cls, args_cls = model_classes(config, where)
    try:
        args = args_cls.from_dict(config)
        return model_cls(args)
    except TypeError as e:
        field = re.search(r"'(\w+)'", str(e))
        name = field.group(1) if field else str(e)
        raise ModelFormatError(
            f"{where}: config.json lacks the field '{name}' that a {config['model_type']} model needs."
        ) from None
    except (KeyError, ValueError, ZeroDivisionError) as e:
        raise ModelFormatError(f"{where}: config.json has an invalid value ({type(e).__name__}: {e}).") from None


def parameter_count(model: nn.Module) -> int:
    """Logical parameters (quantized weights counted unpacked), without evaluating anything."""
    return sum(p.size for _, p in tree_flatten(model.parameters()))


def rope_tables(rope, positions: int, head_dim: int):
    """(cos, sin), each (positions, head_dim // 2) fp32, measured by rotating unit vectors with mlx-lm's own
    rope module: with x = (1, ..., 1, 0, ..., 0) (first half ones), rotate-half RoPE gives (cos θ_i, sin θ_i)
    per pair i, including any scaling the module applies (every RoPE variant mlx-lm has is linear in x)."""
    import mlx.core as mx
    import numpy as np

    half = head_dim // 2
    x = mx.concatenate([mx.ones((1, 1, positions, half)), mx.zeros((1, 1, positions, half))], axis=-1)
    out = np.array(rope(x, offset=0).astype(mx.float32))[0, 0]
    return np.ascontiguousarray(out[:, :half]), np.ascontiguousarray(out[:, half:])
