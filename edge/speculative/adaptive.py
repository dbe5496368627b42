"""Adaptive draft length: pick k to maximise expected tokens per second from measured acceptance and costs.

With acceptance a1 of the first drafted token and a of each further one (given the ones before it were
accepted), a step that drafts k tokens yields E(k) = 1 + a1 * (1 - a^k) / (1 - a) tokens and costs k * t_draft
+ t_sync + k * t_extra (one synchronous target pass over k + 1 positions). Plain decoding yields 1 token per
t_plain as `generate.token_stream` runs it (on a GPU pipelined, step n + 1 queued before token n is handed
out, which makes t_plain < t_sync; edge's fused layers on a CPU step by step, t_plain = t_sync): that is the
rate drafting must beat. The first request on a model starts with a few plain tokens (measuring t_plain),
then one synchronous step (t_sync), then drafts; later requests start from the costs the last one measured,
and a drafter from its own last cost and acceptance (`controller_for`). A drafter that grades its proposals
in tiers (prompt lookup: by the length of the match, and whether it is ambiguous) has each tier judged with
its own acceptance. When no k > 0 beats plain, speculation is off (the next request probes within its first
`max_burst` / 2 tokens): the loop decodes plainly for `probe_every` tokens (twice as many after each probe
that finds drafting still not paying, up to `max_burst`), or until the drafter has a proposal of a higher
tier, then drafts the k with the best expected rate again to re-measure, unless even perfect acceptance could
not pay at any k (`can_pay`; before any draft is timed, by the drafter's step timed alone). t_sync and
t_extra are fitted together over every synchronous step (`VerifyCost`), not read off the rare steps that
draft nothing; until two different k were measured, the line is a guess and k is chosen by a low estimate of
the cost (`VerifyCost.optimistic`), up to k_max / 2.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field


@dataclass
class Acceptance:
    """How many drafted tokens survive, from decayed counts, in two stages: whether the first drafted token is
    accepted, and then each further one (drafting stops at the first rejection, so the positions examined
    are the trials: the geometric maximum-likelihood estimate). One rate for all positions undervalues
    proposals that are either wrong at once or right for a while: on SmolLM2's grounded prompts a
    single-token lookup match was right first 33% of the time, and then ran on for ~3 tokens."""

    first: float = 0.6
    """Prior probability that the first drafted token is accepted."""
    more: float = 0.6
    """Prior probability that a further drafted token is accepted, given the ones before it were."""
    weight: float = 5.0
    """Trials the priors count as."""
    decay: float = 0.9
    """Weight of the past: about 10 steps of memory. Outcomes are nearly all-or-nothing, so 5 (0.8) was too few:
    a short run of rejected single-token matches switched them off for a whole plain burst (replaying
    SmolLM2's grounded prompts: 1.88x with 0.8, 2.02x with 0.9, with the costs measured)."""

    def __post_init__(self) -> None:
        self._first = [self.first * self.weight, self.weight]  # successes, trials
        self._more = [self.more * self.weight, self.weight]
        self._more_seen = False  # whether a draft got past its first token yet: until then `continued` is a guess

    def record(self, drafted: int, accepted: int) -> None:
        if drafted <= 0:
            return
        self._update(self._first, accepted > 0, 1)
        if accepted > 0 and drafted > 1:
            self._update(self._more, accepted - 1, accepted - 1 + (accepted < drafted))
            self._more_seen = True

    def _update(self, counts: list[float], successes: float, trials: float) -> None:
        counts[0] = self.decay * counts[0] + successes
        counts[1] = self.decay * counts[1] + trials

    @property
    def value(self) -> float:
        """Estimated probability that the first drafted token is accepted."""
        return self._first[0] / max(self._first[1], 1e-9)

    @property
    def continued(self) -> float:
        """Estimated probability that a further drafted token is accepted, given the ones before it were. Until
        a draft has been verified past its first token, no lower than the first token's: steps of one draft
        never measure it, and a draft model whose single drafts were all kept (a lower-bit copy of the
        target) stayed at one draft a step on the prior's 0.6, never finding out whether longer ones pay."""
        rate = self._more[0] / max(self._more[1], 1e-9)
        return min(rate if self._more_seen else max(rate, self.value), 0.999)

    def expected_tokens(self, k: int) -> float:
        """Tokens a step that drafts k yields: the target's own one, plus the accepted drafts."""
        a = self.continued
        return 1.0 + (self.value * (1 - a**k) / (1 - a) if k > 0 else 0.0)


def tier_priors() -> list[Acceptance]:
    """Priors for the tiers of proposal (`PromptLookup.tier`): tier 0 is every proposal of a drafter without
    tiers (and `auto`'s second drafter); from tier 1 on, the higher the tier, the surer. Judged by match length
    alone, single-token lookups (12-33% of first drafts kept on SmolLM2's grounded prompts) lumped the
    ambiguous ones (8-25%) with those of a token seen once before (73%); replaying those prompts' greedy
    outputs with the measured step costs, setting ambiguous matches apart decoded 3% faster on grounded prompts
    and 2% on open ones. Their prior was then still 0.6, the untiered drafters', against first drafts kept 8-19%
    of the time (greedy, and sampled at `edge chat`'s settings), so each request verified its first ambiguous
    drafts until the estimate came down. Replaying the suite's outputs one request at a time (fresh) at AVX2's
    and AVX-512's pass costs, 0.15 took the worst request from 0.91x-0.93x to 0.94x-0.95x sampled on grounded
    prompts, 0.95x to 0.96x-0.97x sampled on open ones and 0.97x-1.00x to 0.98x-1.01x greedy on open ones;
    requests in a row (as in a session) decoded as fast, or 0.5-1.4% faster (greedy, grounded)."""
    return [
        Acceptance(first=0.6, more=0.6),
        Acceptance(first=0.15, more=0.6),
        Acceptance(first=0.6, more=0.6),
        Acceptance(first=0.75, more=0.75),
        Acceptance(first=0.9, more=0.9),
    ]


def expected_rate(acceptance: Acceptance, k: int, t_draft: float, t_step: float) -> float:
    """Expected tokens per second of steps that draft k tokens at t_draft each and then verify them in a
    synchronous pass of t_step (k = 0: one synchronous step per token)."""
    return acceptance.expected_tokens(k) / (k * t_draft + t_step)


def judged_cost(measured: float | None, alone: float | None) -> float | None:
    """A draft's cost for judging whether drafting could pay at all: as measured in the loop, else half its step
    timed alone (timed once; a drafter ruled out by it is never timed again)."""
    return measured if measured is not None else None if alone is None else alone / 2


@dataclass
class VerifyCost:
    """Seconds of a synchronous target pass over 1 + k positions as t_sync + k * t_extra, fitted by decayed
    least squares over every step, whatever its k, with the slope held to its last value where the steps do
    not tell it (a ridge: a run of equal k fixes only their sum).

    Before, t_sync came from the steps that drafted nothing, which stop once drafting pays, and t_extra was read
    off each step against it: one slow first step (25 ms against 5, measured on a cold process) then stuck in
    t_sync for the session, t_extra fell to 0, and only the longest matches were ever drafted.

    The line is the prior; each k also keeps its own decayed mean (`lengths`), which `predict` prefers once
    measured. Costs are not linear in k: on AVX-512 up to 12 positions share one pass over the weights, and a
    13th (12 drafts) splits the pass in two, measured +2 ms on SmolLM2 against ~0.7 ms for each position
    before it."""

    decay: float = 0.9
    ridge: float = 16.0
    """Pull of the last slope, in squared positions of spread: one step 4 positions from the mean."""
    band: float = 0.3
    """A step enters the fit at most this fraction slower than the fit predicted: a stall moves it a bounded
    amount, a machine that really got slower still moves it step by step. Faster steps enter as they are
    (nothing makes a step look faster than it ran; a cold first step must not linger)."""
    sums: list[float] = field(default_factory=lambda: [0.0] * 5)
    """Decayed sums of w, w k, w k^2, w t, w k t."""
    lengths: dict[int, list[float]] = field(default_factory=dict)
    """k -> decayed [sum of seconds, weight] of the steps that drafted k."""
    own_weight: float = 2.0
    """Steps of a k after which its own mean counts as much as the line."""
    least: float = 0.7
    """t_sync is at least this fraction of plain decoding's token (on a CPU the same pass; on a GPU, where plain
    decoding pipelines, more). Without it, a stalled first verify step (5 positions at 3.5x their cost)
    fitted a slope of ~2 passes a position; the steps after it drafted one token each, which fix only the
    line's value at k = 1 while the ridge held the slope, so the intercept sank to a tenth of a pass and no
    longer draft ever looked worth it (replayed on a noisy clock: 1 run in 8, 1.40x against 1.64x)."""
    fade: float = 0.97
    """Every step, each k's record fades by this much: a k not drafted for ~30 steps (its cost measured when
    the machine was busier, say) goes back to the line, not kept pessimistic for good."""

    def predict(self, k: int, t_sync: float, t_extra: float) -> float:
        """Seconds of a step drafting k: its own mean, blended with the line (t_sync + k t_extra) while few
        steps of that k were measured."""
        line = t_sync + k * t_extra
        total, weight = self.lengths.get(k, (0.0, 0.0))
        return (total + self.own_weight * line) / (weight + self.own_weight)

    @property
    def guessing(self) -> bool:
        """Whether the line's slope is a guess: steps were measured, but of one draft length only, so the slope
        comes from the one-position pass and that length, and a pass's cost need not be a line through them
        (with a BLAS under MLX, one position is a matrix-vector product and two a matrix product, 1.7x slower
        on an fp32 SmolLM2, and from there each further position costs ~3%). Estimates set by hand, with no
        step measured yet, are taken as they are."""
        return bool(self.lengths) and sum(k > 0 for k in self.lengths) < 2  # `lengths` keeps every k measured

    def optimistic(self, k: int, t_sync: float) -> float:
        """A low estimate of a step drafting k, from the lengths measured so far: straight lines between them
        (from one position at t_sync; below the cost of a pass whose cost per position never grows) and flat
        past the longest (a longer pass never costs less). While the line is a guess, the controller drafts
        by this, so it measures a length the line may have priced out."""
        points = sorted((n, total / weight) for n, (total, weight) in self.lengths.items() if n > 0 and weight > 0)
        below = (0, t_sync)
        for n, mean in points:
            if n >= k:
                return below[1] + (mean - below[1]) * (k - below[0]) / (n - below[0])
            below = (n, max(mean, below[1]))
        return below[1]

    def record(
        self, k: int, seconds: float, t_sync: float | None, t_extra: float | None, t_plain: float | None = None
    ) -> tuple[float, float | None]:
        """Add one step (k drafted positions, `seconds`) to the fit whose current output is (t_sync, t_extra);
        return the new output. Estimates set by hand (or carried from a request without sums) seed it; before
        any, a step over one position is expected to cost about a plain token."""
        if self.sums[0] == 0.0 and t_sync is not None:  # seed: two pseudo-steps, at k = 0 and k = 4
            self._add(0, t_sync)
            if t_extra is not None:
                self._add(4, t_sync + 4 * t_extra)
        if t_sync is not None and t_extra is not None:
            seconds = min(seconds, (1 + self.band) * self.predict(k, t_sync, t_extra))
        elif k == 0 and (t_sync or t_plain):
            seconds = min(seconds, (1 + self.band) * (t_sync or t_plain))
        self._add(k, seconds)
        for record in self.lengths.values():
            record[0], record[1] = self.fade * record[0], self.fade * record[1]
        total, weight = self.lengths.get(k, (0.0, 0.0))
        self.lengths[k] = [self.decay * total + seconds, self.decay * weight + 1.0]
        w, wk, wkk, wt, wkt = self.sums
        mean_k, mean_t = wk / w, wt / w
        spread, covariance = wkk - w * mean_k**2, wkt - w * mean_k * mean_t
        if t_extra is not None:
            slope: float | None = (covariance + self.ridge * t_extra) / (spread + self.ridge)
        else:
            slope = covariance / spread if spread > 1e-9 * w else None
        if slope is None:
            return mean_t, None
        slope = max(slope, 0.0)
        floor = max(0.1 * mean_t, self.least * (t_plain or 0.0))
        if mean_t - slope * mean_k < floor and mean_k > 0:  # the line through the mean from the floor
            return floor, max((mean_t - floor) / mean_k, 0.0)
        return mean_t - slope * mean_k, slope

    def _add(self, k: int, seconds: float) -> None:
        d = self.decay
        for i, v in enumerate((1.0, k, k * k, seconds, k * seconds)):
            self.sums[i] = d * self.sums[i] + v


@dataclass
class DraftLength:
    k_max: int = 12
    """At most this many drafts a step. Each length's cost is measured: on edge's AVX-512 kernel a pass of 12
    positions is one pass over the weights and 13 are two, and the controller judges whether a 12th draft
    pays (replaying SmolLM2's prompts with the measured costs, a limit of 16 did 1% worse than 12)."""
    k_start: int = 1
    """The first draft is short: a drafter slower than a target step is found out after one token."""
    probe_every: int = 16
    decay: float = 0.8
    """Weight of the past in the moving average of t_draft."""
    plain_decay: float = 0.9
    """Weight of the past in t_plain, per token timed: about the last 10 plain tokens."""
    accepts: list[Acceptance] = field(default_factory=tier_priors)
    """Acceptance per tier of proposal (`PromptLookup.tier`); a drafter without tiers has tier 0 only."""
    t_plain: float | None = None
    """Seconds per token of plain decoding as `generate` runs it: the rate to beat."""
    t_sync: float | None = None
    """Seconds of a synchronous target pass over one position (a step with nothing drafted)."""
    t_extra: float | None = None
    """Extra seconds per additional verified position."""
    t_draft: float | None = None
    """Seconds to draft one token."""
    t_draft_alone: float | None = None
    """Seconds of a draft step timed alone (a draft model's, when it was built): until drafts are timed, whether
    drafting could pay at all (`judged_cost`). Not a first estimate of t_draft: alone, a 4-bit copy of an fp16 SmolLM2 drafts in 3.7 ms, in the
    loop in 5-10 ms (OpenBLAS's threads spin after the target's pass), and the moving average would take many
    steps to climb from the lower figure."""
    adaptive: bool = True
    """False: always draft `k_start` tokens (for tests and fixed-length benchmarks)."""
    warmup: int = 4
    """Plain tokens decoded first, to measure t_plain."""
    steps_off: int = 0
    history: dict[int, int] = field(default_factory=dict)
    burst: int = 16
    """Plain tokens before the next probe while speculation is off; doubles after each probe that finds
    it still not paying (up to `max_burst`), back to `probe_every` once it pays."""
    max_burst: int = 128
    verify: VerifyCost = field(default_factory=VerifyCost)
    """The fit t_sync and t_extra come from."""

    def _avg(self, old: float | None, new: float, past: float | None = None, ceiling: float = 2.0) -> float:
        """old moved toward new, keeping `past` of it (default `decay`); new taken at most `ceiling` times old."""
        past = self.decay if past is None else past
        if old is None or old <= 0:
            return new if old is None else (1 - past) * new
        # a step the OS or another process slowed down (or a lucky one) moves the estimate by a bounded amount
        new = min(max(new, 0.5 * old), ceiling * old)
        return past * old + (1 - past) * new

    def can_pay(self, t_draft: float | None = None) -> bool:
        """False when even drafts that are always accepted could not beat plain decoding at any k (by the step
        costs as `choose` sees them: t_draft + t_extra >= t_plain said so for a BLAS target, whose t_extra from
        one and two positions is most of a step, while its longer drafts pay). `t_draft`: a draft's cost, if
        not this controller's drafter's."""
        if self.t_plain is None or self.t_sync is None:
            return True
        if t_draft is None:
            t_draft = judged_cost(self.t_draft, self.t_draft_alone) or 0.0
        return any((k + 1) * self.t_plain > k * t_draft + self.step_cost(k) for k in range(1, self.k_max + 1))

    @property
    def ruled_out(self) -> bool:
        """Never drafts: before any draft was timed, the drafter's step timed alone could not pay at any k."""
        return self.t_draft is None and self.t_draft_alone is not None and not self.can_pay()

    def choose(self, limit: int, tier: int = 0) -> int:
        """The draft length for the next step (0 = a plain step), at most `limit`, for a proposal of this
        tier (judged by the tier's own acceptance)."""
        if not self.adaptive:
            return max(0, min(self.k_start, limit))
        if limit <= 0 or self.t_plain is None or self.t_sync is None:  # measure plain decoding first
            return 0
        if self.ruled_out:
            return 0
        if self.t_extra is None:  # never drafted yet: measure it
            return min(self.k_start, limit)
        best_k, best_rate = 0, 1.0 / self.t_plain
        probe, probe_rate = 1, 0.0
        acceptance = self.tier_accepts(tier)
        # while the line is a guess, lengths up to half the limit: the low estimate is flat past the longest
        # length measured and favours the longest, and so early a step of 12 drafts (a 13-position pass, split
        # in two on the AVX-512 kernel) held the fitted slope high for long (replaying SmolLM2's grounded
        # outputs in the bench's order: 1.87x, against 1.93x with this limit; over 8 other orders the same)
        top = self.k_max // 2 if self.verify.guessing else self.k_max
        for k in range(1, min(top, limit) + 1):
            rate = expected_rate(acceptance, k, self.t_draft or 0.0, self.step_cost(k))
            if rate > probe_rate:
                probe, probe_rate = k, rate
            if rate > best_rate * 1.02:  # demand a small margin: noise should not switch drafting on
                best_k, best_rate = k, rate
        if best_k == 0:
            self.steps_off += 1
            if self.steps_off % self.probe_every == 0 and self.can_pay():
                return probe
        else:
            self.steps_off = 0
            self.burst = self.probe_every
        return best_k

    def tier_accepts(self, tier: int) -> Acceptance:
        """The acceptance of a tier; a drafter's tiers past the priors' share the last one."""
        return self.accepts[min(tier, len(self.accepts) - 1)]

    def step_cost(self, k: int) -> float:
        """Seconds of a synchronous target pass over k drafts (the last token's position, plus k)."""
        assert self.t_sync is not None
        if self.verify.guessing:
            return self.verify.optimistic(k, self.t_sync)
        return self.verify.predict(k, self.t_sync, self.t_extra or 0.0)

    def plain_burst(self, limit: int) -> int:
        """Tokens to decode plainly (as `generate` does) instead of a step: the first few of a request (measuring
        t_plain), and while speculation is off, until the next probe. 0 while measuring a synchronous step,
        and when not adaptive."""
        if not self.adaptive or limit <= 0:
            return 0
        if self.t_plain is None:
            return min(self.warmup, limit)
        if self.t_sync is None or (self.t_extra is None and not self.ruled_out):
            return 0
        n = min(self.burst, limit)
        self.burst = min(2 * self.burst, self.max_burst)
        self.steps_off = self.probe_every - 1  # the step after the burst probes again
        return n

    def record_plain(self, tokens: int, seconds: float) -> None:
        """Seconds of a plain burst of `tokens` intervals: plain decoding's real cost, what drafting must beat.
        Each token timed counts once, and the burst's mean enters at most `verify.band` slower than the estimate,
        as a verify step does: once every burst counted as much, and a single token stalled to twice its time
        on a shared host (20 against 9 ms) raised t_plain by a fifth, so that for the next several steps any
        draft with a 5% chance looked worth verifying (SmolLM2's "sky is blue" reply at 0.88x to 0.98x)."""
        past, ceiling = self.plain_decay ** max(tokens, 1), 1 + self.verify.band
        self.t_plain = self._avg(self.t_plain, seconds / max(tokens, 1), past, ceiling)

    def record(self, drafted: int, accepted: int, t_draft: float, t_verify: float, tier: int = 0) -> None:
        """Update the estimates after a synchronous step that drafted `drafted` tokens of a proposal of this
        tier and accepted `accepted`."""
        self.t_sync, self.t_extra = self.verify.record(drafted, t_verify, self.t_sync, self.t_extra, self.t_plain)
        if drafted == 0:
            return
        self.history[accepted] = self.history.get(accepted, 0) + 1
        self.tier_accepts(tier).record(drafted, accepted)
        self.t_draft = self._avg(self.t_draft, t_draft / drafted)


@dataclass
class StepCosts:
    """A model's measured step costs on this machine (facts of the model and machine, not of a prompt), kept
    on the model between requests so a new request need not measure them again before drafting."""

    t_plain: float | None
    t_sync: float | None
    t_extra: float | None
    verify: VerifyCost


@dataclass
class DrafterRecord:
    """What a drafter's last request measured of it: its cost per drafted token and how its drafts fared
    (decayed counts, so a few steps of a new request outweigh them). Kept on the drafter object, which a
    `Chat` reuses across turns: a draft model that does not pay is not re-learned from the prior each turn."""

    t_draft: float | None
    accepts: list[Acceptance]
    burst: int
    """Plain tokens before the next probe, as the last request left it, so a drafter found not to pay is not
    probed every 16 tokens from the start of each request; but at most half of `max_burst`, so each request
    probes within its first 64 tokens. Carried whole (128 tokens), it made whole replies plain: on an fp16
    SmolLM2, two unlucky early steps of self:4 switched it off for every later prompt (1.0x on the grounded
    prompts, against 1.4-1.7x when it was not)."""


def controller_for(module, drafter) -> DraftLength:
    """A fresh controller for one request: step costs from the last request on this model, the drafter's
    cost and acceptance from its own last request (else the priors)."""
    c = DraftLength(k_start=getattr(drafter, "first_k", 1))
    costs = getattr(module, "_edge_step_costs", None)
    if costs is not None:
        c.t_plain, c.t_sync, c.t_extra = costs.t_plain, costs.t_sync, costs.t_extra
        c.verify = copy.deepcopy(costs.verify)
    record = getattr(drafter, "_edge_record", None)
    if record is not None:
        c.t_draft, c.burst = record.t_draft, min(record.burst, c.max_burst // 2)
        c.accepts = copy.deepcopy(record.accepts)
    c.t_draft_alone = getattr(drafter, "step_s", None)  # a draft model's step, timed when it was built
    return c


def remember(module, drafter, c: DraftLength) -> None:
    if c.adaptive and c.t_plain is not None and c.t_sync is not None:
        module._edge_step_costs = StepCosts(
            c.t_plain, c.t_sync, c.t_extra, copy.deepcopy(c.verify)
        )  # an object: not an MLX parameter
        try:
            drafter._edge_record = DrafterRecord(c.t_draft, copy.deepcopy(c.accepts), c.burst)
        except AttributeError:  # a user's drafter object that takes no new attributes: it starts afresh
            pass
