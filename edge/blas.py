"""Bind an optimized BLAS under MLX's CPU backend on Linux, and say which BLAS is in use.

MLX's Linux wheel links the reference BLAS (about 3.6 GFLOP/s on a 2048² product here). edge compiles
a tiny shim (`csrc/blas_shim.c`) once into the user cache and loads it with RTLD_GLOBAL before `mlx` is
imported, so MLX's `cblas_sgemm` resolves to the OpenBLAS in the `scipy-openblas32` wheel, with M = 1
products routed to sgemv. Nothing here imports mlx; `verify()` runs after mlx is loaded and checks that
MLX's calls really land in the shim. Set `EDGE_BLAS=reference` to keep MLX's own BLAS.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .paths import build_dir

_SOURCE = Path(__file__).parent / "csrc" / "blas_shim.c"


@dataclass
class BlasStatus:
    name: str
    bound: bool = False
    verified: bool | None = None
    detail: str = ""

    def __str__(self) -> str:
        state = {True: "verified", False: "NOT in use", None: "not yet verified"}[self.verified]
        return f"{self.name} ({state}{'; ' + self.detail if self.detail else ''})"


_status = BlasStatus("MLX's bundled BLAS")
_lib: ctypes.CDLL | None = None


def _openblas_dir() -> Path | None:
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return lib if (lib / "libscipy_openblas.so").exists() else None


def _compile(openblas: Path) -> Path:
    """Compile the shim into the build cache once per (source, OpenBLAS location)."""
    key = hashlib.sha256(_SOURCE.read_bytes() + str(openblas).encode() + os.uname().machine.encode()).hexdigest()[:16]
    out = build_dir() / f"blas_shim-{key}.so"
    if out.exists():
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        cmd = [cc, "-O2", "-shared", "-fPIC", str(_SOURCE), "-o", str(tmp_out)]
        cmd += [f"-L{openblas}", "-lscipy_openblas", f"-Wl,-rpath,{openblas}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling the BLAS shim failed: {done.stderr.strip()[:300]}")
        os.replace(tmp_out, out)
    return out


def bind() -> BlasStatus:
    """Load the shim globally; call before mlx is imported. Never raises: failures are reported."""
    global _lib, _status
    if _lib is not None or not sys.platform.startswith("linux"):
        if not sys.platform.startswith("linux"):
            _status = BlasStatus("Accelerate (MLX on macOS)", verified=True)
        return _status
    if os.environ.get("EDGE_BLAS", "").lower() in ("reference", "off", "0"):
        _status = BlasStatus("MLX's bundled reference BLAS", verified=True, detail="EDGE_BLAS=reference")
        return _status
    openblas = _openblas_dir()
    if openblas is None:
        _status = BlasStatus("MLX's bundled reference BLAS", detail="scipy-openblas32 is not installed")
        return _status
    try:
        _lib = ctypes.CDLL(str(_compile(openblas)), mode=ctypes.RTLD_GLOBAL)
    except (RuntimeError, OSError) as e:
        _status = BlasStatus("MLX's bundled reference BLAS", detail=str(e))
        return _status
    name = f"OpenBLAS {_openblas_version()} (scipy-openblas32) via edge's shim, M=1 -> sgemv"
    _status = BlasStatus(name, bound=True, detail=_rebind_loaded_mlx())
    return _status


def _rebind_loaded_mlx() -> str:
    """If libmlx is already loaded (mlx imported before edge), point its BLAS imports at the shim in place."""
    from . import elf_rebind

    libmlx = elf_rebind.loaded_library("libmlx")
    if libmlx is None:
        return ""
    assert _lib is not None
    names = ("cblas_sgemm", "cblas_dgemm", "cblas_cgemm")
    targets = {n: ctypes.cast(getattr(_lib, n), ctypes.c_void_p).value for n in names}
    changed = elf_rebind.rebind(libmlx, targets)
    return f"mlx was imported first; rebound {changed} of libmlx's BLAS imports"


def _openblas_version() -> str:
    assert _lib is not None
    get = _lib.scipy_openblas_get_config
    get.restype = ctypes.c_char_p
    config = (get() or b"").decode()
    core = _lib.scipy_openblas_get_corename
    core.restype = ctypes.c_char_p
    parts = config.split()
    version = parts[1] if len(parts) > 1 else "?"
    return f"{version} {(core() or b'').decode()}".strip()


def sgemm_calls() -> int:
    """How many sgemm calls reached the shim (0 when it is not bound)."""
    if _lib is None:
        return 0
    return ctypes.c_uint64.in_dll(_lib, "edge_blas_sgemm_calls").value


def verify() -> BlasStatus:
    """After mlx is imported: run one fp32 product on the CPU and check it went through the shim."""
    if not _status.bound or _status.verified is not None:
        return _status
    import mlx.core as mx

    before = sgemm_calls()
    a = mx.ones((4, 8), dtype=mx.float32)
    mx.eval(mx.matmul(a, mx.ones((8, 4), dtype=mx.float32), stream=mx.cpu))
    _status.verified = sgemm_calls() > before
    if not _status.verified:
        _status.detail = "MLX did not call it; import edge before mlx" + (
            f" ({_status.detail})" if _status.detail else ""
        )
    return _status


def status() -> BlasStatus:
    return _status
