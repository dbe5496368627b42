"""Speculative sampling follows the target's distribution: rejection sampling alone, and the whole loop on a tiny
Markov model whose exact next-token distributions are known (chi-square tests at a fixed seed, with the power
to catch a wrong acceptance rule)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from scipy.stats import chisquare

from edge.events import DraftStats
from edge.sampling import Candidates, Sampling, make_processors
from edge.speculative import DraftLength, ModelDrafter
from edge.speculative.decode import speculative_token_stream
from edge.speculative.verify import accept_sampled


def chi2_p(counts: np.ndarray, probs: np.ndarray) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    keep = probs > 0
    expected = probs[keep] / probs[keep].sum() * counts[keep].sum()
    return chisquare(counts[keep], expected).pvalue


@pytest.mark.parametrize("deterministic", [False, True])
def test_rejection_sampling_reproduces_p(deterministic):
    rng = np.random.default_rng(0)
    p = np.array([[0.05, 0.4, 0.15, 0.3, 0.1]], dtype=np.float32)
    q = np.array([[0.5, 0.1, 0.1, 0.1, 0.2]], dtype=np.float32)
    p2 = [dense(p[0]), dense(p[0, ::-1])]  # position 1 is the bonus distribution
    counts = np.zeros(5)
    for _ in range(20000):
        d = 0 if deterministic else int(rng.choice(5, p=q[0]))
        n, nxt = accept_sampled(p2, [d], None if deterministic else [dense(q[0])], rng)
        counts[d if n == 1 else nxt] += 1
    assert chi2_p(counts, p[0].astype(np.float64)) > 1e-3


def dense(probs: np.ndarray) -> Candidates:
    return Candidates(np.arange(probs.size), probs.astype(np.float64) / probs.sum(), probs.size)


def test_chi_square_catches_a_wrong_acceptance_rule():
    """The same test on a rule that always accepts (mlx-lm would not, edge must not) fails: the test has power."""
    rng = np.random.default_rng(0)
    p = np.array([0.05, 0.4, 0.15, 0.3, 0.1])
    q = np.array([0.5, 0.1, 0.1, 0.1, 0.2])
    counts = np.bincount(rng.choice(5, size=20000, p=q), minlength=5).astype(float)
    assert chi2_p(counts, p) < 1e-6


class MarkovLM:
    """A tiny 'language model' over 8 tokens: next-token logits depend only on the current token. It keeps a
    real trimmable KV cache so the speculative loop rolls it back exactly as for a transformer."""

    def __init__(self, logits: np.ndarray):
        self.table = mx.array(logits.astype(np.float32))
        self.layers = [None]

    def make_cache(self):
        from mlx_lm.models.cache import KVCache

        return [KVCache()]

    def __call__(self, inputs, cache=None):
        n = inputs.shape[1]
        kv = mx.zeros((1, 1, n, 1))
        cache[0].update_and_fetch(kv, kv)
        return self.table[inputs]


@pytest.mark.parametrize(
    "sampling, drafter",
    [
        (Sampling(temperature=1.0), "model"),
        (Sampling(temperature=0.7, top_p=0.8, min_p=0.05), "model"),  # drafts often outside the target's filters
        (Sampling(temperature=0.7, top_p=0.8, min_p=0.05), "fixed"),
    ],
    ids=["t1-draft-model", "filtered-draft-model", "filtered-deterministic"],
)
def test_speculative_samples_follow_the_targets_distribution(sampling, drafter):
    from test_sampling import reference64
    from test_speculative import FixedDrafter

    rng = np.random.default_rng(1)
    t_logits = rng.normal(size=(8, 8)) * 1.5
    d_logits = t_logits + rng.normal(size=(8, 8)) * 1.5  # a decent but wrong draft
    target, draft = MarkovLM(t_logits), MarkovLM(d_logits)
    P = np.stack([reference64(row.astype(np.float32), sampling) for row in t_logits])  # the filtered target
    prompt = [3, 1]
    exact_second = P[prompt[-1]] @ P  # P(x2) = sum_x1 P(x1 | 1) P(x2 | x1)
    counts1, counts2 = np.zeros(8), np.zeros(8)
    for seed in range(3000):
        out = list(
            speculative_token_stream(
                target,
                prompt,
                target.make_cache(),
                sampling.with_(seed=seed, max_tokens=2),
                make_processors(sampling),
                2,
                prompt,
                ModelDrafter(draft, "markov") if drafter == "model" else FixedDrafter(),
                DraftStats("m"),
                DraftLength(k_start=3, t_plain=1.0, t_sync=1.0),
            )
        )
        counts1[out[0]] += 1
        counts2[out[1]] += 1
    assert chi2_p(counts1, P[prompt[-1]]) > 1e-3 and counts1[P[prompt[-1]] == 0].sum() == 0
    assert chi2_p(counts2, exact_second) > 1e-3 and counts2[exact_second == 0].sum() == 0
