"""`edge bench`: prompt and decode speed of edge against peers measured in the same run, as one table.

Peers run in a child process that never imports edge, so they get exactly what a user gets out of the
box (for mlx-lm on Linux: MLX's bundled reference BLAS, and the folder's fp16 scales; for llama.cpp,
llama-cpp-python on the GGUF the folder was converted from, with every core). All engines get the
same prompt token ids and the same sampling (greedy unless --temperature, then also --top-p, --min-p and
--top-k, seed 0) with end-of-sequence disabled, so they decode the same count.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

GREEDY = {"temperature": 0.0, "top_p": 1.0, "min_p": 0.0, "top_k": 0}
"""The bench's sampling settings, each at its "off" value: greedy decoding."""

# Part of each mlx-lm child: mlx-lm's sampler for the bench's settings (args["sampling"]), seeded.
MLX_LM_SAMPLER = r"""
import mlx.core as mx
from mlx_lm.sample_utils import make_sampler
s = args["sampling"]  # mlx-lm's top_p is off at 0, not 1
sampler = make_sampler(temp=s["temperature"], top_p=s["top_p"] if s["top_p"] < 1 else 0.0, min_p=s["min_p"], top_k=s["top_k"])
mx.random.seed(0)
"""

# Run by the child: mlx-lm's own load and stream_generate, nothing of edge.
MLX_LM_CHILD = (
    r"""
import json, sys
args = json.loads(sys.argv[1])
from mlx_lm import load, stream_generate
model, tokenizer = load(args["model"])
tokenizer.eos_token_ids = set()
"""
    + MLX_LM_SAMPLER
    + r"""
last = None
for last in stream_generate(model, tokenizer, args["prompt"], max_tokens=args["max_tokens"], sampler=sampler):
    pass
print(json.dumps({"prompt_tps": last.prompt_tps, "decode_tps": last.generation_tps,
                  "prompt_tokens": last.prompt_tokens, "decode_tokens": last.generation_tokens,
                  "peak_memory_bytes": int(last.peak_memory * 1e9)}))
"""
)


# Part of each llama.cpp child: llama-cpp-python's Llama on args["gguf"] with every core (load(n_ctx, **kw)).
LLAMA_CPP_LOAD = r"""
import json, os, sys, time
args = json.loads(sys.argv[1])
import llama_cpp.llama_cpp as low_level
from llama_cpp import Llama
if args.get("no_extra_buffers"):  # llama.cpp's weight-repacking buffer types (AMX and others) off
    default_params = low_level.llama_model_default_params
    def without_extra_buffers():
        p = default_params()
        p.use_extra_bufts = False
        return p
    low_level.llama_model_default_params = without_extra_buffers
def load(n_ctx, **kw):
    return Llama(model_path=args["gguf"], n_threads=os.cpu_count(), n_ctx=n_ctx, seed=0, verbose=False, **kw)
s = args["sampling"]  # top_k 0: off in llama.cpp too
"""

# Run by the child: llama.cpp (llama-cpp-python) on the GGUF the model was converted from, same token ids.
LLAMA_CPP_CHILD = (
    LLAMA_CPP_LOAD
    + r"""
llm = load(len(args["prompt"]) + args["max_tokens"] + 8)
def once(n):
    llm.reset()
    t = time.perf_counter(); llm.eval(args["prompt"]); prompt_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n):
        llm.eval([llm.sample(temp=s["temperature"], top_p=s["top_p"], min_p=s["min_p"], top_k=s["top_k"])])
    return prompt_s, time.perf_counter() - t
once(8)
runs = sorted((once(args["max_tokens"]) for _ in range(args["repeats"])), key=lambda r: r[1])
prompt_s, decode_s = runs[len(runs) // 2]
print(json.dumps({"prompt_tps": len(args["prompt"]) / prompt_s, "decode_tps": args["max_tokens"] / decode_s,
                  "prompt_tokens": len(args["prompt"]), "decode_tokens": args["max_tokens"],
                  "peak_memory_bytes": 0}))
"""
)


