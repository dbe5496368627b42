"""What a conversion did, measured: sizes, bits per weight, quantization error, time; plus its progress bar."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from .recipe import Applied, TensorPlan


@dataclass
class ConversionReport:
    source: str
    source_kind: str
    recipe: dict
    inputs: dict[str, str] = field(default_factory=dict)
    """Input file name -> sha256."""
    parameters: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    modes: dict[str, int] = field(default_factory=dict)
    """Tensors kept bit for bit / quantized / written in float."""
    quantized_relative_rms_error: float | None = None
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)
    created: str = ""
    _sq_error: float = 0.0
    _sq_norm: float = 0.0

    def add(self, plan: TensorPlan, applied: Applied) -> None:
        self.parameters += math.prod(plan.source.shape)
        self.bytes_in += plan.source.nbytes
        self.modes[plan.mode] = self.modes.get(plan.mode, 0) + 1
        self._sq_error += applied.sq_error
        self._sq_norm += applied.sq_norm

    def finish(self, bytes_out: int, files: list[str], seconds: float) -> None:
        self.bytes_out, self.files, self.seconds = bytes_out, files, seconds
        if self._sq_norm > 0:
            self.quantized_relative_rms_error = math.sqrt(self._sq_error / self._sq_norm)
        self.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes_out / max(self.parameters, 1)

    def as_dict(self) -> dict:
        from edge import __version__

        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["bits_per_weight"] = round(self.bits_per_weight, 3)
        d["edge_version"] = __version__
        return d

    def table(self) -> Table:
        err = self.quantized_relative_rms_error
        rows = [
            ("source", f"{self.source} ({self.source_kind})"),
            ("recipe", ", ".join(f"{k}={v}" for k, v in self.recipe.items())),
            ("parameters", f"{self.parameters / 1e6:.1f} M"),
            ("bytes in / out", f"{self.bytes_in / 2**20:.1f} MiB / {self.bytes_out / 2**20:.1f} MiB"),
            ("bits per weight", f"{self.bits_per_weight:.2f}"),
            ("tensors", ", ".join(f"{n} {m}" for m, n in sorted(self.modes.items()))),
            ("quantization error", "none (kept bit for bit or float)" if err is None else f"relative RMS {err:.4f}"),
            ("seconds", f"{self.seconds:.1f}"),
        ]
        return key_value_table("conversion", rows)


def key_value_table(title: str, rows: list[tuple[str, str]]) -> Table:
    """The two-column summary a conversion prints."""
    t = Table(title=title, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:
        t.add_row(k, v)
    return t


def file_sha256(path: Path, advance: Callable[[int], None] = lambda n: None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 2**20):
            h.update(chunk)
            advance(len(chunk))
    return h.hexdigest()


class _CallbackProgress:
    """The two verbs of rich's Progress that convert uses, reported to `fn(description, done, total)`."""

    def __init__(self, fn: Callable[[str, int, int], None]):
        self.fn, self.tasks = fn, []

    def add_task(self, description: str, total: int) -> int:
        self.tasks.append([description, 0, total])
        self.fn(description, 0, total)
        return len(self.tasks) - 1

    def advance(self, task: int, n: int) -> None:
        t = self.tasks[task]
        t[1] += n
        self.fn(*t)


@contextmanager
def progress_bar(progress: bool | Callable[[str, int, int], None] = True):
    """A rich progress bar over bytes (on stderr), a silent stand-in, or a callback (for the chat app)."""
    if callable(progress):
        yield _CallbackProgress(progress)
        return
    enabled = bool(progress)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )
    with bar:
        yield bar
