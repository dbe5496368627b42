"""Generation: greedy parity with mlx-lm, UTF-8-safe streaming, stop strings never emitted, cancellation, seeds."""

from __future__ import annotations

import threading

import mlx.core as mx
import pytest

import edge
from edge.generate import stream_events


class Scripted:
    """A stand-in model whose next token is dictated by a script, to test the streaming layer exactly."""

    def __init__(self, script: list[int], prompt_len: int, vocab: int):
        self.script, self.prompt_len, self.vocab, self.seen = script, prompt_len, vocab, 0

    def make_cache(self):
        return []

    @property
    def layers(self):
        return []

    def __call__(self, inputs, cache=None):
        self.seen += inputs.shape[1]
        i = self.seen - self.prompt_len
        token = self.script[i] if 0 <= i < len(self.script) else 0
        logits = mx.full((1, inputs.shape[1], self.vocab), -10.0)
        return logits.at[:, -1, token].add(20.0)


def scripted_model(
    base: edge.Model, text: str, prompt: list[int], tail: list[int] | None = None, kind: type = Scripted
) -> edge.Model:
    ids = base.tokenizer.encode(text, add_special_tokens=False) + (tail or [])
    module = kind(ids, len(prompt), base.tokenizer.vocab_size)
    return edge.Model(module, base.tokenizer, base.config, base.path, base.plan)


def run(model, prompt, **settings):
    events = list(stream_events(model, prompt, model.make_cache(), edge.Sampling(**settings)))
    return [e for e in events if isinstance(e, edge.Token)], events[-1]


@pytest.fixture(scope="module")
def llama(mlx_models):
    return edge.load(mlx_models["llama"])


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "step-by-step"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_greedy_tokens_equal_mlx_lm(arch, pipelined, mlx_models, monkeypatch):
    """Both decode loops (`generate.pipelines`: a GPU queues the next step, edge's fused layers on a CPU do not)
    give mlx-lm's tokens."""
    from mlx_lm import load as mlx_lm_load
    from mlx_lm import stream_generate

    monkeypatch.setattr(edge.generate, "pipelines", lambda module: pipelined)
    model = edge.load(mlx_models[arch])
    prompt = model.tokenizer.encode("Once upon a time there was")
    done = [e for e in model.stream(prompt, max_tokens=24) if isinstance(e, edge.Done)][0]
    ref_model, ref_tok = mlx_lm_load(str(mlx_models[arch]))
    ref = [r.token for r in stream_generate(ref_model, ref_tok, prompt, max_tokens=24)]
    n = len(done.token_ids)
    assert n > 0 and list(done.token_ids) == ref[:n]
    assert done.reason == ("eos" if n < 24 else "length")


def test_greedy_step_by_step_reads_bf16_logits(llama):
    """Decoding step by step (a module with edge's fused layers, on a CPU) takes NumPy's argmax, which has no
    bf16: such logits are widened first, and the ids are the script's."""

    class FusedBf16(Scripted):
        decoder_stack = None  # what `generate.pipelines` looks for

        def __call__(self, inputs, cache=None):
            return super().__call__(inputs, cache).astype(mx.bfloat16)

    text, prompt = "Once upon a time", [5, 6, 7]
    model = scripted_model(llama, text, prompt, [2], kind=FusedBf16)
    assert not edge.generate.pipelines(model.module)
    tokens, done = run(model, prompt, max_tokens=32)
    assert done.reason == "eos" and done.text == text


def test_stream_never_splits_a_utf8_character(llama):
    text = "Café naïve déjà 🙂🚀 日本語"
    prompt = [5, 6, 7]
    tokens, done = run(scripted_model(llama, text, prompt, [2]), prompt, max_tokens=64)
    assert done.reason == "eos"
    pieces = [t.text for t in tokens]
    assert "".join(pieces) == text == done.text
    assert all("\ufffd" not in p for p in pieces)
    ids = llama.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(pieces)  # characters did span several tokens


