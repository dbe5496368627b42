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
    """The ids this piece's text came from: the newest, and any before it that had no text of their own yet
    (part of a character, a space or newline the detokenizer holds back)."""


@dataclass(frozen=True)
class Notice:
    """Something the user should know that is not an error, e.g. old turns dropped to fit the context."""

    message: str
    kind: str = "info"


@dataclass
class DraftStats:
    """What speculative decoding did in one generation."""

    drafter: str
    drafted: int = 0
    accepted: int = 0
    verify_steps: int = 0
    """Target passes that verified at least one drafted token."""
    plain_steps: int = 0
    """Target passes with nothing drafted (speculation off, or no proposal)."""
    accepted_lengths: dict[int, int] = field(default_factory=dict)
    """Histogram: accepted drafts per verify step -> how many steps."""
    draft_s: float = 0.0
    verify_s: float = 0.0

    def record(self, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        self.draft_s += draft_s
        self.verify_s += verify_s
        if drafted == 0:
            self.plain_steps += 1
            return
        self.verify_steps += 1
        self.drafted += drafted
        self.accepted += accepted
        self.accepted_lengths[accepted] = self.accepted_lengths.get(accepted, 0) + 1

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        """Accepted drafts per verify step (each step also emits one target token)."""
        return self.accepted / self.verify_steps if self.verify_steps else 0.0

    def __str__(self) -> str:
        return (
            f"{self.drafter}: {self.accepted}/{self.drafted} drafts accepted ({self.acceptance_rate:.0%}), "
            f"{self.mean_accepted:.2f} per verify step, {self.verify_steps} verify + {self.plain_steps} plain steps"
        )


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
    draft: DraftStats | None = None
    """Speculative decoding figures, when a drafter was used."""

    def as_dict(self) -> dict:
        d = asdict(self)
        if self.draft is not None:
            d["draft"].update(acceptance_rate=self.draft.acceptance_rate, mean_accepted=self.draft.mean_accepted)
        return d

    def __str__(self) -> str:
        return (
            f"prompt {self.prompt_tokens} tok ({self.reused_tokens} reused) at {self.prompt_tps:.1f} tok/s, "
            f"decode {self.generation_tokens} tok at {self.decode_tps:.1f} tok/s, "
            f"ttft {self.ttft_s * 1000:.0f} ms, peak {self.peak_memory_bytes / 2**20:.0f} MiB"
            + (f"; {self.draft}" if self.draft else "")
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
