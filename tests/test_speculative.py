"""Speculative decoding keeps the target's answer: identical greedy output for every drafter, the target's
distribution when sampling (test_speculative_sampling.py), exact cache rollback, and the edge cases at the limits."""

from __future__ import annotations

import builders
import mlx.core as mx
import numpy as np
import pytest

import edge
from edge.events import Done, DraftStats
from edge.generate import stream_events
from edge.sampling import Sampling
from edge.speculative import DraftLength, ModelDrafter, PromptLookup, make_drafter
from edge.speculative.decode import speculative_token_stream

REPEAT = "Repeat this: the quick brown fox jumps over the lazy dog. the quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def target(mlx_models):
    return edge.load(mlx_models["llama"])


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, tokenizer):
    """A different random model with the same tokenizer: its drafts are mostly rejected."""
    from edge.converters import convert

    root = tmp_path_factory.mktemp("other")
    builders.write_hf_model(root / "hf", "llama", tok=tokenizer, seed=99, num_hidden_layers=1)
    convert(root / "hf", root / "mlx", dtype="float32", progress=False)
    return edge.load(root / "mlx")


def done_of(events) -> Done:
    return [e for e in events if isinstance(e, Done)][-1]


def greedy_ids(model, prompt, draft=None, **kw) -> tuple[tuple[int, ...], Done]:
    done = done_of(model.stream(prompt, draft=draft, **kw))
    return done.token_ids, done


def loop_ids(target, prompt, drafter, stats, controller, max_tokens=40, eos=()):
    """The speculative loop itself on `prompt` (greedy, a fresh cache): its ids as they come."""
    return speculative_token_stream(
        target.module,
        prompt,
        target.make_cache(),
        Sampling(max_tokens=max_tokens),
        [],
        max_tokens,
        prompt,
        drafter,
        stats,
        controller,
        eos,
    )


@pytest.mark.parametrize("draft", ["lookup", "auto", "self:8", "self:4", "same", "other"])
def test_greedy_output_is_identical_for_every_drafter(target, other_model, draft):
    spec = {"same": target, "other": other_model}.get(draft, draft)
    for prompt in (REPEAT, "Once upon a time", [5, 6, 7, 5, 6, 7, 5, 6]):
        plain, _ = greedy_ids(target, prompt, max_tokens=40)
        spec_ids, done = greedy_ids(target, prompt, draft=spec, max_tokens=40)
        assert spec_ids == plain, (draft, prompt)
        assert isinstance(done.stats.draft, DraftStats)


def test_identical_draft_has_every_draft_accepted(target):
    prompt = target.encode(REPEAT)
    stats = DraftStats("same")
    fixed = DraftLength(k_start=4, adaptive=False)
    out = list(loop_ids(target, prompt, ModelDrafter(target.module, "same"), stats, fixed))
    plain = list(stream_events(target, prompt, target.make_cache(), Sampling(max_tokens=40), eos=set()))[-1].token_ids
    assert tuple(out) == plain
    assert stats.drafted > 0 and stats.accepted == stats.drafted and stats.acceptance_rate == 1.0
    assert stats.accepted_lengths == {4: stats.verify_steps}  # every step: all 4 drafts, plus the bonus token


