"""The drafters alone, with no model: prompt lookup's search, index and tiers, and auto's probing of a second
drafter that does not pay; and greedy verification's reading of logits (the loop that runs them is tested in
test_speculative.py)."""

from __future__ import annotations

import mlx.core as mx
import pytest

import edge
from edge.speculative import AutoDrafter, DraftLength, PromptLookup, make_drafter
from edge.speculative.verify import accept_greedy


def test_prompt_lookup_matches_and_tiers():
    look = PromptLookup()
    tokens = [1, 2, 3, 4, 5, 6, 9, 9, 2, 3, 4, 5]
    assert look.propose(tokens, 3)[0] == [6, 9, 9]  # 4-gram 2 3 4 5 seen before: continue it
    assert look.tier(tokens) == 4
    single = [1, 2, 3, 7, 8, 3]
    assert look.propose(single, 2)[0] == [7, 8] and look.tier(single) == 2  # a single-token match
    assert look.propose([9, 2, 3, 7, 2, 3], 2)[0] == [7, 2] and look.tier([9, 2, 3, 7, 2, 3]) == 3  # two tokens
    # nothing matched: idle, tier 0 (ungraded: auto's second drafter proposes there)
    assert look.propose([1, 2, 3], 4)[0] == [] and look.tier([1, 2, 3]) == 0 and look.idle([1, 2, 3])
    ambiguous = [3, 7, 1, 3, 8, 2, 3]  # 3 was followed by 7, then by 8: the latest is proposed, in tier 1
    assert look.propose(ambiguous, 2)[0] == [8, 2] and look.tier(ambiguous) == 1 and not look.idle(ambiguous)
    assert look.tier(ambiguous + [8]) == 3  # 3 8 has one continuation
    assert look.tier([3, 7, 1, 3, 7, 2, 3]) == 2  # followed by 7 twice: not ambiguous
    assert look.propose([5, 6, 5, 6, 5], 8)[0] == [6, 5]  # the most recent occurrence, cut at the end


def _latest_longest_match(tokens: list[int], max_ngram: int = 5) -> tuple[int, int, bool]:
    """Reference for prompt lookup's search, by brute force: the longest suffix n-gram seen before (ending
    before the last token), at its latest start, and whether its occurrences were followed by different
    tokens."""
    for n in range(min(max_ngram, len(tokens) - 1), 0, -1):
        starts = [s for s in range(len(tokens) - n) if tokens[s : s + n] == tokens[-n:]]
        if starts:
            return n, starts[-1], len({tokens[s + n] for s in starts}) > 1
    return 0, 0, True


def test_prompt_lookup_index_agrees_with_a_scan_as_the_history_grows():
    """The incremental n-gram index gives the brute-force answer at every length of a growing history, for
    a new history, and for the same list cut back and grown again."""
    import random

    rng = random.Random(0)
    look = PromptLookup()
    ambiguous = 0
    for _ in range(20):
        tokens = [rng.randrange(6) for _ in range(rng.randrange(1, 4))]
        for _ in range(60):
            assert look._match(tokens) == _latest_longest_match(tokens), tokens
            ambiguous += look._match(tokens)[0] > 0 and look._match(tokens)[2]
            tokens += [rng.randrange(6) for _ in range(rng.randrange(1, 4))]
        del tokens[rng.randrange(1, len(tokens)) :]  # cut back in place (the index must not be trusted)
        tokens.append(rng.randrange(6))
        assert look._match(tokens) == _latest_longest_match(tokens)
    assert 0 < ambiguous < 20 * 60  # both kinds of match were checked


@pytest.mark.parametrize("cheap", [True, False])
def test_auto_probes_a_second_drafter_that_does_not_pay_ever_less_often(cheap):
    """Drafts that are rejected: probed after 32 skipped proposals, then 64, 128, ... (a self-draft's probe costs
    a catch-up prefill). Drafts that could not pay even if all were kept: never probed again."""

    class Instant:
        name, calls = "instant", 0

        def prepare(self, tokens):
            pass

        def sync(self, tokens):
            pass

        def propose(self, tokens, k, distribution):
            self.calls += 1
            return [0] * k, None

    second = Instant()
    auto = AutoDrafter(second)
    auto.lookup = PromptLookup(min_ngram=99)  # lookup never proposes
    auto.attach(DraftLength(t_plain=0.01, t_sync=0.01, t_extra=0.001))
    auto.t_second = 0.001 if cheap else 0.02  # a tenth of a plain token, or twice one
    for _ in range(20):
        auto.accepts.record(4, 0)
    for i in range(1000):
        auto.propose([1, 2, 3, i], 4, None)
    assert second.calls == (5 if cheap else 0)  # after 32, 96, 224, 480 and 992 skipped proposals


def test_auto_is_idle_only_without_a_second_drafter_worth_asking():
    assert AutoDrafter().idle([1, 2, 3]) and not AutoDrafter().idle([1, 2, 1])
    assert not AutoDrafter(second=PromptLookup()).idle([1, 2, 3])  # the second drafter is asked instead
    hopeless = AutoDrafter(second=PromptLookup())
    hopeless.attach(DraftLength(t_plain=0.01, t_sync=0.01, t_extra=0.001))
    hopeless.t_alone = 1.0  # a second drafter timed at 100 plain tokens a draft: as if there were none
    assert hopeless.idle([1, 2, 3]) and not hopeless.idle([1, 2, 1])


