"""The Core ML backend: a stateful package behind the same `Model` (generate, stream, Chat) as MLX folders.

`PackageModule` looks like an mlx-lm model to edge's decode loop (call it with token ids and a cache, get
logits), so sampling, stop strings, speculative lookup and Chat's prefix reuse all work unchanged. Its cache
is the package's state plus the number of positions it holds: rolling back is moving that number, since the
causal mask hides later positions and the next call overwrites them.

Two engines speak Core ML's stateful interface (`make_state()`, `predict(inputs, state)`): Core ML itself
(macOS 15+) and edge's NumPy evaluator of the saved program (anywhere; slow, for checking).
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..cache import OffsetCache
from ..errors import EdgeError, UnsupportedModelError
from .contract import CAUSAL_MASK, INPUT_IDS, LOGITS, causal_mask, import_coremltools
from .package import Package

ENGINES = ("coreml", "reference")


class StateCache(OffsetCache):
    """A package's state and how many positions of it are in use."""

    def __init__(self, state, context: int):
        self.engine_state = state
        self.offset = 0
        self.context = context

    @property
    def state(self) -> list:
        return []  # nothing for mx.eval to do: the engine ran eagerly


class PackageModule:
    """Calls a Core ML engine the way edge calls an mlx-lm model."""

    is_coreml = True

    def __init__(self, engine, context: int):
        self.engine, self.context = engine, context

    def make_cache(self) -> list[StateCache]:
        return [StateCache(self.engine.make_state(), self.context)]

    def __call__(self, inputs: mx.array, cache: list | None = None) -> mx.array:
        ids = np.array(inputs, dtype=np.int32).reshape(1, -1)
        c = (cache or self.make_cache())[0]
        n = ids.shape[1]
        if c.offset + n > self.context:
            raise EdgeError(
                f"{c.offset + n} positions exceed the package's context of {self.context} (its state size)."
            )
        out = self.engine.predict({INPUT_IDS: ids, CAUSAL_MASK: causal_mask(c.offset, n)}, c.engine_state)
        c.offset += n
        return mx.array(np.asarray(out[LOGITS], dtype=np.float32))


class CoreMLEngine:
    """Core ML's own stateful prediction (coremltools `MLModel.make_state` / `predict(..., state=)`)."""

    def __init__(self, path: Path):
        ct = import_coremltools()
        self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.ALL)

    def make_state(self):
        return self.model.make_state()

    def predict(self, inputs: dict, state) -> dict:
        return self.model.predict(inputs, state=state)


def coreml_available() -> str | None:
    """None when Core ML prediction can run here, else why not."""
    if sys.platform != "darwin":
        return f"Core ML prediction needs macOS 15 or newer; this is {platform.system()}"
    major = int((platform.mac_ver()[0] or "0").split(".")[0])
    if major < 15:
        return f"Core ML stateful prediction needs macOS 15 or newer; this is macOS {platform.mac_ver()[0]}"
    return None


def make_engine(package: Package, engine: str):
    if engine not in ENGINES:
        raise EdgeError(f"engine '{engine}' is not one of {', '.join(ENGINES)}.")
    if engine == "reference":
        from .reference import MILReference

        return MILReference(package)
    why = coreml_available()
    if why:
        raise UnsupportedModelError(
            f"{package.path}: {why}. On this machine, check the package with "
            f"`edge verify {package.path} --against MLX_FOLDER` (NumPy evaluation of its program), "
            "or load it with engine='reference' (slow)."
        )
    return CoreMLEngine(package.path)


def load_package(path: str | Path, *, context: int | None = None, engine: str = "coreml"):
    """A `Model` over a Core ML package (see `edge.load`)."""
    from ..architecture import parameter_count, skeleton
    from ..memory import MemoryPlan, kv_bytes_per_token, machine_memory
    from ..model import Model
    from ..tokenizer import Tokenizer
    from .package import open_package

    package = open_package(path)
    if context is not None and context > package.context:
        raise EdgeError(
            f"{package.path} holds {package.context} positions (its state size); "
            f"convert it again with --context {context} to use more."
        )
    model_engine = make_engine(package, engine)
    stored = package.weights_dir.joinpath("weight.bin").stat().st_size
    params = parameter_count(skeleton(package.config, package.tokenizer_dir / "config.json"))
    available, total = machine_memory()
    ctx = context or package.context
    plan = MemoryPlan(
        str(package.path),
        params,
        stored,
        f"coreml ({engine})",
        stored if engine == "coreml" else params * 4,
        kv_bytes_per_token(package.config, 2),
        ctx,
        package.context,
        available,
        total,
    )
    tokenizer = Tokenizer.load(package.tokenizer_dir, eos_token_ids=package.config.get("eos_token_id"))
    return Model(PackageModule(model_engine, ctx), tokenizer, package.config, package.path, plan)
