"""The decode loop, in two layers.

`token_stream` yields token ids: prefill in fixed chunks (evaluating the cache and freeing scratch between
chunks), then decode with step n+1 queued (`mx.async_eval`) before token n is handed out, as mlx-lm's
`generate_step` does (edge's fused layers on a CPU decode step by step instead: `pipelines`).
`stream_events` sits on top: detokenizes (UTF-8 safe), holds back stop strings, honours cancellation and
the context limit, times each phase and yields typed events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import mlx.core as mx

from .errors import EdgeError
from .events import Done, DraftStats, Event, Stats, StopReason, Token
from .sampling import LogitsProcessor, Sampler, Sampling, make_processors, make_sampler, next_token
from .tokenizer import StopMatcher

if TYPE_CHECKING:
    from .model import Model

PREFILL_STEP = 512


def prefill(module, tokens: mx.array, cache: list, step: int = PREFILL_STEP) -> mx.array:
    """Run all but the last token through the model in chunks; return the last token, not yet fed."""
    while tokens.size > 1:
        n = min(step, tokens.size - 1)
        module(tokens[:n][None], cache=cache)
        mx.eval([c.state for c in cache])
        tokens = tokens[n:]
        mx.clear_cache()
    return tokens


def pipelines(module) -> bool:
    """Whether decoding queues step n+1 before handing out token n (mlx-lm's way): on a GPU that hides the
    building of the next step's graph. edge's fused layers on a CPU build ~35 graph nodes a token, and the
    overlap only makes that Python contend with the kernel's threads for the cores: synchronous steps
    decoded SmolLM2 3-8% faster on 2 cores (`edge bench` and its speculative prompt suite, each way in the
    same run)."""
    return mx.default_device() != mx.cpu or not hasattr(module, "decoder_stack")


def token_stream(
    module,
    prompt: list[int],
    cache: list,
    sampler: Sampler,
    processors: list[LogitsProcessor],
    max_tokens: int,
    history: list[int] | None = None,
    stop=None,
) -> Iterator[int]:
    """Yield up to `max_tokens` sampled ids for `prompt` (the tokens not yet in `cache`).

    `history` is every token before generation (reused ones included) for the penalties. Pipelined
    (`pipelines`), id n has been fed to the cache (step n+1 is queued) when it is handed out, except for the
    last one; synchronous, it is fed only when the next id is asked for. `stop` (no arguments) is asked
    before each next step starts; when it says yes, the current id is the last (the speculative loop ends a
    plain burst that way, wasting no step; synchronous, it has seen id n by then).
    """
    seen = mx.array(history if history is not None else prompt) if processors else None

    def logits_after(y: mx.array, generated: bool) -> mx.array:
        nonlocal seen
        logits = module(y[None], cache=cache)[:, -1, :]
        if processors:
            seen = mx.concatenate([seen, y]) if generated else seen
            for p in processors:
                logits = p(seen, logits)
        return logits

    y = prefill(module, mx.array(prompt), cache)
    if not pipelines(module):
        for n in range(max_tokens):
            token = next_token(sampler, logits_after(y, generated=n > 0))
            yield token
            if n + 1 >= max_tokens or (stop is not None and stop()):
                return
            y = mx.array([token])
        return
    y = sampler(logits_after(y, generated=False))
    mx.async_eval(y)
    for n in range(max_tokens):
        current = y
        last = n + 1 >= max_tokens or (stop is not None and stop())
        if not last:
            y = sampler(logits_after(current, generated=True))
            mx.async_eval(y)
        yield current.item()
        if last:
            return


def stream_events(
    model: Model,
    prompt: list[int],
    cache: list,
    sampling: Sampling,
    *,
    reused: int = 0,
    cancel: threading.Event | None = None,
    eos: set[int] | None = None,
    drafter=None,
    draft_length=None,
) -> Iterator[Event]:
    """Generate from `prompt` whose first `reused` tokens are already in `cache`; yield Token... then Done.

    `eos` overrides the tokenizer's end-of-sequence ids (the benchmark passes an empty set). With a
    `drafter` (see `edge.speculative`), tokens come from speculative decoding; the output is the same.
    `draft_length` (a `DraftLength`) overrides the adaptive draft-length controller.
    """
    context_limit = model.context_length
    if len(prompt) >= context_limit:
        raise EdgeError(f"the prompt has {len(prompt)} tokens; the context holds {context_limit}: shorten it.")
    room = context_limit - len(prompt)
    max_tokens = min(sampling.max_tokens, room)
    if sampling.seed is not None:
        mx.random.seed(sampling.seed)
    eos = model.tokenizer.eos_token_ids if eos is None else eos
    detok = model.tokenizer.detokenizer()
    stops = StopMatcher(sampling.stop)
    stats = Stats(
        prompt_tokens=len(prompt),
        reused_tokens=reused,
        prefill_tokens=len(prompt) - reused,
        context_limit=context_limit,
    )
    text, ids, unsent = [], [], []  # unsent: ids whose text has not gone out in a Token yet
    reason: StopReason = "length" if max_tokens == sampling.max_tokens else "context"
    mx.reset_peak_memory()
    start = time.perf_counter()
    first = last = start
    processors = make_processors(sampling)
    if drafter is not None:
        from .speculative.decode import speculative_token_stream

        stats.draft = DraftStats(drafter.name)
        ids_stream = speculative_token_stream(
            model.module,
            prompt[reused:],
            cache,
            sampling,
            processors,
            max_tokens,
            prompt,
            drafter,
            stats.draft,
            draft_length,
            eos,
        )
    else:
        ids_stream = token_stream(
            model.module, prompt[reused:], cache, make_sampler(sampling), processors, max_tokens, prompt
        )
    for token in ids_stream:
        last = time.perf_counter()
        if not ids:
            first = last
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
            break
        if token in eos:
            reason = "eos"
            ids.append(token)  # fed to the cache already; Chat needs it to reuse the cache next turn
            break
        ids.append(token)
        unsent.append(token)
        detok.add_token(token)
        piece, hit = stops.feed(detok.last_segment)
        if piece:  # a token with no text yet (part of a character, a held-back space) goes with the next piece
            text.append(piece)
            yield Token(piece, tuple(unsent))
            unsent.clear()
        if hit:
            reason = "stop"
            break
    ids_stream.close()  # a speculative stream settles its stats and measured costs as it closes
    if reason != "stop":
        detok.finalize()
        piece, hit = stops.feed(detok.last_segment)
        piece += "" if hit else stops.flush()
        if piece:
            text.append(piece)
            yield Token(piece, tuple(unsent))
    stats.ttft_s = first - start
    stats.prompt_tps = stats.prefill_tokens / max(stats.ttft_s, 1e-9)
    stats.generation_tokens = len(ids) - (reason == "eos")
    stats.decode_tps = (len(ids) - 1) / (last - first) if len(ids) > 1 and last > first else 0.0
    stats.total_s = time.perf_counter() - start
    stats.peak_memory_bytes = mx.get_peak_memory()
    stats.context_used = cache[0].offset if cache and hasattr(cache[0], "offset") else len(prompt) + len(ids)
    yield Done(reason, "".join(text), stats, tuple(ids))
