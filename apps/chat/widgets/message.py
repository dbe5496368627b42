"""One message: a role line and its Markdown body, streamed while the reply grows."""

from __future__ import annotations

import re

from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Markdown, Static

CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)```", re.S)


class MessageView(Vertical, can_focus=True):
    BINDINGS = [
        Binding("e", "edit", "Edit and resend", id="message.edit"),
        Binding("y", "copy", "Copy message", id="message.copy"),
        Binding("k", "copy_code", "Copy code block", id="message.copy_code"),
    ]

    class EditRequested(Message):
        def __init__(self, view: MessageView) -> None:
            super().__init__()
            self.view = view

    def __init__(self, role: str, content: str = "", status: str = "done") -> None:
        super().__init__(classes=f"message {role}" + (" stopped" if status != "done" else ""))
        self.role, self.content, self.status = role, content, status
        self._stream = None

    def compose(self):
        yield Static(self._label(), classes="role")
        yield Markdown(self.content)

    def _label(self) -> str:
        name = {"user": "You", "assistant": "Assistant", "system": "System"}.get(self.role, self.role)
        return name + {"stopped": "  (stopped)", "streaming": "  (interrupted)"}.get(self.status, "")

    async def append(self, text: str) -> None:
        """Add streamed text (the whole reply so far is `self.content`)."""
        markdown = self.query_one(Markdown)
        if self._stream is None:
            self._stream = Markdown.get_stream(markdown)
        self.content += text
        await self._stream.write(text)

    async def finish(self, content: str, status: str) -> None:
        """Stop streaming and render the final text once, in full."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.content, self.status = content, status
        await self.query_one(Markdown).update(content)
        self.query_one(".role", Static).update(self._label())
        self.set_class(status == "stopped", "stopped")

    def code_blocks(self) -> list[str]:
        return CODE_BLOCK.findall(self.content)

    def action_edit(self) -> None:
        if self.role == "user":
            self.post_message(self.EditRequested(self))

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.content)
        self.app.notify("Message copied")

    def action_copy_code(self) -> None:
        blocks = self.code_blocks()
        if blocks:
            self.app.copy_to_clipboard(blocks[-1])
            self.app.notify("Code block copied")
        else:
            self.app.notify("No code block in this message", severity="warning")
