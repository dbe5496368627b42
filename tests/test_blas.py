"""The BLAS binding: MLX's products land in edge's shim (Linux) and give the same numbers as NumPy."""

from __future__ import annotations

import sys

import mlx.core as mx
import numpy as np
import pytest

from edge import blas

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the shim is for MLX's Linux CPU backend; macOS uses Accelerate"
)


@linux_only
def test_shim_is_bound_and_verified():
    status = blas.verify()
    assert status.bound and status.verified, str(status)
    assert "OpenBLAS" in status.name


@linux_only
@pytest.mark.parametrize(
    "shape",
    [(1, 576, 1536), (1, 64, 1), (7, 33, 5), (5, 33, 1), (64, 128, 96), (1, 1, 1), (3, 1, 4)],
)
def test_products_through_the_shim_equal_numpy(shape):
    m, k, n = shape
    rng = np.random.default_rng(m * 1000 + k + n)
    a, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
    before = blas.sgemm_calls()
    A, W = mx.array(a), mx.array(w)
    cases = {
        "x @ W.T": (A @ W.T, a @ w.T),
        "(W @ x.T).T": ((W @ A.T).T, (w @ a.T).T),
        "x.T.T @ W.T": (A.T.T @ W.T, a @ w.T),
        "col-major x": (mx.array(np.asfortranarray(a)) @ W.T, a @ w.T),
    }
    for name, (got, ref) in cases.items():
        np.testing.assert_allclose(np.array(got), ref, rtol=1e-4, atol=1e-4, err_msg=name)
    assert blas.sgemm_calls() > before or min(m, k, n) == 1 and m * n * k == 1


@linux_only
def test_binding_takes_even_when_mlx_was_imported_and_used_first():
    import subprocess

    code = (
        "import mlx.core as mx; import numpy as np\n"
        "mx.eval(mx.ones((4, 4)) @ mx.ones((4, 4)))\n"
        "import edge\n"
        "s = edge.blas.verify(); assert s.verified, s\n"
        "a, w = mx.random.normal((1, 300)), mx.random.normal((200, 300))\n"
        "assert np.allclose(np.array(a @ w.T), np.array(a) @ np.array(w).T, atol=1e-3)\n"
        "print(s)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rebound 3" in proc.stdout