@pytest.mark.parametrize("stop", ["STOP", "ST", "world"])
def test_stop_string_is_never_emitted_even_in_part(llama, stop):
    text = "hello, STOP world and more"
    prompt = [5, 6]
    tokens, done = run(scripted_model(llama, text, prompt), prompt, max_tokens=40, stop=(stop,))
    streamed = "".join(t.text for t in tokens)
    assert done.reason == "stop"
    assert streamed == text[: text.index(stop)] == done.text  # nothing of the stop string, not even its first letter


def test_text_that_only_looks_like_a_stop_prefix_is_released(llama):
    text = "a S and ST here"
    prompt = [5]
    tokens, done = run(scripted_model(llama, text, prompt, [2]), prompt, max_tokens=40, stop=("STOP",))
    assert done.reason == "eos" and "".join(t.text for t in tokens) == text


def test_max_tokens_and_context_limits(llama):
    _, done = run(llama, [5, 6, 7], max_tokens=5)
    assert done.reason in ("length", "eos") and len(done.token_ids) <= 5
    with pytest.raises(edge.EdgeError, match="context"):
        list(llama.stream(list(range(3, 3 + llama.context_length))))


def test_generation_stops_at_end_of_context(mlx_models):
    model = edge.load(mlx_models["llama"], context=32)
    prompt = list(range(10, 30))
    done = [e for e in stream_events(model, prompt, model.make_cache(), edge.Sampling(max_tokens=100), eos=set())][-1]
    assert done.reason == "context" and len(done.token_ids) == 32 - 20


def test_cancel_from_another_thread(llama):
    cancel = threading.Event()
    seen = []
    for event in llama.stream([5, 6, 7], max_tokens=200, cancel=cancel):
        seen.append(event)
        if len(seen) == 3:
            threading.Thread(target=cancel.set).start()
            threading.Event().wait(0.05)
    done = seen[-1]
    assert isinstance(done, edge.Done) and done.reason in ("cancelled", "eos")
    assert len(done.token_ids) < 200


def test_seeded_sampling_repeats_and_top_k_1_is_greedy(llama):
    prompt = [5, 6, 7, 8]
    a = llama.generate(prompt, temperature=0.9, seed=7, max_tokens=16)
    b = llama.generate(prompt, temperature=0.9, seed=7, max_tokens=16)
    assert a == b
    greedy = llama.generate(prompt, max_tokens=16)
    assert llama.generate(prompt, temperature=1.5, top_k=1, seed=3, max_tokens=16) == greedy


def test_repetition_penalty_changes_greedy_output(llama):
    prompt = [5, 6, 7, 8]
    plain = [e for e in llama.stream(prompt, max_tokens=24) if isinstance(e, edge.Done)][0].token_ids
    penalised = [e for e in llama.stream(prompt, max_tokens=24, repetition_penalty=5.0) if isinstance(e, edge.Done)][
        0
    ].token_ids
    assert plain != penalised
    window = penalised[:20]
    assert len(set(window)) >= len(set(plain[:20]))


def test_stats_are_filled(llama):
    done = list(llama.stream([5, 6, 7, 8, 9], max_tokens=8))[-1]
    s = done.stats
    assert s.prompt_tokens == 5 and s.prefill_tokens == 5 and s.reused_tokens == 0
    assert s.generation_tokens == len(done.token_ids) - (done.reason == "eos")
    assert s.ttft_s > 0 and s.prompt_tps > 0 and s.total_s >= s.ttft_s
    assert s.context_limit == llama.context_length


def test_model_without_chat_template_gets_a_plain_layout_and_a_warning(hf_models, tokenizer, tmp_path):
    import builders

    from edge.converters import convert

    builders.write_hf_model(tmp_path / "hf", "llama", tok=tokenizer)
    builders.write_tokenizer(tmp_path / "hf", tokenizer, chat_template=None)
    convert(tmp_path / "hf", tmp_path / "mlx", progress=False)
    model = edge.load(tmp_path / "mlx")
    assert not model.tokenizer.has_chat_template
    with pytest.warns(UserWarning, match="no chat template"):
        ids = model.encode([{"role": "user", "content": "Hello"}])
    assert model.tokenizer.decode(ids) == "user: Hello\nassistant:"
    assert list(model.stream([{"role": "user", "content": "Hi"}], max_tokens=3))[-1].reason in ("length", "eos")
