"""`edge bench MODEL --draft lookup,auto,...`: speculative decoding against plain decoding, same run.

For each drafter and prompt class (input-grounded tasks, open chat; prompts in `assets/spec_prompts.json`):
decode tok/s over the class, the ratio to plain decoding measured in the same run, the lowest of the
prompts' own ratios (each a median over the runs; `--json` lists them as `prompt_ratios`), the acceptance rate,
accepted drafts per verify step, the share of time spent drafting (against verifying), and whether the
output was identical to plain: greedy, or sampled with a deterministic drafter such as prompt lookup (`--json`
also has the counts and seconds). `--repeats R` runs plain decoding and every drafter R times, interleaved
prompt by prompt (plain, each drafter, the next prompt plain, ...), so drift on a shared machine hits both
sides of a ratio alike; the table gives medians (and the range of the ratios). Sampled, repeat r seeds every
row's requests with r.

The `control` row is plain decoding once more, after the drafters of each prompt: an engine identical to plain,
so its ratios differ from 1 by noise alone. Its worst prompt says how far below 1 a prompt's ratio falls on
this machine in this run with nothing to gain or lose (0.86x to 0.96x on a shared 2-core host at 5 to 8
repeats), which a drafter's worst prompt is read against.

Peers run on the same prompts in a child process, each against its own plain decoding there: with a draft
model and `--peers mlx_lm`, mlx-lm's `stream_generate(draft_model=...)` (it reports which tokens came
`from_draft`, not how many it drafted); with lookup or auto and `--peers llama_cpp`, llama-cpp-python's
`LlamaPromptLookupDecoding` on the GGUF the model came from.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

from .bench import LLAMA_CPP_LOAD, MLX_LM_SAMPLER, bench_sampling, describe_sampling, parse_peers
from .errors import EdgeError
from .events import Done
from .sampling import Sampling

MLX_LM_SPEC_CHILD = (
    r"""
import json, sys, time
args = json.loads(sys.argv[1])
from mlx_lm import load, stream_generate
model, tok = load(args["model"])
draft, _ = load(args["draft"])
"""
    + MLX_LM_SAMPLER
    + r"""
def decode(prompt, **kw):  # (tokens, seconds, tokens from the draft)
    last, drafted = None, 0
    for last in stream_generate(model, tok, prompt, max_tokens=args["max_tokens"], sampler=sampler, **kw):
        drafted += bool(getattr(last, "from_draft", False))
    return last.generation_tokens, last.generation_tokens / max(last.generation_tps, 1e-9), drafted
plain = [decode(p) for p in args["prompts"]]  # its own plain decoding first, the same prompts
spec = [decode(p, draft_model=draft, num_draft_tokens=args["draft_length"]) for p in args["prompts"]]
tps = lambda runs: sum(r[0] for r in runs) / sum(r[1] for r in runs)
print(json.dumps({"decode_tps": tps(spec), "plain_tps": tps(plain),
                  "from_draft": sum(r[2] for r in spec) / max(sum(r[0] for r in spec), 1)}))
"""
)


# llama-cpp-python's prompt lookup (LlamaPromptLookupDecoding, its defaults: 2-grams, 10 drafts, always on)
# against its own plain decoding, both through Llama.generate, interleaved per repeat like edge's rows.
LLAMA_CPP_LOOKUP_CHILD = (
    LLAMA_CPP_LOAD
    + r"""
from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
prompts = args["prompts"]  # class -> prompts
# room for 10 drafts past max_tokens: near a full context llama-cpp-python writes its drafts past its buffer
n_ctx = max(len(ids) for ps in prompts.values() for ids in ps) + args["max_tokens"] + 32
engines = {"plain": load(n_ctx), "lookup": load(n_ctx, draft_model=LlamaPromptLookupDecoding())}
def once(llm, ids, n):
    llm.reset()
    out, first = [], None
    for token in llm.generate(ids, temp=s["temperature"], top_p=s["top_p"], min_p=s["min_p"], top_k=s["top_k"],
                              repeat_penalty=1.0):
        first = first or time.perf_counter()
        out.append(token)
        if token in args["eos"] or len(out) >= n:
            break
    return {"tokens": out, "seconds": time.perf_counter() - first}
for llm in engines.values():
    once(llm, next(iter(prompts.values()))[0], 8)  # warm-up
