"""`edge.load` and `Model`: weights (an mlx-lm module), tokenizer and config of one loaded model.

What edge adds to `mlx_lm.load`: files checked first (a broken shard is named before MLX sees it), a
memory plan that refuses what will not fit, the CPU compute policy (fp32 through OpenBLAS when it fits),
the weights moved to 2 MB pages on Linux (`hugepages`), and typed streaming with stop strings, cancellation
and stats.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from . import blas
from .architecture import model_classes, parameter_count, skeleton
from .checkpoint import SafetensorsFile, read_config, weight_files
from .errors import EdgeError, ModelFormatError, OutOfMemoryError
from .events import Done, Event
from .generate import stream_events
from .hugepages import use_huge_pages_later
from .kernels import fuse, load_extension, use_kernels
from .kernels import status as kernels_status
from .memory import MemoryPlan, make_plan, wired_limit
from .sampling import Sampling
from .tokenizer import Message, Tokenizer, as_messages

Prompt = str | list[int] | list[Message]


def kernels_cover(config: dict) -> bool:
    """A 4/8-bit affine model whose products edge's CPU kernels can run (and the kernels built here)."""
    from .kernels.quantized import BITS, GROUP_SIZES

    q = config.get("quantization") or {}
    if q.get("bits") not in BITS or q.get("group_size") not in GROUP_SIZES or q.get("mode", "affine") != "affine":
        return False
    return load_extension() is not None


def on_cpu() -> bool:
    return mx.default_device() == mx.cpu or not mx.metal.is_available()


def model_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelFormatError(f"{folder} does not exist.")
    if folder.is_file():
        raise ModelFormatError(
            f"{folder} is a file; edge loads converted model folders. Run: edge convert {folder} -o MODEL_FOLDER"
        )
    return folder


def plan(model_or_path: Model | str | Path, context: int | None = None, compute: str = "auto") -> MemoryPlan:
    """Memory plan of a model folder (from config and file sizes, no weights read) or of a loaded Model.

    Args:
        model_or_path: a loaded `Model` or an MLX / Hugging Face model folder.
        context: tokens of KV cache to plan for (default: the model's context length).
        compute: 'auto' (on a CPU: edge's kernels for 4/8-bit models, else fp32 when it fits), 'kernels',
            'float32' or 'native'.
    """
    if isinstance(model_or_path, Model):
        if context is None or context == model_or_path.plan.context:
            return model_or_path.plan
        model_or_path, compute = model_or_path.path, model_or_path.plan.compute
    folder = model_folder(model_or_path)
    config = read_config(folder)
    if compute == "auto" and on_cpu() and kernels_cover(config):
        compute = "kernels"  # quantized weights stay quantized: measured 2.4x faster than fp32 through OpenBLAS
    files = weight_files(folder)
    params = parameter_count(skeleton(config, folder / "config.json"))
    stored = sum(f.stat().st_size for f in files)
    return make_plan(str(folder), config, params, stored, context=context, on_cpu=on_cpu(), compute=compute)


