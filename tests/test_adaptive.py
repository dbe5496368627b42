"""The adaptive draft length: acceptance and step costs estimated from measured steps, and the draft length
they choose (pure unit tests of `edge.speculative.adaptive` and of what the decode loop measures for it, no
model)."""

from __future__ import annotations

import pytest

from edge.events import DraftStats
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


def test_the_rate_past_a_first_draft_is_not_guessed_below_the_first_until_measured():
    """Steps of one draft never measure whether a second would be kept: until one does, the rate past the first
    is taken as no lower than the first's, so a draft that is always right is tried longer."""
    a = Acceptance()
    for _ in range(6):
        a.record(1, 1)
    assert a.value > 0.8 and a.continued == pytest.approx(a.value)
    a.record(3, 1)  # a second draft, rejected: now it is measured
    assert a.continued == pytest.approx((0.6 * 5 * 0.9) / (5 * 0.9 + 1))


def test_a_drafter_starts_from_what_its_last_request_measured():
    """Step costs carry over on the model, a drafter's own cost and acceptance on the drafter (a Chat reuses
    it across turns), as copies: the next request's steps do not rewrite the last one's record. Whether
    speculation was off too, but each request probes within its first 64 tokens."""
    from types import SimpleNamespace

    from edge.speculative.adaptive import controller_for, remember

    module, drafter = SimpleNamespace(), PromptLookup()
    first = controller_for(module, drafter)
    assert first.accepts[0].value == pytest.approx(0.6) and first.t_plain is None  # the priors, nothing measured
    first.t_plain, first.t_sync = 0.010, 0.0105
    for _ in range(10):
        first.record(4, 0, t_draft=0.002, t_verify=0.02)
    first.burst = 128  # speculation was off, the next probe 128 plain tokens away
    remember(module, drafter, first)
    second = controller_for(module, drafter)
    assert second.accepts[0].value == first.accepts[0].value < 0.2
    assert (second.t_plain, second.t_sync, second.t_draft) == (first.t_plain, first.t_sync, first.t_draft)
    assert second.burst == 64  # probed within a reply of 128 tokens
    second.record(4, 4, t_draft=0.0, t_verify=0.02)
    assert second.accepts[0].value > first.accepts[0].value  # a copy
    assert controller_for(module, PromptLookup()).accepts[0].value == pytest.approx(0.6)  # another drafter: priors


def test_each_tier_of_proposal_is_judged_apart():
    """Ambiguous lookups start doubtful (first drafts kept 8-19% of the time) and are not drafted at all; an
    untiered drafter's proposals are, until rejected ones switch them off; longer matches (92-95% first-token
    acceptance on SmolLM2's prompts) keep drafting, each tier with its own estimate."""
    priced = DraftLength(t_plain=0.010, t_sync=0.0105, t_extra=0.0024)  # a verify step's costs known
    assert priced.choose(64, tier=1) == 0 and priced.choose(64) >= 1
    c = DraftLength(t_plain=0.010, t_sync=0.0105)
    for k in (4, 8, 4, 8, 4, 8):
        c.record(k, 0, t_draft=0.0, t_verify=0.0105 + k * 0.0024)  # weak proposals, all rejected
    assert c.choose(64) == 0 and c.choose(64, tier=2) >= 1 and c.choose(64, tier=3) >= 2
    assert c.choose(64, tier=4) >= 4
    for k in (4, 8) * 5:
        c.record(k, 0, t_draft=0.0, t_verify=0.0105 + k * 0.0024, tier=4)  # and when the surest ones fail too
    assert c.choose(64, tier=4) == 0 and c.choose(64, tier=3) >= 2
    assert c.choose(64, tier=6) == 0  # a drafter's tiers past the priors' share the last one's estimate


def test_one_slow_step_moves_the_cost_estimates_a_bounded_amount():
    c = DraftLength(t_plain=0.010, t_sync=0.010)
    c.record(0, 0, t_draft=0.0, t_verify=0.5)  # a step the OS stalled for half a second
    assert 0.010 < c.t_sync <= 0.013
    c.record_plain(4, 0.0)  # and a burst timed impossibly fast: its 4 tokens at half the estimate at most
    assert c.t_plain == pytest.approx(0.9**4 * 0.010 + (1 - 0.9**4) * 0.005)


