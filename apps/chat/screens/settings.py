"""Per-conversation settings: system prompt, sampling and draft mode. Dismisses with the new values or None."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, TextArea

import edge

from ..session import DEFAULT_SETTINGS, SAMPLING_KEYS

DRAFT_MODES = [
    ("off", "off"),
    ("auto (prompt lookup)", "auto"),
    ("prompt lookup", "lookup"),
    ("self-draft, 4-bit", "self:4"),
]


@dataclass
class SettingsResult:
    system: str | None
    settings: dict


class SettingsScreen(ModalScreen[SettingsResult | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="settings.cancel"),
        Binding("ctrl+s", "save", "Save", id="settings.save"),
    ]

    def __init__(self, system: str | None, settings: dict, check_draft=None) -> None:
        super().__init__()
        self.system, self.settings = system, {**DEFAULT_SETTINGS, **settings}
        self.check_draft = check_draft

    def compose(self):
        draft = self.settings.get("draft") or "off"
        modes = DRAFT_MODES if draft in dict((v, k) for k, v in DRAFT_MODES) else [*DRAFT_MODES, (draft, draft)]
        with VerticalScroll(id="settings-dialog"):
            yield Label("Conversation settings", classes="title")
            yield Label("System prompt")
            yield TextArea(self.system or "", id="system")
            with Grid(id="settings-grid"):
                for key in SAMPLING_KEYS:
                    yield Label(key.replace("_", " "))
                    yield Input(str(self.settings[key]), id=key)
                yield Label("draft")
                yield Select(modes, value=draft, allow_blank=False, id="draft")
                yield Label("draft model folder")
                yield Input("", placeholder="optional: a converted draft model", id="draft_model")
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
        else:
            self.action_save()

    def action_save(self) -> None:
        try:
            result = self._read()
        except (ValueError, edge.EdgeError) as e:
            self.notify(str(e), severity="error")
            return
        self.dismiss(result)

    def _read(self) -> SettingsResult:
        values = {}
        for key in SAMPLING_KEYS:
            raw = self.query_one(f"#{key}", Input).value.strip()
            values[key] = int(raw) if key in ("top_k", "max_tokens") else float(raw)
        edge.Sampling(**values)  # validates ranges with a clear message
        draft_model = self.query_one("#draft_model", Input).value.strip()
        draft = draft_model or self.query_one("#draft", Select).value
        if self.check_draft is not None and draft not in ("off", None):
            self.check_draft(draft)  # raises EdgeError naming an incompatible draft model
        values["draft"] = None if draft == "off" else draft
        return SettingsResult(self.query_one("#system", TextArea).text.strip() or None, values)

    def action_cancel(self) -> None:
        self.dismiss(None)
