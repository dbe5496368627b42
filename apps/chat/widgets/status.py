"""The live status line: speed, time to first token, cache reuse, drafting, context and memory."""

from __future__ import annotations

from textual.widgets import Static

import edge


def describe(model_name: str, stats: edge.Stats | None, live_tps: float | None = None) -> str:
    parts = [model_name]
    if stats is not None:
        tps = live_tps if live_tps is not None else stats.decode_tps
        parts += [
            f"{tps:.1f} tok/s",
            f"ttft {stats.ttft_s * 1000:.0f} ms",
            f"reused {stats.reused_tokens}/{stats.prompt_tokens} prompt tok",
        ]
        if stats.draft is not None and stats.draft.drafted:
            parts.append(f"accept {stats.draft.acceptance_rate:.0%}")
        parts += [f"ctx {stats.context_used}/{stats.context_limit}", f"mem {stats.peak_memory_bytes / 2**20:.0f} MiB"]
    return "  ·  ".join(parts)


class StatusBar(Static):
    def show(self, text: str) -> None:
        self.update(text)
