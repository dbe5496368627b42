"""Where edge keeps its files: converted models and compiled helpers in the user cache, chats in the data folder."""

from __future__ import annotations

import os
from pathlib import Path


def edge_home() -> Path | None:
    """`EDGE_HOME` overrides every location below (tests and CI point it at a scratch folder)."""
    home = os.environ.get("EDGE_HOME")
    return Path(home).expanduser() if home else None


def cache_dir() -> Path:
    """`$EDGE_HOME`, else `$XDG_CACHE_HOME/edge`, else `~/.cache/edge`."""
    home = edge_home()
    if home is not None:
        return home
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "edge"


def models_dir() -> Path:
    """Converted models that edge made itself (the default model among them)."""
    return cache_dir() / "models"


def build_dir() -> Path:
    """Native helpers compiled on first use, keyed by their source hash (`EDGE_BUILD` overrides, so test
    sessions with a scratch EDGE_HOME per test share one build)."""
    build = os.environ.get("EDGE_BUILD")
    return Path(build).expanduser() if build else cache_dir() / "build"


def data_dir() -> Path:
    """`$EDGE_HOME`, else `$XDG_DATA_HOME/edge`, else `~/.local/share/edge`."""
    home = edge_home()
    if home is not None:
        return home
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "edge"
