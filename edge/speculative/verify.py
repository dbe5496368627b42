"""Verification of drafted tokens against the target (Leviathan et al. 2023; Chen et al. 2023).

Greedy: accept drafts while they equal the target's argmax; then emit the target's own argmax.
Sampling: accept draft d with probability min(1, p(d) / q(d)); on the first rejection, draw from the
residual norm(max(0, p - q)); if all k are accepted, draw a bonus token from p at position k. The emitted
tokens then follow p exactly. A deterministic drafter (prompt lookup: q one-hot at d) is the case where
that rule keeps d with probability p(d) and otherwise draws from p without d, which is exactly drawing
x ~ p and keeping d if x == d: verification does the latter, drawing each position's token the way plain
sampling does (one uniform number each, in order), so with a seed the output is plain sampling's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import numpy as np

from ..sampling import Candidates, argmax_ids, draw


def accept_greedy(logits: mx.array, drafts: list[int]) -> tuple[int, int]:
    """(accepted count, next token) for argmax decoding; logits is (len(drafts) + 1, vocab). The argmax is
    NumPy's (`sampling.argmax_ids`): like MLX's, the first of equal maxima, as plain greedy decoding takes."""
    best = argmax_ids(logits).tolist()
    n = 0
    while n < len(drafts) and drafts[n] == best[n]:
        n += 1
    return n, best[n]


def accept_sampled(
    p: Sequence[Candidates], drafts: list[int], q: Sequence[Candidates] | None, rng: np.random.Generator
) -> tuple[int, int]:
    """(accepted count, next token); p has len(drafts) + 1 positions (the last is the bonus token's), q (the
    drafts' own distributions) len(drafts): rejection sampling. q None (deterministic drafts): the target's
    own draw at each position, drafts kept while they equal it."""
    if q is None:
        for i, d in enumerate(drafts):
            token = p[i].draw(rng)
            if token != d:
                return i, token
        return len(drafts), p[len(drafts)].draw(rng)
    for i, d in enumerate(drafts):
        q_d = q[i].prob(d)
        if q_d > 0 and rng.random() < min(1.0, p[i].prob(d) / q_d):
            continue
        residual = np.maximum(p[i].dense() - q[i].dense(), 0.0)
        if residual.sum() <= 0:  # p == q exactly: any rejection is measure-zero; fall back to p
            return i, p[i].draw(rng)
        return i, draw(np.arange(p[i].vocab), residual, rng)
    return len(drafts), p[len(drafts)].draw(rng)
