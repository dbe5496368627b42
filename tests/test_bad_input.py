"""Bad input: each case raises an edge error naming the file or field, the CLI exits 1 with one line, and no
output folder is left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import builders
import pytest

import edge
from edge.converters import convert


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, env=env, timeout=300)


def assert_cli_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edge: error: "), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def copy_model(hf_models, tmp_path):
    def make(arch="llama"):
        dst = tmp_path / f"src-{arch}"
        shutil.copytree(hf_models[arch], dst)
        return dst

    return make


def test_truncated_safetensors(copy_model, tmp_path):
    src = copy_model()
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(edge.ModelFormatError, match="model.safetensors is truncated"):
        convert(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert_cli_error(run_cli("convert", str(src), "-o", str(tmp_path / "out")), "truncated", "model.safetensors")
    assert not (tmp_path / "out").exists()


def test_truncated_shard_of_a_converted_model_is_named_on_load(mlx_models, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(mlx_models["llama"], dst)
    shard = next(dst.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(edge.ModelFormatError, match=shard.name):
        edge.load(dst)
    assert_cli_error(run_cli("generate", str(dst), "-p", "hi"), shard.name)


def test_config_missing_field(copy_model, tmp_path):
    src = copy_model()
    config = json.loads((src / "config.json").read_text())
    del config["hidden_size"]
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(edge.ModelFormatError, match="hidden_size"):
        convert(src, tmp_path / "out", progress=False)
    assert_cli_error(run_cli("convert", str(src), "-o", str(tmp_path / "out")), "config.json", "hidden_size")
    assert not (tmp_path / "out").exists()


def test_unsupported_model_type_is_reported_before_reading_weights(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "quantum_llm", "hidden_size": 8}))
    (src / "model.safetensors").write_bytes(b"not even safetensors")  # never read
    with pytest.raises(edge.UnsupportedModelError, match="quantum_llm"):
        convert(src, tmp_path / "out", progress=False)
    assert_cli_error(run_cli("convert", str(src), "-o", str(tmp_path / "out")), "quantum_llm", "not supported")
    proc = run_cli("info", str(src))
    assert proc.returncode == 0 and "not supported" in proc.stdout


def test_gguf_with_unknown_tensor_type(hf_models, tmp_path):
    path = builders.write_gguf(
        tmp_path / "bad.gguf", hf_models["llama"], tensor_type_override={"model.layers.0.mlp.up_proj.weight": "Q5_0"}
    )
    with pytest.raises(edge.UnsupportedModelError, match="Q5_0"):
        convert(path, tmp_path / "out", progress=False)
    assert_cli_error(run_cli("convert", str(path), "-o", str(tmp_path / "out")), "blk.0.ffn_up.weight", "Q5_0")
    assert not (tmp_path / "out").exists()


def test_damaged_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    assert_cli_error(run_cli("convert", str(path), "-o", str(tmp_path / "out")), "broken.gguf")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(edge.ModelFormatError, match="no config.json"):
        convert(tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(edge.ModelFormatError, match="no config.json"):
        edge.load(tmp_path / "empty")
    assert_cli_error(run_cli("convert", str(tmp_path / "empty"), "-o", str(tmp_path / "out")), "config.json")


def test_pickled_weights_are_never_unpickled(copy_model, tmp_path):
    src = copy_model()
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04 would run code if unpickled")
    with pytest.raises(edge.ModelFormatError, match="never unpickles"):
        convert(src, tmp_path / "out", progress=False)


def test_missing_shard_named_in_index(copy_model, tmp_path):
    src = copy_model("qwen2")
    (src / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(edge.ModelFormatError, match="model-00002-of-00002.safetensors"):
        convert(src, tmp_path / "out", progress=False)


def test_weights_that_do_not_match_config(copy_model, tmp_path):
    src = copy_model()
    config = json.loads((src / "config.json").read_text())
    config["intermediate_size"] = 96
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(edge.ModelFormatError, match="config.json implies"):
        convert(src, tmp_path / "out", progress=False)


def test_model_too_large_for_memory_plan(mlx_models, monkeypatch):
    monkeypatch.setenv("EDGE_MEMORY_LIMIT", "64MB")
    with pytest.raises(edge.OutOfMemoryError, match="fewer bits"):
        edge.load(mlx_models["llama"])
    assert_cli_error(
        run_cli("generate", str(mlx_models["llama"]), "-p", "hi", env_extra={"EDGE_MEMORY_LIMIT": "64MB"}), "needs"
    )


def test_loading_a_source_file_points_at_convert(gguf_model):
    with pytest.raises(edge.ModelFormatError, match="edge convert"):
        edge.load(gguf_model)


def test_bad_sampling_settings_are_refused():
    with pytest.raises(edge.EdgeError, match="top_p"):
        edge.Sampling(top_p=0)
    with pytest.raises(edge.EdgeError, match="temperature"):
        edge.Sampling(temperature=-1)
