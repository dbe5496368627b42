"""Saved conversations: a title search and the list, newest first."""

from __future__ import annotations

from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, ListItem, ListView

from ..store import Conversation


class ConversationItem(ListItem):
    def __init__(self, conversation: Conversation) -> None:
        super().__init__(Label(conversation.title), id=f"conversation-{conversation.id}")
        self.conversation = conversation


class Sidebar(Vertical):
    class Chosen(Message):
        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    class SearchChanged(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def compose(self):
        yield Input(placeholder="Search titles", id="search")
        yield ListView(id="conversations")

    async def show(self, conversations: list[Conversation], current: int | None) -> None:
        view = self.query_one(ListView)
        await view.clear()
        await view.extend([ConversationItem(c) for c in conversations])
        ids = [c.id for c in conversations]
        if current in ids:
            view.index = ids.index(current)

    def titles(self) -> list[str]:
        return [item.conversation.title for item in self.query(ConversationItem)]

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.SearchChanged(event.value))

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        event.stop()
        if isinstance(event.item, ConversationItem):
            self.post_message(self.Chosen(event.item.conversation.id))