def run_llama_cpp_child(child: str, gguf: Path | None, args: dict) -> dict:
    """Run a llama.cpp child (LLAMA_CPP_LOAD + its part) on the GGUF: its last line of JSON, or {"error": ...}."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return {"error": "llama-cpp-python is not installed (pip install -e '.[bench]')"}
    if gguf is None:
        return {"error": "no GGUF for this model: pass --gguf, or convert the model from a GGUF"}
    args = {**args, "gguf": str(gguf)}
    done = subprocess.run([sys.executable, "-c", child, json.dumps(args)], capture_output=True, text=True)
    note = None
    if done.returncode < 0:  # killed by a signal: seen with llama.cpp's AMX kernels (SIGSEGV) on a KVM Xeon
        note = f"llama.cpp crashed (signal {-done.returncode}) with its extra buffer types (AMX, repacking); measured without them"
        done = subprocess.run(
            [sys.executable, "-c", child, json.dumps({**args, "no_extra_buffers": True})],
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"failed (exit code {done.returncode})"])[-1]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "note": note} if note else result


def _prompt_text() -> str:
    from importlib.resources import files

    return (files("edge.assets") / "bench_prompt.txt").read_text()


def bench_prompt(model, n_tokens: int) -> list[int]:
    """The first `n_tokens` ids of the shipped prompt text (repeated if it is shorter)."""
    ids = model.tokenizer.encode(_prompt_text())
    while len(ids) < n_tokens:
        ids += ids
    return ids[:n_tokens]


def bench_sampling(args) -> dict:
    """The sampling every engine gets: greedy, or --temperature with --top-p, --min-p and --top-k."""
    return {k: getattr(args, k, off) for k, off in GREEDY.items()}


def describe_sampling(sampling: dict) -> str:
    """'greedy', or the settings that are on ('temperature 0.7, top-p 0.9, min-p 0.05')."""
    if not sampling["temperature"]:
        return "greedy"
    return ", ".join(f"{k.replace('_', '-')} {v}" for k, v in sampling.items() if v != GREEDY[k])


def run_edge(model, prompt: list[int], max_tokens: int, repeats: int, sampling: dict = GREEDY) -> dict:
    from .events import Done
    from .generate import stream_events
    from .sampling import Sampling

    def once(n: int) -> Done:
        settings = Sampling(max_tokens=n, seed=0, **sampling)
        for event in stream_events(model, prompt, model.make_cache(), settings, eos=set()):
            if isinstance(event, Done):
                return event
        raise AssertionError("no Done")

    once(8)  # warm-up: first-call allocations and BLAS thread start-up
    runs = [once(max_tokens).stats for _ in range(max(repeats, 1))]
    return {
        "prompt_tps": statistics.median(r.prompt_tps for r in runs),
        "decode_tps": statistics.median(r.decode_tps for r in runs),
        "prompt_tokens": len(prompt),
        "decode_tokens": runs[0].generation_tokens,
        "peak_memory_bytes": max(r.peak_memory_bytes for r in runs),
    }


def run_mlx_lm(model_path: str, prompt: list[int], max_tokens: int, sampling: dict = GREEDY) -> dict:
    args = json.dumps({"model": model_path, "prompt": prompt, "max_tokens": max_tokens, "sampling": sampling})
    done = subprocess.run([sys.executable, "-c", MLX_LM_CHILD, args], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def source_gguf(model_path: Path) -> Path | None:
    """The GGUF a folder was converted from (edge.json records it), if it is still there."""
    try:
        source = Path(json.loads((model_path / "edge.json").read_text())["source"])
    except (OSError, ValueError, KeyError):
        return None
    return source if source.suffix == ".gguf" and source.is_file() else None


def run_llama_cpp(gguf: Path | None, prompt: list[int], max_tokens: int, repeats: int, sampling: dict = GREEDY) -> dict:
    args = {"prompt": prompt, "max_tokens": max_tokens, "repeats": max(repeats, 1), "sampling": sampling}
    return run_llama_cpp_child(LLAMA_CPP_CHILD, gguf, args)


PEERS = ("mlx_lm", "llama_cpp")


def parse_peers(spec: str | None, default: str) -> list[str]:
    """--peers as a list (spec, else default; "none" for no peer), refused before anything runs if it names
    a peer edge does not know."""
    from .errors import EdgeError

    peers = [p.strip() for p in (spec or default).split(",") if p.strip() and p.strip() != "none"]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise EdgeError(f"unknown peer(s) {', '.join(unknown)}; available: {', '.join(PEERS)}, none")
    return peers


def peer_gguf(model, args) -> Path | None:
    """The GGUF llama.cpp runs: --gguf, else the one the model was converted from."""
    return Path(args.gguf) if getattr(args, "gguf", None) else source_gguf(model.path)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def run_bench(model, args) -> int:
    peers = parse_peers(args.peers, "mlx_lm,llama_cpp")
    prompt = bench_prompt(model, args.prompt_tokens)
    sampling = bench_sampling(args)
    results = {"edge": run_edge(model, prompt, args.max_tokens, args.repeats, sampling)}
    for peer in peers:
        if peer == "mlx_lm":
            results["mlx_lm"] = run_mlx_lm(str(model.path), prompt, args.peer_tokens, sampling)
        else:
            results["llama_cpp"] = run_llama_cpp(
                peer_gguf(model, args), prompt, args.max_tokens, args.repeats, sampling
            )
    e, m, lc = results["edge"], results.get("mlx_lm", {}), results.get("llama_cpp", {})
    summary = {
        "model": str(model.path),
        "device": str(model.describe()["device"]),
        "compute": model.plan.compute,
        "blas": model.describe()["blas"],
        "kernels": model.describe()["kernels"],
        "prompt_tokens": len(prompt),
        "sampling": sampling,
        "edge_decode_tps": e["decode_tps"],
        "mlx_lm_decode_tps": m.get("decode_tps"),
        "decode_ratio": _ratio(e["decode_tps"], m.get("decode_tps")),
        "edge_prompt_tps": e["prompt_tps"],
        "mlx_lm_prompt_tps": m.get("prompt_tps"),
        "prompt_ratio": _ratio(e["prompt_tps"], m.get("prompt_tps")),
        "llama_cpp_decode_tps": lc.get("decode_tps"),
        "llama_cpp_prompt_tps": lc.get("prompt_tps"),
        "edge_vs_llama_cpp_decode": _ratio(e["decode_tps"], lc.get("decode_tps")),
        "edge_vs_llama_cpp_prompt": _ratio(e["prompt_tps"], lc.get("prompt_tps")),
        "engines": results,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_table(summary)
    return 0


def _print_table(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    fmt = lambda x, spec=".1f": "-" if x is None else format(x, spec)  # noqa: E731
    t = Table(title=f"edge bench: {Path(s['model']).name} on {s['device']} (edge computes in {s['compute']})")
    for col in ("engine", "prompt tok/s", "decode tok/s", "prompt tokens", "decode tokens", "peak MiB"):
        t.add_column(col, justify="right" if col != "engine" else "left")
    for name, r in s["engines"].items():
        if "error" in r:
            t.add_row(name, "error: " + r["error"][:60], "", "", "", "")
            continue
        t.add_row(
            name,
            fmt(r["prompt_tps"]),
            fmt(r["decode_tps"]),
            str(r["prompt_tokens"]),
            str(r["decode_tokens"]),
            fmt(r["peak_memory_bytes"] / 2**20, ".0f"),
        )
    if s["decode_ratio"] is not None:
        t.add_row("edge / mlx_lm", f"{s['prompt_ratio']:.2f}x", f"{s['decode_ratio']:.2f}x", "", "", "")
    if s["edge_vs_llama_cpp_decode"] is not None:
        t.add_row(
            "edge / llama_cpp",
            f"{s['edge_vs_llama_cpp_prompt']:.2f}x",
            f"{s['edge_vs_llama_cpp_decode']:.2f}x",
            "",
            "",
            "",
        )
    Console().print(t)
    Console().print(f"sampling (every engine, seed 0): {describe_sampling(s['sampling'])}")
    Console().print(f"BLAS: {s['blas']}; kernels: {s['kernels']}")
    for name, r in s["engines"].items():
        if r.get("note"):
            Console().print(f"{name}: {r['note']}")
