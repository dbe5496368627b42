"""Key bindings, read from the app's own binding declarations (so remapped keys show as they are)."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

EXTRA = [
    ("Enter", "send the message"),
    ("Ctrl+J / Alt+Enter", "new line in the message"),
    ("Tab", "move between the sidebar, the conversation and the input"),
    ("e / y / k on a message", "edit and resend from it / copy it / copy its last code block"),
    ("Ctrl+P", "command palette"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "close", "Close", id="help.close")]

    def __init__(self, bindings: list[Binding]) -> None:
        super().__init__()
        self.bindings = bindings

    def compose(self):
        rows = [f"| {b.key} | {b.description} |" for b in self.bindings if b.description]
        rows += [f"| {k} | {d} |" for k, d in EXTRA]
        with VerticalScroll(id="help-dialog"):
            yield Markdown("# edge chat: keys\n\n| key | action |\n|---|---|\n" + "\n".join(rows))

    def action_close(self) -> None:
        self.dismiss(None)
