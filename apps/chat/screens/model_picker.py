"""Pick a converted model: edge's cache plus paths given on the command line. Dismisses with a path or None."""

from __future__ import annotations

from pathlib import Path

from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, ListItem, ListView


class ModelPicker(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="models.cancel")]

    def __init__(self, models: list[str], current: str | None) -> None:
        super().__init__()
        self.models, self.current = models, current

    def compose(self):
        with Vertical(id="model-dialog"):
            yield Label("Models", classes="title")
            if not self.models:
                yield Label("No converted models yet: run edge convert SRC -o FOLDER")
            items = [
                ListItem(Label(("● " if m == self.current else "  ") + Path(m).name + f"  [dim]{m}[/]"), name=m)
                for m in self.models
            ]
            yield ListView(*items, id="models")

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        self.dismiss(event.item.name)

    def action_cancel(self) -> None:
        self.dismiss(None)
