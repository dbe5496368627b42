"""`Sampling` settings -> a sampler callable, logits processors and the distribution speculative decoding checks.

edge adds one settings object that the CLI, `Chat` and the app share, validation with clear errors, and
seeding. Samplers take raw logits: temperature 0 is argmax straight away. Otherwise, on a GPU,
log-probabilities go through mlx-lm's sampler (lazy, so decoding stays pipelined); on the CPU, NumPy draws
from `Candidates`: mlx-lm's filters (top-p, min-p, top-k) and temperature with the same meaning, computed
over the few ids they keep. MLX's CPU exp, sort and random numbers are scalar: mlx-lm's sampler cost 5.2 ms a
token over SmolLM2's 49k vocabulary with `edge chat`'s settings (1.4 ms at a bare temperature), more than the
model's own step; NumPy's takes ~0.1 ms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
        seed: seeds the sampler's random generator (NumPy's on the CPU, MLX's on a GPU) at the start of the
            generation, for repeatable samples.
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
    if sampler is greedy:
        return int(argmax_ids(logits)[0])
    if isinstance(sampler, CandidateSampler):
        return sampler.draw(logits)
    return sampler(logits).item()


def make_sampler(s: Sampling, rng: np.random.Generator | None = None) -> Sampler:
    """logits (..., vocab) -> sampled ids. On the CPU, NumPy's `CandidateSampler` (drawing with `rng`, else a
    generator seeded with `s.seed`)."""
    from mlx_lm.sample_utils import make_sampler as mlx_lm_sampler

    if s.temperature == 0:
        return greedy
    if mx.default_device() == mx.cpu:
        return CandidateSampler(Filters(s, rng))
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


@dataclass(frozen=True)
class Candidates:
    """One position's sampling distribution after the filters: the ids it can draw (`ids`) and their
    probabilities (`probs`, float64, summing to 1); every other id has probability 0. Sparse because top-p,
    min-p and top-k keep a few dozen of a 49k vocabulary; with no filter, every id."""

    ids: np.ndarray
    """In any order; when it holds every id, 0..vocab-1 in order."""
    probs: np.ndarray
    vocab: int

    def prob(self, token: int) -> float:
        if self.ids.size == self.vocab:  # every id, in order
            return float(self.probs[token])
        hit = np.flatnonzero(self.ids == token)
        return float(self.probs[hit[0]]) if hit.size else 0.0

    def dense(self) -> np.ndarray:
        out = np.zeros(self.vocab)
        out[self.ids] = self.probs
        return out

    def draw(self, rng: np.random.Generator) -> int:
        return draw(self.ids, self.probs, rng)


def draw(ids: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> int:
    """An id of `ids` with probability proportional to `weights` (one uniform number, inverse CDF)."""
    cdf = np.cumsum(weights)
    at = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return int(ids[min(at, len(ids) - 1)])


class Scratch:
    """Full-vocabulary buffers that a sampler reuses token after token. Right after a forward pass, a fresh 49k
    mask took ~0.2 ms on a 2-core AVX2 KVM host, ~0.12 ms of it in malloc (an empty array alone), against
    0.03 ms into a buffer the sampler owns."""

    def __init__(self, size: int):
        from .kernels.cpu import load_extension

        self.weights = np.empty(size, np.float32)
        self.mask = np.empty(size, np.bool_)
        self.exp_mass = getattr(load_extension(), "exp_mass", None)
        """edge's CPU kernel for `_total_mass`, where it is built (looked up once, not every token)."""

    def at_least(self, a: np.ndarray, floor) -> np.ndarray:
        """The mask a >= floor, in the reused buffer (valid until the next call)."""
        return np.greater_equal(a, floor, out=self.mask)


def keep_top_p(a: np.ndarray, ids: np.ndarray | None, top, top_p: float, scratch: Scratch) -> np.ndarray:
    """Of `ids` (None: all), those top-p keeps: ranked by probability, each whose mass above it is below top_p
    of the whole vocabulary's, and any tied with the last of them (mlx-lm's threshold). Only values are
    sorted, and only the nearest to the top that hold the nucleus (a few dozen of SmolLM2's 49k, typically).

    `ids` given is a prefix of the ranking (the few min-p kept), so the mass above each of them is among
    them. When the mass above the last is below top_p of theirs (a lower bound of the vocabulary's, with a
    margin for rounding), top-p keeps them all and the vocabulary's mass is never computed (an exp over
    SmolLM2's 49k logits: 0.07-0.11 ms on a 2-core AVX2 host)."""
    goal = None
    if ids is None:
        goal = top_p * _mass(a, top, scratch)
        values = a
        for width in (4.0, 8.0, 16.0):
            near = scratch.at_least(a, top - width)
            if float(scratch.weights[near].sum(dtype=np.float64)) >= goal:
                values = a[near]
                break
    else:
        values = a[ids]
    ranked = np.sort(values)[::-1]
    mass = np.exp(ranked - top).astype(np.float64)
    above = np.cumsum(mass) - mass
    if goal is None:
        if above[-1] < top_p * (above[-1] + mass[-1]) * (1 - 1e-6):
            return ids
        goal = top_p * _total_mass(a, top, scratch)
    threshold = ranked[max(int(np.searchsorted(above, goal, side="left")), 1) - 1]
    return np.flatnonzero(scratch.at_least(a, threshold)) if ids is None else ids[a[ids] >= threshold]


