"""The Textual chat app, driven with the pilot on a tiny model; each test has its own data folder."""

from __future__ import annotations

import time

import pytest

import edge
from edge.apps.chat.app import EdgeChatApp
from edge.apps.chat.screens.model_picker import ModelPicker
from edge.apps.chat.screens.settings import SettingsScreen
from edge.apps.chat.store import ChatStore
from edge.apps.chat.widgets.conversation import ConversationView
from edge.apps.chat.widgets.prompt import PromptInput
from edge.apps.chat.widgets.sidebar import Sidebar


class Slow:
    """Wraps a model module so each forward pass takes a while: a reply is still streaming when Esc comes."""

    def __init__(self, module, delay: float = 0.03):
        self.module, self.delay, self.layers = module, delay, module.layers

    def __call__(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.module(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny(mlx_models) -> edge.Model:
    return edge.load(mlx_models["qwen2"])


def make_app(model, tmp_path, **kw) -> EdgeChatApp:
    settings = {"temperature": 0.0, "max_tokens": 12, "draft": "off", **kw.pop("settings", {})}
    return EdgeChatApp(model, data_dir=tmp_path / "data", export_dir=tmp_path, settings=settings, **kw)


async def wait_for(pilot, condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.05)


def views(app: EdgeChatApp) -> list:
    return app.query_one(ConversationView).messages()


async def send(pilot, app: EdgeChatApp, text: str) -> None:
    """Type a message and press Enter; returns once its reply view exists (it may still stream)."""
    await wait_for(pilot, lambda: app.session is not None)
    prompt = app.query_one(PromptInput)
    prompt.text = text
    prompt.focus()
    before = len(views(app))
    await pilot.press("enter")
    await wait_for(pilot, lambda: len(views(app)) >= before + 2)


async def open_settings(pilot, app: EdgeChatApp) -> None:
    await wait_for(pilot, lambda: app.session is not None)
    await pilot.press("ctrl+s")
    await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))


async def wait_reply(pilot, app: EdgeChatApp) -> None:
    await wait_for(pilot, lambda: not app.generating)
    await pilot.pause(0.1)


async def test_send_streams_a_reply_and_saves_it(tiny, tmp_path):
    app = make_app(tiny, tmp_path)
    async with app.run_test() as pilot:
        await send(pilot, app, "Hello there")
        await wait_reply(pilot, app)
        views = app.query_one(ConversationView).messages()
        assert [v.role for v in views] == ["user", "assistant"]
        assert views[1].status == "done" and views[1].content
        stored = app.store.messages(app.current.id)
        assert [(m.role, m.status) for m in stored] == [("user", "done"), ("assistant", "done")]
        assert stored[1].content == views[1].content and stored[1].stats["generation_tokens"] <= 12
        assert "tok/s" in str(app.query_one("#status").render())
        assert app.current.title == "Hello there"
        assert app.store.get(app.current.id).model == str(tiny.path)


async def test_escape_stops_the_reply_and_keeps_it(tiny, tmp_path):
    slow = edge.Model(Slow(tiny.module), tiny.tokenizer, tiny.config, tiny.path, tiny.plan)
    app = make_app(slow, tmp_path, settings={"max_tokens": 200})
    async with app.run_test() as pilot:
        await send(pilot, app, "Tell me a long story")
        await wait_for(pilot, lambda: len(app.query_one(ConversationView).messages()[-1].content) > 0)
        await pilot.press("escape")
        await wait_reply(pilot, app)
        reply = app.query_one(ConversationView).messages()[-1]
        assert reply.status == "stopped" and reply.content
        stored = app.store.messages(app.current.id)[-1]
        assert stored.status == "stopped" and stored.content == reply.content
        assert stored.stats["generation_tokens"] < 200


async def test_conversation_survives_a_restart(tiny, tmp_path):
    app = make_app(tiny, tmp_path)
    async with app.run_test() as pilot:
        await send(pilot, app, "Remember me")
        await wait_reply(pilot, app)
        reply = app.query_one(ConversationView).messages()[-1].content
    again = make_app(tiny, tmp_path)
    async with again.run_test() as pilot:
        await wait_for(pilot, lambda: again.session is not None)
        assert "Remember me" in again.query_one(Sidebar).titles()
        views = again.query_one(ConversationView).messages()
        assert [v.content for v in views] == ["Remember me", reply]


async def test_regenerate_edit_new_and_search(tiny, tmp_path):
    app = make_app(tiny, tmp_path)
    async with app.run_test() as pilot:
        await send(pilot, app, "First question")
        await wait_reply(pilot, app)
        first = app.query_one(ConversationView).messages()[-1].content
        await pilot.press("ctrl+r")
        await wait_for(
            pilot,
            lambda: (
                len(app.store.messages(app.current.id)) == 2 and app.store.messages(app.current.id)[-1].status == "done"
            ),
        )
        await wait_reply(pilot, app)
        assert app.query_one(ConversationView).messages()[-1].content == first  # greedy: the same reply
        assert len(app.store.messages(app.current.id)) == 2
        # edit the user message and resend from there
        app.query_one(ConversationView).messages()[0].focus()
        await pilot.press("e")
        prompt = app.query_one(PromptInput)
        assert prompt.text == "First question"
        prompt.text = "Edited question"
        prompt.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.store.messages(app.current.id)[0].content == "Edited question")
        await wait_reply(pilot, app)
        assert [m.content for m in app.store.messages(app.current.id)][0] == "Edited question"
        assert len(app.store.messages(app.current.id)) == 2
        # a new chat, then search by title
        await pilot.press("ctrl+n")
        await send(pilot, app, "Second topic")
        await wait_reply(pilot, app)
        assert len(app.query_one(Sidebar).titles()) == 2
        await app.refresh_sidebar("Second")
        await pilot.pause(0.1)
        assert app.query_one(Sidebar).titles() == ["Second topic"]


