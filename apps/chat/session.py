"""One conversation as the app drives it: the stored record, an `edge.Chat`, and the reply stream.

`reply()` is the single place where a reply is streamed, saved as it grows and finished (send, regenerate
and edit-and-resend all go through it), so the stream-and-error handling is written once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import edge

from .store import ChatStore, Conversation, Message

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "max_tokens")
DEFAULT_SETTINGS = {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "min_p": 0.05, "max_tokens": 512, "draft": "auto"}
SAVE_EVERY_S = 0.25


def sampling_of(settings: dict) -> edge.Sampling:
    merged = {**DEFAULT_SETTINGS, **settings}
    return edge.Sampling(**{k: merged[k] for k in SAMPLING_KEYS})


@dataclass
class ReplyUpdate:
    """What the UI needs after each event: the text so far, and the final state when done."""

    text: str
    done: edge.Done | None = None
    notice: str | None = None
    tokens: int = 0
    """Tokens behind this update's new text (several per update when speculative drafts are accepted)."""


class Session:
    def __init__(self, store: ChatStore, conversation: Conversation, model: edge.Model):
        self.store, self.conversation, self.model = store, conversation, model
        history = [{"role": m.role, "content": m.content} for m in store.messages(conversation.id)]
        settings = {**DEFAULT_SETTINGS, **conversation.settings}
        self.chat = edge.Chat(
            model,
            system=conversation.system,
            sampling=sampling_of(settings),
            messages=history,
            draft=settings.get("draft"),
        )

    def cancel(self) -> None:
        self.chat.cancel()

    def reply(self, user_text: str | None, *, edit_index: int | None = None) -> Iterator[ReplyUpdate]:
        """Stream a reply: to a new user message, or again to the last one (user_text None: regenerate)."""
        cid = self.conversation.id
        if edit_index is not None:
            self.store.truncate(cid, edit_index)
            self.chat.truncate(edit_index)
        if user_text is not None:
            self.store.add(cid, "user", user_text)
            if self.conversation.title == "New chat":
                self.conversation.title = user_text.strip().splitlines()[0][:48] or "New chat"
                self.store.update(self.conversation)
            events = self.chat.send(user_text)
        else:
            stored = self.store.messages(cid)
            if stored and stored[-1].role == "assistant":
                self.store.truncate(cid, len(stored) - 1)
            events = self.chat.regenerate()
        message = self.store.add(cid, "assistant", "", status="streaming")
        yield from self._stream(events, message)

    def _stream(self, events, message: Message) -> Iterator[ReplyUpdate]:
        pieces: list[str] = []
        saved_at = time.monotonic()
        try:
            for event in events:
                if isinstance(event, edge.Token):
                    pieces.append(event.text)
                    if time.monotonic() - saved_at > SAVE_EVERY_S:  # what is shown is also on disk
                        message.content, saved_at = "".join(pieces), time.monotonic()
                        self.store.save_message(message)
                    yield ReplyUpdate("".join(pieces), tokens=max(len(event.token_ids), 1))
                elif isinstance(event, edge.Notice):
                    yield ReplyUpdate("".join(pieces), notice=event.message)
                elif isinstance(event, edge.Done):
                    message.content = event.text
                    message.status = "stopped" if event.reason == "cancelled" else "done"
                    message.stats = event.stats.as_dict()
                    self.store.save_message(message)
                    yield ReplyUpdate(event.text, done=event)
        finally:
            if message.status == "streaming":  # the consumer went away mid-reply
                message.content, message.status = "".join(pieces), "stopped"
                self.store.save_message(message)

    def apply_settings(self, settings: dict, system: str | None) -> None:
        from edge.speculative import make_drafter

        self.conversation.settings = settings
        self.conversation.system = system or None
        self.store.update(self.conversation)
        self.chat.system = self.conversation.system
        self.chat.sampling = sampling_of(settings)
        self.chat.drafter = make_drafter(settings.get("draft"), self.model)


def known_models(extra: list[str]) -> list[str]:
    """Converted models edge knows: its cache folder, plus paths given on the command line."""
    from edge.paths import models_dir

    found = [str(p) for p in sorted(models_dir().glob("*")) if (p / "config.json").exists()]
    return list(dict.fromkeys([*extra, *found]))


Log = Callable[[str], None]
