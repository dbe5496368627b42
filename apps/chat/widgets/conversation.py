"""The scrolling list of messages; it follows new text only while the user is at the bottom."""

from __future__ import annotations

from textual.containers import VerticalScroll

from .message import MessageView


class ConversationView(VerticalScroll):
    async def show(self, messages: list[tuple[str, str, str]]) -> None:
        """Replace the view with (role, content, status) messages."""
        await self.remove_children()
        await self.mount_all([MessageView(r, c, s) for r, c, s in messages])
        self.scroll_end(animate=False)

    async def add(self, role: str, content: str = "", status: str = "done") -> MessageView:
        follow = self.is_vertical_scroll_end
        view = MessageView(role, content, status)
        await self.mount(view)
        if follow:
            self.scroll_end(animate=False)
        return view

    async def append(self, view: MessageView, text: str) -> None:
        follow = self.is_vertical_scroll_end
        await view.append(text)
        if follow:
            self.scroll_end(animate=False)

    def messages(self) -> list[MessageView]:
        return list(self.query(MessageView))

    async def truncate(self, keep: int) -> None:
        for view in self.messages()[keep:]:
            await view.remove()
