"""`edge chat` in a real terminal (tmux): the default model is found, converted and loaded, and answers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed on this machine"),
]


def capture(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def wait_screen(session: str, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = capture(session)
        if needle in screen:
            return screen
        time.sleep(0.5)
    raise AssertionError(f"{needle!r} did not appear; the screen was:\n{capture(session)}")


def test_default_model_answers_in_a_real_terminal(real_gguf, tmp_path):
    # The default-model path: no model argument; the GGUF is found under EDGE_MODELS, converted into EDGE_HOME.
    env = {
        **os.environ,
        "EDGE_HOME": str(tmp_path / "home"),
        "EDGE_MODELS": str(real_gguf.parent),
        "TERM": "xterm-256color",
    }
    args = [sys.executable, "-m", "edge", "chat", "--temperature", "0"]
    session = f"edge-test-{os.getpid()}"
    command = " ".join(f"'{a}'" for a in args)
    subprocess.run(
        [
            "tmux",
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "120",
            "-y",
            "40",
            *[f"-e{k}={v}" for k, v in env.items() if k in ("EDGE_HOME", "EDGE_MODELS", "TERM", "PATH")],
            command,
        ],
        check=True,
    )
    try:
        wait_screen(session, "ready", timeout=180)
        subprocess.run(["tmux", "send-keys", "-t", session, "What is the capital of France?"], check=True)
        subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)
        screen = wait_screen(session, "Paris", timeout=120)
        assert "What is the capital of France?" in screen
        wait_screen(session, "tok/s", timeout=60)  # the status bar shows the reply's stats
    finally:
        subprocess.run(["tmux", "send-keys", "-t", session, "C-q"])
        time.sleep(0.5)
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