class Charged:
    """A module whose every pass moves a virtual clock on by what it would cost: n positions cost `scale` (1 +
    0.1 (n - 1)) plain steps, on its own clock or on `on`'s. The loop and a drafter timed on it judge costs as
    on a real machine, but the same each run (timed for real, a draft as slow as the target sat on the
    break-even the test is about, and the host's noise decided: it failed 1 run in 15 on an idle machine, 9 in
    24 beside another job)."""

    def __init__(self, module, scale: float = 1.0, on: Charged | None = None):
        self.module, self.scale, self.base, self.now = module, scale, on or self, 0.0

    def __call__(self, ids: mx.array, cache=None):
        self.base.now += self.scale * (1.0 + 0.1 * (ids.shape[1] - 1))
        return self.module(ids, cache=cache)

    def __getattr__(self, name: str):
        if name.startswith("_edge"):  # what another test's requests measured on the module, in real seconds
            raise AttributeError(name)
        return getattr(self.module, name)

    def clock(self) -> float:
        return self.base.now


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_adaptive_length_switches_off_a_draft_only_when_it_cannot_pay(target, scale):
    """The identical model drafts perfectly. At a target step per token, with a verify pass costing more than a
    plain step, it can never pay, and the controller soon stops trying; at a tenth of that it pays, and the
    controller keeps drafting."""
    charged = Charged(target.module)
    drafter = ModelDrafter(Charged(target.module, scale, on=charged), "same", clock=charged.clock)
    assert drafter.step_s == pytest.approx(scale)  # timed on the virtual clock
    prompt, stats = target.encode(REPEAT), DraftStats("same")
    out = list(
        speculative_token_stream(
            charged,
            prompt,
            target.make_cache(),
            Sampling(max_tokens=60),
            [],
            60,
            prompt,
            drafter,
            stats,
            clock=charged.clock,
        )
    )
    plain = done_of(stream_events(target, prompt, target.make_cache(), Sampling(max_tokens=60), eos=set()))
    assert tuple(out) == plain.token_ids
    assert stats.accepted == stats.drafted > 0  # it was tried, and every draft was right
    if scale == 1.0:
        assert stats.plain_steps > 3 * stats.verify_steps
    else:
        assert stats.plain_steps < stats.verify_steps and stats.accepted > 40


def test_unrelated_draft_is_mostly_rejected_and_still_exact(target, other_model):
    ids = target.encode("Once upon a time")
    drafter = make_drafter(other_model, target)
    fixed = DraftLength(k_start=4, adaptive=False)  # keep drafting: the adaptive length would stop early
    done = done_of(
        stream_events(target, ids, target.make_cache(), Sampling(max_tokens=40), drafter=drafter, draft_length=fixed)
    )
    assert done.stats.draft.drafted >= 20 and done.stats.draft.acceptance_rate < 0.5
    assert done.token_ids == greedy_ids(target, "Once upon a time", max_tokens=40)[0]


def test_rollback_leaves_the_cache_of_plain_decoding(target, other_model):
    """After rejected drafts, the target's keys and values equal those of plain decoding of the same tokens."""
    prompt = target.encode("Once upon a time there")
    cache = target.make_cache()
    drafter = ModelDrafter(other_model.module, "other")
    stats = DraftStats("other")
    out = list(
        speculative_token_stream(
            target.module,
            prompt,
            cache,
            Sampling(max_tokens=20),
            [],
            20,
            prompt,
            drafter,
            stats,
            DraftLength(k_start=4),
        )
    )
    assert stats.drafted > stats.accepted  # some drafts were rejected and rolled back
    fed = (prompt + out)[: cache[0].offset]
    ref = target.make_cache()
    target.module(mx.array(fed)[None], cache=ref)
    for c, r in zip(cache, ref, strict=True):
        assert c.offset == r.offset
        n = r.offset
        for a, b in ((c.keys, r.keys), (c.values, r.values)):
            np.testing.assert_allclose(np.array(a[..., :n, :]), np.array(b[..., :n, :]), atol=1e-5)


def test_incompatible_draft_model_is_refused(target, tmp_path):
    from edge.converters import convert

    builders.write_hf_model(tmp_path / "hf", "llama", tok=builders.build_tokenizer(300))  # another vocabulary
    convert(tmp_path / "hf", tmp_path / "mlx", progress=False)
    with pytest.raises(edge.EdgeError, match="vocabulary"):
        make_drafter(str(tmp_path / "mlx"), target)
    with pytest.raises(edge.EdgeError, match="draft="):
        make_drafter("not-a-drafter", target)


