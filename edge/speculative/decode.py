"""The speculative decode loop: the same contract as `generate.token_stream` (yield ids), several per step.

One step: (1) draft k tokens, (2) one target pass over [last token] + drafts, (3) accept or reject them
(verify.py), (4) emit the accepted drafts plus the correction or bonus token. The target cache is rolled
back by moving its offset over the rejected positions; a drafter with a cache re-syncs to the settled
history on its next proposal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Generator, Iterator

import mlx.core as mx
import numpy as np

from ..errors import EdgeError
from ..events import DraftStats
from ..generate import pipelines, prefill, token_stream
from ..sampling import LogitsProcessor, Sampling, make_distribution, make_sampler
from .adaptive import DraftLength, controller_for, remember
from .drafters import Drafter
from .verify import accept_greedy, accept_sampled


def _process(logits: mx.array, processors: list[LogitsProcessor], history: list[int], drafts: list[int]) -> mx.array:
    """Apply logits processors at each verified position with the history that position would have had."""
    if not processors:
        return logits
    rows = []
    for i in range(logits.shape[0]):
        row = logits[i : i + 1]
        seen = mx.array(history + drafts[:i])
        for p in processors:
            row = p(seen, row)
        rows.append(row)
    return mx.concatenate(rows, axis=0)


def _plain_burst(
    module, tokens, cache, sampler, processors, n, stop, controller, stats, clock
) -> Generator[int, None, int]:
    """Up to n plain tokens (`generate.token_stream`), appended to `tokens` as they come; returns how many. Their
    spacing is what plain decoding costs, what drafting must beat. Where `generate` pipelines, the last token
    comes soon after the one before it (~5 against ~50 ms a token on an fp32 SmolLM2 on the CPU), so that
    spacing is left out: with it, bursts of two tokens (ended by a new lookup match) measured plain decoding
    at 16 ms a token, and no draft ever looked worth verifying."""
    start = clock()
    times = []
    try:
        for token in token_stream(module, tokens[-1:], cache, sampler, processors, n, tokens, stop):
            times.append(clock())
            tokens.append(token)
            yield token
    finally:  # also when the reply ends inside the burst (an end-of-turn id, a stop string, a cancel)
        spaced = times[:-1] if pipelines(module) else times
        if len(spaced) > 1:
            controller.record_plain(len(spaced) - 1, spaced[-1] - spaced[0])
        for _ in times:
            stats.record(0, 0, 0.0, (times[-1] - start) / len(times))
    return len(times)


def speculative_token_stream(
    module,
    prompt: list[int],
    cache: list,
    sampling: Sampling,
    processors: list[LogitsProcessor],
    max_tokens: int,
    history: list[int],
    drafter: Drafter,
    stats: DraftStats,
    controller: DraftLength | None = None,
    eos: Collection[int] = (),
    clock: Callable[[], float] = time.perf_counter,
) -> Iterator[int]:
    """Yield up to `max_tokens` ids; `prompt` is the part of `history` not yet in `cache`. Drafts after an `eos`
    id are not verified: the reply ends there if it is accepted. `clock` times the steps for the controller
    (`replay.py` runs the loop on a virtual one)."""
    from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

    if not can_trim_prompt_cache(cache):
        raise EdgeError("this model's KV cache cannot roll back (recurrent or rotating layers); use draft=None.")
    controller = controller or controller_for(module, drafter)
    if hasattr(drafter, "attach"):
        drafter.attach(controller)  # auto's second drafter is judged with the loop's measured verify costs
    rng = np.random.default_rng(sampling.seed)  # one stream for drafts, acceptance and plain bursts
    distribution = make_distribution(sampling, rng)
    sampler = make_sampler(sampling, rng)
    tier_of = getattr(drafter, "tier", None)  # a drafter that grades its proposals (prompt lookup)
    idle = getattr(drafter, "idle", None)  # a drafter that knows when it has nothing to propose
    tokens = list(history)  # settled tokens; the last one is not yet in the target cache
    prefill(module, mx.array(prompt), cache)
    drafter.prepare(tokens)
    produced = 0
    try:
        while produced < max_tokens:
            if idle is not None and idle(tokens):
                # nothing to draft: plain tokens until there is, with no step chosen or recorded (that cost
                # ~55 us a token: 1.5% of an open chat reply where 57% of the tokens had no lookup match); the
                # burst measures plain decoding's cost as the warmup would
                stop = lambda seen=tokens: not idle(seen)  # noqa: E731
                produced += yield from _plain_burst(
                    module, tokens, cache, sampler, processors, max_tokens - produced, stop, controller, stats, clock
                )
                continue
            tier = tier_of(tokens) if tier_of else 0
            k = controller.choose(max_tokens - produced - 1, tier)  # drafts beyond max_tokens would be wasted
            burst = controller.plain_burst(max_tokens - produced) if k == 0 else 0
            if burst:  # speculation is off: decode plainly, as generate does
                # ... until prompt lookup finds a match of a higher tier than the one just judged not to pay
                # (the burst then starts no further step: nothing wasted)
                stop = (lambda seen=tokens, now=tier: tier_of(seen) > now) if tier_of else None
                produced += yield from _plain_burst(
                    module, tokens, cache, sampler, processors, burst, stop, controller, stats, clock
                )
                continue
            start = clock()
            drafts, q = drafter.propose(tokens, k, distribution) if k > 0 else ([], None)
            drafts = drafts[:k]
            ends = next((i for i, t in enumerate(drafts) if t in eos), None)
            if ends is not None:  # a copied passage that ran into the end of a turn: nothing after it is used
                drafts = drafts[: ends + 1]
            mid = clock()
            logits = _process(module(mx.array(tokens[-1:] + drafts)[None], cache=cache)[0], processors, tokens, drafts)
            if distribution is None:
                n, nxt = accept_greedy(logits, drafts)
            else:
                n, nxt = accept_sampled(distribution(logits), drafts, q[: len(drafts)] if q is not None else None, rng)
            if len(drafts) > n:
                trim_prompt_cache(cache, len(drafts) - n)  # roll back the rejected positions
            end = clock()
            uncounted = getattr(drafter, "uncounted_s", 0.0)  # a draft model's catch-up, auto's second drafter
            controller.record(len(drafts), n, mid - start - uncounted, end - mid, tier)
            stats.record(len(drafts), n, mid - start, end - mid)
            new = drafts[:n] + [nxt]
            tokens += new
            yield from new[: max_tokens - produced]
            produced += len(new)
    finally:
        remember(module, drafter, controller)  # what this request measured seeds the next one's controller
