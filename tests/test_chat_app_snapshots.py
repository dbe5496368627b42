"""Snapshots of the chat app's main screen and settings screen (pytest-textual-snapshot).

A conversation is written to the store first, so what is shown does not depend on generation or timing.
Update after an intended change of the UI with: pytest tests/test_chat_app_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest

import edge
from edge.apps.chat.app import EdgeChatApp
from edge.apps.chat.store import ChatStore

CODE_REPLY = (
    "Here is one way:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nIt returns the **sum** of `a` and `b`."
)


@pytest.fixture
def app(mlx_models, tmp_path):
    store = ChatStore(tmp_path / "chats.db")
    older = store.create("Trip ideas")
    store.add(older.id, "user", "Where should I go in spring?")
    c = store.create("Adding numbers in Python")
    store.add(c.id, "user", "How do I add two numbers in Python?")
    store.add(c.id, "assistant", CODE_REPLY)
    store.add(c.id, "user", "And three numbers?")
    store.add(c.id, "assistant", "Call it twice: `add(add(a, b), c)`", status="stopped")
    store.close()
    model = edge.load(mlx_models["llama"])
    return EdgeChatApp(model, data_dir=tmp_path, settings={"temperature": 0.0, "draft": "off"})


def test_main_screen(app, snap_compare):
    async def settle(pilot):
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(110, 32), run_before=settle)


def test_settings_screen(app, snap_compare):
    async def open_settings(pilot):
        await pilot.pause(0.2)
        await pilot.press("ctrl+s")
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(110, 40), run_before=open_settings)
