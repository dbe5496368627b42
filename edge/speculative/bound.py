"""The most a deterministic drafter's proposals could make: every step drafts exactly the tokens it then keeps.

Replaying plain greedy outputs, a drafter whose proposals depend on the history alone (prompt lookup) proposes
at each step what it would in the loop, and the output says how many of those the target keeps. A draft-length
controller that knew this in advance would draft exactly those and pay one pass over that many + 1 positions
(one plain step when none would be kept). With the passes' costs measured on this machine, that oracle's rate
against plain decoding bounds what any controller can make of these proposals with this verify pass:
`edge bench --draft lookup` reports it beside the measured ratio, so a shortfall says which of the two limits.
"""

from __future__ import annotations

import statistics
import time

import mlx.core as mx
import numpy as np

from ..cache import trim_to


def pass_costs(model, context: list[int], positions: int, repeats: int = 5) -> list[float]:
    """Seconds of one target pass over 1, 2, ..., `positions` positions after `context` (the cache rolled back
    after each; sizes interleaved, each the median of `repeats`), relative to one position's."""
    from ..generate import prefill

    cache = model.make_cache()
    prefill(model.module, mx.array(context), cache)  # all but the last token, as a request's prompt is
    held = len(context) - 1
    probe = [context[i % len(context)] for i in range(positions)]
    seconds: list[list[float]] = [[] for _ in range(positions)]
    for _ in range(repeats):
        for m in range(1, positions + 1):
            start = time.perf_counter()
            mx.eval(model.module(mx.array([probe[:m]]), cache=cache))
            seconds[m - 1].append(time.perf_counter() - start)
            trim_to(cache, held)
    medians = [statistics.median(s) for s in seconds]
    return [s / medians[0] for s in medians]


def kept_per_step(drafter, prompt: list[int], output: list[int], k: int) -> list[int]:
    """Replaying `output` after `prompt`: at each step, how many of the drafter's (up to k) proposed tokens the
    target keeps; each step then settles those and one more (the target's own token)."""
    history, done, steps = list(prompt), 0, []
    drafter.prepare(history)
    while done < len(output):
        drafts, _ = drafter.propose(history, k, None)
        kept = 0
        while kept < min(len(drafts), len(output) - done - 1) and drafts[kept] == output[done + kept]:
            kept += 1
        steps.append(kept)
        history += output[done : done + kept + 1]
        done += kept + 1
    return steps


class _BestMatch:
    """A drafter that knows the reply (`output` after `prompt`): of the continuations of every earlier
    occurrence of every n-gram suffix (n <= max_ngram), it proposes the one the reply agrees with longest."""

    def __init__(self, prompt: list[int], output: list[int], max_ngram: int):
        self.start, self.output, self.max_ngram = len(prompt), output, max_ngram

    def prepare(self, tokens: list[int]) -> None:
        pass

    def propose(self, history: list[int], k: int, distribution=None) -> tuple[list[int], None]:
        done = len(history) - self.start
        rest = self.output[done : done + min(k, len(self.output) - done - 1)]
        h, best, proposal = np.asarray(history), -1, []
        for n in range(1, min(self.max_ngram, len(history) - 1) + 1):
            starts = np.arange(len(history) - n)  # occurrences with a token after them
            hits = np.ones(starts.size, bool)
            for i in range(n):
                hits &= h[starts + i] == h[len(history) - n + i]
            for s in starts[hits] + n:
                kept = 0
                while kept < len(rest) and s + kept < len(history) and history[s + kept] == rest[kept]:
                    kept += 1
                if kept > best:
                    best, proposal = kept, history[s : s + k]
        return proposal, None


def kept_by_any_match(prompt: list[int], output: list[int], k: int, max_ngram: int = 5) -> list[int]:
    """As `kept_per_step`, but each step keeps the most that the continuation of any earlier occurrence of any
    n-gram suffix (n <= max_ngram) would have: what verifying every match at once (a tree of candidates) could
    make, had its extra branches cost nothing. Prompt lookup proposes one of these (the latest occurrence of
    the longest suffix), so at the same history this keeps at least as many; `edge bench --draft lookup`
    reports its bound, the most tree verification could add on this machine."""
    return kept_per_step(_BestMatch(prompt, output, max_ngram), prompt, output, k)


def bound(steps: list[int], costs: list[float]) -> float:
    """Decode rate against plain decoding (one position a token) of the steps (`kept_per_step`): a step that
    keeps n drafts yields n + 1 tokens for a pass over n + 1 positions (costs[n], relative to one)."""
    return sum(n + 1 for n in steps) / sum(costs[n] for n in steps)
