"""`Chat`: a conversation with one model, whose KV cache carries over between turns.

Each turn renders the whole history through the chat template, finds the longest prefix the cache
already holds, trims the cache back to it (moving an offset) and prefills only the rest. When the history
outgrows the context, the oldest turns go first (the system prompt stays) and a `Notice` says so.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from .cache import common_prefix, offset, trim_to
from .errors import EdgeError
from .events import Done, Event, Notice, Stats, Token
from .generate import stream_events
from .memory import wired_limit
from .model import Model
from .sampling import Sampling
from .tokenizer import Message


class Chat:
    """A multi-turn conversation.

    Args:
        model: a loaded `Model`.
        system: the system prompt, kept when old turns are dropped.
        sampling: default settings for every reply; `send(..., **settings)` overrides per turn.
        messages: an earlier history to continue (user/assistant messages).
        draft: speculative decoding for every reply ("lookup", "auto", "self[:bits]", a draft model).
    """

    def __init__(
        self,
        model: Model,
        system: str | None = None,
        sampling: Sampling | None = None,
        messages: list[Message] | None = None,
        draft=None,
    ):
        self.model = model
        self.drafter = model._drafter_for(draft)
        self.system = system
        self.sampling = sampling or Sampling(max_tokens=512)
        self.messages: list[Message] = list(messages or [])
        self.last_stats: Stats | None = None
        self._cache = model.make_cache()
        self._cached: list[int] = []
        """The tokens whose keys and values `_cache` holds, in order."""
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop the reply being streamed (safe from another thread); its partial text stays in the history."""
        self._cancel.set()

    def send(self, text: str, **settings) -> Iterator[Event]:
        """Add a user message and stream the reply (Token..., maybe Notice, then Done)."""
        self.messages.append({"role": "user", "content": text})
        return self._reply(self.sampling.with_(**settings))

    def regenerate(self, **settings) -> Iterator[Event]:
        """Drop the last reply and stream a new one to the same user message."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
        if not self.messages or self.messages[-1]["role"] != "user":
            raise EdgeError("there is no user message to reply to.")
        return self._reply(self.sampling.with_(**settings))

    def truncate(self, n_messages: int) -> None:
        """Keep only the first `n_messages` messages (to edit a message and resend from there)."""
        del self.messages[n_messages:]

    def _render(self) -> list[int]:
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        return self.model.tokenizer.render(system + self.messages)

    def _fit(self, reserve: int) -> tuple[list[int], int]:
        """Prompt ids that leave `reserve` tokens for the reply, dropping the oldest turns; (ids, dropped)."""
        dropped = 0
        ids = self._render()
        while len(ids) + reserve > self.model.context_length and len(self.messages) > 1:
            self.messages.pop(0)  # oldest first; drop a whole exchange when it starts with a user turn
            if self.messages and self.messages[0]["role"] == "assistant":
                self.messages.pop(0)
                dropped += 1
            dropped += 1
            ids = self._render()
        if len(ids) >= self.model.context_length:
            self.messages.pop()
            raise EdgeError(
                f"the message needs {len(ids)} tokens but the context holds {self.model.context_length}; shorten it."
            )
        return ids, dropped

    def _reuse(self, ids: list[int]) -> int:
        """Trim the cache to the longest prefix it shares with `ids` (at least one token left to feed)."""
        keep = min(common_prefix(self._cached, ids), len(ids) - 1)
        if not trim_to(self._cache, keep):  # a cache that cannot roll back starts over
            self._cache, keep = self.model.make_cache(), 0
        self._cached = self._cached[:keep]
        return keep

    def _reply(self, sampling: Sampling) -> Iterator[Event]:
        reserve = min(sampling.max_tokens, self.model.context_length // 4)
        ids, dropped = self._fit(reserve)
        if dropped:
            yield Notice(
                f"dropped the {dropped} oldest messages to fit the context of {self.model.context_length} tokens",
                "context",
            )
        reused = self._reuse(ids)
        self._cancel.clear()
        pieces: list[str] = []
        done: Done | None = None
        try:
            with wired_limit(self.model.plan):
                for event in stream_events(
                    self.model, ids, self._cache, sampling, reused=reused, cancel=self._cancel, drafter=self.drafter
                ):
                    if isinstance(event, Token):
                        pieces.append(event.text)
                    elif isinstance(event, Done):
                        done = event
                        self.last_stats = event.stats
                    yield event
        finally:
            generated = list(done.token_ids) if done else []
            self._cached = (ids + generated)[: offset(self._cache)]
            trim_to(self._cache, len(self._cached))  # stopped early: positions fed but not known here go
            reply = done.text if done else "".join(pieces)
            self.messages.append({"role": "assistant", "content": reply})
