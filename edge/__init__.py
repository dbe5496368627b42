"""edge: run LLMs on the device in front of you (MLX on Apple silicon and Linux CPUs).

Importing edge binds an optimized BLAS under MLX's CPU backend first (Linux; see `edge.blas`), so import
edge before mlx. Public names are loaded lazily so that `edge --help` starts fast.
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING

_os.environ.setdefault(
    "TRANSFORMERS_VERBOSITY", "error"
)  # transformers warns that PyTorch is absent; edge never uses it
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from . import blas as _blas  # noqa: E402

_blas.bind()

__version__ = "0.1.0"

_EXPORTS = {
    "load": ".model",
    "Model": ".model",
    "Chat": ".chat",
    "Sampling": ".sampling",
    "plan": ".model",
    "MemoryPlan": ".memory",
    "Token": ".events",
    "Notice": ".events",
    "Done": ".events",
    "Stats": ".events",
    "DraftStats": ".events",
    "Event": ".events",
    "EdgeError": ".errors",
    "ModelFormatError": ".errors",
    "UnsupportedModelError": ".errors",
    "OutOfMemoryError": ".errors",
    "OutputExistsError": ".errors",
    "DownloadError": ".errors",
}

__all__ = [
    "load",
    "Model",
    "Chat",
    "Sampling",
    "plan",
    "MemoryPlan",
    "Token",
    "Notice",
    "Done",
    "Stats",
    "DraftStats",
    "Event",
    "EdgeError",
    "ModelFormatError",
    "UnsupportedModelError",
    "OutOfMemoryError",
    "OutputExistsError",
    "DownloadError",
    "__version__",
]

if TYPE_CHECKING:
    from .chat import Chat
    from .errors import (
        DownloadError,
        EdgeError,
        ModelFormatError,
        OutOfMemoryError,
        OutputExistsError,
        UnsupportedModelError,
    )
    from .events import Done, DraftStats, Event, Notice, Stats, Token
    from .memory import MemoryPlan
    from .model import Model, load, plan
    from .sampling import Sampling


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edge' has no attribute {name!r}")
