"""Hugging Face -> MLX conversion: exact in fp32, mlx-lm compatible, quantized as mx.quantize does, atomic."""

from __future__ import annotations

import json

import builders
import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import edge
from edge.converters import convert

TOKENS = [5, 17, 42, 99, 3, 250, 7, 8, 120, 64]


def source_logits(folder) -> np.ndarray:
    """Reference: mlx-lm's architecture fed the source weights straight from mx.load (not edge's reader)."""
    from mlx_lm.utils import _get_classes

    config = json.loads((folder / "config.json").read_text())
    model_cls, args_cls = _get_classes(config)
    model = model_cls(args_cls.from_dict(config))
    weights = {}
    for f in folder.glob("*.safetensors"):
        weights.update({k: v.astype(mx.float32) for k, v in mx.load(str(f)).items()})
    model.load_weights(list(model.sanitize(weights).items()))
    return np.array(model(mx.array([TOKENS])))


def edge_logits(folder, **load_args) -> np.ndarray:
    model = edge.load(folder, **load_args)
    return np.array(model.module(mx.array([TOKENS])).astype(mx.float32))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_fp32_conversion_reproduces_source_logits(arch, hf_models, mlx_models):
    np.testing.assert_allclose(edge_logits(mlx_models[arch]), source_logits(hf_models[arch]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_4bit_conversion_matches_mx_quantize_and_loads_in_mlx_lm(arch, hf_models, tmp_path):
    from mlx_lm import load as mlx_lm_load

    out = tmp_path / "q4"
    report = convert(hf_models[arch], out, bits=4, group_size=32, dtype="float16", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert report.modes["quantize"] > 0 and 0 < report.quantized_relative_rms_error < 0.2

    saved = {}
    for f in out.glob("*.safetensors"):
        saved.update(mx.load(str(f)))
    source = builders.load_hf_weights(hf_models[arch])
    name = "model.layers.0.mlp.up_proj"
    q, s, b = mx.quantize(mx.array(source[f"{name}.weight"]), group_size=32, bits=4)
    assert np.array_equal(np.array(saved[f"{name}.weight"]), np.array(q))
    assert saved[f"{name}.scales"].dtype == mx.float16
    np.testing.assert_array_equal(np.array(saved[f"{name}.scales"]), np.array(s.astype(mx.float16)))

    model, _ = mlx_lm_load(str(out))  # the folder is mlx-lm compatible
    got = np.array(model(mx.array([TOKENS])).astype(mx.float32))
    ref = source_logits(hf_models[arch])
    corr = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
    assert corr > 0.9  # 4-bit: close to the source, not exact


def test_sharded_output_has_index_and_same_logits(hf_models, mlx_models, tmp_path):
    out = tmp_path / "sharded"
    convert(hf_models["qwen2"], out, dtype="float32", max_shard_bytes=200_000, progress=False)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    np.testing.assert_array_equal(edge_logits(out), edge_logits(mlx_models["qwen2"]))


def test_mlx_folder_reconverts_to_fewer_bits(mlx_models, tmp_path):
    q8 = convert(mlx_models["llama"], tmp_path / "q8", bits=8, progress=False)
    q4 = convert(tmp_path / "q8", tmp_path / "q4", bits=4, progress=False)
    assert q8.modes.get("quantize") and q4.modes.get("quantize")
    edge.load(tmp_path / "q4").generate("Once", max_tokens=3)


def test_edge_json_records_source_and_hashes(hf_models, mlx_models):
    import hashlib

    meta = json.loads((mlx_models["llama"] / "edge.json").read_text())
    digest = hashlib.sha256((hf_models["llama"] / "model.safetensors").read_bytes()).hexdigest()
    assert meta["inputs"] == {"model.safetensors": digest}
    assert meta["recipe"]["dtype"] == "float32" and meta["source_kind"] == "hf"
    assert meta["parameters"] == sum(
        v.size for _, v in tree_flatten(edge.load(mlx_models["llama"]).module.parameters())
    )


def test_existing_output_is_refused_then_replaced_with_force(hf_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(edge.OutputExistsError, match="--force"):
        convert(hf_models["llama"], out, progress=False)
    assert (out / "keep.txt").exists()
    convert(hf_models["llama"], out, force=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old folders left


def test_failure_mid_write_leaves_nothing(hf_models, tmp_path, monkeypatch):
    from edge.converters import recipe

    calls = {"n": 0}
    real = recipe.apply

    def failing(plan, value):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return real(plan, value)

    monkeypatch.setattr(recipe, "apply", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        convert(hf_models["llama"], tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_stories260k_skips_down_proj_that_group_size_does_not_divide(stories260k, tmp_path):
    out = tmp_path / "stories"
    report = convert(stories260k, out, bits=4, group_size=32, progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["model.layers.0.mlp.down_proj"] is False  # 172 inputs: not quantized
    assert report.modes["float"] >= 5
    text = edge.load(out).generate("Once upon a time", max_tokens=24)
    assert "little girl named Lily" in text


def test_stories260k_float_reproduces_reference_story(stories260k, tmp_path):
    convert(stories260k, tmp_path / "f32", dtype="float32", progress=False)
    text = edge.load(tmp_path / "f32").generate("Once upon a time", max_tokens=30)
    assert text.startswith(", there was a little girl named Lily. She loved to play outside in the park.")


def test_progress_callback_reports_bytes_to_the_total(hf_models, tmp_path):
    seen = []
    convert(hf_models["llama"], tmp_path / "m", progress=lambda what, done, total: seen.append((what, done, total)))
    converting = [(d, t) for w, d, t in seen if w.startswith("converting")]
    assert converting[0][0] == 0 and converting[-1][0] == converting[-1][1] > 0
    assert all(a[0] <= b[0] for a, b in zip(converting, converting[1:], strict=False))
