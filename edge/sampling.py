"""`Sampling` settings -> a sampler callable and logits processors (mlx-lm's filters, wrapped thinly).

edge adds one settings object that the CLI, `Chat` and the app share, validation with clear errors, and
seeding. Samplers take raw logits: temperature 0 is argmax straight away (no normalisation: MLX's CPU exp
is scalar, and a log-softmax over a 49k vocabulary costs ~0.8 ms a token there), otherwise log-probabilities
go through mlx-lm's sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import mlx.core as mx
import numpy as np

from .errors import EdgeError

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token, and when to stop.

    Args:
        temperature: 0 is greedy (argmax).
        top_p, top_k, min_p: nucleus, top-k and min-p filters (0 disables each).
        repetition_penalty: multiplicative penalty on recent tokens (1 or None disables).
        presence_penalty, frequency_penalty: additive penalties on recent tokens (0 disables).
        penalty_window: how many recent tokens the penalties look at.
        seed: seeds MLX's random generator at the start of the generation, for repeatable samples.
        max_tokens: the most tokens to generate.
        stop: strings that end the generation; they are never part of the streamed text.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_window: int = 64
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.max_tokens >= 1, "max_tokens must be >= 1"),
            (self.repetition_penalty is None or self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.penalty_window >= 1, "penalty_window must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise EdgeError(f"Sampling: {message}.")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    def with_(self, **changes) -> Sampling:
        """A copy with some settings changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict:
        return asdict(self)


def greedy(logits: mx.array) -> mx.array:
    """Temperature 0: the argmax, the first of equal maxima (lazy, for a pipelined decode loop; evaluated on
    the spot, `next_token` takes NumPy's, the same id)."""
    return mx.argmax(logits, axis=-1)


def argmax_ids(logits: mx.array) -> np.ndarray:
    """The argmax over the last axis by NumPy, which vectorises it (MLX's CPU argmax is scalar: 57 us over a
    49k vocabulary, against 3 us); the first of equal maxima, as MLX's. bf16, which NumPy lacks, is widened
    first (exactly)."""
    if logits.dtype == mx.bfloat16:
        logits = logits.astype(mx.float32)
    return np.asarray(logits).argmax(axis=-1)


def next_token(sampler: Sampler, logits: mx.array) -> int:
    """The id `sampler` picks from logits (1, vocab), evaluated now: greedy by NumPy (`argmax_ids`, 1.5% of
    a SmolLM2 token sooner than MLX's argmax)."""
    return int(argmax_ids(logits)[0]) if sampler is greedy else sampler(logits).item()


def make_sampler(s: Sampling) -> Sampler:
    """logits (..., vocab) -> sampled ids."""
    from mlx_lm.sample_utils import make_sampler as mlx_lm_sampler

    if s.temperature == 0:
        return greedy
    top_p = 0.0 if s.top_p >= 1.0 else s.top_p  # mlx-lm treats 0 as "off"
    sample = mlx_lm_sampler(temp=s.temperature, top_p=top_p, min_p=s.min_p, top_k=s.top_k)
    return lambda logits: sample(logits - mx.logsumexp(logits, axis=-1, keepdims=True))


def make_processors(s: Sampling) -> list[LogitsProcessor]:
    from mlx_lm.sample_utils import make_logits_processors

    rep = s.repetition_penalty if s.repetition_penalty not in (None, 1.0) else None
    return make_logits_processors(
        repetition_penalty=rep,
        repetition_context_size=s.penalty_window,
        presence_penalty=s.presence_penalty or None,
        presence_context_size=s.penalty_window,
        frequency_penalty=s.frequency_penalty or None,
        frequency_context_size=s.penalty_window,
    )


def make_distribution(s: Sampling) -> Callable[[mx.array], mx.array] | None:
    """logprobs (..., vocab) -> the probabilities the sampler draws from, or None for greedy.

    The same filters, in the same order, as mlx-lm's `make_sampler` (top-p, min-p, top-k, then
    temperature), so speculative verification accepts against exactly the distribution plain sampling uses.
    """
    if s.temperature == 0:
        return None
    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

    def distribution(logprobs: mx.array) -> mx.array:
        if 0 < s.top_p < 1.0:
            logprobs = apply_top_p(logprobs, s.top_p)
        if s.min_p != 0.0:
            logprobs = apply_min_p(logprobs, s.min_p)
        if s.top_k > 0:
            logprobs = apply_top_k(logprobs, s.top_k)
        return mx.softmax(logprobs.astype(mx.float32) * (1.0 / s.temperature), axis=-1)

    return distribution
