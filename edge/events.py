"""Typed events a generation streams: text pieces, notices, and one final `Done` with `Stats`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

StopReason = Literal["eos", "stop", "length", "cancelled", "context"]


@dataclass(frozen=True)
class Token:
    """A piece of generated text (never a broken UTF-8 character, never part of a stop string)."""

    text: str
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Notice:
    """Something the user should know that is not an error, e.g. old turns dropped to fit the context."""

    message: str
    kind: str = "info"


@dataclass
class Stats:
    """Figures of one generation; `Done.stats` carries them."""

    prompt_tokens: int = 0
    """Prompt tokens the model had to see for this reply, reused ones included."""
    reused_tokens: int = 0
    """Prompt tokens whose KV cache was reused from earlier turns (not prefilled again)."""
    prefill_tokens: int = 0
    """Prompt tokens actually prefilled for this reply (prompt_tokens - reused_tokens)."""
    prompt_tps: float = 0.0
    generation_tokens: int = 0
    decode_tps: float = 0.0
    ttft_s: float = 0.0
    """Time to first token: from the call to the first token being ready."""
    total_s: float = 0.0
    peak_memory_bytes: int = 0
    context_used: int = 0
    context_limit: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"prompt {self.prompt_tokens} tok ({self.reused_tokens} reused) at {self.prompt_tps:.1f} tok/s, "
            f"decode {self.generation_tokens} tok at {self.decode_tps:.1f} tok/s, "
            f"ttft {self.ttft_s * 1000:.0f} ms, peak {self.peak_memory_bytes / 2**20:.0f} MiB"
        )


@dataclass(frozen=True)
class Done:
    """The last event of every stream."""

    reason: StopReason
    text: str
    stats: Stats = field(default_factory=Stats)
    token_ids: tuple[int, ...] = ()
    """Every generated id: those whose text a stop string withheld, and the end-of-turn id when it ended on one."""


Event = Token | Notice | Done
