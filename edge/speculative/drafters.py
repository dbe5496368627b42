"""Drafters: cheap proposals of the next k tokens, which the target then verifies in one pass.

Every drafter has three verbs: `prepare(tokens)` before the first step (a draft model rolls its cache back to
what the new history shares with it, and feeds the rest at its first proposal), `propose(tokens, k)` returns
up to k draft ids and, for sampling, the draft distribution each was drawn from (None means deterministic: q
is one-hot), and `sync(tokens)` tells it the history the target settled on, so a drafter with a KV cache can
roll back to the common prefix.
A drafter may also grade its next proposal, `tier(tokens)` (0 the least sure): the loop judges each tier's
drafts apart; and say when it has none, `idle(tokens)`: the loop then decodes plainly until it has.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import mlx.core as mx

from ..cache import common_prefix, trim_to
from ..errors import EdgeError
from ..sampling import Candidates, argmax_ids

if TYPE_CHECKING:
    from ..model import Model


class Drafter(Protocol):
    name: str

    def prepare(self, tokens: list[int]) -> None: ...

    def propose(self, tokens: list[int], k: int, distribution) -> tuple[list[int], list[Candidates] | None]: ...

    def sync(self, tokens: list[int]) -> None: ...


AMBIGUOUS = -1
"""In the lookup index: the n-gram has been followed by different tokens (token ids are never negative)."""


@dataclass
class PromptLookup:
    """Prompt-lookup decoding: continue the most recent earlier occurrence of the longest n-gram suffix.

    No model: the n-grams of the history are indexed as it grows (a dictionary per n from each n-gram to its
    latest start), so a step's search is a few lookups, not a scan (a NumPy scan of a few hundred tokens
    cost 0.3 ms a step, 6% of a decode step). Proposals come in tiers, which the loop judges apart: tier 1
    when the matched n-gram has been followed by different tokens, else 2 + how many of `tiers` the match
    length reaches (tier 0, ungraded, is nothing matched: `auto`'s second drafter proposes there).
    Replaying SmolLM2's greedy benchmark outputs, the first drafted token of an ambiguous single-token match
    was right 8-25% of the time on grounded prompts, of an unambiguous one in the prompt 73%; of a two- or
    three-token match 56-82%, of a longer one 92-95%.
    """

    max_ngram: int = 5
    min_ngram: int = 1
    tiers: tuple[int, ...] = (2, 4)
    """Match lengths at which an unambiguous proposal moves up a tier (tier 2 below the first)."""
    name: str = "lookup"
    deterministic = True
    """Its drafts depend on the history alone: sampled with a seed, the output is plain sampling's own."""
    first_k: int = 4
    """Proposals are free, so the first step can draft several (on a CPU with edge's kernels verifying 2
    positions costs ~10% more than 1, each further one ~15-20%: a 1-token probe would misjudge the cost)."""

    _last: tuple = field(default=(None, -1, (0, 0, True)), repr=False, compare=False)
    """The last search: the loop asks for a match's tier, then for its drafts, on the same history."""
    _index: dict = field(default_factory=dict, repr=False, compare=False)
    """n -> {n-gram: (start of its latest occurrence that has a token after it, that token, or AMBIGUOUS once
    another occurrence was followed by a different one)}, for the history below."""
    _indexed: tuple = field(default=(None, 0, None), repr=False, compare=False)
    """(the history list, how many of its first tokens the index covers as n-gram ends, the last of them)."""

    def _match(self, tokens: list[int]) -> tuple[int, int, bool]:
        """(n, start, ambiguous): the longest n-gram suffix of `tokens` that occurred before with something
        after it, at its most recent such occurrence, and whether its occurrences were followed by different
        tokens; (0, 0, True) if none."""
        if self._last[0] is tokens and self._last[1] == len(tokens):  # the loop's history only grows
            return self._last[2]
        found = self._search(tokens)
        self._last = (tokens, len(tokens), found)
        return found

    def _search(self, tokens: list[int]) -> tuple[int, int, bool]:
        if len(tokens) < self.min_ngram + 1:
            return 0, 0, True
        self._extend(tokens)
        for n in range(min(self.max_ngram, len(tokens) - 1), self.min_ngram - 1, -1):
            entry = self._index[n].get(tuple(tokens[-n:]))
            if entry is not None:
                return n, entry[0], entry[1] == AMBIGUOUS
        return 0, 0, True

    def _extend(self, tokens: list[int]) -> None:
        """Index the n-grams that end before the last token (each has a token after it), from where the index
        stopped; a history that is not the one indexed (a new request, or one cut back) is indexed afresh."""
        seen, done, last = self._indexed
        if seen is not tokens or done > len(tokens) or (done and tokens[done - 1] != last):
            self._index = {n: {} for n in range(self.min_ngram, self.max_ngram + 1)}
            done = 0
        for end in range(done, len(tokens) - 1):
            after = tokens[end + 1]
            for n in range(self.min_ngram, min(self.max_ngram, end + 1) + 1):
                index, gram = self._index[n], tuple(tokens[end - n + 1 : end + 1])
                before = index.get(gram)
                index[gram] = (end - n + 1, after if before is None or before[1] == after else AMBIGUOUS)
        done = max(done, len(tokens) - 1)
        self._indexed = (tokens, done, tokens[done - 1] if done else None)

    def propose(self, tokens: list[int], k: int, distribution=None) -> tuple[list[int], None]:
        n, start, _ = self._match(tokens) if k > 0 else (0, 0, True)
        return (tokens[start + n : start + n + k] if n else []), None

    def tier(self, tokens: list[int]) -> int:
        n, _, ambiguous = self._match(tokens)
        return 0 if n == 0 else 1 if ambiguous else 2 + sum(n >= t for t in self.tiers)

    def idle(self, tokens: list[int]) -> bool:
        """Nothing to propose: no n-gram suffix of `tokens` occurred before."""
        return self._match(tokens)[0] == 0

    def prepare(self, tokens: list[int]) -> None:
        pass

    def sync(self, tokens: list[int]) -> None:
        pass


class ModelDrafter:
    """A smaller model (or a lower-bit copy of the target) with its own KV cache, drafting autoregressively."""

    def __init__(self, module, name: str, clock: Callable[[], float] = time.perf_counter):
        """`clock` times its steps, as the loop's (a test runs both on one virtual clock)."""
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache

        self.module, self.name, self.clock = module, name, clock
        self.first_k = 1  # a draft model may be slower than the target: find out after one token
        self.cache = make_prompt_cache(module)
        if not can_trim_prompt_cache(self.cache):
            raise EdgeError(f"draft model '{name}' has a cache that cannot roll back; it cannot draft.")
        self.cached: list[int] = []
        self.uncounted_s = 0.0
        """Seconds of the last proposal spent catching the cache up (see `propose`): not a cost per draft."""
        self.step_s = self._time_step()
        """Seconds of one draft step, timed here: a drafter far slower than the target (a 3-bit copy of
        SmolLM2 on MLX's own CPU kernels: 112 ms a draft against the 4-bit target's 3.4 ms a token) is known
        before it is fed a prompt (its first prompt took 3 s, 70 ms a token)."""

    def _time_step(self) -> float:
        """One token's step on the empty cache, the second of two (the first can be a cold start's)."""
        for token in (0, 0):
            start = self.clock()
            mx.eval(self.module(mx.array([[token]]), cache=self.cache))
        seconds = self.clock() - start
        trim_to(self.cache, 0)
        return seconds

    def prepare(self, tokens: list[int]) -> None:
        """Roll the cache back to what it shares with a new request's history; the rest is fed at the first
        proposal (`propose`). Prefilled here, a drafter measured not to pay still cost a prefill at every
        request: a 3-bit copy of SmolLM2 made each reply start 1 to 3 s late, though it never drafted again."""
        self.sync(tokens)

    def _fill(self, tokens: list[int], end: int) -> float:
        """Feed the cache `tokens[:end]` (it holds a prefix of them), as a prompt is prefilled; the seconds
        that took (0 when it already held them)."""
        from ..generate import prefill

        if end <= len(self.cached):
            return 0.0
        start = self.clock()
        prefill(self.module, mx.array(tokens[len(self.cached) : end + 1]), self.cache)
        self.cached = list(tokens[:end])
        return self.clock() - start

    def sync(self, tokens: list[int]) -> None:
        keep = common_prefix(self.cached, tokens)
        trim_to(self.cache, keep)  # trimmable: checked in __init__
        self.cached = self.cached[:keep]

    def propose(self, tokens: list[int], k: int, distribution) -> tuple[list[int], list[Candidates] | None]:
        """Draft k tokens; the cache ends holding tokens + all drafts but the last (not yet fed).

        Settled tokens the cache lacks beyond the usual two (the last kept draft and the target's own token),
        such as a new request's prompt or a burst of plain decoding, are fed first and timed apart
        (`uncounted_s`): a one-off cost of drafting again, not one per drafted token. Counted per token, 4 plain
        tokens caught up made an 8-bit SmolLM2's 4-bit copy cost more than a target step after its first draft,
        and it was never tried again."""
        self.uncounted_s = 0.0
        if k <= 0:
            return [], None
        self.sync(tokens)
        self.uncounted_s = self._fill(tokens, len(tokens) - 2)
        feed = tokens[len(self.cached) :]
        drafts, qs = [], []
        for _ in range(k):
            logits = self.module(mx.array(feed)[None], cache=self.cache)[0, -1]
            self.cached += feed
            if distribution is None:
                token = int(argmax_ids(logits))
            else:
                q = distribution(logits[None])[0]
                qs.append(q)
                token = q.draw(distribution.rng)
            feed = [token]
            drafts.append(token)
        return drafts, (qs or None)


def check_compatible(target: Model, draft: Model) -> None:
    """Same vocabulary and special tokens, or a clear error naming the mismatch."""
    t, d = target.tokenizer, draft.tokenizer
    if t.vocab_size != d.vocab_size:
        raise EdgeError(
            f"draft model {draft.path.name} has a vocabulary of {d.vocab_size} tokens; the target has {t.vocab_size}."
        )
    if t.eos_token_ids != d.eos_token_ids:
        raise EdgeError(
            f"draft model {draft.path.name} ends turns with ids {sorted(d.eos_token_ids)}; the target with {sorted(t.eos_token_ids)}."
        )
    probe = "Hello, world! 123 <|im_end|>"
    if t.encode(probe, add_special_tokens=False) != d.encode(probe, add_special_tokens=False):
        raise EdgeError(
            f"draft model {draft.path.name} tokenizes text differently from the target; use a draft with the same tokenizer."
        )


def float_weights(module) -> dict[str, mx.array]:
    """The module's weights with quantized layers dequantized (fp32, exact), without changing the module."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    out: dict[str, mx.array] = {}
    for path, m in module.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            s, b = m.scales.astype(mx.float32), m.biases.astype(mx.float32)
            out[f"{path}.weight"] = mx.dequantize(m.weight, s, b, group_size=m.group_size, bits=m.bits)
        elif hasattr(m, "dequantized"):  # edge's packed layers (kernels/quantized.py)
            out[f"{path}.weight"] = m.dequantized()
    for name, p in tree_flatten(module.parameters()):
        base = name.rsplit(".", 1)[0]
        if name.endswith((".scales", ".biases")) and f"{base}.weight" in out or name in out:
            continue
        out[name] = p
    return out


def lower_bit_copy(target: Model, bits: int, group_size: int = 64) -> ModelDrafter:
    """The target's own weights quantized in memory to `bits` (e.g. 4-bit drafting for an fp32/8-bit target)."""
    import mlx.nn as nn

    from ..architecture import skeleton

    module = skeleton(target.config, target.path)
    module.load_weights(list(float_weights(target.module).items()))

    def quantizable(path, m):
        return hasattr(m, "to_quantized") and m.weight.shape[-1] % group_size == 0

    nn.quantize(module, group_size=group_size, bits=bits, class_predicate=quantizable)
    module.set_dtype(mx.float32)  # fp32 scales: MLX's CPU quantized kernels are far slower with fp16
    if mx.default_device() == mx.cpu:
        from ..kernels import fuse, use_kernels

        if use_kernels(module):  # 4/8-bit drafts run on edge's CPU kernels where they are built
            fuse(module, target.context_length)
    mx.eval(module.parameters())
    return ModelDrafter(module, f"self-{bits}bit")