async def test_export_writes_markdown(tiny, tmp_path):
    app = make_app(tiny, tmp_path)
    async with app.run_test() as pilot:
        await send(pilot, app, "Export me")
        await wait_reply(pilot, app)
        path = app.action_export()
        text = path.read_text()
        assert path.suffix == ".md" and "## user\n\nExport me" in text and "## assistant" in text


async def test_settings_change_the_next_reply(tiny, tmp_path):
    app = make_app(tiny, tmp_path, settings={"max_tokens": 40})
    async with app.run_test() as pilot:
        await open_settings(pilot, app)
        app.screen.query_one("#max_tokens").value = "3"
        app.screen.query_one("#system").text = "You are terse."
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        await send(pilot, app, "Say many things")
        await wait_reply(pilot, app)
        stats = app.store.messages(app.current.id)[-1].stats
        assert stats["generation_tokens"] <= 3
        assert app.store.get(app.current.id).system == "You are terse."
        assert app.store.get(app.current.id).settings["max_tokens"] == 3


async def test_bad_settings_are_refused_with_a_message(tiny, tmp_path):
    app = make_app(tiny, tmp_path)
    async with app.run_test() as pilot:
        await open_settings(pilot, app)
        app.screen.query_one("#top_p").value = "0"
        await pilot.press("ctrl+s")
        await pilot.pause(0.2)
        assert isinstance(app.screen, SettingsScreen)  # still open: top_p 0 is refused


async def test_settings_refuse_an_incompatible_draft_model(tiny, tmp_path):
    import builders

    from edge.converters import convert

    builders.write_hf_model(tmp_path / "other-hf", "llama", tok=builders.build_tokenizer(300))  # another vocabulary
    convert(tmp_path / "other-hf", tmp_path / "other", progress=False)
    app = make_app(tiny, tmp_path)
    async with app.run_test() as pilot:
        await open_settings(pilot, app)
        app.screen.query_one("#draft_model").value = str(tmp_path / "other")
        await pilot.press("ctrl+s")
        await pilot.pause(0.3)
        assert isinstance(app.screen, SettingsScreen)  # refused: different vocabulary
        assert app.store.get(app.current.id).settings.get("draft") != str(tmp_path / "other")


async def test_model_picker_lists_converted_models(tiny, tmp_path, edge_home):
    import shutil

    for name in ("alpha", "beta"):
        shutil.copytree(tiny.path, edge_home / "models" / name)
    app = make_app(tiny, tmp_path)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker))
        listed = app.screen.models
        assert str(edge_home / "models" / "alpha") in listed and str(edge_home / "models" / "beta") in listed
        assert str(tiny.path) in listed


async def test_model_loads_in_a_worker_while_the_ui_runs(mlx_models, tmp_path):
    app = make_app(str(mlx_models["llama"]), tmp_path)
    async with app.run_test() as pilot:
        assert app.model is None or app.session is not None  # the UI is up before the model
        await wait_for(pilot, lambda: app.session is not None)
        assert "ready" in str(app.query_one("#status").render())


async def test_help_and_theme(tiny, tmp_path):
    from edge.apps.chat.screens.help import HelpScreen

    app = make_app(tiny, tmp_path)
    async with app.run_test() as pilot:
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        before = app.theme
        await pilot.press("ctrl+t")
        assert app.theme != before


def test_corrupt_database_is_refused_and_kept(tmp_path):
    db = tmp_path / "chats.db"
    db.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(edge.EdgeError, match="chats.db"):
        ChatStore(db)
    assert db.read_bytes().startswith(b"this is not sqlite")


def test_store_survives_a_crash_mid_write(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    db = tmp_path / "chats.db"
    code = (
        "import sys\n"
        "from edge.apps.chat.store import ChatStore\n"
        f"s = ChatStore(__import__('pathlib').Path({str(db)!r}))\n"
        "c = s.create('crash test')\n"
        "m = s.add(c.id, 'assistant', '', status='streaming')\n"
        "print('ready', flush=True)\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    m.content = 'x' * i\n"
        "    s.save_message(m)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ChatStore(db)
    (conversation,) = store.conversations()
    (message,) = store.messages(conversation.id)
    assert message.status == "streaming" and len(message.content) > 10 and set(message.content) == {"x"}


async def test_a_streaming_reply_redraws_the_screen_only_now_and_then(tiny, tmp_path, monkeypatch):
    """The screen is not redrawn for every token (the UI thread shares the cores with the model): at most every
    50 ms, and 20 times as long as the last update took. Timed by a clock that moves 10 ms per reading."""
    import itertools
    from types import SimpleNamespace

    import edge.apps.chat.app as chat_app

    readings = itertools.count(0.0, 0.01)
    monkeypatch.setattr(chat_app, "time", SimpleNamespace(perf_counter=lambda: next(readings)))
    shown = []
    append = ConversationView.append

    async def counted(self, view, text):
        shown.append(text)
        await append(self, view, text)

    monkeypatch.setattr(ConversationView, "append", counted)
    app = make_app(tiny, tmp_path, settings={"max_tokens": 80})
    async with app.run_test() as pilot:
        await send(pilot, app, "Hello there")
        await wait_reply(pilot, app)
        reply = app.query_one(ConversationView).messages()[-1]
        tokens = app.store.messages(app.current.id)[-1].stats["generation_tokens"]
        assert tokens >= 40 and 1 <= len(shown) <= tokens // 4  # each update: 10 ms, so 200 ms (20 tokens) apart
        assert reply.status == "done" and reply.content.startswith("".join(shown))  # the rest: drawn once at the end
