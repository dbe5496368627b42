"""Build (on first use, into the cache) and load edge's CPU kernel extension for MLX.

The extension is an MLX `Primitive` in C++ (`csrc/kernels`), bound with nanobind in MLX's nanobind domain
so that it takes `mx.array` arguments. It is compiled here, on the machine that runs it (`-march=native`),
against the installed mlx wheel, with CMake >= 3.27 and nanobind 3.x from PyPI (both dependencies of
edge on Linux). The nanobind ABI must match the one mlx was built with: a mismatch shows up as a
TypeError on the first call, which `load_extension` checks and reports. Any failure leaves edge on MLX's
own ops; `status()` says which kernels are active and why. `EDGE_KERNELS=off` turns them off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..paths import build_dir

SOURCE_DIR = Path(__file__).resolve().parent.parent / "csrc" / "kernels"
MODULE = "_edge_kernels"


@dataclass
class KernelStatus:
    active: bool
    simd: str = ""
    detail: str = ""

    def __str__(self) -> str:
        if self.active:
            return f"edge quantized matmul ({self.simd}; large products over {os.cpu_count()} cores)"
        return f"MLX's own ops ({self.detail})"


_status: KernelStatus | None = None
_module = None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _key() -> str:
    import mlx.core as mx
    import nanobind

    h = hashlib.sha256()
    for f in sorted(SOURCE_DIR.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    h.update(f"{mx.__version__} {nanobind.__version__} {sys.version} {platform.machine()} {_cpu_flags()}".encode())
    return h.hexdigest()[:16]


def _cmake() -> str:
    try:
        import cmake  # the PyPI wheel (>= 3.27); the system's may be older

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        found = shutil.which("cmake")
        if not found:
            raise RuntimeError("CMake >= 3.27 is needed to build edge's kernels: pip install 'cmake>=3.27'") from None
        return found


def build(arch: str = "native") -> Path:
    """The compiled extension, building it into the cache if this source / mlx / CPU has none yet.
    `arch` is the -march target: "native" for use; "" (the compiler's baseline: the portable loops on x86-64)
    or "haswell" (AVX2 without AVX-512) build the paths this CPU would not take, for tests."""
    out = build_dir() / f"kernels-{_key()}{'' if arch == 'native' else '-' + (arch or 'portable')}"
    found = sorted(out.glob(f"{MODULE}*.so")) if out.exists() else []
    if found:
        return found[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".kernels-") as tmp:
        work = Path(tmp) / "build"
        configure = [_cmake(), "-S", str(SOURCE_DIR), "-B", str(work), f"-DPython_EXECUTABLE={sys.executable}"]
        configure.append(f"-DEDGE_ARCH={arch}")
        for cmd in (configure, [_cmake(), "--build", str(work), "-j", str(os.cpu_count() or 2)]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                lines = (done.stderr + done.stdout).strip().splitlines()
                tail = [line for line in lines if "error" in line][:3] or lines[-3:]
                raise RuntimeError(f"building edge's kernels failed: {' | '.join(tail)[:400]}")
        staged = Path(tmp) / "out"
        staged.mkdir()
        for so in work.glob(f"{MODULE}*.so"):
            shutil.copy2(so, staged / so.name)
        try:
            os.replace(staged, out)
        except OSError:  # another process finished first
            pass
    return sorted(out.glob(f"{MODULE}*.so"))[0]


def _check(module) -> None:
    """One tiny product against MLX's own: catches a nanobind ABI mismatch and a wrong build."""
    import mlx.core as mx

    from .layout import pack

    w = mx.arange(64 * 32, dtype=mx.float32).reshape(64, 32) / 2048 - 0.5
    wq, s, b = mx.quantize(w, group_size=32, bits=4)
    x = mx.linspace(-1, 1, 32).reshape(1, 32)
    try:
        got = module.packed_matmul(x, *pack(wq, s, b, 4, 32), 64, 32, 4)
    except TypeError as e:
        raise RuntimeError(
            "the kernel extension does not accept mx.array arguments: its nanobind ABI differs from mlx's "
            f"({e}); reinstall with the nanobind version pinned in edge's requirements"
        ) from None
    want = mx.quantized_matmul(x, wq, s, b, transpose=True, group_size=32, bits=4)
    if not mx.allclose(got, want, atol=0.05).item():
        raise RuntimeError("the kernel extension gave wrong results on a check product")


def load_extension():
    """The kernel module, or None (see `status()` for why)."""
    global _module, _status
    if _status is not None:
        return _module
    if os.environ.get("EDGE_KERNELS", "").lower() in ("off", "0", "mlx"):
        _status = KernelStatus(False, detail="EDGE_KERNELS=off")
        return None
    if sys.platform == "darwin":
        _status = KernelStatus(False, detail="macOS: MLX's Metal quantized kernels")
        return None
    try:
        spec = importlib.util.spec_from_file_location(MODULE, build())
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _check(module)
    except (RuntimeError, ImportError, OSError) as e:
        _status = KernelStatus(False, detail=str(e))
        return None
    _module = module
    _status = KernelStatus(True, simd=module.simd())
    return module


def status() -> KernelStatus:
    if _status is None:
        load_extension()
    assert _status is not None
    return _status