def test_drafts_never_run_past_the_context(mlx_models):
    model = edge.load(mlx_models["llama"], context=48)
    prompt = model.encode(REPEAT)[:30]
    plain = done_of(stream_events(model, prompt, model.make_cache(), Sampling(max_tokens=100), eos=set()))
    spec = done_of(
        stream_events(model, prompt, model.make_cache(), Sampling(max_tokens=100), eos=set(), drafter=PromptLookup())
    )
    assert spec.reason == plain.reason == "context" and spec.token_ids == plain.token_ids and len(spec.token_ids) == 18


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 7])
def test_max_tokens_reached_mid_draft(target, max_tokens):
    drafter = ModelDrafter(target.module, "same")  # accepts everything: the limit falls inside a draft
    prompt = target.encode(REPEAT)
    spec = done_of(
        stream_events(target, prompt, target.make_cache(), Sampling(max_tokens=max_tokens), eos=set(), drafter=drafter)
    )
    plain = done_of(stream_events(target, prompt, target.make_cache(), Sampling(max_tokens=max_tokens), eos=set()))
    assert spec.token_ids == plain.token_ids and len(spec.token_ids) == max_tokens


def test_stop_string_inside_an_accepted_draft(target):
    prompt = target.encode(REPEAT)
    full = done_of(stream_events(target, prompt, target.make_cache(), Sampling(max_tokens=30), eos=set())).text
    start = next(i for i in range(2, len(full) - 2) if not any(c.isspace() for c in full[i : i + 2]))
    stop = full[start : start + 2]
    drafter = ModelDrafter(target.module, "same")
    spec = done_of(
        stream_events(
            target, prompt, target.make_cache(), Sampling(max_tokens=30, stop=(stop,)), eos=set(), drafter=drafter
        )
    )
    assert spec.reason == "stop" and spec.text == full[: full.index(stop)]


def test_chat_with_drafting_matches_fresh_generation(target):
    chat = edge.Chat(target, draft="lookup", sampling=Sampling(max_tokens=12))
    list(chat.send(REPEAT))
    second = done_of(chat.send("Again: the quick brown fox"))
    fresh = done_of(target.stream(chat.messages[:-1], max_tokens=12)).token_ids
    assert second.token_ids == fresh and second.stats.reused_tokens > 0


class FixedDrafter:
    """Deterministic drafts, as prompt lookup's (q one-hot): always the same ids."""

    name = "fixed"

    def prepare(self, tokens):
        pass

    def sync(self, tokens):
        pass

    def propose(self, tokens, k, distribution):
        return [2, 5, 2, 7][:k], None


def test_a_draft_spec_is_built_once_per_model(target):
    """`model.stream(..., draft="self:4")` quantizes the self-draft on the first call only (a draft folder is
    loaded once): the drafter is kept on the model per spec, with what it measured."""
    first = target._drafter_for("self:4")
    assert target._drafter_for("self:4") is first and target._drafter_for("lookup") is not first
    assert target._drafter_for(None) is None
    done = [e for e in target.stream("Once upon a time", max_tokens=6, draft="self:4") if isinstance(e, Done)][-1]
    assert done.stats.draft is not None and target._drafter_for("self:4") is first


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "step-by-step"])
def test_a_plain_burst_stopped_early_wastes_nothing(target, pipelined, monkeypatch):
    """The speculative loop ends a plain burst by starting no further step: the last id handed out is not yet
    in the cache, and decoding on from it gives exactly the uninterrupted output. Pipelined, `stop` is asked
    before id n is handed out (it has seen n ids); step by step, after (it has seen n + 1)."""
    import edge.generate
    from edge.generate import token_stream
    from edge.sampling import make_sampler

    monkeypatch.setattr(edge.generate, "pipelines", lambda module: pipelined)
    prompt = target.encode("Once upon a time")
    full = list(stream_events(target, prompt, target.make_cache(), Sampling(max_tokens=12), eos=set()))[-1].token_ids
    cache, got = target.make_cache(), []
    sampler = make_sampler(Sampling())
    for t in token_stream(target.module, prompt, cache, sampler, [], 12, prompt, stop=lambda: len(got) == 5):
        got.append(t)
    assert len(got) == (6 if pipelined else 5) and cache[0].offset == len(prompt) + len(got) - 1  # last: not fed
    for t in token_stream(target.module, got[-1:], cache, sampler, [], 12 - len(got), prompt + got):
        got.append(t)
    assert tuple(got) == full


