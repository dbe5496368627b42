"""The `edge` command as a user runs it: convert, generate, info --json, chat --plain over a pipe."""

from __future__ import annotations

import json

import pytest
from test_bad_input import run_cli

from edge.errors import EdgeError


def test_convert_generate_info(gguf_model, tmp_path):
    out = tmp_path / "model"
    proc = run_cli("convert", str(gguf_model), "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["modes"]["keep"] == 15 and (out / "edge.json").exists()

    proc = run_cli("generate", str(out), "-p", "Hello", "--max-tokens", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["reason"] in ("length", "eos") and result["stats"]["generation_tokens"] <= 5

    proc = run_cli(
        "generate", str(out), "-p", "Hello", "--max-tokens", "5", "--temperature", "0.7", "--seed", "1", "--no-chat"
    )
    assert proc.returncode == 0 and "prompt" in proc.stderr  # stats on stderr, text on stdout

    for path in (out, gguf_model):
        proc = run_cli("info", str(path), "--json", "--context", "128")
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        assert info["supported"] and info["plan"]["context"] == 128 and set(info["at_bits"]) == {"4", "8", "16"}
        assert "BLAS" in run_cli("info", str(path)).stdout


def test_plain_chat_over_a_pipe(mlx_models):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "edge", "chat", str(mlx_models["llama"]), "--max-tokens", "4"],
        input="Hello\nHow are you?\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("prompt") == 2  # one stats line per reply


def test_help_is_fast_and_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in ("convert", "generate", "chat", "info", "bench"):
        assert cmd in proc.stdout


def test_bench_draft_prints_one_row_per_drafter_and_class(tmp_path, tokenizer):
    """`edge bench --draft lookup,auto --json`: the keys the issue fixes, plain rows at 1.0, greedy output
    identical to plain in every interleaved run, acceptance within [0, 1], drafted / accepted counts, accepted
    drafts per verify step and seconds drafting and verifying."""
    import builders

    from edge.bench_speculative import prompt_suite
    from edge.converters import convert

    src = builders.write_hf_model(tmp_path / "hf", "llama", tok=tokenizer, seed=4, max_position_embeddings=1024)
    convert(src, tmp_path / "model", dtype="float32", progress=False)
    proc = run_cli(
        "bench", str(tmp_path / "model"), "--draft", "lookup,auto", "--max-tokens", "12", "--repeats", "2", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {(r["drafter"], r["prompt_class"]) for r in rows} == {
        (d, c) for d in ("plain", "control", "lookup", "auto") for c in ("grounded", "open")
    }
    for r in rows:
        assert {"drafter", "prompt_class", "decode_tps", "ratio", "acceptance", "identical"} <= set(r)
        assert r["decode_tps"] > 0 and r["identical"] is True and r["runs"] == 2
        if r["drafter"] == "plain":
            assert r["ratio"] == 1.0
        elif r["drafter"] == "control":  # plain decoding again: its ratios are noise, its output plain's own
            assert r["acceptance"] is None and "drafted" not in r and "bound" not in r
            assert len(r["prompt_ratios"]) == len(prompt_suite()[r["prompt_class"]])
            assert (
                r["worst_prompt"] == min(r["prompt_ratios"])
                and r["ratio_range"][0] <= r["ratio"] <= r["ratio_range"][1]
            )
        else:
            assert 0.0 <= r["acceptance"] <= 1.0 and r["ratio_range"][0] <= r["ratio"] <= r["ratio_range"][1]
            # each prompt's own ratio (median of the 2 runs), the worst of them in the table
            assert len(r["prompt_ratios"]) == len(prompt_suite()[r["prompt_class"]])
            assert all(x > 0 for x in r["prompt_ratios"]) and r["worst_prompt"] == min(r["prompt_ratios"])
            # the drafting figures, summed over both runs: counts that agree with each other, and time verifying
            assert r["verify_steps"] > 0 and 0 <= r["accepted"] <= r["drafted"]
            # greedy, prompt lookup's bound at pass costs measured in the run (1 to k_max + 1 positions)
            assert ("bound" in r) == (r["drafter"] == "lookup")
            if "bound" in r:
                assert r["bound"] > 0 and len(r["pass_costs"]) == 13 and r["pass_costs"][0] == 1.0
                assert len(r["prompt_bounds"]) == len(r["prompt_ratios"]) and all(b > 0 for b in r["prompt_bounds"])
                assert min(r["prompt_bounds"]) <= r["bound"] <= max(r["prompt_bounds"])  # a weighted mean of them
                assert r["replayed"] > 0  # the loop at those costs on a virtual clock (test_drafters checks its sense)
                assert r["any_match_bound"] > 0  # tree verification's ceiling (test_drafters checks its sense)
            assert r["acceptance"] == r["accepted"] / r["drafted"]
            assert r["accepted_per_step"] == r["accepted"] / r["verify_steps"] <= 12
            assert r["draft_s"] >= 0.0 and r["verify_s"] > 0.0
    # sampled (seed 0), prompt lookup's output must still be plain sampling's own (its drafts are deterministic)
    sampled = ("--temperature", "0.8", "--top-p", "0.95", "--repeats", "1")
    proc = run_cli("bench", str(tmp_path / "model"), "--draft", "lookup", "--max-tokens", "12", "--json", *sampled)
    assert proc.returncode == 0, proc.stderr
    assert all(r["identical"] is True and "bound" not in r for r in json.loads(proc.stdout))  # the bound: greedy


def test_bench_samples_as_told(mlx_models):
    """`edge bench --temperature 0.7 --top-p 0.9 --min-p 0.05` (edge chat's settings): every engine samples so
    (seed 0), decodes the asked count (end-of-sequence off), and the JSON and the table say how it sampled."""
    args = ("bench", str(mlx_models["llama"]), "--peers", "none", "--max-tokens", "8", "--repeats", "1")
    sampled = ("--temperature", "0.7", "--top-p", "0.9", "--min-p", "0.05")
    proc = run_cli(*args, *sampled, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["sampling"] == {"temperature": 0.7, "top_p": 0.9, "min_p": 0.05, "top_k": 0}
    assert summary["engines"]["edge"]["decode_tokens"] == 8 and summary["edge_decode_tps"] > 0
    table = run_cli(*args, *sampled, env_extra={"COLUMNS": "200"}).stdout
    assert "temperature 0.7, top-p 0.9, min-p 0.05" in table
    assert "greedy" in run_cli(*args, env_extra={"COLUMNS": "200"}).stdout


def test_bench_draft_model_against_mlx_lm(tmp_path, tokenizer):
    """`--draft MODEL --peers mlx_lm`: mlx-lm's stream_generate with the same draft model runs in a child on
    the same prompts; its row's ratio is against mlx-lm's own plain decoding there, measured in the same run."""
    import builders

    from edge.converters import convert

    target, draft = (str(tmp_path / name) for name in ("target", "draft"))
    for i, (arch, out) in enumerate((("llama", target), ("qwen2", draft))):
        src = builders.write_hf_model(tmp_path / f"hf{i}", arch, tok=tokenizer, seed=i, max_position_embeddings=1024)
        convert(src, out, dtype="float32", progress=False)
    args = ("bench", target, "--draft", draft, "--peers", "mlx_lm", "--max-tokens", "8", "--repeats", "1", "--json")
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    peer = [r for r in json.loads(proc.stdout) if r["drafter"] == f"mlx_lm+{draft}"]
    assert {r["prompt_class"] for r in peer} == {"grounded", "open"}
    for r in peer:
        assert r["decode_tps"] > 0 and r["plain_tps"] > 0 and abs(r["ratio"] - r["decode_tps"] / r["plain_tps"]) < 1e-9
        assert 0.0 <= r["from_draft"] <= 1.0 and r["acceptance"] is None  # mlx-lm does not say how many it drafted
    proc = run_cli(*args[:4], "--peers", "mlx_lm,ollama", "--max-tokens", "4")
    assert proc.returncode == 1 and "ollama" in proc.stderr and "available: mlx_lm, llama_cpp" in proc.stderr


def test_llama_cpp_lookup_rows_are_against_llama_cpps_own_plain(monkeypatch):
    """The llama.cpp prompt-lookup row (llama-cpp-python is a bench extra, absent here, so its child's answer is
    given): per repeat the class's and each prompt's ratio to llama.cpp's own plain decoding, medians over the
    repeats, and greedy output compared with llama.cpp's own plain output."""
    from argparse import Namespace
    from types import SimpleNamespace

    from pytest import approx

    import edge.bench as bench
    from edge.bench_speculative import _llama_cpp_lookup_rows

    def reply(tokens, seconds):
        return {"tokens": tokens, "seconds": seconds}

    runs = [  # two repeats of two prompts: 4 and 2 decoded tokens (the first token is prefill's)
        {"plain": [reply([1] * 5, 0.4), reply([2] * 3, 0.2)], "lookup": [reply([1] * 5, 0.2), reply([2] * 3, 0.4)]},
        {"plain": [reply([1] * 5, 0.4), reply([2] * 3, 0.2)], "lookup": [reply([1] * 5, 0.1), reply([2, 2, 3], 0.2)]},
    ]
    runs = [{"grounded": run} for run in runs]  # the child answers per class
    monkeypatch.setattr(bench, "run_llama_cpp_child", lambda child, gguf, payload: {"runs": runs})
    model = SimpleNamespace(path=None, tokenizer=SimpleNamespace(eos_token_ids={0}))
    args = Namespace(gguf="x.gguf", max_tokens=4, repeats=2, temperature=0.0, top_p=1.0, min_p=0.0, top_k=0)
    [row] = _llama_cpp_lookup_rows(model, {"grounded": [[5], [6]]}, args)
    # plain 6 tokens in 0.6 s; lookup 6 in 0.6 s, then 6 in 0.3 s: ratios 1.0 and 2.0, median 1.5
    assert row["drafter"] == "llama_cpp+lookup" and row["ratio"] == approx(1.5)
    assert row["decode_tps"] == approx(15.0) and row["plain_tps"] == approx(10.0)
    assert row["ratio_range"] == approx([1.0, 2.0])
    assert row["prompt_ratios"] == approx([3.0, 0.75]) and row["worst_prompt"] == approx(0.75)  # (2+4)/2, (.5+1)/2
    assert row["identical"] is False and row["acceptance"] is None  # the second repeat's reply differs


def test_bench_draft_interleaves_by_prompt(tmp_path, tokenizer, monkeypatch, capsys):
    """Each prompt is decoded plainly and then by each drafter before the next prompt: a prompt's own ratio
    (what "never below 0.95x on any prompt" is judged by) compares runs a second apart, not a class apart."""
    import builders

    import edge
    import edge.bench_speculative as bench
    from edge.cli import build_parser
    from edge.converters import convert

    src = builders.write_hf_model(tmp_path / "hf", "llama", tok=tokenizer, seed=4, max_position_embeddings=1024)
    convert(src, tmp_path / "model", dtype="float32", progress=False)

    calls, decode = [], bench._decode

    def spy(model, ids, sampling, drafter, fixed_length=None):
        calls.append((tuple(ids), getattr(drafter, "name", "plain")))
        return decode(model, ids, sampling, drafter, fixed_length)

    monkeypatch.setattr(bench, "_decode", spy)
    args = build_parser().parse_args(
        ["bench", "--draft", "lookup,auto", "--max-tokens", "3", "--repeats", "1", "--json"]
    )
    assert bench.run_speculative_bench(edge.load(tmp_path / "model"), args) == 0
    prompts = [ids for ids, name in calls if name == "lookup"]
    assert len(prompts) == sum(len(texts) for texts in bench.prompt_suite().values())
    # plain decoding again last: the control row, as far from plain as the last drafter
    assert calls == [(ids, name) for ids in prompts for name in ("plain", "lookup", "auto", "plain")]
    assert len(json.loads(capsys.readouterr().out)) == 8  # plain, control, lookup and auto, for each class
    # a draft folder named like a row is asked for by a path
    args = build_parser().parse_args(["bench", "--draft", "lookup,control", "--max-tokens", "3", "--json"])
    with pytest.raises(EdgeError, match=r"--draft control: .*\./control"):
        bench.run_speculative_bench(edge.load(tmp_path / "model"), args)
