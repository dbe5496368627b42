"""The edge chat app: saved conversations on the left, the conversation and prompt on the right, live status.

The model loads in a worker (fetching and converting the default model on first use) while the UI is
already usable; replies stream from an exclusive thread worker, because the MLX loop blocks.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical

import edge

from .screens.help import HelpScreen
from .screens.model_picker import ModelPicker
from .screens.rename import RenameScreen
from .screens.settings import SettingsResult, SettingsScreen
from .session import DEFAULT_SETTINGS, Session, known_models
from .store import ChatStore, Conversation
from .widgets.conversation import ConversationView
from .widgets.message import MessageView
from .widgets.prompt import PromptInput
from .widgets.sidebar import Sidebar
from .widgets.status import StatusBar, describe

UI_EVERY_S = 0.05
"""The most often a streaming reply updates the screen (20 times a second)."""
UI_SHARE = 20.0
"""A streaming reply's next screen update waits this many times as long as the last one took."""


class EdgeChatApp(App):
    CSS_PATH = "chat.tcss"
    TITLE = "edge chat"
    BINDINGS = [
        Binding("escape", "stop", "Stop reply", id="stop"),
        Binding("ctrl+n", "new_chat", "New chat", id="new_chat"),
        Binding("ctrl+r", "regenerate", "Regenerate", id="regenerate"),
        Binding("ctrl+s", "settings", "Settings", id="settings"),
        Binding("ctrl+o", "pick_model", "Model", id="pick_model"),
        Binding("f2", "rename", "Rename", id="rename"),
        Binding("ctrl+d", "delete_chat", "Delete chat", id="delete_chat"),
        Binding("ctrl+e", "export", "Export", id="export"),
        Binding("ctrl+y", "copy_reply", "Copy reply", id="copy_reply", show=False),
        Binding("ctrl+k", "copy_code", "Copy code", id="copy_code", show=False),
        Binding("ctrl+t", "toggle_theme", "Theme", id="toggle_theme", show=False),
        Binding("f1", "help", "Help", id="help"),
        Binding("ctrl+q", "quit", "Quit", id="quit"),
    ]

    def __init__(
        self,
        model: str | Path | edge.Model | None = None,
        *,
        data_dir: Path | None = None,
        system: str | None = None,
        settings: dict | None = None,
        context: int | None = None,
        extra_models: list[str] | None = None,
        export_dir: Path | None = None,
    ) -> None:
        super().__init__()
        from edge.paths import data_dir as default_data_dir

        self.requested_model = model
        self.data_dir = data_dir or default_data_dir()
        self.export_dir = export_dir or Path.cwd()
        self.default_system, self.context = system, context
        self.default_settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.extra_models = [str(m) for m in (extra_models or [])]
        self.model: edge.Model | None = None
        self.model_path: str | None = None
        self.store: ChatStore | None = None
        self.current: Conversation | None = None
        self.session: Session | None = None
        self.generating = False
        self.edit_index: int | None = None
        self.last_stats: edge.Stats | None = None

    def compose(self):
        from textual.widgets import Footer, Header

        yield Header()
        with Horizontal():
            yield Sidebar(id="sidebar")
            with Vertical(id="main"):
                yield ConversationView(id="conversation")
                yield PromptInput(id="prompt")
        yield StatusBar("starting", id="status")
        yield Footer()

    # ---- start-up ----

    async def on_mount(self) -> None:
        try:
            self.store = ChatStore(self.data_dir / "chats.db")
        except edge.EdgeError as e:
            self.exit(return_code=1, message=f"edge: error: {e}")
            return
        existing = self.store.conversations()
        await self.select(existing[0].id if existing else self._new_conversation().id)
        self.query_one(PromptInput).focus()
        if isinstance(self.requested_model, edge.Model):
            self._model_ready(self.requested_model, str(self.requested_model.path))
        else:
            self.load_model(self.requested_model)

    @work(thread=True, exclusive=True, group="load")
    def load_model(self, path: str | Path | None) -> None:
        try:
            if path is None:
                from edge.converters import ensure_default_model

                def progress(what: str, done: int, total: int) -> None:
                    self.call_from_thread(self.set_status, f"{what}: {100 * done / max(total, 1):.0f}%")

                path = ensure_default_model(progress=progress, log=lambda m: self.call_from_thread(self.set_status, m))
            self.call_from_thread(self.set_status, f"loading {Path(path).name} ...")
            model = edge.load(path, context=self.context)
        except edge.EdgeError as e:
            self.call_from_thread(self.set_status, "no model loaded")
            self.call_from_thread(self.notify, str(e), severity="error", timeout=30)
            return
        self.call_from_thread(self._model_ready, model, str(path))

    def _model_ready(self, model: edge.Model, path: str) -> None:
        self.model, self.model_path = model, path
        if self.current is not None and self.store is not None and self.current.model != path:
            self.current.model = path  # the conversation remembers the model it talks to
            self.store.update(self.current)
        self._open_session()
        self.set_status(f"{Path(path).name} ready ({model.plan.compute}, context {model.context_length})")

    def _open_session(self) -> None:
        self.session = None
        if self.model is not None and self.current is not None and self.store is not None:
            try:
                self.session = Session(self.store, self.current, self.model)
            except edge.EdgeError as e:
                self.notify(str(e), severity="error")

    def set_status(self, text: str) -> None:
        self.query_one(StatusBar).show(text)

    # ---- conversations ----

    def _new_conversation(self) -> Conversation:
        assert self.store is not None
        return self.store.create(
            system=self.default_system, model=self.model_path, settings=dict(self.default_settings)
        )

    async def select(self, conversation_id: int) -> None:
        assert self.store is not None
        self.current = self.store.get(conversation_id)
        messages = self.store.messages(conversation_id)
        await self.query_one(ConversationView).show([(m.role, m.content, m.status) for m in messages])
        await self.refresh_sidebar()
        self.edit_index = None
        self._open_session()

    async def refresh_sidebar(self, search: str | None = None) -> None:
        assert self.store is not None
        if search is None:
            search = self.query_one("#search").value
        await self.query_one(Sidebar).show(self.store.conversations(search), self.current.id if self.current else None)

    async def on_sidebar_chosen(self, event: Sidebar.Chosen) -> None:
        if self.generating:
            self.notify("Stop the reply first (Esc)", severity="warning")
            return
        await self.select(event.conversation_id)

    async def on_sidebar_search_changed(self, event: Sidebar.SearchChanged) -> None:
        await self.refresh_sidebar(event.text)

    # ---- replies ----

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        if self.session is None:
            self.notify("The model is still loading.", severity="warning")
            return
        if self.generating:
            self.notify("A reply is streaming: Esc stops it.", severity="warning")
            return
        await self.start_reply(event.text, self.edit_index)

    async def start_reply(self, user_text: str | None, edit_index: int | None = None) -> None:
        view_list = self.query_one(ConversationView)
        if edit_index is not None:
            await view_list.truncate(edit_index)
            self.edit_index = None
        if user_text is not None:
            await view_list.add("user", user_text)
        view = await view_list.add("assistant", "", "streaming")
        self.generating = True
        self.generate(user_text, view, edit_index)

    @work(thread=True, exclusive=True, group="generate")
    def generate(self, user_text: str | None, view: MessageView, edit_index: int | None) -> None:
        """Stream a reply into `view`. The UI thread shares the cores (and the GIL) with the model, and
        redrawing the reply costs more the longer it grows, so the screen is updated at most every
        `UI_EVERY_S`, and at most every `UI_SHARE` times what the last update took (the wait for the UI
        thread included). Updated for every token, SmolLM2's replies (at `edge chat`'s sampling) streamed at
        ~100 tok/s against ~280 without the app, a long list at 13 tok/s; now 190-265 tok/s."""
        assert self.session is not None
        text, shown, started, tokens, shown_at, every = "", "", time.perf_counter(), 0, 0.0, UI_EVERY_S
        try:
            for update in self.session.reply(user_text, edit_index=edit_index):
                if update.notice:
                    self.call_from_thread(self.notify, update.notice)
                if update.done is not None:
                    self.call_from_thread(self._finish, view, update.done)
                    return
                if len(update.text) > len(text):
                    text, tokens = update.text, tokens + update.tokens
                now = time.perf_counter()
                if len(text) > len(shown) and now - shown_at >= every:
                    name = Path(self.model_path or "model").name
                    live = tokens / max(now - started, 1e-6)
                    self.call_from_thread(self.query_one(ConversationView).append, view, text[len(shown) :])
                    self.call_from_thread(self.set_status, f"{name}  ·  streaming, {live:.1f} tok/s")
                    shown, shown_at = text, time.perf_counter()
                    every = max(UI_EVERY_S, UI_SHARE * (shown_at - now))
        except edge.EdgeError as e:
            self.call_from_thread(self.notify, str(e), severity="error")
            self.call_from_thread(self._finish, view, None, text)

    async def _finish(self, view: MessageView, done: edge.Done | None, text: str = "") -> None:
        self.generating = False
        if done is None:
            await view.finish(text, "stopped")
            return
        await view.finish(done.text, "stopped" if done.reason == "cancelled" else "done")
        self.last_stats = done.stats
        self.set_status(describe(Path(self.model_path or "model").name, done.stats))
        await self.refresh_sidebar()

    def action_stop(self) -> None:
        if self.generating and self.session is not None:
            self.session.cancel()

    async def action_regenerate(self) -> None:
        if self.session is None or self.generating:
            return
        views = self.query_one(ConversationView).messages()
        if views and views[-1].role == "assistant":
            await views[-1].remove()
        await self.start_reply(None)

    def on_message_view_edit_requested(self, event: MessageView.EditRequested) -> None:
        views = self.query_one(ConversationView).messages()
        self.edit_index = views.index(event.view)
        prompt = self.query_one(PromptInput)
        prompt.text = event.view.content
        prompt.focus()
        self.notify("Editing: Enter resends from this message")

    # ---- actions on the conversation ----

    async def action_new_chat(self) -> None:
        if not self.generating:
            await self.select(self._new_conversation().id)

    def action_rename(self) -> None:
        if self.current is None:
            return

        async def done(title: str | None) -> None:
            if title and self.current is not None and self.store is not None:
                self.current.title = title
                self.store.update(self.current)
                await self.refresh_sidebar()

        self.push_screen(RenameScreen(self.current.title), done)

    async def action_delete_chat(self) -> None:
        if self.current is None or self.store is None or self.generating:
            return
        self.store.delete(self.current.id)
        rest = self.store.conversations()
        await self.select(rest[0].id if rest else self._new_conversation().id)

    def action_export(self) -> Path | None:
        if self.current is None or self.store is None:
            return None
        slug = re.sub(r"[^a-z0-9]+", "-", self.current.title.lower()).strip("-") or "chat"
        path = self.export_dir / f"edge-chat-{self.current.id}-{slug}.md"
        path.write_text(self.store.export_markdown(self.current.id))
        self.notify(f"Exported to {path}")
        return path

    def action_copy_reply(self) -> None:
        replies = [v for v in self.query_one(ConversationView).messages() if v.role == "assistant"]
        if replies:
            replies[-1].action_copy()

    def action_copy_code(self) -> None:
        for view in reversed(self.query_one(ConversationView).messages()):
            if view.code_blocks():
                view.action_copy_code()
                return
        self.notify("No code block in this conversation", severity="warning")

    def action_settings(self) -> None:
        if self.current is None:
            return

        def check_draft(draft: str) -> None:
            from edge.speculative import make_drafter

            if self.model is not None:
                make_drafter(draft, self.model)

        def done(result: SettingsResult | None) -> None:
            if result is None or self.current is None or self.store is None:
                return
            if self.session is not None:
                self.session.apply_settings(result.settings, result.system)
            else:
                self.current.settings, self.current.system = result.settings, result.system
                self.store.update(self.current)
            self.notify("Settings saved for this conversation")

        self.push_screen(SettingsScreen(self.current.system, self.current.settings, check_draft), done)

    def action_pick_model(self) -> None:
        def done(path: str | None) -> None:
            if path and path != self.model_path and not self.generating:
                self.model, self.session = None, None
                self.load_model(path)

        self.push_screen(
            ModelPicker(
                known_models([*self.extra_models, *([self.model_path] if self.model_path else [])]), self.model_path
            ),
            done,
        )

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def action_help(self) -> None:
        self.push_screen(HelpScreen(list(self.BINDINGS)))

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        yield SystemCommand("New chat", "Start a new conversation", self.action_new_chat)
        yield SystemCommand("Export conversation", "Write this conversation to a Markdown file", self.action_export)
        yield SystemCommand("Conversation settings", "System prompt, sampling, draft mode", self.action_settings)
        yield SystemCommand("Choose model", "Switch to another converted model", self.action_pick_model)
        yield SystemCommand("Regenerate reply", "Replace the last reply", self.action_regenerate)

    def on_unmount(self) -> None:
        if self.session is not None:
            self.session.cancel()
        if self.store is not None:
            self.store.close()
