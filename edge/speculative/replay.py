"""The draft-length controller replayed: the real speculative loop, greedy, on plain decoding's outputs, with a
stand-in target whose passes cost what they were measured to cost, on a virtual clock.

`bound.py` says what perfect drafting could make of a drafter's proposals at given pass costs; this says what
the loop and its controller make of them at the same costs, with nothing else in the way (no Python around a
step, no other tenant slowing a pass, no misjudged cost). `edge bench --draft lookup` reports both beside the
measured ratio: the bound against the replay is what the controller could not know in advance, the replay
against the measured ratio is the runtime's own cost and the host's noise. Deterministic, so a change to the
controller can be judged without the noise of a shared machine.
"""

from __future__ import annotations

from collections.abc import Collection

import mlx.core as mx
import numpy as np

from ..cache import OffsetCache
from ..errors import EdgeError
from ..events import DraftStats
from ..sampling import Sampling
from .adaptive import DraftLength
from .decode import speculative_token_stream


class _Cache(OffsetCache):
    @property
    def state(self) -> mx.array:  # what `generate.prefill` evaluates
        return mx.array(self.offset)


class _Recorded:
    """A target whose logits put each position's recorded next token first, and whose every pass after the
    prompt moves `now` on by `costs[n - 1]` for n positions (relative to one). Synchronous, as edge's fused
    layers on a CPU (`generate.pipelines`)."""

    decoder_stack = None

    def __init__(self, costs: list[float], vocab: int):
        self.costs, self.vocab, self.now = costs, vocab, 0.0
        self.sequence: list[int] = []
        self.prompt = 0

    def clock(self) -> float:
        return self.now

    def __call__(self, ids: mx.array, cache: list) -> mx.array:
        n, at = ids.shape[1], cache[0].offset
        if at + n >= self.prompt:  # the prompt's prefill is not timed, as decode tok/s does not count it
            self.now += self.costs[min(n, len(self.costs)) - 1]
        after = [self.sequence[i + 1] if i + 1 < len(self.sequence) else 0 for i in range(at, at + n)]
        logits = np.zeros((1, n, self.vocab), np.float32)
        logits[0, np.arange(n), after] = 1.0
        cache[0].offset += n
        return mx.array(logits)


def replayed(
    drafter,
    prompts: list[list[int]],
    outputs: list[list[int]],
    costs: list[float],
    eos: Collection[int],
    length: int | None = None,
) -> float:
    """Decode rate against plain decoding (a plain token costs one) of the speculative loop replaying each
    greedy output after its prompt with `drafter`, the prompts in order on one stand-in target, so that what
    the controller measured is carried from request to request as in a session. Every token counts, from the
    first step after the prompt's prefill on, as `bound.bound` counts them. `length`: draft exactly that many
    a step instead (the adaptive controller's yardstick)."""
    pairs = [(list(prompt), list(output)) for prompt, output in zip(prompts, outputs, strict=True)]
    target = _Recorded(costs, max(max(p + o) for p, o in pairs) + 1)
    tokens, seconds = 0, 0.0
    for prompt, output in pairs:
        target.sequence, target.prompt, start = prompt + output, len(prompt), target.now
        got = list(
            speculative_token_stream(
                target,
                prompt,
                [_Cache()],
                Sampling(max_tokens=len(output)),
                [],
                len(output),
                prompt,
                drafter,
                DraftStats(drafter.name),
                None if length is None else DraftLength(k_start=length, adaptive=False),
                eos=eos,
                clock=target.clock,
            )
        )
        if got != output:
            raise EdgeError("the replayed loop's output is not the recorded greedy output")
        tokens, seconds = tokens + len(output), seconds + target.now - start
    return float(tokens / seconds) if seconds else 1.0