def test_one_stalled_plain_token_barely_moves_the_rate_to_beat_and_a_long_burst_sets_it():
    """A plain token stalled to twice its time (a shared host: 20 against 9 ms) must not make drafts that are
    nearly always rejected look worth verifying; a burst of many tokens at a new speed is the new speed."""
    c = DraftLength(t_plain=0.009, t_sync=0.009, t_extra=0.0025, accepts=[Acceptance(first=0.2, more=0.2)])
    assert c.choose(8) == 0  # a draft kept 1 time in 5 does not pay for a verify pass 28% dearer than a token
    c.record_plain(1, 0.020)
    assert c.t_plain <= 0.0093 and c.choose(8) == 0  # once 0.0108, and then it did
    c.record_plain(40, 40 * 0.006)
    assert c.t_plain == pytest.approx(0.006, rel=0.02)


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
        c.record(12, 12, t_draft=0.0, t_verify=true_sync + 12 * true_extra, tier=3)
    assert c.t_sync == pytest.approx(true_sync, rel=0.25) and c.t_extra == pytest.approx(true_extra, rel=0.5)
    assert c.t_sync + 12 * c.t_extra == pytest.approx(true_sync + 12 * true_extra, rel=0.02)


def test_a_stalled_first_verify_step_does_not_price_out_longer_drafts_for_good():
    """A first multi-position step stalled to 3.5x its cost (a shared host) fits a slope of ~2 passes a
    position; the one-draft steps after it fix only the line's value at k = 1. The intercept is held to at
    least `least` of plain decoding's token, so the slope comes back down: once it sank to a tenth of a pass
    and held a slope of ~2 under the ridge, and no second draft was ever worth it again."""
    sync, extra = 1.0, 0.17  # one position, each further one (a CPU's verify pass, in plain tokens)
    c = DraftLength(t_plain=sync, accepts=[Acceptance(first=0.85, more=0.85)])
    c.record(0, 0, t_draft=0.0, t_verify=sync)
    c.record(4, 4, t_draft=0.0, t_verify=3.5 * (sync + 4 * extra))
    assert c.t_extra > 1.0  # poisoned
    for _ in range(30):
        c.record(1, 1, t_draft=0.0, t_verify=sync + extra)
    assert c.t_sync >= c.verify.least * c.t_plain and c.t_extra < 0.5
    assert c.choose(12) >= 2  # drafts of 85% acceptance at 17% a position pay past one


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


def _simulate(cost, t_draft: float, accepted, steps: int = 40) -> tuple[float, list[int]]:
    """The decode loop's calls on a controller (decode.py) against made-up step costs: the speed against plain
    decoding at cost(0) a token, and each step's draft length (0 for a plain burst or step)."""
    c = DraftLength(k_start=1)
    c.record_plain(4, 4 * cost(0))
    seconds, tokens, lengths = 4 * cost(0), 4, []
    for _ in range(steps):
        k = c.choose(64)
        burst = c.plain_burst(64) if k == 0 else 0
        if burst:
            c.record_plain(burst, burst * cost(0))
            seconds, tokens = seconds + burst * cost(0), tokens + burst
        else:
            n = accepted(k)
            c.record(k, n, t_draft=k * t_draft, t_verify=cost(k))
            seconds, tokens = seconds + k * t_draft + cost(k), tokens + n + 1
        lengths.append(k)
    return tokens / seconds * cost(0), lengths


