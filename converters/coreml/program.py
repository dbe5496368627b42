"""The MIL program of a llama-family decoder with its KV cache in Core ML states, built with the MIL builder.

One function, `main(inputIds, causalMask, keyCache, valueCache) -> logits`: n new tokens attend to the
`end - n` cached positions plus themselves (end is the mask's last dimension); each layer writes its keys and
values at positions end-n..end-1 of its slice of the states and attends over positions 0..end-1 with the
fused `scaled_dot_product_attention`. Activations are fp16; RMSNorm is computed in fp32.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edge.coreml.contract import CAUSAL_MASK, INPUT_IDS, KEY_CACHE, LOGITS, VALUE_CACHE, import_coremltools

from .compress import Compressed, Compression, compress
from .layout import Layout

WeightReader = Callable[[str], np.ndarray]
"""Name (mlx-lm's, e.g. model.layers.0.self_attn.q_proj.weight) -> fp32 array; None if absent."""


class _Builder:
    """Emits ops for one program; keeps compression statistics per tensor."""

    def __init__(self, layout: Layout, read: WeightReader, compression: Compression, advance: Callable[[str], None]):
        from coremltools.converters.mil import Builder as mb

        self.mb, self.L, self.read, self.compression, self.advance = mb, layout, read, compression, advance
        self.stats: dict[str, Compressed] = {}

    def weight(self, name: str):
        """A compressed 2-D weight as a constexpr op (or fp16 const)."""
        c = compress(self.read(name), self.compression)
        self.stats[name] = c
        self.advance(name)
        if c.op == "const":
            return self.mb.const(val=c.arrays["val"], name=name)
        return getattr(self.mb, c.op)(**c.arrays, name=name)

    def small(self, name: str, dtype=np.float16):
        value = self.read(name)
        value = np.array(value.dequantize()) if hasattr(value, "dequantize") else value
        self.advance(name)
        return None if value is None else value.astype(dtype)

    def linear(self, x, prefix: str):
        return self.mb.linear(x=x, weight=self.weight(f"{prefix}.weight"), bias=self.small(f"{prefix}.bias"))

    def rms_norm(self, x, name: str):
        mb = self.mb
        x32 = mb.cast(x=x, dtype="fp32")
        mean = mb.reduce_mean(x=mb.mul(x=x32, y=x32), axes=[-1], keep_dims=True)
        normed = mb.mul(x=mb.mul(x=x32, y=mb.rsqrt(x=mean, epsilon=self.L.eps)), y=self.small(name, np.float32))
        return mb.cast(x=normed, dtype="fp16")

    def heads(self, x, n: int):
        """(1, t, n*D) -> (1, n, t, D)."""
        mb = self.mb
        return mb.transpose(x=mb.reshape(x=x, shape=[1, -1, n, self.L.head_dim]), perm=[0, 2, 1, 3])

    def rope(self, x, cos, sin):
        mb, half = self.mb, self.L.head_dim // 2
        first, second = mb.split(x=x, split_sizes=[half, half], axis=-1)
        rotated = mb.concat(values=[mb.mul(x=second, y=np.float16(-1)), first], axis=-1)
        return mb.add(x=mb.mul(x=x, y=cos), y=mb.mul(x=rotated, y=sin))

    def cache_write(self, state, value, layer: int, past, end):
        """Write (1, KV, t, D) at positions past..end-1 of the layer's slice; return positions 0..end-1."""
        mb, L = self.mb, self.L
        lead = np.array([layer, 0, 0], np.int32)
        stop = np.array([layer + 1, 1, L.kv_heads], np.int32)
        begin = mb.concat(values=[lead, past, np.array([0], np.int32)], axis=0)
        finish = mb.concat(values=[stop, end, np.array([L.head_dim], np.int32)], axis=0)
        updated = mb.slice_update(
            x=mb.read_state(input=state), update=mb.expand_dims(x=value, axes=[0]), begin=begin, end=finish
        )
        mb.coreml_update_state(state=state, value=updated)
        start = mb.concat(values=[lead, np.array([0, 0], np.int32)], axis=0)
        held = mb.slice_by_index(x=updated, begin=start, end=finish)
        held = mb.reshape(x=held, shape=[1, L.kv_heads, -1, L.head_dim])
        rep = L.heads // L.kv_heads
        if rep == 1:
            return held
        tiled = mb.tile(x=mb.reshape(x=held, shape=[1, L.kv_heads, 1, -1, L.head_dim]), reps=[1, 1, rep, 1, 1])
        return mb.reshape(x=tiled, shape=[1, L.heads, -1, L.head_dim])

    def layer(self, h, i: int, cos, sin, past, end, mask, key_cache, value_cache):
        mb, L = self.mb, self.L
        p = f"model.layers.{i}"
        x = self.rms_norm(h, f"{p}.input_layernorm.weight")
        q = self.heads(self.linear(x, f"{p}.self_attn.q_proj"), L.heads)
        k = self.heads(self.linear(x, f"{p}.self_attn.k_proj"), L.kv_heads)
        v = self.heads(self.linear(x, f"{p}.self_attn.v_proj"), L.kv_heads)
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        if abs(L.query_scale - 1.0) > 1e-6:
            q = mb.mul(x=q, y=np.float16(L.query_scale))
        keys = self.cache_write(key_cache, k, i, past, end)
        values = self.cache_write(value_cache, v, i, past, end)
        attn = mb.scaled_dot_product_attention(query=q, key=keys, value=values, attn_mask=mask)
        attn = mb.reshape(x=mb.transpose(x=attn, perm=[0, 2, 1, 3]), shape=[1, -1, L.heads * L.head_dim])
        h = mb.add(x=h, y=self.linear(attn, f"{p}.self_attn.o_proj"))
        x = self.rms_norm(h, f"{p}.post_attention_layernorm.weight")
        gate = mb.silu(x=self.linear(x, f"{p}.mlp.gate_proj"))
        return mb.add(x=h, y=self.linear(mb.mul(x=gate, y=self.linear(x, f"{p}.mlp.up_proj")), f"{p}.mlp.down_proj"))

    def forward(self, input_ids, mask, key_cache, value_cache):
        mb, L = self.mb, self.L
        embed = self.weight("model.embed_tokens.weight")
        h = mb.gather(x=embed, indices=input_ids, axis=0)
        n = mb.slice_by_index(x=mb.shape(x=input_ids), begin=[1], end=[2])
        end = mb.slice_by_index(x=mb.shape(x=mask), begin=[3], end=[4])
        past = mb.sub(x=end, y=n)
        positions = mb.range_1d(start=mb.squeeze(x=past, axes=[0]), end=mb.squeeze(x=end, axes=[0]), step=1)
        cos = mb.expand_dims(x=mb.gather(x=L.cos.astype(np.float16), indices=positions, axis=0), axes=[0, 1])
        sin = mb.expand_dims(x=mb.gather(x=L.sin.astype(np.float16), indices=positions, axis=0), axes=[0, 1])
        for i in range(L.layers):
            h = self.layer(h, i, cos, sin, past, end, mask, key_cache, value_cache)
        h = self.rms_norm(h, "model.norm.weight")
        head = embed if L.tied else self.weight("lm_head.weight")
        return mb.linear(x=h, weight=head, name=LOGITS)


def build_program(layout: Layout, read: WeightReader, compression: Compression, advance: Callable[[str], None]):
    """(program, per-tensor compression stats). Weights are read and compressed one at a time."""
    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import get_new_symbol, types

    builder = _Builder(layout, read, compression, advance)
    n, end = get_new_symbol(), get_new_symbol()
    specs = [
        mb.TensorSpec((1, n), dtype=types.int32),
        mb.TensorSpec((1, 1, n, end), dtype=types.fp16),
        mb.StateTensorSpec(layout.state_shape, dtype=types.fp16),
        mb.StateTensorSpec(layout.state_shape, dtype=types.fp16),
    ]

    def main(inputIds, causalMask, keyCache, valueCache):  # noqa: N803 (the contract's names)
        return builder.forward(inputIds, causalMask, keyCache, valueCache)

    assert [INPUT_IDS, CAUSAL_MASK, KEY_CACHE, VALUE_CACHE] == list(main.__code__.co_varnames[:4])
    program = mb.program(input_specs=specs, opset_version=ct.target.iOS18)(main)
    return program, builder.stats
