"""Whole decoder layers on edge's CPU kernel: a llama-family model's token step as ~35 MLX graph nodes.

On a CPU, MLX spends a few microseconds on every graph node; a 30-layer model's token is ~1000 nodes, which
costs more than its 4-bit products. `fuse(model)` gives the model a forward pass that runs each layer as one
primitive (norms, the seven quantized products, RoPE, attention over a KV cache it writes in place, SwiGLU),
all built by one call of the kernel's `DecoderStack`, when called with the caches from its `make_cache()`;
called otherwise (no cache, or mlx-lm's caches) it is mlx-lm's own forward, which stays the reference the
fused one is tested against.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from ..architecture import rope_tables
from ..cache import OffsetCache
from .cpu import load_extension
from .quantized import PackedLinear

FAMILIES = ("llama", "mistral", "qwen2")
KV_DTYPE = mx.float16
"""The KV cache's type: attention reads all of it every token, and in fp32 it was bandwidth-bound."""
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
GROW = 256
KEY_BLOCK = 16
"""Positions per block of the key cache (the kernel's KEY_BLOCK); GROW is a multiple of it."""


class LayerCache(OffsetCache):
    """One layer's keys (kv_heads, capacity / 16, head_dim, 16: blocks of 16 positions, transposed, so the
    kernel's scores vectorise over positions and a tile of them reads one contiguous block) and values
    (kv_heads, capacity, head_dim) in fp16, written in place by the kernel; `offset` positions are valid."""

    def __init__(self, kv_heads: int, head_dim: int):
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.keys = self.values = None
        self.offset = 0
        self.last: mx.array | None = None

    @property
    def state(self) -> list:
        return [] if self.last is None else [self.last]  # evaluating it runs the writes

    @property
    def capacity(self) -> int:
        return 0 if self.values is None else self.values.shape[1]

    def reserve(self, n: int) -> None:
        """Room for n more positions: grow in steps, copying what is held (before any write of this step)."""
        need, have = self.offset + n, self.capacity
        if need <= have:
            return
        size = math.ceil(need / GROW) * GROW
        keys = mx.zeros((self.kv_heads, size // KEY_BLOCK, self.head_dim, KEY_BLOCK), dtype=KV_DTYPE)
        values = mx.zeros((self.kv_heads, size, self.head_dim), dtype=KV_DTYPE)
        if self.keys is not None:
            keys[:, : have // KEY_BLOCK], values[:, :have] = self.keys, self.values
        mx.eval(keys, values)
        self.keys, self.values = keys, values


def _projections(layer) -> list:
    """The layer's seven linear layers, in the order the kernel takes them."""
    out = []
    for name in PROJECTIONS + MLP:
        mod = layer
        for part in name.split("."):
            mod = getattr(mod, part)
        out.append(mod)
    return out


def fusable(config: dict) -> bool:
    """A model config of a family and shape the fused layers run (llama-like, full attention everywhere, head
    size a multiple of 16); `fuse` also checks the loaded module's layers. The memory plan asks this."""
    heads = config.get("num_attention_heads") or 1
    head_dim = config.get("head_dim") or config.get("hidden_size", 0) // heads
    full = set(config.get("layer_types") or ["full_attention"]) == {"full_attention"}  # else rotating caches
    return config.get("model_type") in FAMILIES and head_dim % 16 == 0 and full


def _shape(model: nn.Module):
    """(heads, kv_heads, head_dim), or None when a layer is not one the kernel expresses."""
    args = getattr(model, "args", None)
    if args is None or not fusable(vars(args)):
        return None
    attn = model.model.layers[0].self_attn
    if not isinstance(attn.q_proj, PackedLinear):
        return None
    head_dim = attn.q_proj.output_dims // attn.n_heads
    rope = attn.rope
    if getattr(rope, "traditional", False) or int(getattr(rope, "dims", head_dim)) != head_dim or head_dim % 16:
        return None  # the kernel's attention works on 16 values of a head at a time
    for layer in model.model.layers:
        mods = _projections(layer)
        if any(not isinstance(m, PackedLinear) or "bias" in m for m in mods):
            return None
        if len({m.group_size for m in mods[:3]}) > 1 or mods[4].group_size != mods[5].group_size:
            return None  # the kernel quantizes each input once, for the group size of all its products
        if not all(isinstance(n, nn.RMSNorm) for n in (layer.input_layernorm, layer.post_attention_layernorm)):
            return None
    return attn.n_heads, attn.n_kv_heads, head_dim


def _layer_arguments(layer, shape) -> tuple:
    """A layer's weights and shape as `DecoderStack.add_layer` takes them."""
    mods = _projections(layer)
    return (
        layer.input_layernorm.weight,
        layer.post_attention_layernorm.weight,
        [a for m in mods for a in (m["weight"], m["scales"], m["biases"])],
        *shape,
        float(layer.input_layernorm.eps),
        float(layer.self_attn.scale),
        [m.bits for m in mods],
        [m.group_size for m in mods],
        [m.output_dims for m in mods],
    )


def fuse(model: nn.Module, context: int) -> bool:
    """Give `model` the fused forward pass (in place); False if it is not a model the kernel covers."""
    if type(model).__name__.startswith("Fused"):
        return True
    ext = load_extension()
    shape = _shape(model) if ext is not None else None
    if shape is None:
        return False
    heads, kv_heads, head_dim = shape
    cos, sin = rope_tables(model.model.layers[0].self_attn.rope, context, head_dim)
    tables = (mx.array(cos), mx.array(sin))
    mx.eval(tables)
    stack = ext.DecoderStack(*tables)  # the layers' weights are checked here, once
    for layer in model.model.layers:
        stack.add_layer(*_layer_arguments(layer, shape))
    base = type(model)

    class Fused(base):
        decoder_stack = stack

        def make_cache(self):
            return [LayerCache(kv_heads, head_dim) for _ in self.model.layers]

        def __call__(self, inputs, cache=None, **kwargs):
            if not cache or not isinstance(cache[0], LayerCache) or inputs.shape[0] != 1:
                return base.__call__(self, inputs, cache=cache, **kwargs)
            return _forward(self, inputs, cache)

    Fused.__name__ = Fused.__qualname__ = f"Fused{base.__name__}"
    model.__class__ = Fused
    return True


def _forward(model, inputs: mx.array, cache: list[LayerCache]) -> mx.array:
    inner = model.model
    n = inputs.shape[1]
    h = inner.embed_tokens(inputs[0]).astype(mx.float32)
    for c in cache:
        c.reserve(n)
    h = model.decoder_stack(h, [c.keys for c in cache], [c.values for c in cache], [c.offset for c in cache])
    for c in cache:
        c.offset += n
        c.last = h  # evaluating the last layer's output runs every layer's cache writes
    h = inner.norm(h)
    out = model.lm_head(h) if hasattr(model, "lm_head") else inner.embed_tokens.as_linear(h)
    return out[None]


__all__ = ["fuse", "LayerCache"]
