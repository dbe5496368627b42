"""edge's CPU quantized-product kernel against MLX's own dequantize / quantized_matmul, and the layers that
switch a model onto it."""

from __future__ import annotations

import platform
import subprocess
import sys

import builders
import mlx.core as mx
import numpy as np
import pytest

import edge
from edge.kernels import status
from edge.kernels.cpu import load_extension
from edge.kernels.layout import dequantize, pack

pytestmark = pytest.mark.skipif(not status().active, reason=f"edge's CPU kernels are not built here: {status()}")


def _case(n, k, m, bits, gs, seed):
    key = mx.random.key(seed)
    w = mx.random.normal((n, k), key=key) * 0.05
    wq, s, b = mx.quantize(w, group_size=gs, bits=bits)
    s, b = s.astype(mx.float32), b.astype(mx.float32)
    x = mx.random.normal((m, k), key=mx.random.split(key)[0])
    return x, wq, s, b


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize(("n", "m"), [(1, 1), (7, 3), (13, 4), (200, 5), (40, 6), (29, 7), (67, 17), (48, 8)])
@pytest.mark.parametrize("fp16", [False, True])
def test_product_equals_dequantize_then_matmul(bits, gs, n, m, fp16):
    """Odd output widths (a partial last panel), a single row, many rows, scales kept as fp32 or (when they
    are fp16 values, as GGUF's are) as fp16: against dequantize (fp64) @ x, an independent reference, and
    MLX's own quantized_matmul; each row alone gives the same bits as in the batch."""
    k = 384
    x, wq, s, b = _case(n, k, m, bits, gs, seed=n * 31 + m + bits + gs)
    if fp16:
        s, b = (v.astype(mx.float16).astype(mx.float32) for v in (s, b))
    packed = pack(wq, s, b, bits, gs)
    assert packed[1].dtype == packed[2].dtype == (mx.float16 if fp16 else mx.float32)
    got = np.array(load_extension().packed_matmul(x, *packed, n, gs, bits))
    w = np.array(mx.dequantize(wq, s, b, group_size=gs, bits=bits)).astype(np.float64)
    want = np.array(x).astype(np.float64) @ w.T
    scale = np.abs(np.array(x)).max() * np.abs(w).sum(axis=1).max()
    assert got.shape == (m, n)
    np.testing.assert_allclose(got, want, atol=2e-5 * scale)
    mlx_ops = np.array(mx.quantized_matmul(x, wq, s, b, transpose=True, group_size=gs, bits=bits))
    np.testing.assert_allclose(got, mlx_ops, atol=2e-5 * scale)
    for i in {0, m - 1}:  # a verify pass over m positions must equal m single-position steps exactly
        alone = np.array(load_extension().packed_matmul(x[i : i + 1], *packed, n, gs, bits))
        assert np.array_equal(alone[0], got[i])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("gs", [32, 128])
