"""The adaptive draft length: acceptance and step costs estimated from measured steps, and the draft length
they choose (pure unit tests of `edge.speculative.adaptive`, no model)."""

from __future__ import annotations

import pytest

from edge.speculative import DraftLength, PromptLookup
from edge.speculative.adaptive import Acceptance


def test_adaptive_length_turns_off_a_drafter_that_cannot_pay():
    c = DraftLength(t_plain=0.01, t_sync=0.011)
    c.record(4, 0, t_draft=0.2, t_verify=0.012)  # slow drafts, all rejected
    assert [c.choose(64) for _ in range(40)].count(0) == 40  # off, and never probed: drafting costs > a step
    good = DraftLength(t_plain=0.01, t_sync=0.011)
    for _ in range(5):
        good.record(4, 4, t_draft=0.0001, t_verify=0.011)
    assert good.choose(64) >= 4
    assert good.choose(2) <= 2


def test_acceptance_is_estimated_in_two_stages():
    """Proposals that are wrong at once or right for a while (single-token lookup matches): the first token's
    rate and the rate after it are estimated apart, so a right first token is expected to run on."""
    a = Acceptance()
    for _ in range(12):
        a.record(4, 0)
        a.record(4, 0)
        a.record(4, 4)
    assert 0.25 < a.value < 0.45 and a.continued > 0.9  # decayed counts: recent proposals weigh more
    assert a.expected_tokens(0) == 1.0
    assert a.expected_tokens(4) == pytest.approx(1 + a.value * (1 - a.continued**4) / (1 - a.continued))
    c = DraftLength(t_plain=0.010, t_sync=0.010, t_extra=0.001, accepts=[a])
    assert c.choose(8) == 8  # worth drafting long, although two proposals in three fail at once


def test_a_drafter_starts_from_what_its_last_request_measured():
    """Step costs carry over on the model, a drafter's own cost and acceptance on the drafter (a Chat reuses
    it across turns), as copies: the next request's steps do not rewrite the last one's record."""
    from types import SimpleNamespace

    from edge.speculative.adaptive import controller_for, remember

    module, drafter = SimpleNamespace(), PromptLookup()
    first = controller_for(module, drafter)
    assert first.accepts[0].value == pytest.approx(0.6) and first.t_plain is None  # the priors, nothing measured
    first.t_plain, first.t_sync = 0.010, 0.0105
    for _ in range(10):
        first.record(4, 0, t_draft=0.002, t_verify=0.02)
    first.burst = 64  # speculation was off, the next probe 64 plain tokens away
    remember(module, drafter, first)
    second = controller_for(module, drafter)
    assert second.accepts[0].value == first.accepts[0].value < 0.2
    assert (second.t_plain, second.t_sync, second.t_draft) == (first.t_plain, first.t_sync, first.t_draft)
    assert second.burst == 64
    second.record(4, 4, t_draft=0.0, t_verify=0.02)
    assert second.accepts[0].value > first.accepts[0].value  # a copy
    assert controller_for(module, PromptLookup()).accepts[0].value == pytest.approx(0.6)  # another drafter: priors


def test_each_tier_of_proposal_is_judged_apart():
    """Rejected ambiguous lookups switch tier 0 off; longer matches (92-95% first-token acceptance on
    SmolLM2's prompts) keep drafting, each tier with its own estimate."""
    c = DraftLength(t_plain=0.010, t_sync=0.0105)
    for _ in range(6):
        c.record(4, 0, t_draft=0.0, t_verify=0.02)  # weak proposals, all rejected
    assert c.choose(64) == 0 and c.choose(64, tier=1) >= 1 and c.choose(64, tier=2) >= 2
    assert c.choose(64, tier=3) >= 4
    for _ in range(10):
        c.record(4, 0, t_draft=0.0, t_verify=0.02, tier=3)  # and when the surest ones fail too
    assert c.choose(64, tier=3) == 0 and c.choose(64, tier=2) >= 2
    assert c.choose(64, tier=5) == 0  # a drafter's tiers past the priors' share the last one's estimate


def test_one_slow_step_moves_the_cost_estimates_a_bounded_amount():
    c = DraftLength(t_plain=0.010, t_sync=0.010)
    c.record(0, 0, t_draft=0.0, t_verify=0.5)  # a step the OS stalled for half a second
    assert 0.010 < c.t_sync <= 0.013
    c.record_plain(4, 0.0)  # and a burst timed impossibly fast
    assert c.t_plain == pytest.approx(0.8 * 0.010 + 0.2 * 0.005)


def test_step_costs_are_fitted_over_every_step_and_recover_from_a_cold_first_one():
    """t_sync + k * t_extra is fitted over steps of every k: a first synchronous step 5x slow (a cold process)
    does not stick, and a run of steps with the same k keeps the split between the two."""
    true_sync, true_extra = 0.005, 0.0005
    c = DraftLength(t_plain=0.005)
    c.record(0, 0, t_draft=0.0, t_verify=5 * true_sync)
    for k in [4, 2, 12, 1, 8, 12, 3, 12, 6, 12, 1, 12]:
        c.record(k, k // 2, t_draft=0.0, t_verify=true_sync + k * true_extra)
    assert c.t_sync == pytest.approx(true_sync, rel=0.25) and c.t_extra == pytest.approx(true_extra, rel=0.5)
    for _ in range(40):
        c.record(12, 12, t_draft=0.0, t_verify=true_sync + 12 * true_extra, tier=2)
    assert c.t_sync == pytest.approx(true_sync, rel=0.25) and c.t_extra == pytest.approx(true_extra, rel=0.5)
    assert c.t_sync + 12 * c.t_extra == pytest.approx(true_sync + 12 * true_extra, rel=0.02)


def test_each_draft_length_keeps_its_own_measured_cost():
    """Verify costs are not linear in k (edge's AVX-512 kernel splits a pass of 13 positions or more in two):
    once steps of 12 or more drafts are measured slower than the line through the others, the controller stops
    drafting past 11, even for proposals it expects to be right."""
    sure = Acceptance(first=0.99, more=0.99, weight=50.0)
    c = DraftLength(t_plain=0.005, t_sync=0.005, t_extra=0.0005, accepts=[sure])
    assert c.choose(64) == 12  # the line alone: longer is better

    def cost(k):
        return 0.005 + k * 0.0005 + (0.004 if k >= 12 else 0.0)

    for _ in range(6):
        for k in range(1, c.k_max + 1):
            c.record(k, k, t_draft=0.0, t_verify=cost(k))
    assert c.choose(64) == 11
    assert c.step_cost(12) == pytest.approx(cost(12), rel=0.1)
