"""The Textual chat app (`edge chat`): saved conversations, streaming Markdown, live runtime stats."""

from __future__ import annotations


def run_app(
    model: str | None, *, system: str | None = None, settings: dict | None = None, context: int | None = None
) -> int:
    """Run the app until the user quits; returns the exit code."""
    from .app import EdgeChatApp

    app = EdgeChatApp(model, system=system, settings=settings, context=context, extra_models=[model] if model else [])
    app.run()
    return app.return_code or 0


__all__ = ["run_app"]