@pytest.mark.parametrize("fp16", [False, True])
def test_packed_layout_reads_back_exactly(bits, gs, fp16):
    """pack then dequantize gives MLX's own dequantized weights bit for bit, whole or by rows (an embedding
    lookup of a tied head), for a width that leaves a partial last panel, with scales kept as fp32 or fp16."""
    _, wq, s, b = _case(37, 256, 1, bits, gs, seed=bits + gs)
    if fp16:
        s, b = (v.astype(mx.float16).astype(mx.float32) for v in (s, b))
    packed = pack(wq, s, b, bits, gs)
    assert packed[1].dtype == (mx.float16 if fp16 else mx.float32)
    assert packed[0].dtype == mx.uint8 and packed[0].shape == (3, 2 * 256 * bits)
    assert packed[1].shape == (3, 256 // gs, 16)
    want = mx.dequantize(wq, s, b, group_size=gs, bits=bits)
    assert mx.array_equal(dequantize(*packed, 37, bits, gs), want).item()
    ids = mx.array([[36, 0, 17], [16, 15, 36]])
    assert mx.array_equal(dequantize(*packed, 37, bits, gs, rows=ids), want[ids]).item()
    rows = load_extension().packed_rows(ids, *packed, 37, gs, bits)  # the kernel's lookup: one graph node
    assert rows.shape == (2, 3, 256) and mx.array_equal(rows, want[ids]).item()


def test_strided_and_batched_inputs():
    x, wq, s, b = _case(48, 64, 6, 4, 32, seed=7)
    ext = load_extension()
    packed = pack(wq, s, b, 4, 32)
    xt = mx.transpose(x.reshape(2, 3, 64), (1, 0, 2))  # a strided view, (3, 2, 64)
    want = mx.quantized_matmul(xt, wq, s, b, transpose=True, group_size=32, bits=4)
    got = ext.packed_matmul(xt, *packed, 48, 32, 4)
    assert got.shape == (3, 2, 48)
    assert mx.allclose(got, want, atol=1e-4).item()
    x16 = x.astype(mx.float16)  # raised to fp32 inside
    half = ext.packed_matmul(x16, *packed, 48, 32, 4)
    assert (
        half.dtype == mx.float32
        and mx.array_equal(half, ext.packed_matmul(x16.astype(mx.float32), *packed, 48, 32, 4)).item()
    )


def test_bad_arguments_are_refused():
    x, wq, s, b = _case(8, 64, 1, 4, 32, seed=1)
    ext = load_extension()
    packed = pack(wq, s, b, 4, 32)
    with pytest.raises(ValueError, match="bits"):
        ext.packed_matmul(x, *packed, 8, 32, 3)
    with pytest.raises(ValueError, match="last axis"):
        ext.packed_matmul(x[:, :32], *packed, 8, 32, 4)
    with pytest.raises(ValueError, match="scales and biases"):
        ext.packed_matmul(x, packed[0], s, b, 8, 32, 4)  # MLX's own layout, not the packed one


def test_a_model_on_the_kernels_matches_mlx_ops(gguf_model, tmp_path):
    """Q4_1 / Q8_0 tiny model: logits within 1e-3 of the same weights on MLX's own ops, and the same greedy text."""
    from edge.converters import convert

    folder = tmp_path / "q"
    convert(gguf_model, folder, progress=False)
    fast, ref = edge.load(folder), edge.load(folder, compute="native")
    assert fast.plan.compute == "kernels" and fast.kernel_layers == 2 * 7 + 1  # 2 layers x 7 + tied head
    assert ref.kernel_layers == 0
    ids = mx.array([[1, 5, 9, 200, 31, 7, 7, 64]])
    a, b = np.array(fast.module(ids)), np.array(ref.module(ids))
    np.testing.assert_allclose(a, b, atol=1e-3 * np.abs(b).max())
    for prompt in ("hello world", "the quick brown fox"):
        assert fast.generate(prompt, max_tokens=16) == ref.generate(prompt, max_tokens=16)
    assert "edge quantized matmul" in fast.describe()["kernels"]


def test_self_draft_runs_on_the_kernels(mlx_models):
    from edge.kernels.quantized import PackedLinear
    from edge.speculative import lower_bit_copy

    model = edge.load(mlx_models["llama"])
    draft = lower_bit_copy(model, 4, group_size=32)
    assert any(isinstance(m, PackedLinear) for _, m in draft.module.named_modules())
    assert model.generate("hello world", max_tokens=12, draft=draft) == model.generate("hello world", max_tokens=12)


def test_abi_mismatch_is_reported():
    from edge.kernels.cpu import _check

    class Mismatched:
        @staticmethod
        def packed_matmul(*args):
            raise TypeError("incompatible function arguments")

    with pytest.raises(RuntimeError, match="nanobind ABI"):
        _check(Mismatched)


def test_kernels_can_be_turned_off():
    code = "import edge; from edge.kernels import status; print(status())"
    env = {"EDGE_KERNELS": "off"}
    import os

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    assert "MLX's own ops (EDGE_KERNELS=off)" in out.stdout


@pytest.fixture(scope="module")
def quantized_models(tmp_path_factory, hf_models, gguf_model, tokenizer) -> dict:
    """Each tiny architecture at 4 bits (group 32), the GGUF one (Q4_1 layers, Q8_0 tied embedding), and a
    llama with a 1,100-token context (8-bit, group 64) for long attention."""
    from edge.converters import convert

    root = tmp_path_factory.mktemp("q")
    out = {"gguf": root / "gguf"}
    convert(gguf_model, out["gguf"], progress=False)
    for arch, src in hf_models.items():
        convert(src, root / arch, bits=4, group_size=32, progress=False)
        out[arch] = root / arch
    long_src = builders.write_hf_model(root / "hf-long", "llama", tok=tokenizer, seed=5, max_position_embeddings=1100)
    convert(long_src, root / "long", bits=8, group_size=64, progress=False)
    out["long"] = root / "long"
    return out


@pytest.mark.parametrize("name", ["gguf", "llama", "mistral", "qwen2"])
def test_fused_layers_match_mlx_lm_layers(quantized_models, name):
    """Prefill, token-by-token decode and a rollback through the fused layers, against mlx-lm's own layers
    (same weights, MLX ops): logits within 1e-3 of their range."""
    from edge.kernels.fused import LayerCache

    fast, ref = edge.load(quantized_models[name]), edge.load(quantized_models[name], compute="native")
    fused = type(fast.module).__name__.startswith("Fused")
    assert fused == (name != "qwen2")  # qwen2's q/k/v biases keep mlx-lm's layers (on the kernel products)
    ids = [1, 5, 9, 200, 31, 7, 7, 64, 12, 3]
    want = np.array(ref.module(mx.array(ids)[None]))
    tol = 1e-3 * np.abs(want).max()
    cache = fast.make_cache()
    assert isinstance(cache[0], LayerCache) == fused
    np.testing.assert_allclose(np.array(fast.module(mx.array(ids[:6])[None], cache=cache)), want[:, :6], atol=tol)
    for i in range(6, len(ids)):
        np.testing.assert_allclose(
            np.array(fast.module(mx.array([[ids[i]]]), cache=cache)), want[:, i : i + 1], atol=tol
        )
    if fused:  # roll back 3 positions and feed different tokens: the cache holds exactly the kept prefix
        assert cache[0].trim(3) == 3 and cache[0].offset == len(ids) - 3
        for c in cache[1:]:
            c.trim(3)
        other = ids[:-3] + [99, 98, 97]
        again = np.array(ref.module(mx.array(other)[None]))
        got = np.array(fast.module(mx.array(other[-3:])[None], cache=cache))
        np.testing.assert_allclose(got, again[:, -3:], atol=tol)


def test_the_decoder_stack_refuses_caches_that_do_not_fit(quantized_models):
    """The layers' weights are checked once, when the stack is built; each call still checks its caches."""
    module = edge.load(quantized_models["gguf"]).module
    stack, cache = type(module).decoder_stack, module.make_cache()
    assert len(stack) == len(cache)
    for c in cache:
        c.reserve(8)
    keys, values, offsets = [c.keys for c in cache], [c.values for c in cache], [c.offset for c in cache]
    width = module.model.norm.weight.shape[0]
    assert stack(mx.zeros((8, width)), keys, values, offsets).shape == (8, width)
    with pytest.raises(ValueError, match="one key cache, value cache and offset per layer"):
        stack(mx.zeros((8, width)), keys[:-1], values, offsets)
    with pytest.raises(ValueError, match="too short for these positions"):
        stack(mx.zeros((8, width)), keys, values, [cache[0].capacity - 4] * len(cache))
    with pytest.raises(ValueError, match="caches must be fp16"):
        stack(mx.zeros((8, width)), [k.astype(mx.float32) for k in keys], values, offsets)
    with pytest.raises(ValueError, match="the layers' width"):
        stack(mx.zeros((8, width + 16)), keys, values, offsets)
    with pytest.raises(ValueError, match=r"h must be \(M, D\) fp32"):
        stack(mx.zeros((8, width), dtype=mx.float16), keys, values, offsets)


def test_fused_attention_over_a_long_context(quantized_models):
    """900 positions (the cache grows past several 256-position steps, scores span many 16-position tiles):
    prefill in two calls, then single steps, against mlx-lm's layers on the same weights."""
    fast, ref = edge.load(quantized_models["long"]), edge.load(quantized_models["long"], compute="native")
    assert type(fast.module).__name__.startswith("Fused")
    ids = [(i * 37 + 11) % 300 + 3 for i in range(900)]
    want = np.array(ref.module(mx.array(ids)[None]))
    tol = 1e-3 * np.abs(want).max()
    cache = fast.make_cache()
    got = [
        np.array(fast.module(mx.array(ids[:300])[None], cache=cache)),
        np.array(fast.module(mx.array(ids[300:890])[None], cache=cache)),
    ]
    got += [np.array(fast.module(mx.array([[t]]), cache=cache)) for t in ids[890:]]
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, atol=tol)


