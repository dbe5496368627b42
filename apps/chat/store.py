"""Conversations in SQLite (`$XDG_DATA_HOME/edge/chats.db`, or `$EDGE_HOME/chats.db`).

Every change is one transaction, and a streaming reply is saved as it grows, so killing the app mid-reply
loses nothing already shown. Schema changes are an append-only list of named migrations. A database that
SQLite cannot read is refused with a message naming it, and left in place for the user to recover.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge import EdgeError


def _m001_initial(db: sqlite3.Connection) -> None:
    # One execute per statement: executescript would COMMIT the migration's transaction halfway.
    statements = """
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            system TEXT,
            model TEXT,
            settings TEXT NOT NULL DEFAULT '{}',
            created REAL NOT NULL,
            updated REAL NOT NULL
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'done',
            created REAL NOT NULL
        );
        CREATE INDEX messages_by_conversation ON messages(conversation_id, id)
    """
    for statement in statements.split(";"):
        db.execute(statement)


def _m002_message_stats(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE messages ADD COLUMN stats TEXT")


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("initial", _m001_initial),
    ("message_stats", _m002_message_stats),
]


@dataclass
class Message:
    id: int
    role: str
    content: str
    status: str = "done"
    """done, stopped (cancelled by the user), or streaming (the app died mid-reply)."""
    stats: dict | None = None


@dataclass
class Conversation:
    id: int
    title: str
    system: str | None = None
    model: str | None = None
    settings: dict = field(default_factory=dict)
    updated: float = 0.0


class ChatStore:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            ok = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(ok)
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise EdgeError(
                f"{path} is not a readable chat database ({e}). It was left untouched: move it away (or recover it "
                "with the sqlite3 tool) and start edge chat again."
            ) from None

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied REAL NOT NULL)")
        done = {row[0] for row in self.db.execute("SELECT name FROM migrations")}
        for name, fn in MIGRATIONS:
            if name not in done:
                with self.transaction():
                    fn(self.db)
                    self.db.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))

    def transaction(self):
        store = self

        class _Tx:
            def __enter__(self):
                store.db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind, value, tb):
                store.db.execute("COMMIT" if kind is None else "ROLLBACK")
                return False

        return _Tx()

    def close(self) -> None:
        self.db.close()

    # conversations

    def create(
        self, title: str = "New chat", system: str | None = None, model: str | None = None, settings: dict | None = None
    ) -> Conversation:
        now = time.time()
        with self.transaction():
            cur = self.db.execute(
                "INSERT INTO conversations (title, system, model, settings, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
                (title, system, model, json.dumps(settings or {}), now, now),
            )
        return Conversation(cur.lastrowid, title, system, model, settings or {}, now)

    def conversations(self, search: str = "") -> list[Conversation]:
        rows = self.db.execute(
            "SELECT id, title, system, model, settings, updated FROM conversations WHERE title LIKE ? ORDER BY updated DESC, id DESC",
            (f"%{search}%",),
        )
        return [Conversation(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows]

    def get(self, conversation_id: int) -> Conversation | None:
        found = [c for c in self.conversations() if c.id == conversation_id]
        return found[0] if found else None

    def update(self, c: Conversation) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE conversations SET title=?, system=?, model=?, settings=?, updated=? WHERE id=?",
                (c.title, c.system, c.model, json.dumps(c.settings), time.time(), c.id),
            )

    def delete(self, conversation_id: int) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM conversations WHERE id=?", (conversation_id,))

    # messages

    def messages(self, conversation_id: int) -> list[Message]:
        rows = self.db.execute(
            "SELECT id, role, content, status, stats FROM messages WHERE conversation_id=? ORDER BY id",
            (conversation_id,),
        )
        return [Message(r[0], r[1], r[2], r[3], json.loads(r[4]) if r[4] else None) for r in rows]

    def add(self, conversation_id: int, role: str, content: str, status: str = "done") -> Message:
        with self.transaction():
            cur = self.db.execute(
                "INSERT INTO messages (conversation_id, role, content, status, created) VALUES (?, ?, ?, ?, ?)",
                (conversation_id, role, content, status, time.time()),
            )
            self.db.execute("UPDATE conversations SET updated=? WHERE id=?", (time.time(), conversation_id))
        return Message(cur.lastrowid, role, content, status)

    def save_message(self, message: Message) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE messages SET content=?, status=?, stats=? WHERE id=?",
                (message.content, message.status, json.dumps(message.stats) if message.stats else None, message.id),
            )

    def truncate(self, conversation_id: int, keep: int) -> None:
        """Keep only the first `keep` messages of a conversation (edit-and-resend)."""
        ids = [m.id for m in self.messages(conversation_id)][keep:]
        with self.transaction():
            self.db.executemany("DELETE FROM messages WHERE id=?", [(i,) for i in ids])

    def export_markdown(self, conversation_id: int) -> str:
        c = self.get(conversation_id)
        assert c is not None
        lines = [f"# {c.title}", ""]
        if c.system:
            lines += [f"> system: {c.system}", ""]
        for m in self.messages(conversation_id):
            suffix = "" if m.status == "done" else f" ({m.status})"
            lines += [f"## {m.role}{suffix}", "", m.content, ""]
        return "\n".join(lines)