def test_a_pass_dearer_from_two_positions_on_is_explored_not_priced_out():
    """With a BLAS under MLX (an fp32 target), one position is a matrix-vector product and two a matrix product:
    measured on SmolLM2, 47 ms, 82 ms, then ~3 ms a position. The line through the first two steps priced every
    longer draft out; measured as flat past the longest length tried, a longer one is tried and pays."""

    def blas(k):
        return 0.047 if k == 0 else 0.082 + 0.003 * (k - 1)

    speed, lengths = _simulate(blas, t_draft=0.004, accepted=lambda k: k)
    assert min(lengths[-10:]) >= 6 and speed > 2.0
    speed, lengths = _simulate(blas, t_draft=0.004, accepted=lambda k: 0)  # a draft that is always wrong
    assert max(lengths[-30:]) == 1 and speed > 0.95  # found out at once: plain bursts and single-draft probes

    def kernels(k):  # edge's CPU kernels: close to a line
        return 0.0034 + 0.00045 * k

    speed, lengths = _simulate(kernels, t_draft=0.0, accepted=lambda k: k)
    assert min(lengths[-10:]) == 12 and speed > 4.0


def test_a_probe_drafts_the_most_promising_length_not_one():
    """While speculation is off, a probe re-measures the length with the best expected rate: on a BLAS target
    a single draft is the dearest per token (a pass over two positions costs 1.7x one), so probing with it
    would keep a drafter off that longer drafts would show to pay."""

    def blas(k):
        return 0.047 if k == 0 else 0.082 + 0.003 * (k - 1)

    c = DraftLength(t_plain=0.047, t_sync=0.047)
    for k in (1, 4, 8) * 3:
        c.record(k, 1 if k == 8 else 0, t_draft=k * 0.004, t_verify=blas(k))
    choices = [c.choose(64) for _ in range(c.probe_every)]
    assert choices[:-1] == [0] * (c.probe_every - 1) and choices[-1] > 1


def test_whether_drafting_could_pay_is_judged_at_every_length():
    """Speculation stops probing only if even drafts that are always kept could not pay at any length. Judged
    by the slope from one and two positions, a BLAS target's longer drafts were ruled out with the rest."""
    for t_draft, pays in ((0.013, True), (0.05, False)):
        c = DraftLength(t_plain=0.047)
        c.record(0, 0, t_draft=0.0, t_verify=0.047)
        c.record(1, 1, t_draft=t_draft, t_verify=0.082)
        assert c.t_draft + c.t_extra >= c.t_plain  # the old test said no for both
        assert c.can_pay() is pays


@pytest.mark.parametrize("extra", [None, 0.001], ids=["first-request", "step-costs-known"])
def test_a_draft_step_timed_alone_rules_out_a_drafter_that_could_never_pay(extra):
    """Before any draft is timed, a draft model's step timed when it was built (at half its cost) decides
    whether drafting could pay at all: one that could not never drafts, and decoding goes plain in bursts."""
    for alone, drafts in ((1.0, False), (0.015, True)):  # 100x a plain token; 1.5x, which may still pay
        c = DraftLength(t_plain=0.01, t_sync=0.01, t_extra=extra, t_draft_alone=alone)
        chosen = [c.choose(64) for _ in range(40)]
        assert any(chosen) is drafts
        assert (c.plain_burst(64) > 0) is (not drafts or extra is not None)
        assert c.t_draft is None  # the step timed alone is not an estimate of drafting in the loop


@pytest.mark.parametrize("pipelined", [True, False])
def test_plain_decoding_is_timed_by_the_spacing_of_its_tokens(monkeypatch, pipelined):
    """Where `generate` pipelines, a burst's last token comes right after the one before it (measured on an
    fp32 SmolLM2: ~5 ms against ~50 ms a token): that spacing is not plain decoding's cost and is left out."""
    from edge.speculative import decode

    clock = [0.0]
    spacing = [0.05, 0.05, 0.05, 0.005] if pipelined else [0.05] * 4

    def stream(module, prompt, cache, sampler, processors, n, history, stop):
        for i, seconds in enumerate(spacing[:n]):
            clock[0] += seconds
            yield 10 + i

    monkeypatch.setattr(decode, "token_stream", stream)
    monkeypatch.setattr(decode, "pipelines", lambda module: pipelined)
    controller, stats, tokens = DraftLength(), DraftStats("x"), [1]
    burst = decode._plain_burst(None, tokens, None, None, [], 4, None, controller, stats, lambda: clock[0])
    assert list(burst) == [10, 11, 12, 13] and tokens == [1, 10, 11, 12, 13]
    assert controller.t_plain == pytest.approx(0.05) and stats.plain_steps == 4