def _mass(a: np.ndarray, top, scratch: Scratch) -> float:
    """The vocabulary's probability mass, relative to the most probable id's; the weights stay in scratch."""
    return float(np.exp(np.subtract(a, top, out=scratch.weights), out=scratch.weights).sum(dtype=np.float64))


def _total_mass(a: np.ndarray, top, scratch: Scratch) -> float:
    """`_mass` without the weights: by edge's CPU kernel where it is built (vectorised: ~20 us over SmolLM2's
    49k logits against NumPy's ~150, which took ~250 in the decode loop, its caches cold after the forward
    pass; the sums agree to ~1e-7), else by NumPy."""
    if scratch.exp_mass is None or a.dtype != np.float32 or not a.flags.c_contiguous:
        return _mass(a, top, scratch)
    return scratch.exp_mass(a, float(top))


def keep_min_p(a: np.ndarray, ids: np.ndarray | None, top, min_p: float, scratch: Scratch) -> np.ndarray:
    """Of `ids` (None: all), those at least min_p times as probable as the most probable."""
    floor = top + np.float32(np.log(min_p))
    return np.flatnonzero(scratch.at_least(a, floor)) if ids is None else ids[a[ids] >= floor]


def keep_top_k(a: np.ndarray, ids: np.ndarray | None, top_k: int) -> np.ndarray | None:
    """Of `ids` (None: all), the top_k most probable."""
    pool = np.arange(a.size) if ids is None else ids
    return pool[np.argpartition(-a[pool], top_k - 1)[:top_k]] if top_k < pool.size else ids


@dataclass
class Filters:
    """Logits -> `Candidates`: mlx-lm's filters with their meaning (`make_sampler`: top-p, min-p, top-k), then
    temperature; and the random generator that draws from them. Each filter narrows the ids that can be
    drawn, as mlx-lm's mask log-probabilities, and each keeps a prefix of the ids ranked by probability, so
    only the few ids that could be kept are ever ranked. Min-p runs first, not after top-p as in mlx-lm:
    both keep a prefix of the same ranking, measured against the whole vocabulary (the most probable id
    survives top-p, so min-p's bar is the same either way), so the same ids are kept, in the same order (a
    seed draws the same tokens), and min-p's few ids usually spare top-p its full-vocabulary pass."""

    sampling: Sampling
    rng: np.random.Generator | None = None

    def __post_init__(self) -> None:
        if self.rng is None:
            self.rng = np.random.default_rng(self.sampling.seed)
        s = self.sampling
        # each filter: (logits, ids kept so far or None for all, the largest logit, buffers) -> the ids it keeps
        self.filters: list[Callable[[np.ndarray, np.ndarray | None, np.float32, Scratch], np.ndarray | None]] = []
        if s.min_p > 0:
            self.filters.append(lambda a, ids, top, scratch: keep_min_p(a, ids, top, s.min_p, scratch))
        if 0 < s.top_p < 1:
            self.filters.append(lambda a, ids, top, scratch: keep_top_p(a, ids, top, s.top_p, scratch))
        if s.top_k > 0:
            self.filters.append(lambda a, ids, top, scratch: keep_top_k(a, ids, s.top_k))
        self.scratch: Scratch | None = None

    def __call__(self, logits: mx.array) -> Sequence[Candidates]:
        """logits (positions, vocab) -> one `Candidates` per position, each computed when first read
        (verification stops reading at the first rejected draft)."""
        if logits.dtype != mx.float32:
            logits = logits.astype(mx.float32)
        return _Rows(np.asarray(logits).reshape(-1, logits.shape[-1]), self.candidates)

    def candidates(self, a: np.ndarray) -> Candidates:
        if self.scratch is None or self.scratch.mask.size != a.size:
            self.scratch = Scratch(a.size)
        top = a.max()  # once a row: every filter keeps the most probable id
        ids = None  # None: every id
        for keep in self.filters:
            ids = keep(a, ids, top, self.scratch)
        kept = a if ids is None else a[ids]
        weights = np.exp((kept - top) * np.float32(1.0 / self.sampling.temperature))
        return Candidates(np.arange(a.size) if ids is None else ids, weights / weights.sum(dtype=np.float64), a.size)


class _Rows(Sequence[Candidates]):
    """`Filters`' output: each row's `Candidates` computed when first read."""

    def __init__(self, rows: np.ndarray, make: Callable[[np.ndarray], Candidates]):
        self.rows, self.make, self.done = rows, make, [None] * len(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # a position: verification reads no slices
        if self.done[i] is None:
            self.done[i] = self.make(self.rows[i])
        return self.done[i]


class CandidateSampler:
    """The CPU sampler (`make_sampler`): draws by NumPy from `Filters`' candidates. `next_token` asks for
    ints (`draw`); called like mlx-lm's samplers it returns the id as an array."""

    def __init__(self, filters: Filters):
        self.filters = filters

    def draw(self, logits: mx.array) -> int:
        rows = self.filters(logits)  # the last row by NumPy: an MLX slice is an op to evaluate (~20 us)
        return rows[len(rows) - 1].draw(self.filters.rng)

    def __call__(self, logits: mx.array) -> mx.array:
        return mx.array([self.draw(logits)])


def make_distribution(s: Sampling, rng: np.random.Generator | None = None) -> Filters | None:
    """Logits (positions, vocab) -> each position's `Candidates`, or None for greedy: the distribution the
    sampler draws from (the same filters, in the same order, as mlx-lm's `make_sampler`), so speculative
    verification accepts against exactly what plain sampling uses. NumPy on every device: verification
    reads the probabilities on the host anyway."""
    return None if s.temperature == 0 else Filters(s, rng)
