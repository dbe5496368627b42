"""The CPU sampler: mlx-lm's filters (top-p, min-p, top-k) and temperature with their meaning, checked against
mlx-lm's own functions, and draws that follow the filtered distribution (chi-square)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p
from scipy.stats import chisquare

from edge.sampling import CandidateSampler, Filters, Sampling, make_sampler, next_token

SETTINGS = [
    Sampling(temperature=0.8),
    Sampling(temperature=0.7, top_p=0.9, min_p=0.05),  # edge chat's defaults
    Sampling(temperature=1.0, top_p=0.5),
    Sampling(temperature=1.3, top_p=0.99),
    Sampling(temperature=0.7, min_p=0.2),
    Sampling(temperature=1.0, top_k=5),
    Sampling(temperature=0.5, top_p=0.95, top_k=40),
    Sampling(temperature=1.0, top_p=0.9, min_p=0.1, top_k=3),
]


def reference(logits: np.ndarray, s: Sampling) -> np.ndarray:
    """mlx-lm's sampler as a distribution: its filters on log-probabilities, in its order, then temperature."""
    x = mx.array(logits[None].astype(np.float32))
    lp = x - mx.logsumexp(x, axis=-1, keepdims=True)
    if 0 < s.top_p < 1:
        lp = apply_top_p(lp, s.top_p)
    if s.min_p:
        lp = apply_min_p(lp, s.min_p)
    if s.top_k:
        lp = apply_top_k(lp, s.top_k)
    return np.asarray(mx.softmax(lp * (1 / s.temperature), axis=-1))[0].astype(np.float64)


def reference64(logits: np.ndarray, s: Sampling) -> np.ndarray:
    """The same formulas as mlx-lm's (apply_top_p, apply_min_p, apply_top_k, softmax), dense, in float64:
    mlx-lm's float32 running sums over a 49k vocabulary move top-p's cut by tens of ids."""
    lp = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64) - logits.max()).sum()) - logits.max()
    if 0 < s.top_p < 1:
        ranked = np.sort(lp)  # ascending, as apply_top_p
        probs = np.exp(ranked)
        above = np.cumsum(probs[::-1])[::-1] - probs  # mass above each, exclusive
        dropped = int((above >= s.top_p * probs.sum()).sum())
        lp = np.where(lp < ranked[dropped], -np.inf, lp)
    if s.min_p:
        lp = np.where(lp < lp.max() + np.log(s.min_p), -np.inf, lp)
    if s.top_k:
        lp[np.argsort(-lp)[s.top_k :]] = -np.inf
    w = np.exp((lp - lp.max()) / s.temperature)
    return w / w.sum()


def logit_cases(rng: np.random.Generator):
    """Random logits, and two shapes a language model's take: a few ids far above a long tail (min-p keeps
    them, and top-p's cut falls inside or below them), and a dozen near-equal ids on top."""
    for vocab, scale in ((50, 1.0), (2000, 3.0), (2000, 8.0), (49152, 4.0)):
        yield rng.standard_normal(vocab).astype(np.float32) * scale
    for head in ([14.0, 12.5, 11.0], [14.0, 13.9], [14.0, 11.5, 11.4, 11.3, 11.2], 12 + rng.random(12) * 0.5):
        logits = rng.standard_normal(49152).astype(np.float32) * 2
        logits[: len(head)] = head
        yield rng.permutation(logits)


@pytest.mark.parametrize("s", SETTINGS, ids=lambda s: f"t{s.temperature}-p{s.top_p}-min{s.min_p}-k{s.top_k}")
def test_filters_give_mlx_lms_distribution(s):
    for logits in logit_cases(np.random.default_rng(0)):
        vocab = logits.size
        got = Filters(s)(mx.array(logits[None]))[0]
        assert abs(got.probs.sum() - 1) < 1e-9 and len(set(got.ids.tolist())) == got.ids.size
        exact = reference64(logits, s)
        assert sorted(got.ids.tolist()) == np.flatnonzero(exact).tolist()
        np.testing.assert_allclose(got.dense(), exact, rtol=1e-5, atol=1e-12)
        if vocab <= 2000:  # and mlx-lm itself, where its float32 sums are exact enough
            np.testing.assert_allclose(got.dense(), reference(logits, s), rtol=1e-4, atol=1e-7)


def test_top_p_keeps_every_id_tied_with_the_last_one():
    """mlx-lm's top-p is a threshold: ids tied with the last one kept stay in (so do ours)."""
    logits = np.array([3.0, 1.0, 1.0, 1.0, -2.0], dtype=np.float32)
    s = Sampling(temperature=1.0, top_p=0.8)  # id 0 holds 0.71, ids 0 and 1 0.80: the cut falls in the tie
    got = Filters(s)(mx.array(logits[None]))[0]
    assert sorted(got.ids.tolist()) == [0, 1, 2, 3] == np.flatnonzero(reference(logits, s)).tolist()


@pytest.mark.parametrize("s", SETTINGS[:3], ids=["temperature", "chat", "top-p"])
def test_the_cpu_sampler_draws_from_that_distribution(s):
    logits = np.random.default_rng(1).standard_normal(12).astype(np.float32) * 2
    sampler = make_sampler(s.with_(seed=5))
    assert isinstance(sampler, CandidateSampler)  # on the CPU: NumPy, not mlx-lm's MLX sampler
    x = mx.array(logits[None])
    counts = np.bincount([next_token(sampler, x) for _ in range(20000)], minlength=12)
    p = reference(logits, s)
    assert counts[p == 0].sum() == 0
    keep = p > 0
    assert chisquare(counts[keep], p[keep] / p[keep].sum() * counts.sum()).pvalue > 1e-3


def test_the_cpu_sampler_repeats_with_a_seed_and_not_without():
    logits = mx.array(np.random.default_rng(2).standard_normal((1, 1000)).astype(np.float32))

    def draws(seed):
        sampler = make_sampler(Sampling(temperature=1.0, seed=seed))
        return [next_token(sampler, logits) for _ in range(50)]

    assert draws(3) == draws(3) and draws(3) != draws(4)


def test_pipelined_and_step_by_step_decoding_sample_alike(mlx_models, monkeypatch):
    """Decoding that queues step n + 1 before handing out id n (a GPU's way, and the CPU's for modules without
    edge's fused layers) draws the same ids from the same seed as step-by-step decoding."""
    import edge
    import edge.generate

    model = edge.load(mlx_models["llama"])
    runs = []
    for pipelined in (True, False):
        monkeypatch.setattr(edge.generate, "pipelines", lambda module, on=pipelined: on)
        runs.append(model.generate([5, 6, 7, 8], temperature=0.9, top_p=0.95, seed=11, max_tokens=24))
    assert runs[0] == runs[1]