def test_tokens_with_nothing_to_draft_are_plain_steps_with_no_step_chosen(target, monkeypatch):
    """Where prompt lookup has no match, the loop decodes plainly until it has one: the controller is not
    asked for a draft length (that cost ~1.5% of an open chat reply) and the output stays plain greedy's."""
    from edge.generate import token_stream
    from edge.sampling import make_sampler

    prompt = target.encode("Once upon a time")  # no token repeats: nothing to look up at first
    plain = list(token_stream(target.module, prompt, target.make_cache(), make_sampler(Sampling()), [], 40))
    look, stats = PromptLookup(), DraftStats("lookup")
    controller = DraftLength(k_start=4, t_plain=1.0, t_sync=1.0)  # no warmup: drafting is judged at once
    monkeypatch.setattr(target.module, "_edge_step_costs", None, raising=False)  # these costs are not to be kept
    tokens_seen, asked = [], []
    choose = controller.choose

    def spy(limit, tier=0):
        asked.append(look.idle(tokens_seen[-1]))
        return choose(limit, tier)

    controller.choose = spy
    real_tier = look.tier
    look.tier = lambda tokens: tokens_seen.append(tokens) or real_tier(tokens)
    out = list(loop_ids(target, prompt, look, stats, controller))
    assert out == plain
    assert asked and not any(asked)  # asked only where lookup had a proposal, and it had some
    assert stats.plain_steps >= 1 and stats.verify_steps >= 1  # tokens with nothing to look up, then drafts


class IdleDrafter(FixedDrafter):
    """Never has anything to propose: every token is plain decoding's."""

    def idle(self, tokens):
        return True


def test_a_reply_that_ends_inside_a_plain_burst_counts_its_tokens(target):
    """An end-of-turn id in the middle of a burst of plain tokens ends the reply there: `Done` still counts
    those tokens as plain steps (they were lost with the unfinished burst)."""
    prompt = target.encode("Once upon a time")
    plain = greedy_ids(target, prompt, max_tokens=12)[0]
    end = plain.index(plain[5])
    cache = target.make_cache()
    done = done_of(
        stream_events(target, prompt, cache, Sampling(max_tokens=12), eos={plain[end]}, drafter=IdleDrafter())
    )
    assert done.reason == "eos" and done.token_ids == plain[: end + 1]
    assert done.stats.draft.plain_steps == end + 1 and done.stats.draft.verify_steps == 0


def test_a_draft_model_catches_up_on_plain_tokens_apart_from_drafting(target):
    """Tokens decoded plainly since a draft model's last proposal are fed to its cache first and timed apart
    (`uncounted_s`, left out of its cost per drafted token); its drafts are the same as a draft kept up to date."""
    ids = target.encode(REPEAT)
    behind, current = ModelDrafter(target.module, "behind"), ModelDrafter(target.module, "current")
    behind.propose(ids[:5], 1, None)
    current.propose(ids[:-1], 1, None)  # its cache then holds ids[:-1]: up to date for a proposal at ids
    drafts = behind.propose(ids, 4, None)[0]
    assert behind.uncounted_s > 0 and drafts == current.propose(ids, 4, None)[0]
    assert current.uncounted_s == 0.0 and behind.cached == current.cached == ids + drafts[:-1]


def test_a_draft_model_too_slow_to_pay_is_never_fed_a_prompt(target):
    """A draft model whose own step (timed when built) perfect drafts could not repay: neither prefilled at each
    request nor asked to draft, alone or as auto's second (a 3-bit SmolLM2 on MLX's CPU kernels cost 1-3 s)."""
    from edge.speculative import AutoDrafter

    prompt, plain = target.encode(REPEAT), greedy_ids(target, REPEAT, max_tokens=40)[0]
    slow, second = ModelDrafter(target.module, "slow"), ModelDrafter(target.module, "slow second")
    assert 0 < slow.step_s < 1.0
    slow.step_s = second.step_s = 1.0  # a second a draft, against a ~1 ms target step
    auto = AutoDrafter(second)
    auto.lookup = PromptLookup(min_ngram=99)  # lookup never proposes: every draft would be the second's
    for drafter in (slow, slow, auto):
        cache = target.make_cache()
        done = done_of(stream_events(target, prompt, cache, Sampling(max_tokens=40), eos=set(), drafter=drafter))
        assert done.token_ids == plain and done.stats.draft.drafted == 0
    assert slow.cached == second.cached == [] and auto.second_steps == 0