runs = [{cls: {name: [once(llm, ids, args["max_tokens"]) for ids in ps] for name, llm in engines.items()}
         for cls, ps in prompts.items()} for _ in range(args["repeats"])]
print(json.dumps({"runs": runs}))
"""
)


CONTROL = "control"
"""The row of plain decoding run again (see the module's docstring)."""


def prompt_suite() -> dict[str, list[str]]:
    return json.loads((files("edge.assets") / "spec_prompts.json").read_text())


def _decode(model, ids: list[int], sampling: Sampling, drafter, fixed_length: int | None = None) -> dict:
    """One prompt decoded (plainly when drafter is None): its tokens after the first and their seconds, its
    drafting counts, and its output."""
    from .generate import stream_events

    events = stream_events(
        model, ids, model.make_cache(), sampling, drafter=drafter, draft_length=_controller(fixed_length)
    )
    done = [e for e in events if isinstance(e, Done)][-1]
    s, d = done.stats, done.stats.draft
    n = max(s.generation_tokens - 1, 0)  # decode tok/s excludes the first token (prefill)
    return {
        "decoded": (n, n / s.decode_tps if s.decode_tps else 0.0),
        "drafted": d.drafted if d else 0,
        "accepted": d.accepted if d else 0,
        "verify_steps": d.verify_steps if d else 0,
        "draft_s": d.draft_s if d else 0.0,
        "verify_s": d.verify_s if d else 0.0,
        "output": done.token_ids,
        "generated": s.generation_tokens,
    }


def _tally(prompts: list[dict]) -> dict:
    """A class's figures from its prompts' (`_decode`): tok/s over the class and per prompt, counts summed."""
    counts = {k: sum(p[k] for p in prompts) for k in ("drafted", "accepted", "verify_steps", "draft_s", "verify_s")}
    return {
        **_rates([p["decoded"] for p in prompts]),
        **counts,
        "outputs": [p["output"] for p in prompts],
        "from_draft": counts["accepted"] / max(sum(p["generated"] for p in prompts), 1),
    }


def _rates(decoded: list[tuple[int, float]]) -> dict:
    """Decode tok/s of a class (its prompts' tokens over their seconds) and of each prompt, from (tokens
    after the first, seconds) per prompt: what every row, edge's or a peer's, is counted from."""
    tokens, seconds = sum(n for n, _ in decoded), sum(t for _, t in decoded)
    return {
        "decode_tps": tokens / seconds if seconds else 0.0,
        "prompt_tps": [n / t if n and t else None for n, t in decoded],
    }


def run_speculative_bench(model, args) -> int:
    from .speculative import make_drafter

    peers = parse_peers(args.peers, "none")
    suite = prompt_suite()
    chat = model.tokenizer.has_chat_template
    prompts = {cls: [model.encode(p, chat=chat) for p in texts] for cls, texts in suite.items()}
    sampling = Sampling(max_tokens=args.max_tokens, **bench_sampling(args))
    names = [d.strip() for d in args.draft.split(",") if d.strip()]
    if names == ["all"]:
        names = ["lookup", "auto", "self:4"] + ([args.draft_model] if args.draft_model else [])
    taken = [name for name in names if name in ("plain", CONTROL)]
    if taken:
        raise EdgeError(
            f"--draft {taken[0]}: that name is a row of its own; give a draft model folder as a path (./{taken[0]})"
        )
    drafters = {name: make_drafter(name, model) for name in names}
    runs: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(max(1, args.repeats)):
        seeded = sampling.with_(seed=repeat)  # sampled, each repeat draws other replies (the same for all rows)
        for cls, ids in prompts.items():
            # interleaved by prompt: each drafter right after plain decoding of the same prompt, so a prompt's
            # own ratio compares runs a second apart, not a class apart (on a shared host, tens of seconds)
            decoded: dict[str, list[dict]] = {name: [] for name in ["plain", *drafters, CONTROL]}
            for prompt in ids:
                decoded["plain"].append(_decode(model, prompt, seeded, None))
                for name, drafter in drafters.items():
                    decoded[name].append(_decode(model, prompt, seeded, drafter, args.draft_length))
                decoded[CONTROL].append(_decode(model, prompt, seeded, None))
            plain = _tally(decoded["plain"])
            runs.setdefault(("plain", cls), []).append({**plain, "ratio": 1.0})
            runs.setdefault((CONTROL, cls), []).append(_against(plain, _tally(decoded[CONTROL]), True))
            for name, drafter in drafters.items():
                # sampled, only a deterministic drafter's output must be plain's own (same seed)
                exact = args.temperature == 0 or getattr(drafter, "deterministic", False)
                runs.setdefault((name, cls), []).append(_against(plain, _tally(decoded[name]), exact))
    rows = [_summary(name, cls, rs) for (name, cls), rs in runs.items()]
    if args.temperature == 0:
        _add_bounds(model, rows, drafters, prompts, {cls: runs[("plain", cls)][0]["outputs"] for cls in prompts})
    order = ["plain", CONTROL, *drafters]
    rows.sort(key=lambda r: order.index(r["drafter"]))
    rows += _peer_rows(model, prompts, names, peers, args)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print(model, rows, args)
    return 0


def _add_bounds(model, rows: list[dict], drafters: dict, prompts: dict, outputs: dict) -> None:
    """Greedy, on the rows of prompt lookup: `bound`, its ratio if every step had drafted exactly the tokens it
    then kept (`speculative.bound`, replaying plain decoding's outputs), each prompt's (`prompt_bounds`), and
    `replayed`, what the loop itself makes of those outputs (`speculative.replay`), and `any_match_bound`, the
    bound had each step kept the best of every earlier match (tree verification's ceiling), all at
    `pass_costs` measured now (a pass over 1, 2, ... k_max + 1 positions after the class's first prompt,
    relative to one position)."""
    from .speculative import DraftLength, PromptLookup
    from .speculative.bound import bound, kept_by_any_match, kept_per_step, pass_costs
    from .speculative.replay import replayed

    k = DraftLength().k_max
    for row in rows:
        drafter = drafters.get(row["drafter"])
        if not isinstance(drafter, PromptLookup):
            continue
        cls = row["prompt_class"]
        costs = pass_costs(model, prompts[cls][0], k + 1)
        steps = [kept_per_step(drafter, p, out, k) for p, out in zip(prompts[cls], outputs[cls], strict=True)]
        row.update(
            bound=bound([n for s in steps for n in s], costs),
            prompt_bounds=[bound(s, costs) for s in steps],  # beside `prompt_ratios`: the worst prompt's own room
            # the loop and its controller at the same costs, on a virtual clock: from a fresh drafter
            replayed=replayed(PromptLookup(), prompts[cls], outputs[cls], costs, model.tokenizer.eos_token_ids),
            any_match_bound=bound(
                [n for p, out in zip(prompts[cls], outputs[cls], strict=True) for n in kept_by_any_match(p, out, k)],
                costs,
            ),
            pass_costs=costs,
        )


def _against(plain: dict, r: dict, exact: bool) -> dict:
    """r with its ratio to plain (the class's and each prompt's) and, when its output must be plain's own
    (exact), whether it is."""
    r["ratio"] = r["decode_tps"] / plain["decode_tps"] if plain["decode_tps"] else None
    r["prompt_ratios"] = [b / a if a and b else None for a, b in zip(plain["prompt_tps"], r["prompt_tps"], strict=True)]
    r["identical"] = (r["outputs"] == plain["outputs"]) if exact else None
    return r


def _summary(name: str, cls: str, runs: list[dict]) -> dict:
    """One row from the repeats: median tok/s and ratio, identical in every run, and the drafting figures
    summed over all runs (acceptance, accepted drafts per verify step, seconds drafting and verifying) where
    the engine reports them (edge's)."""
    counted = name not in ("plain", CONTROL) and "drafted" in runs[0]
    total = {k: sum(r.get(k, 0) for r in runs) for k in ("drafted", "accepted", "verify_steps", "draft_s", "verify_s")}
    drafted, accepted = total["drafted"], total["accepted"]
    ratios = [r["ratio"] for r in runs if r["ratio"] is not None]
    row = _row(
        name,
        cls,
        statistics.median(r["decode_tps"] for r in runs),
        statistics.median(ratios) if ratios else None,
        (accepted / drafted if drafted else 0.0) if counted else None,
        statistics.median(r["from_draft"] for r in runs) if counted else None,
        True if name == "plain" else (None if runs[0].get("identical") is None else all(r["identical"] for r in runs)),
    )
    row["ratio_range"] = [min(ratios), max(ratios)] if ratios else None
    row["runs"] = len(runs)
    if name != "plain":
        # each prompt's own ratio to plain (median over the runs): "never below 0.95x on any prompt" is per prompt
        per_prompt = [[x for x in xs if x is not None] for xs in zip(*(r["prompt_ratios"] for r in runs), strict=True)]
        row["prompt_ratios"] = [statistics.median(xs) if xs else None for xs in per_prompt]
        row["worst_prompt"] = min((x for x in row["prompt_ratios"] if x is not None), default=None)
    if counted:
        steps = total["verify_steps"]
        row.update(total, accepted_per_step=accepted / steps if steps else 0.0)
    return row


def _peer_rows(model, prompts: dict[str, list[list[int]]], names: list[str], peers: list[str], args) -> list[dict]:
    """--peers: mlx-lm with each draft model asked for, and llama-cpp-python's prompt lookup when lookup or
    auto is; each in a child process, against the same engine's plain decoding of the same prompts."""
    kinds = {name: name.partition(":")[0] for name in names}  # lookup, auto[:SPEC], self:BITS, or a folder
    draft_models = [name for name, kind in kinds.items() if kind not in ("lookup", "auto", "self")]
    rows = []
    if "mlx_lm" in peers:
        rows += [
            _mlx_lm_row(str(model.path), name, cls, ids, args) for name in draft_models for cls, ids in prompts.items()
        ]
    if "llama_cpp" in peers and {"lookup", "auto"} & set(kinds.values()):
        rows += _llama_cpp_lookup_rows(model, prompts, args)
    return rows


def _mlx_lm_row(model_path: str, draft: str, cls: str, prompts: list[list[int]], args) -> dict:
    payload = json.dumps(
        {
            "model": model_path,
            "draft": draft,
            "prompts": prompts,
            "max_tokens": args.max_tokens,
            "sampling": bench_sampling(args),
            "draft_length": args.draft_length or 4,
        }
    )
    done = subprocess.run([sys.executable, "-c", MLX_LM_SPEC_CHILD, payload], capture_output=True, text=True)
    if done.returncode != 0:
        return {**_row(f"mlx_lm+{draft}", cls, None, None, None, None, None), "error": done.stderr.strip()[-200:]}
    r = json.loads(done.stdout.strip().splitlines()[-1])
    # mlx-lm reports which output tokens came from the draft, not how many it drafted: acceptance unknown.
    ratio = r["decode_tps"] / r["plain_tps"]
    return {
        **_row(f"mlx_lm+{draft}", cls, r["decode_tps"], ratio, None, r["from_draft"], None),
        "plain_tps": r["plain_tps"],
    }


def _llama_cpp_lookup_rows(model, prompts: dict[str, list[list[int]]], args) -> list[dict]:
    """llama-cpp-python's LlamaPromptLookupDecoding on the GGUF the model came from, a row per class, all from
    one child; `identical` compares its greedy output with llama.cpp's own plain output."""
    from .bench import peer_gguf, run_llama_cpp_child

    payload = {
        "prompts": prompts,
        "max_tokens": args.max_tokens,
        "repeats": max(1, args.repeats),
        "sampling": bench_sampling(args),
        "eos": sorted(model.tokenizer.eos_token_ids),
    }
    out = run_llama_cpp_child(LLAMA_CPP_LOOKUP_CHILD, peer_gguf(model, args), payload)
    if "error" in out:
        return [
            {**_row("llama_cpp+lookup", cls, None, None, None, None, None), "error": out["error"]} for cls in prompts
        ]

    def tally(replies: list[dict]) -> dict:  # one class's replies, counted as _tally counts edge's
        decoded = [(max(len(r["tokens"]) - 1, 0), r["seconds"]) for r in replies]
        return {**_rates(decoded), "outputs": [r["tokens"] for r in replies]}

    greedy, rows = args.temperature == 0, []
    for cls in prompts:
        plains = [tally(run[cls]["plain"]) for run in out["runs"]]
        looks = [tally(run[cls]["lookup"]) for run in out["runs"]]
        row = _summary("llama_cpp+lookup", cls, [_against(p, r, greedy) for p, r in zip(plains, looks, strict=True)])
        row["plain_tps"] = statistics.median(p["decode_tps"] for p in plains)
        rows.append({**row, "note": out["note"]} if out.get("note") else row)
    return rows


def _controller(fixed_length: int | None):
    """None: the adaptive controller; a number: always draft that many (to compare with mlx-lm's fixed length)."""
    from .speculative import DraftLength

    return None if fixed_length is None else DraftLength(k_start=fixed_length, adaptive=False)


def _row(drafter, prompt_class, decode_tps, ratio, acceptance, from_draft, identical) -> dict:
    """One row of the table / the --json list."""
    return {
        "drafter": drafter,
        "prompt_class": prompt_class,
        "decode_tps": decode_tps,
        "ratio": ratio,
        "acceptance": acceptance,
        "from_draft": from_draft,
        "identical": identical,
    }


def _print(model, rows: list[dict], args) -> None:
    from rich.console import Console
    from rich.table import Table

    runs = max(1, args.repeats)
    sampled = describe_sampling(bench_sampling(args))
    t = Table(
        title=f"speculative decoding: {model.path.name}, {sampled}, {args.max_tokens} tokens per prompt, "
        f"{runs} interleaved run{'s' if runs > 1 else ''}" + (" (medians)" if runs > 1 else "")
    )
    columns = ("drafter", "prompts", "decode tok/s", "vs plain", "range", "worst prompt", "acceptance")
    for col in (*columns, "per step", "drafting", "from draft", "identical"):
        t.add_column(col, justify="left" if col in ("drafter", "prompts") else "right")
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    for r in rows:
        same = "-" if r["identical"] is None else ("yes" if r["identical"] else "NO")
        engine, plus, spec = r["drafter"].rpartition("+")  # a draft folder by its name: "mlx_lm+draft41k"
        name = engine + plus + (Path(spec).name if "/" in spec else spec)
        name = name if len(name) < 24 else "..." + name[-21:]
        ratio = fmt(r["ratio"], ".2f") + ("x" if r["ratio"] else "")
        span = r.get("ratio_range")
        busy = r.get("draft_s", 0.0) + r.get("verify_s", 0.0)
        t.add_row(
            name,
            r["prompt_class"],
            fmt(r["decode_tps"], ".1f"),
            ratio,
            "-" if not span or r["drafter"] == "plain" else f"{span[0]:.2f}-{span[1]:.2f}",
            fmt(r.get("worst_prompt"), ".2f") + ("x" if r.get("worst_prompt") else ""),
            fmt(r["acceptance"], ".0%"),
            fmt(r.get("accepted_per_step"), ".2f"),
            fmt(r["draft_s"] / busy if busy else None, ".0%"),  # the share of the steps' time spent drafting
            fmt(r["from_draft"], ".0%"),
            same,
        )
    Console().print(t)
    for r in rows:
        if r["drafter"] == CONTROL and r.get("worst_prompt"):
            print(
                f"control, {r['prompt_class']}: plain decoding again; noise alone took a prompt's ratio to "
                f"{r['worst_prompt']:.2f}x in this run (more --repeats narrow it)"
            )
    for r in rows:
        if r.get("bound"):
            c = r["pass_costs"]
            print(
                f"{r['drafter']}, {r['prompt_class']}: at most {r['bound']:.2f}x had every step drafted exactly the "
                f"tokens it kept; the loop replayed at those costs makes {r['replayed']:.2f}x (a pass over 2 / 4 / "
                f"8 / {len(c)} positions cost {c[1]:.2f} / {c[3]:.2f} / {c[7]:.2f} / {c[-1]:.2f} of one, measured "
                f"now); keeping the best of every earlier match, as verifying them all at no extra cost would, at most "
                f"{r['any_match_bound']:.2f}x"
            )
    for r in rows:  # the peers' rows: what their ratio is against, and what went wrong
        if r.get("plain_tps"):
            what = "llama-cpp-python's LlamaPromptLookupDecoding" if r["drafter"] == "llama_cpp+lookup" else "mlx-lm"
            print(
                f"{r['drafter']}, {r['prompt_class']}: {what}, against its own plain decoding ({r['plain_tps']:.1f} tok/s)"
            )
        for key in ("note", "error"):
            if r.get(key):
                print(f"{r['drafter']}, {r['prompt_class']}: {r[key]}")
