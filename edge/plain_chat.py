"""`edge chat --plain` (and `edge chat` without a terminal): a line-based chat printed with rich.

One user message per line on stdin; the reply streams to stdout; stats go to stderr. Ctrl-C stops the
reply being streamed (its partial text stays in the history); Ctrl-C at the prompt, Ctrl-D or EOF ends.
"""

from __future__ import annotations

import sys

from rich.console import Console


def run_plain_chat(model_path: str, *, system: str | None, sampling, context: int | None, draft=None) -> int:
    import edge

    err = Console(stderr=True)
    model = edge.load(model_path, context=context)
    chat = edge.Chat(model, system=system, sampling=sampling, draft=draft)
    interactive = sys.stdin.isatty()
    if interactive:
        err.print(f"[bold]edge chat[/] with {model.path.name} (compute {model.plan.compute}); Ctrl-D to quit")
    while True:
        try:
            line = input("> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            return 0
        if not line.strip():
            continue
        try:
            for event in chat.send(line):
                if isinstance(event, edge.Token):
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif isinstance(event, edge.Notice):
                    err.print(f"[yellow]{event.message}[/]")
                elif isinstance(event, edge.Done):
                    sys.stdout.write("\n")
                    sys.stdout.flush()
                    err.print(f"[dim]{event.reason} · {event.stats}[/]")
        except KeyboardInterrupt:
            chat.cancel()
            sys.stdout.write("\n")
            err.print("[dim]stopped[/]")