class ScriptDrafter(FixedDrafter):
    """Drafts the given continuation of `prompt` (right as far as it goes)."""

    def __init__(self, prompt, continuation):
        self.prompt, self.continuation = prompt, continuation

    def propose(self, tokens, k, distribution):
        return self.continuation[len(tokens) - len(self.prompt) :][:k], None


def test_drafts_past_an_end_of_turn_id_are_not_verified(target):
    """The reply ends at an accepted end-of-turn id: drafts after it would be verified for nothing."""
    from itertools import islice

    from edge.generate import token_stream
    from edge.sampling import make_sampler

    prompt = target.encode("Once upon a time")
    plain = list(token_stream(target.module, prompt, target.make_cache(), make_sampler(Sampling()), [], 12))
    end = plain.index(plain[3])  # the first occurrence of the id taken as end of turn: drafts stop there
    for eos, drafted in (set(), 8), ({plain[end]}, end + 1):
        stats = DraftStats("script")
        steps = loop_ids(
            target, prompt, ScriptDrafter(prompt, plain), stats, DraftLength(k_start=8, adaptive=False), 12, eos
        )
        out = list(islice(steps, drafted + 1))  # the first step: its accepted drafts and the target's next id
        assert out == plain[: drafted + 1]
        assert (stats.drafted, stats.accepted, stats.verify_steps) == (drafted, drafted, 1)


# ---- auto: prompt lookup, then a second drafter while it pays ----


@pytest.mark.parametrize("second", ["self:8", "other"])
def test_auto_with_a_second_drafter_is_exact(target, other_model, second):
    spec = f"auto:{other_model.path}" if second == "other" else f"auto:{second}"
    for prompt in ("Once upon a time", REPEAT):
        plain, _ = greedy_ids(target, prompt, max_tokens=32)
        ids, done = greedy_ids(target, prompt, draft=spec, max_tokens=32)
        assert ids == plain and done.stats.draft.drafter.startswith("auto+")


class SlowDrafter(ModelDrafter):
    """A drafter that costs far more per token than a target step: auto must stop asking it."""

    def propose(self, tokens, k, distribution):
        import time

        time.sleep(0.05)
        return super().propose(tokens, k, distribution)


def test_auto_stops_using_a_second_drafter_that_does_not_pay(target):
    from edge.speculative import AutoDrafter

    slow = SlowDrafter(target.module, "slow")
    slow.step_s = 1e-4  # timed alone it looks cheap (a stalled timing could rule it out): only the loop stops it
    auto = AutoDrafter(slow)
    auto.lookup = PromptLookup(min_ngram=99)  # lookup never proposes: every draft would be the second drafter's
    prompt = target.encode("Once upon a time")
    done = done_of(stream_events(target, prompt, target.make_cache(), Sampling(max_tokens=40), eos=set(), drafter=auto))
    assert done.token_ids == greedy_ids(target, prompt, max_tokens=40)[0]
    assert 1 <= auto.second_steps <= 2  # measured once (plus at most a probe), then not asked again
    assert not auto.second_pays(4)  # 50 ms a proposal against a ~1 ms target step


@pytest.mark.parametrize("draft", ["lookup", "auto"])
def test_sampling_with_prompt_lookup_gives_plain_samplings_text(target, draft):
    """Lookup's drafts are deterministic: verification draws each position's token as plain sampling does
    (one uniform number each, in order) and keeps drafts while they match, so with a seed the text is plain
    sampling's own, token for token, whatever was drafted."""
    drafted = 0
    for prompt in (REPEAT, [5, 6, 7, 5, 6, 7, 5, 6]):
        for seed in range(3):
            settings = dict(max_tokens=40, temperature=0.8, top_p=0.95, seed=seed)
            plain, _ = greedy_ids(target, prompt, **settings)
            ids, done = greedy_ids(target, prompt, draft=draft, **settings)
            assert ids == plain, (prompt, seed)
            drafted += done.stats.draft.drafted
    assert drafted > 0  # drafts were verified, not just plain bursts
