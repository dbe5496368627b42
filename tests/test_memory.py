"""Memory plan: figures computed from config alone, the CPU compute policy, and refusal with advice."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import edge
from edge.memory import HEADROOM_BYTES, parse_bytes


def test_plan_figures_follow_from_config(mlx_models):
    folder = mlx_models["llama"]
    config = json.loads((folder / "config.json").read_text())
    p = edge.plan(folder, context=100)
    per_token = (
        2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"] * 4
    )  # fp32 KV on a CPU
    assert p.kv_bytes_per_token == per_token and p.kv_bytes == 100 * per_token
    model = edge.load(folder)
    params = sum(v.size for _, v in tree_flatten(model.module.parameters()))
    assert p.parameters == params and p.compute == "float32" and p.weights_bytes == 4 * params
    assert p.needed_bytes == p.weights_bytes + p.kv_bytes + HEADROOM_BYTES
    assert p.fits and p.max_context == config["max_position_embeddings"]


def test_quantized_models_run_on_edge_kernels_on_a_cpu(gguf_model, tmp_path):
    from edge.converters import convert
    from edge.kernels import status

    folder = tmp_path / "q"
    convert(gguf_model, folder, progress=False)
    if not status().active:
        pytest.skip(f"edge's CPU kernels are not active here: {status()}")
    auto = edge.plan(folder)
    assert auto.compute == "kernels" and auto.weights_bytes == auto.stored_bytes
    model = edge.load(folder)
    assert model.kernel_layers > 0 and "PackedLinear" in str(type(model.module.model.layers[0].mlp.up_proj))
    cache = model.make_cache()  # the fused layers' fp16 KV cache: what the plan counted per token
    cache[0].reserve(1)
    per_position = sum(a.nbytes for a in (cache[0].keys, cache[0].values)) // cache[0].capacity
    assert cache[0].keys.dtype == mx.float16 and auto.kv_bytes_per_token == len(cache) * per_position
    assert edge.plan(folder, compute="float32").compute == "float32"


def test_cpu_keeps_quantized_weights_when_fp32_does_not_fit(gguf_model, tmp_path, monkeypatch):
    """Without edge's kernels (none built, or EDGE_KERNELS=off): fp32 when it fits, else MLX's own ops."""
    from edge.converters import convert

    monkeypatch.setattr("edge.model.kernels_cover", lambda config: False)
    folder = tmp_path / "q"
    convert(gguf_model, folder, progress=False)
    auto = edge.plan(folder)
    assert auto.compute == "float32"
    stored = auto.stored_bytes
    monkeypatch.setenv("EDGE_MEMORY_LIMIT", str(HEADROOM_BYTES + stored + auto.kv_bytes + 4096))
    tight = edge.plan(folder)
    assert tight.compute == "native" and tight.fits and tight.weights_bytes == stored
    model = edge.load(folder)
    assert model.plan.compute == "native"
    assert "QuantizedLinear" in str(model.module)
    model.generate("Hello", max_tokens=4)


def test_max_context_shrinks_with_memory(mlx_models, monkeypatch):
    full = edge.plan(mlx_models["llama"])
    monkeypatch.setenv("EDGE_MEMORY_LIMIT", str(full.weights_bytes + HEADROOM_BYTES + 50 * full.kv_bytes_per_token))
    p = edge.plan(mlx_models["llama"], compute="float32")
    assert p.max_context == 50 and not p.fits  # the model's full context (256) does not fit
    assert "shorter context (fits: 50 tokens)" in p.advice()
    edge.load(mlx_models["llama"], context=50).generate("Hi", max_tokens=2)
    with pytest.raises(edge.OutOfMemoryError):
        edge.load(mlx_models["llama"], context=51)


def test_parse_bytes():
    assert (
        parse_bytes("512MB") == 512 * 2**20
        and parse_bytes("4GB") == 4 * 2**30
        and parse_bytes("1.5G") == int(1.5 * 2**30)
    )
    assert parse_bytes("1000") == 1000
    with pytest.raises(edge.EdgeError):
        parse_bytes("lots")


def test_plan_prints_as_one_readable_line(mlx_models):
    text = str(edge.plan(mlx_models["llama"], context=100))
    assert "KV cache" in text and "at 100 tokens" in text and "fits" in text and "\n" not in text


def _huge_bytes_over(start: int, end: int) -> int:
    """AnonHugePages (bytes) of the mappings that overlap [start, end), from /proc/self/smaps."""
    import re
    from pathlib import Path

    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            inside = int(m.group(1), 16) < end and int(m.group(2), 16) > start
        elif inside and line.startswith("AnonHugePages:"):
            total += int(line.split()[1]) * 1024
    return total


def _huge_pages_here() -> bool:
    """Linux 6.1+ (MADV_COLLAPSE) with transparent huge pages not switched off: true on this machine."""
    import platform
    import re
    import sys
    from pathlib import Path

    f = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    release = re.match(r"(\d+)\.(\d+)", platform.release())
    return (
        sys.platform.startswith("linux")
        and f.exists()
        and "[never]" not in f.read_text()
        and release is not None
        and (int(release.group(1)), int(release.group(2))) >= (6, 1)
    )


needs_huge_pages = pytest.mark.skipif(
    not _huge_pages_here(), reason="2 MB pages on request need Linux 6.1+ with transparent huge pages on"
)


def test_address_ranges_are_the_arrays_own_bytes():
    import ctypes

    from edge.hugepages import address_ranges

    a, b = mx.arange(1000, dtype=mx.float32), mx.arange(7, dtype=mx.uint8)
    mx.eval(a, b)
    ranges = address_ranges([a, b, a])  # the same array twice: one range
    assert len(ranges) == 2 and ranges == sorted(ranges) and ranges[0][1] <= ranges[1][0]
    for arr in (a, b):
        start = next(s for s, e in ranges if e - s == arr.nbytes)
        assert ctypes.string_at(start, arr.nbytes) == bytes(memoryview(arr))


@needs_huge_pages
def test_weights_move_to_huge_pages_unchanged():
    from edge.hugepages import HUGE, address_ranges, use_huge_pages

    a = mx.random.normal((3 * HUGE // 4 + 12345,))  # ~6 MB: at least two whole 2 MB regions
    mx.eval(a)
    before = np.array(a)
    done = use_huge_pages([a])
    ((start, end),) = address_ranges([a])
    assert done >= 2 * HUGE and _huge_bytes_over(start, end) >= done
    assert np.array_equal(np.array(a), before)


@needs_huge_pages
def test_load_moves_every_weight_to_huge_pages_in_the_background(gguf_model, tmp_path, monkeypatch):
    from edge import hugepages
    from edge.converters import convert

    done, collapse = [], hugepages.collapse
    monkeypatch.setattr(hugepages, "collapse", lambda regions: done.append((regions, collapse(regions))))
    folder = tmp_path / "q"
    convert(gguf_model, folder, progress=False)
    model = edge.load(folder)
    model._paging.join(timeout=60)
    assert not model._paging.is_alive()
    weights = hugepages.regions([a for _, a in tree_flatten(model.module.parameters())])
    assert len(done) == 1 and done[0][0] == weights and done[0][1] > 0
