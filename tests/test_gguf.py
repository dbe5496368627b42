"""GGUF -> MLX: tensors equal a NumPy dequantization of the GGUF blocks, logits equal a NumPy llama forward
pass over the GGUF layout (interleaved RoPE on llama.cpp-permuted Q/K), tokenizer rebuilt exactly."""

from __future__ import annotations

import json

import builders
import mlx.core as mx
import numpy as np
import pytest

import edge
from edge.converters import convert

# ---- the test's own GGUF block decoder (ggml-quants.c layouts) ----


def np_dequant(raw: np.ndarray, type_name: str, shape: tuple[int, int]) -> np.ndarray:
    rows, cols = shape
    if type_name == "F32":
        return np.asarray(raw, dtype=np.float32).reshape(shape)
    if type_name == "F16":
        return np.asarray(raw).view(np.float16).astype(np.float32).reshape(shape)
    size = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[type_name]
    blocks = np.asarray(raw, dtype=np.uint8).reshape(rows, cols // 32, size)
    d = blocks[..., :2].copy().view(np.float16).astype(np.float32)  # (rows, nb, 1)
    if type_name == "Q8_0":
        q = blocks[..., 2:].view(np.int8).astype(np.float32)
        return (d * q).reshape(shape)
    qs = blocks[..., -16:]
    q = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.float32)  # y[j] = low nibble j, y[j+16] = high
    if type_name == "Q4_0":
        return (d * (q - 8)).reshape(shape)
    m = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
    return (d * q + m).reshape(shape)


def gguf_tensors(path) -> dict[str, tuple[str, np.ndarray]]:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    out = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))
        shape2 = shape if len(shape) == 2 else (1, shape[0])
        out[t.name] = (t.tensor_type.name, np_dequant(t.data, t.tensor_type.name, shape2).reshape(shape))
    return out