@dataclass
class Model:
    """A loaded model. Build it with `edge.load`."""

    module: object
    """The mlx-lm `nn.Module`."""
    tokenizer: Tokenizer
    config: dict
    path: Path
    plan: MemoryPlan
    kernel_layers: int = 0
    """Quantized layers whose products run on edge's CPU kernels."""
    _drafters: dict = field(default_factory=dict, repr=False, compare=False)
    """Drafters built for `draft=` specs, by spec: a draft model is loaded and a self-draft quantized once, and
    each keeps what its last request measured of it."""
    _paging: threading.Thread | None = field(default=None, repr=False, compare=False)
    """Moving the weights to 2 MB pages (`hugepages`), in the background after loading; benchmarks wait for it."""

    @property
    def context_length(self) -> int:
        return self.plan.context

    def make_cache(self) -> list:
        from mlx_lm.models.cache import make_prompt_cache

        return make_prompt_cache(self.module)

    def encode(self, prompt: Prompt, *, chat: bool | None = None, system: str | None = None) -> list[int]:
        """Token ids of a prompt: a string (raw, or through the chat template with chat=True), ids, or messages."""
        if isinstance(prompt, list) and (not prompt or isinstance(prompt[0], int)):
            return list(prompt)
        if isinstance(prompt, list) or chat or (chat is None and system is not None):
            return self.tokenizer.render(as_messages(prompt, system))
        return self.tokenizer.encode(prompt)

    def stream(
        self,
        prompt: Prompt,
        sampling: Sampling | None = None,
        *,
        chat: bool | None = None,
        system: str | None = None,
        cancel: threading.Event | None = None,
        draft=None,
        **settings,
    ) -> Iterator[Event]:
        """Stream `Token` events, then one `Done` (reason, full text, stats).

        Args:
            prompt: text (raw completion unless chat=True), token ids, or chat messages.
            sampling: a `Sampling`; keyword settings (max_tokens=, temperature=, stop=, ...) override it.
            chat: apply the chat template to a text prompt.
            system: a system prompt (implies chat for a text prompt).
            cancel: set this event from another thread to stop at the next token.
            draft: speculative decoding: "lookup", "auto", "self[:bits]", a draft model folder or Model
                (the output is the same as without it: identical when greedy, same distribution when sampling).
        """
        sampling = (sampling or Sampling()).with_(**settings)
        ids = self.encode(prompt, chat=chat, system=system)
        if not ids:
            raise EdgeError("the prompt is empty.")
        if len(ids) >= self.context_length:
            raise EdgeError(
                f"the prompt has {len(ids)} tokens but the context holds {self.context_length}; shorten it or load with a larger context."
            )
        with wired_limit(self.plan):
            yield from stream_events(
                self, ids, self.make_cache(), sampling, cancel=cancel, drafter=self._drafter_for(draft)
            )

    def _drafter_for(self, draft):
        """The drafter for a `draft=` value (`stream`, `generate` and `Chat` all ask here): built once per spec
        string or folder and kept on the model (a draft model is loaded, a self-draft quantized, only the first
        time); drafters and models given as objects are used as they are."""
        from .speculative import make_drafter

        if not isinstance(draft, (str, Path)):
            return make_drafter(draft, self)
        key = str(draft)
        if key not in self._drafters:
            self._drafters[key] = make_drafter(draft, self)
        return self._drafters[key]

    def generate(self, prompt: Prompt, sampling: Sampling | None = None, **kwargs) -> str:
        """The whole reply as one string (see `stream` for the arguments)."""
        for event in self.stream(prompt, sampling, **kwargs):
            if isinstance(event, Done):
                return event.text
        raise AssertionError("stream ended without Done")

    def describe(self) -> dict:
        q = self.config.get("quantization") or {}
        return {
            "path": str(self.path),
            "model_type": self.config.get("model_type"),
            "parameters": self.plan.parameters,
            "quantization": {k: q[k] for k in ("bits", "group_size") if k in q} or None,
            "compute": self.plan.compute,
            "device": str(mx.default_device()),
            "blas": str(blas.status()),
            "kernels": f"{self.kernel_layers} layers on {kernels_status()}" if self.kernel_layers else "none",
            "context": self.context_length,
        }


def is_package(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return p.suffix == ".mlpackage" or (p / "Manifest.json").is_file()


def load(path: str | Path, *, context: int | None = None, compute: str = "auto", engine: str = "coreml") -> Model:
    """Load a converted model: an MLX folder, or a Core ML package (.mlpackage).

    Args:
        path: a folder made by `edge convert` or `mlx_lm.convert`, or a package made by `edge convert --to coreml`.
        context: the most tokens one conversation may hold (default: the model's own limit).
        compute: MLX folders: 'auto' (on a CPU: edge's quantized kernels for 4/8-bit models, else fp32 when it
            fits, else as stored), 'kernels', 'float32' or 'native' (MLX's own ops on the weights as stored).
        engine: Core ML packages: 'coreml' (Core ML itself, macOS 15+) or 'reference' (edge's NumPy
            evaluation of the package's program: any OS, slow; for checking).

    Returns:
        A `Model`. Raises `ModelFormatError` naming the bad file, `OutOfMemoryError` when it will not fit.
    """
    from mlx_lm.utils import dequantize_model, load_model

    if is_package(path):
        from .coreml.backend import load_package

        return load_package(path, context=context, engine=engine)
    folder = model_folder(path)
    config = read_config(folder)
    model_classes(config, folder / "config.json")
    for f in weight_files(folder):
        SafetensorsFile(f)  # header and size checks name a truncated shard
    memory = plan(folder, context=context, compute=compute)
    if not memory.fits:
        raise OutOfMemoryError(f"{folder}: {memory.advice()}")
    try:
        module, config = load_model(folder, lazy=True, strict=True)
    except ValueError as e:
        raise ModelFormatError(
            f"{folder}: the weights do not match config.json ({str(e)[:300]}). Convert the model again."
        ) from None
    switched = 0
    if on_cpu():
        blas.verify()
        module.set_dtype(mx.float32)  # scales, biases and float weights: MLX's CPU kernels are far slower in fp16
        if memory.compute == "kernels":
            switched = use_kernels(module)
            fuse(module, memory.context)  # whole layers as one kernel each, where the architecture allows
        if memory.compute == "float32":
            dequantize_model(module)
    mx.eval(module.parameters())
    paging = use_huge_pages_later([a for _, a in tree_flatten(module.parameters())]) if on_cpu() else None
    tokenizer = Tokenizer.load(folder, eos_token_ids=config.get("eos_token_id"))
    return Model(module, tokenizer, config, folder, memory, switched, _paging=paging)
