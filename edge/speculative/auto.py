"""`draft="auto"`: prompt lookup always; when it has nothing to propose, a second drafter (a draft model or the
lower-bit self-draft, `draft="auto:self:4"` or `"auto:PATH"`) while that second drafter is measured to pay.

The second drafter's acceptance is measured here, from the history the target settled on (how many of its
drafts survived); its draft cost is timed here; the verify costs come from the loop's own controller. It is
used only while its expected tokens per second beat plain decoding, and re-probed now and then: after 32
proposals it skipped, then twice as many after each probe that finds it still not paying (up to 1024; a
probe of a self-draft catches its cache up on every token since the last, as costly as a prefill). A second
drafter that could not pay even with every draft kept (`judged_cost`: as measured, else half its step timed
alone) is not asked again, and auto is then idle wherever lookup is, as without one: a 3-bit copy of SmolLM2
on MLX's own CPU kernels drafts at 112 ms a token against the 4-bit target's 3.4 ms, and its probes (a
catch-up at 70 ms a token, then the drafts) made whole replies decode at 26-34 tok/s against 290.
"""

from __future__ import annotations

import time

from ..sampling import Candidates
from .adaptive import Acceptance, DraftLength, expected_rate, judged_cost
from .drafters import PromptLookup


class AutoDrafter:
    probe_every = 32
    max_probe_every = 1024

    def __init__(self, second=None):
        self.lookup = PromptLookup(name="lookup")
        self.second = second
        self.name = "auto" if second is None else f"auto+{second.name}"
        self.first_k = self.lookup.first_k
        self.controller: DraftLength | None = None
        self.accepts = Acceptance()  # the second drafter's, measured from the settled history
        self.t_second: float | None = None
        self.t_alone: float | None = getattr(second, "step_s", None)  # timed when built: `hopeless` until measured
        self._hopeless = False
        self.skipped = 0
        self.next_probe = self.probe_every
        self._pending: tuple[int, list[int]] | None = None
        self.second_steps = 0
        self.uncounted_s = 0.0
        """Seconds of the last proposal the loop's controller does not count as drafting: those spent in the
        second drafter, whose cost auto judges itself (the controller would switch lookup off too)."""

    @property
    def deterministic(self) -> bool:
        """Lookup alone: sampled with a seed, the output is plain sampling's own (`PromptLookup`)."""
        return self.second is None

    def attach(self, controller: DraftLength) -> None:
        """The loop's controller, whose measured verify costs decide whether the second drafter pays."""
        self.controller = controller

    def tier(self, tokens: list[int]) -> int:
        return self.lookup.tier(tokens)

    def idle(self, tokens: list[int]) -> bool:
        """Nothing to propose: lookup has no match and there is no second drafter worth asking instead."""
        return self.lookup.idle(tokens) and (self.second is None or self.hopeless())

    def prepare(self, tokens: list[int]) -> None:
        self._pending = None  # the last request's drafts are not this one's to account
        if self.second is not None:
            self.second.prepare(tokens)

    def sync(self, tokens: list[int]) -> None:
        self._account(tokens)
        if self.second is not None:
            self.second.sync(tokens)

    def _account(self, tokens: list[int]) -> None:
        """Count how many of the second drafter's last drafts the target kept."""
        if self._pending is None or len(tokens) <= self._pending[0]:
            return
        start, drafts = self._pending
        kept = 0
        while kept < len(drafts) and start + kept < len(tokens) and tokens[start + kept] == drafts[kept]:
            kept += 1
        self.accepts.record(len(drafts), kept)
        self._pending = None

    def second_pays(self, k: int) -> bool:
        c = self.controller
        if c is None or c.t_plain is None or c.t_sync is None or self.t_second is None:
            return True  # not measured yet: try it
        rate = expected_rate(self.accepts, k, self.t_second, c.step_cost(k))
        return rate > 1.02 / c.t_plain

    def hopeless(self) -> bool:
        """Too slow to pay at any draft length even with every draft kept; once found, for good (it is not asked
        again, so nothing would change the verdict but the target's own costs drifting)."""
        if not self._hopeless and self.controller is not None:
            t = judged_cost(self.t_second, self.t_alone)
            self._hopeless = t is not None and not self.controller.can_pay(t)
        return self._hopeless

    def propose(self, tokens: list[int], k: int, distribution) -> tuple[list[int], list[Candidates] | None]:
        self._account(tokens)
        self.uncounted_s = 0.0
        drafts, _ = self.lookup.propose(tokens, k)
        if drafts or self.second is None or k <= 0:
            return drafts, None
        if self.hopeless():
            return [], None
        if not self.second_pays(k):
            self.skipped += 1
            if self.skipped < self.next_probe:
                return [], None
            self.skipped, self.next_probe = 0, min(2 * self.next_probe, self.max_probe_every)
        else:
            self.next_probe = self.probe_every
        start = time.perf_counter()
        drafts, q = self.second.propose(tokens, k, distribution)
        self.uncounted_s = time.perf_counter() - start
        per_token = (self.uncounted_s - getattr(self.second, "uncounted_s", 0.0)) / max(len(drafts), 1)
        self.t_second = per_token if self.t_second is None else 0.8 * self.t_second + 0.2 * per_token
        self._pending = (len(tokens), drafts)
        self.second_steps += 1
        return drafts, q