@pytest.fixture(scope="module", params=["Q4_0", "Q4_1", "Q8_0"])
def gguf_variant(request, hf_models, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    path = builders.write_gguf(root / "m.gguf", hf_models["llama"], qtype=request.param, embed_qtype="Q8_0")
    convert(path, root / "mlx", progress=False)
    return path, root / "mlx"


def mlx_weights_fp32(folder) -> dict[str, np.ndarray]:
    """Dequantize the converted folder in fp32 (scales cast up first, so no fp16 rounding is added)."""
    raw = {}
    for f in folder.glob("*.safetensors"):
        raw.update(mx.load(str(f)))
    q = json.loads((folder / "config.json").read_text()).get("quantization", {})
    out = {}
    for name, v in raw.items():
        if name.endswith((".scales", ".biases")):
            continue
        base = name.removesuffix(".weight")
        if f"{base}.scales" in raw:
            bits = (q.get(base) or q)["bits"]
            s, b = raw[f"{base}.scales"].astype(mx.float32), raw[f"{base}.biases"].astype(mx.float32)
            v = mx.dequantize(v, s, b, group_size=32, bits=bits)
        out[name] = np.array(v.astype(mx.float32))
    return out


def test_tensors_equal_numpy_dequantization_of_blocks(gguf_variant):
    path, folder = gguf_variant
    ref = gguf_tensors(path)
    got = mlx_weights_fp32(folder)
    config = json.loads((folder / "config.json").read_text())
    assert len(got) == len(ref)
    for hf_name, arr in got.items():
        type_name, expected = ref[builders.gguf_name(hf_name)]
        if hf_name.endswith("q_proj.weight"):
            arr = builders.llama_cpp_permute(arr, config["num_attention_heads"])
        elif hf_name.endswith("k_proj.weight"):
            arr = builders.llama_cpp_permute(arr, config["num_key_value_heads"])
        if type_name == "F32":  # norms are stored in float16 by default
            np.testing.assert_allclose(arr, expected, rtol=1e-3, err_msg=hf_name)
        else:
            np.testing.assert_array_equal(arr, expected, err_msg=hf_name)


def test_quantized_weights_are_bit_identical_to_mlx_gguf_loader(gguf_variant):
    """MLX's own GGUF reader (mx.load) maps the same block formats; packed bits and scales must agree."""
    path, folder = gguf_variant
    theirs = mx.load(str(path))
    ours = {}
    for f in folder.glob("*.safetensors"):
        ours.update(mx.load(str(f)))
    name, gname = "model.layers.1.mlp.up_proj", "blk.1.ffn_up"  # not permuted
    assert f"{gname}.scales" in theirs  # MLX (pinned below 0.33) keeps these GGUF blocks packed
    assert np.array_equal(np.array(ours[f"{name}.weight"]), np.array(theirs[f"{gname}.weight"]))
    np.testing.assert_array_equal(np.array(ours[f"{name}.scales"]), np.array(theirs[f"{gname}.scales"]))
    np.testing.assert_array_equal(np.array(ours[f"{name}.biases"]), np.array(theirs[f"{gname}.biases"]))


# ---- the test's own llama forward pass, over GGUF tensors as llama.cpp uses them ----


def np_llama_logits(path, tokens: list[int]) -> np.ndarray:
    from gguf import GGUFReader

    meta = {k: f.contents() for k, f in GGUFReader(str(path)).fields.items() if k.startswith("llama.")}
    w = {k: v for k, (_, v) in gguf_tensors(path).items()}
    n_layers, n_head, n_kv = (
        meta["llama.block_count"],
        meta["llama.attention.head_count"],
        meta["llama.attention.head_count_kv"],
    )
    eps, theta, hd = (
        meta["llama.attention.layer_norm_rms_epsilon"],
        meta["llama.rope.freq_base"],
        meta["llama.rope.dimension_count"],
    )
    T = len(tokens)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope_interleaved(x):  # ggml "normal" rope: rotate adjacent pairs (x0, x1), (x2, x3), ...
        pos = np.arange(T)[:, None]
        freqs = theta ** (-np.arange(0, hd, 2) / hd)
        ang = pos * freqs  # (T, hd/2)
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = x0 * c - x1 * s, x0 * s + x1 * c
        return out

    x = w["token_embd.weight"][tokens].astype(np.float64)
    for i in range(n_layers):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rope_interleaved((h @ w[p + "attn_q.weight"].T).reshape(T, n_head, hd))
        k = rope_interleaved((h @ w[p + "attn_k.weight"].T).reshape(T, n_kv, hd))
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, n_kv, hd)
        k, v = np.repeat(k, n_head // n_kv, axis=1), np.repeat(v, n_head // n_kv, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + np.triu(np.full((T, T), -np.inf), 1)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", probs, v).reshape(T, -1) @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        gate, up = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
    head = w.get("output.weight", w["token_embd.weight"])
    return rms(x, w["output_norm.weight"]) @ head.T


def test_logits_equal_numpy_llama_forward(gguf_variant):
    path, folder = gguf_variant
    tokens = [1, 50, 200, 7, 310, 12, 99]
    ref = np_llama_logits(path, tokens)
    model = edge.load(folder)  # fp32 compute on a CPU: weights dequantized exactly
    got = np.array(model.module(mx.array([tokens]))[0])
    np.testing.assert_allclose(got, ref, atol=2e-2, rtol=1e-2)  # norms are stored in fp16
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_rebuilt_tokenizer_matches_source(gguf_variant, hf_models):
    from tokenizers import Tokenizer

    _, folder = gguf_variant
    source = Tokenizer.from_file(str(hf_models["llama"] / "tokenizer.json"))
    rebuilt = edge.load(folder).tokenizer
    for text in [*builders.CORPUS, "  spaces  and\ttabs\n\nnew lines 12345", "<|im_start|>user\nhi<|im_end|>"]:
        assert rebuilt.encode(text, add_special_tokens=False) == source.encode(text).ids, text
    ids = rebuilt.render([{"role": "user", "content": "Hello"}])
    assert rebuilt.decode(ids) == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert rebuilt.eos_token_ids == {2}


def test_keeps_q4_blocks_bit_for_bit_by_default(gguf_model, tmp_path):
    report = convert(gguf_model, tmp_path / "m", progress=False)
    assert report.quantized_relative_rms_error is None and report.modes["keep"] == 15
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8, "mode": "affine"}


def test_other_bits_requantize_from_dequantized_blocks(gguf_model, tmp_path):
    report = convert(gguf_model, tmp_path / "m8", bits=8, group_size=64, progress=False)
    assert report.modes.get("quantize") == 15 and report.quantized_relative_rms_error < 0.01
    edge.load(tmp_path / "m8").generate("Hello", max_tokens=3)


def test_dequantize_writes_float_weights_equal_to_blocks(gguf_model, tmp_path):
    report = convert(gguf_model, tmp_path / "f32", dequantize=True, dtype="float32", progress=False)
    assert set(report.modes) == {"float"}
    config = json.loads((tmp_path / "f32" / "config.json").read_text())
    assert "quantization" not in config
    got = mlx_weights_fp32(tmp_path / "f32")
    _, ref = gguf_tensors(gguf_model)["blk.0.ffn_down.weight"]
    np.testing.assert_array_equal(got["model.layers.0.mlp.down_proj.weight"], ref)