@pytest.mark.parametrize("name", ["gguf", "long"])
def test_a_verify_pass_equals_single_steps_bit_for_bit(quantized_models, name):
    """Greedy speculative decoding is exact only if the target's logits for a position do not depend on how
    many positions share the pass: 7 positions at once give the same bits as 7 single steps. The 7 cross a
    boundary of attention's chunks (128 positions): some rows of the pass have one chunk more than others."""
    model = edge.load(quantized_models[name])
    ids = [(i * 13 + 5) % 300 + 3 for i in range(131 if name == "gguf" else 643)]
    a, b = model.make_cache(), model.make_cache()
    for c in (a, b):
        model.module(mx.array(ids[:-7])[None], cache=c)
    together = np.array(model.module(mx.array(ids[-7:])[None], cache=a))[0]
    alone = np.stack([np.array(model.module(mx.array([[t]]), cache=b))[0, 0] for t in ids[-7:]])
    assert np.array_equal(together, alone)


def test_layers_on_two_streams_at_once_compute_the_same_bits(quantized_models):
    """Each layer runs as one job over the cores; a second CPU stream evaluating layers at the same time finds
    the cores taken and runs its layer alone on its own thread. Either way every position's logits are the
    bits of the same passes run one stream at a time."""
    import threading

    module = edge.load(quantized_models["long"]).module
    prompts = [[(i * 13 + 5) % 300 + 3 for i in range(150)], [(i * 7 + 2) % 300 + 3 for i in range(150)]]

    def passes(ids, stream):
        cache, out = module.make_cache(), []
        with mx.stream(stream):
            for start, end in [(0, 120), (120, 133), (133, 134), (134, 150)]:  # a prompt, verify passes, a step
                out.append(np.array(module(mx.array(ids[start:end])[None], cache=cache)))
        return np.concatenate(out, axis=1)

    def in_thread(i: int, got: list) -> None:
        got[i] = passes(prompts[i], mx.new_stream(mx.cpu))  # a stream belongs to the thread that makes it

    alone = [passes(ids, mx.default_stream(mx.cpu)) for ids in prompts]
    for _ in range(3):
        got: list = [None, None]
        threads = [threading.Thread(target=in_thread, args=(i, got)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(np.array_equal(g, a) for g, a in zip(got, alone, strict=True))


def test_fused_model_generates_exactly_with_drafts_and_chat(quantized_models):
    model = edge.load(quantized_models["gguf"])
    prompt = "the quick brown fox the quick brown fox the quick"
    plain = model.generate(prompt, max_tokens=24)
    assert model.generate(prompt, max_tokens=24, draft="lookup") == plain
    assert model.generate(prompt, max_tokens=24, draft="self:4") == plain
    chat = edge.Chat(model)
    list(chat.send("hello there", max_tokens=8))
    second = list(chat.send("and again", max_tokens=8))[-1]
    assert second.stats.reused_tokens > 0
    fresh = edge.Chat(edge.load(quantized_models["gguf"], compute="native"))
    list(fresh.send("hello there", max_tokens=8))
    assert list(fresh.send("and again", max_tokens=8))[-1].text == second.text


OTHER_TARGET_CHECK = r"""
import sys
import mlx.core as mx
import numpy as np
import edge
import edge.kernels.cpu as cpu
from edge.kernels.layout import pack
so, simd, folder = sys.argv[1:4]
cpu.build = lambda arch="native": so  # this process runs the extension built for the other target
ext = cpu.load_extension()
assert ext is not None and ext.simd() == simd, (cpu.status(), simd)
worst = 0.0
for bits in (4, 8):
    for gs in (32, 64, 128):
        for n, m in ((1, 1), (13, 3), (70, 6), (40, 9)):
            w = mx.random.normal((n, 256), key=mx.random.key(n + m + bits)) * 0.05
            wq, s, b = mx.quantize(w, group_size=gs, bits=bits)
            if (n + m) % 2:  # scales that are fp16 values: packed as fp16
                s, b = (v.astype(mx.float16).astype(mx.float32) for v in (s, b))
            x = mx.random.normal((m, 256), key=mx.random.key(gs))
            packed = pack(wq, s, b, bits, gs)
            assert packed[1].dtype == (mx.float16 if (n + m) % 2 else mx.float32)
            got = ext.packed_matmul(x, *packed, n, gs, bits)
            want = mx.quantized_matmul(x, wq, s, b, transpose=True, group_size=gs, bits=bits)
            worst = max(worst, (mx.abs(got - want).max() / mx.abs(want).max()).item())
            assert mx.array_equal(ext.packed_matmul(x[-1:], *packed, n, gs, bits)[0], got[-1]).item()
fast, ref = edge.load(folder), edge.load(folder, compute="native")  # fused layers on this build
assert type(fast.module).__name__.startswith("Fused")
ids = mx.array([[1, 5, 9, 200, 31, 7, 7, 64]])
a, b = np.array(fast.module(ids, cache=fast.make_cache())), np.array(ref.module(ids))
worst = max(worst, float(np.abs(a - b).max() / np.abs(b).max()))
print(worst)
"""


def _cpu_has(*flags: str) -> bool:
    from edge.kernels.cpu import _cpu_flags

    return all(f in _cpu_flags().split() for f in flags)


@pytest.mark.parametrize(
    ("arch", "simd"),
    [
        ("", "portable"),
        pytest.param(
            "haswell", "avx2", marks=pytest.mark.skipif(not _cpu_has("avx2", "fma"), reason="this CPU has no AVX2")
        ),
    ],
)
def test_builds_for_other_targets(build_cache, quantized_models, arch, simd):
    """The code paths this CPU does not take by default, built for their targets and run here: the portable
    loops (the baseline x86-64 compiler target; what a CPU without AVX2 runs) and AVX2 without AVX-512.
    Products against MLX's own, each row alone equal to the batch, and a fused model against mlx-lm's layers."""
    import os

    from edge.kernels.cpu import build

    so = build(arch)
    env = {**os.environ, "EDGE_BUILD": str(build_cache)}
    args = [sys.executable, "-c", OTHER_TARGET_CHECK, str(so), simd, str(quantized_models["gguf"])]
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) < 1e-3


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 targets: this is not an x86 machine")
@pytest.mark.parametrize(("arch", "simd"), [("icelake-server", "avx512-vnni"), ("skylake-avx512", "avx512")])
def test_avx512_paths_compile(build_cache, arch, simd):
    """The AVX-512 paths (with VNNI's vpdpwssd, and without it), which an AVX2 CPU cannot run: built for their
    targets, so a change that breaks them fails here, not on an AVX-512 machine, where a failed build falls
    back to MLX's ops (SmolLM2 at 4 bits: ~0.2 tok/s) with only a line in `edge info`. The binary holds the name its
    `simd_name` returns for that path, and no other path's."""
    from edge.kernels.cpu import build

    binary = build(arch).read_bytes()
    names = {b"avx512-vnni", b"avx512", b"avx2+vnni", b"avx2", b"portable"}
    assert {n for n in names if n + b"\0" in binary} == {simd.encode()}


def test_the_vocabulary_mass_matches_numpy_and_leaves_top_p_unchanged(monkeypatch):
    """`exp_mass` (top-p's full-vocabulary sum) against NumPy's fp64 sum of fp32 exps, at lengths around its
    blocks, with logits far below the top (clamped, not overflowing); top-p keeps the same ids either way."""
    import edge.kernels.cpu as cpu
    from edge.sampling import Filters, Sampling

    rng = np.random.default_rng(3)
    for n in (1, 7, 8, 511, 512, 513, 49152):
        a = (rng.standard_normal(n) * 6).astype(np.float32)
        a[: n // 3] -= 200.0  # exp underflows for these
        top = a.max()
        want = np.exp(a - top).sum(dtype=np.float64)
        assert load_extension().exp_mass(a, float(top)) == pytest.approx(want, rel=1e-6)
    rows = (rng.standard_normal((200, 4096)) * rng.uniform(1, 8, (200, 1))).astype(np.float32)
    settings = Sampling(temperature=0.7, top_p=0.9, min_p=0.02)
    kernel_sum = Filters(settings)
    fast = [kernel_sum.candidates(r) for r in rows]
    assert kernel_sum.scratch.exp_mass is not None
    monkeypatch.setattr(cpu, "_module", None)  # NumPy's sum (a sampler looks the kernel up when it starts)
    numpy_sum = Filters(settings)
    slow = [numpy_sum.candidates(r) for r in rows]
    assert numpy_sum.scratch.exp_mass is None
    for f, s in zip(fast, slow, strict=True):
        assert np.array_equal(f.ids, s.ids)
        np.testing.assert_allclose(f.probs, s.probs, rtol=1e-12)


def test_a_failed_build_falls_back_to_mlx_ops(monkeypatch):
    import edge.kernels.cpu as cpu

    def no_compiler(arch="native"):
        raise RuntimeError("building edge's kernels failed: no C++ compiler")

    monkeypatch.setattr(cpu, "build", no_compiler)
    monkeypatch.setattr(cpu, "_status", None)
    monkeypatch.setattr(cpu, "_module", None)
    assert cpu.load_extension() is None
    assert "MLX's own ops (building edge's kernels failed" in str(cpu.status())
