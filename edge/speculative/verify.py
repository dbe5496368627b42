"""Verification of drafted tokens against the target (Leviathan et al. 2023; Chen et al. 2023).

Greedy: accept drafts while they equal the target's argmax; then emit the target's own argmax.
Sampling: accept draft d with probability min(1, p(d) / q(d)); on the first rejection, draw from the
residual norm(max(0, p - q)); if all k are accepted, draw a bonus token from p at position k. The emitted
tokens then follow p exactly; a deterministic drafter (prompt lookup) is the case q = one-hot(d).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..sampling import argmax_ids


def accept_greedy(logits: mx.array, drafts: list[int]) -> tuple[int, int]:
    """(accepted count, next token) for argmax decoding; logits is (len(drafts) + 1, vocab). The argmax is
    NumPy's (`sampling.argmax_ids`): like MLX's, the first of equal maxima, as plain greedy decoding takes."""
    best = argmax_ids(logits).tolist()
    n = 0
    while n < len(drafts) and drafts[n] == best[n]:
        n += 1
    return n, best[n]


def accept_sampled(p: mx.array, drafts: list[int], q: mx.array | None, rng: np.random.Generator) -> tuple[int, int]:
    """(accepted count, next token) by rejection sampling; p is (len(drafts) + 1, vocab), q (len(drafts), vocab)."""
    p_np = np.asarray(p, dtype=np.float64)
    q_np = None if q is None else np.asarray(q, dtype=np.float64)
    for i, d in enumerate(drafts):
        q_d = 1.0 if q_np is None else q_np[i, d]
        if q_d > 0 and rng.random() < min(1.0, p_np[i, d] / q_d):
            continue
        residual = p_np[i].copy()
        if q_np is None:
            residual[d] = 0.0
        else:
            residual = np.maximum(residual - q_np[i], 0.0)
        total = residual.sum()
        if total <= 0:  # p == q exactly: any rejection is measure-zero; fall back to p
            residual, total = p_np[i], p_np[i].sum()
        return i, int(rng.choice(residual.size, p=residual / total))
    last = p_np[len(drafts)]
    return len(drafts), int(rng.choice(last.size, p=last / last.sum()))
