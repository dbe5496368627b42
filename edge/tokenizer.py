"""Tokenizer: mlx-lm's wrapper (transformers' jinja chat templates, UTF-8-safe streaming detokenizers), plus
what edge adds: a plain chat fallback with a warning, prompt normalisation, and stop-string holding."""

from __future__ import annotations

import warnings
from pathlib import Path

from .errors import ModelFormatError

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


class Tokenizer:
    def __init__(self, wrapper):
        self.hf = wrapper
        self._warned = False

    @classmethod
    def load(cls, folder: Path, eos_token_ids=None) -> Tokenizer:
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        if not any((folder / n).exists() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            raise ModelFormatError(f"{folder} has no tokenizer (tokenizer.json); copy it from the source model.")
        try:
            return cls(load_tokenizer(folder, eos_token_ids=eos_token_ids))
        except (OSError, ValueError) as e:
            raise ModelFormatError(f"{folder}: the tokenizer files could not be loaded ({e}).") from None

    @property
    def has_chat_template(self) -> bool:
        return bool(self.hf.has_chat_template)

    @property
    def eos_token_ids(self) -> set[int]:
        return set(self.hf.eos_token_ids)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids)

    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation, through the model's chat template (or a plain fallback)."""
        if self.has_chat_template:
            return list(self.hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt))
        if not self._warned:
            warnings.warn("this model has no chat template; using a plain 'role: text' layout", stacklevel=3)
            self._warned = True
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return self.encode(text + ("assistant:" if add_generation_prompt else ""))

    def detokenizer(self):
        """A fresh streaming detokenizer (holds back incomplete UTF-8 characters)."""
        return self.hf.detokenizer


def as_messages(prompt: str | list[Message], system: str | None) -> list[Message]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


class StopMatcher:
    """Holds back streamed text that could still become a stop string, so none is ever emitted, even in part."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit now, whether a stop string was hit)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = 0
        for s in self.stops:  # the longest tail of pending that starts some stop string
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