def test_auto_spec_errors():
    with pytest.raises(edge.EdgeError, match="after 'auto:'"):
        make_drafter("auto:lookup", None)


def test_greedy_verification_reads_bf16_logits():
    """NumPy, whose argmax verification takes, has no bf16: such logits are widened first (exactly)."""
    logits = mx.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], dtype=mx.bfloat16)
    assert accept_greedy(logits, [1]) == (1, 0) and accept_greedy(logits, [2]) == (0, 1)


def test_the_lookup_bound_replays_what_each_step_would_keep():
    """`speculative.bound`: replaying an output, each step keeps the proposed tokens the output agrees with
    (never the output's last token: the target's own token settles it), and the bound weighs each step's
    tokens against its pass's cost."""
    from edge.speculative.bound import bound, kept_per_step

    prompt = [1, 2, 3, 4, 5, 6, 7, 8]
    # 8 never occurred before: no proposal, 5 is the target's own. Then "5" proposes 6 7 8 5: 6 7 8 kept, 9 is
    # the target's. Then "9" has no match: 1 is the target's.
    output = [5, 6, 7, 8, 9, 1]
    assert kept_per_step(PromptLookup(), prompt, output, k=12) == [0, 3, 0]
    # two at a time: 6 7 kept, 8 the target's; then "5 6 7 8" proposes 5 6, and 9 disagrees
    assert kept_per_step(PromptLookup(), prompt, output, k=2) == [0, 2, 0, 0]
    assert kept_per_step(PromptLookup(), prompt, [5, 6, 7], k=12) == [0, 1]  # 7 ends the output: not a draft
    costs = [1.0, 1.2, 1.4, 1.6]
    assert bound([0, 3, 0], costs) == pytest.approx(6 / (1 + 1.6 + 1))
    assert bound([0, 0], costs) == 1.0


def test_any_match_keeps_what_the_best_earlier_occurrence_would():
    """`kept_by_any_match`, tree verification's ceiling: each step keeps the most of any earlier match's
    continuation; lookup proposes one of them (the latest occurrence of the longest suffix), so at the same
    history it never keeps more."""
    import random

    from edge.speculative.bound import kept_by_any_match, kept_per_step

    # "1" was followed by 2 3 and, later, by 4: lookup proposes 4 (kept 0, 2 is the target's), then "1 2"
    # proposes 3 (kept, 9 the target's); any match continues the first "1": 2 3 kept at once
    prompt, output = [1, 2, 3, 1, 4, 1], [2, 3, 9]
    assert kept_per_step(PromptLookup(), prompt, output, k=12) == [0, 1]
    assert kept_by_any_match(prompt, output, k=12) == [2]
    assert kept_by_any_match(prompt, output, k=1) == [1, 0]
    assert kept_by_any_match([5, 6, 7], [8, 9], k=12) == [0, 0]  # nothing to match
    rng = random.Random(0)
    for _ in range(200):
        history = [rng.randrange(5) for _ in range(rng.randrange(2, 40))]
        rest = [rng.randrange(5) for _ in range(rng.randrange(2, 12))]
        assert kept_by_any_match(history, rest, 8)[0] >= kept_per_step(PromptLookup(), history, rest, 8)[0]


def test_the_replayed_loop_is_the_real_loop_on_a_virtual_clock(monkeypatch):
    """`speculative.replay`: the loop and its controller, run on recorded greedy outputs with a stand-in target
    whose passes cost what they are told to. Nothing to look up: every token is a plain step, exactly 1.0x. A
    copied passage: faster than plain, and, where a pass's cost grows linearly with its positions (drafting
    every token that will be kept is then the best a step can do), at most the bound; the same on every run."""
    from edge.errors import EdgeError
    from edge.speculative import replay
    from edge.speculative.bound import bound, kept_per_step
    from edge.speculative.replay import replayed

    costs = [1.0 + 0.15 * n for n in range(13)]
    fresh = list(range(100, 140))  # a reply of tokens the prompt never had: lookup stays idle
    assert replayed(PromptLookup(), [[1, 2, 3]], [fresh], costs, eos=()) == 1.0
    prompt = list(range(1, 81))
    copies = [prompt[5:60], prompt[20:75] + [7], prompt[40:80]]  # passages of the prompt, one ending astray
    ratio = replayed(PromptLookup(), [prompt] * 3, copies, costs, eos=())
    steps = [n for c in copies for n in kept_per_step(PromptLookup(), prompt, c, 12)]
    assert 1.5 < ratio <= bound(steps, costs)
    assert replayed(PromptLookup(), [prompt] * 3, copies, costs, eos=()) == ratio

    # a loop that emitted other tokens than the recorded ones is caught, not priced
    class Wrong(replay._Recorded):
        def __call__(self, ids, cache):
            logits = super().__call__(ids, cache)
            return mx.concatenate([logits[..., 1:], logits[..., :1]], axis=-1)  # every id one lower

    monkeypatch.setattr(replay, "_Recorded", Wrong)
    with pytest.raises(EdgeError, match="not the recorded greedy output"):
        replayed(PromptLookup(), [prompt], [copies[0]], costs, eos=())
