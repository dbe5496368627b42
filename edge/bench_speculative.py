"""`edge bench MODEL --draft lookup,auto,...`: speculative decoding against plain decoding, same run.

For each drafter and prompt class (input-grounded tasks, open chat; prompts in `assets/spec_prompts.json`):
decode tok/s over the class, the ratio to plain decoding measured in the same run, the acceptance rate,
accepted drafts per verify step, the share of time spent drafting (against verifying), and whether the
output was identical to plain: greedy, or sampled with a deterministic drafter such as prompt lookup (`--json`
also has the counts and seconds). `--repeats R` runs plain decoding and every drafter R times, interleaved
(plain, each drafter, plain, ...), so drift on a shared machine hits both sides of a ratio alike; the table
gives medians (and the range of the ratios). Sampled, repeat r seeds every row's requests with r. With a draft model and
`--peers mlx_lm`, mlx-lm's `stream_generate(draft_model=...)` runs on the same prompts in a child process
(its acceptance counts the tokens it reports `from_draft`).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from importlib.resources import files

from .bench import MLX_LM_SAMPLER, bench_sampling, describe_sampling
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
tokens = drafted = 0
seconds = 0.0
for prompt in args["prompts"]:
    last = None
    for last in stream_generate(model, tok, prompt, max_tokens=args["max_tokens"], draft_model=draft, sampler=sampler, num_draft_tokens=args["draft_length"]):
        drafted += bool(last.from_draft)
    tokens += last.generation_tokens
    seconds += last.generation_tokens / max(last.generation_tps, 1e-9)
print(json.dumps({"decode_tps": tokens / seconds, "from_draft": drafted / max(tokens, 1)}))
"""
)


def prompt_suite() -> dict[str, list[str]]:
    return json.loads((files("edge.assets") / "spec_prompts.json").read_text())


def _run(model, prompts: list[list[int]], sampling: Sampling, drafter, fixed_length: int | None = None) -> dict:
    from .generate import stream_events

    tokens, seconds, outputs, generated = 0, 0.0, [], 0
    drafted = accepted = steps = 0
    draft_s = verify_s = 0.0
    for ids in prompts:
        done = [
            e
            for e in stream_events(
                model, ids, model.make_cache(), sampling, drafter=drafter, draft_length=_controller(fixed_length)
            )
            if isinstance(e, Done)
        ][-1]
        s = done.stats
        tokens += max(s.generation_tokens - 1, 0)  # decode tok/s excludes the first token (prefill)
        seconds += max(s.generation_tokens - 1, 0) / s.decode_tps if s.decode_tps else 0.0
        if s.draft:
            drafted, accepted, steps = (
                drafted + s.draft.drafted,
                accepted + s.draft.accepted,
                steps + s.draft.verify_steps,
            )
            draft_s, verify_s = draft_s + s.draft.draft_s, verify_s + s.draft.verify_s
        outputs.append(done.token_ids)
        generated += s.generation_tokens
    return {
        "decode_tps": tokens / seconds if seconds else 0.0,
        "drafted": drafted,
        "accepted": accepted,
        "verify_steps": steps,
        "draft_s": draft_s,
        "verify_s": verify_s,
        "outputs": outputs,
        "from_draft": accepted / max(generated, 1),
    }


def run_speculative_bench(model, args) -> int:
    from .speculative import make_drafter

    suite = prompt_suite()
    chat = model.tokenizer.has_chat_template
    prompts = {cls: [model.encode(p, chat=chat) for p in texts] for cls, texts in suite.items()}
    sampling = Sampling(max_tokens=args.max_tokens, **bench_sampling(args))
    names = [d.strip() for d in args.draft.split(",") if d.strip()]
    if names == ["all"]:
        names = ["lookup", "auto", "self:4"] + ([args.draft_model] if args.draft_model else [])
    drafters = {name: make_drafter(name, model) for name in names}
    runs: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(max(1, args.repeats)):
        seeded = sampling.with_(seed=repeat)  # sampled, each repeat draws other replies (the same for all rows)
        for cls, ids in prompts.items():  # interleaved: each drafter right after its plain run
            plain = _run(model, ids, seeded, None)
            runs.setdefault(("plain", cls), []).append({**plain, "ratio": 1.0})
            for name, drafter in drafters.items():
                r = _run(model, ids, seeded, drafter, args.draft_length)
                r["ratio"] = r["decode_tps"] / plain["decode_tps"] if plain["decode_tps"] else None
                # sampled, only a deterministic drafter's output must be plain's own (same seed)
                exact = args.temperature == 0 or getattr(drafter, "deterministic", False)
                r["identical"] = (r["outputs"] == plain["outputs"]) if exact else None
                runs.setdefault((name, cls), []).append(r)
    rows = [_summary(name, cls, rs) for (name, cls), rs in runs.items()]
    rows.sort(
        key=lambda r: (r["drafter"] != "plain", list(drafters).index(r["drafter"]) if r["drafter"] in drafters else -1)
    )
    for name in names:
        if "mlx_lm" in (args.peers or "") and name not in ("lookup", "auto") and not name.startswith("self"):
            for cls, texts in suite.items():
                plain_tps = statistics.median(r["decode_tps"] for r in runs[("plain", cls)])
                rows.append(
                    _mlx_lm_row(
                        str(model.path), name, cls, [model.encode(t, chat=chat) for t in texts], args, plain_tps
                    )
                )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print(model, rows, args)
    return 0


def _summary(name: str, cls: str, runs: list[dict]) -> dict:
    """One row from the repeats: median tok/s and ratio, identical in every run, and the drafting figures
    summed over all runs (acceptance, accepted drafts per verify step, seconds drafting and verifying)."""
    total = {k: sum(r.get(k, 0) for r in runs) for k in ("drafted", "accepted", "verify_steps", "draft_s", "verify_s")}
    drafted, accepted = total["drafted"], total["accepted"]
    ratios = [r["ratio"] for r in runs if r["ratio"] is not None]
    row = _row(
        name,
        cls,
        statistics.median(r["decode_tps"] for r in runs),
        statistics.median(ratios) if ratios else None,
        None if name == "plain" else (accepted / drafted if drafted else 0.0),
        None if name == "plain" else statistics.median(r["from_draft"] for r in runs),
        True if name == "plain" else (None if runs[0].get("identical") is None else all(r["identical"] for r in runs)),
    )
    row["ratio_range"] = [min(ratios), max(ratios)] if ratios else None
    row["runs"] = len(runs)
    if name != "plain":
        steps = total["verify_steps"]
        row.update(total, accepted_per_step=accepted / steps if steps else 0.0)
    return row


def _mlx_lm_row(model_path: str, draft: str, cls: str, prompts: list[list[int]], args, plain_tps: float) -> dict:
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
    return _row(f"mlx_lm+{draft}", cls, r["decode_tps"], r["decode_tps"] / plain_tps, None, r["from_draft"], None)


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
    columns = ("drafter", "prompts", "decode tok/s", "vs plain", "range", "acceptance", "per step", "drafting")
    for col in (*columns, "from draft", "identical"):
        t.add_column(col, justify="left" if col in ("drafter", "prompts") else "right")
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    for r in rows:
        same = "-" if r["identical"] is None else ("yes" if r["identical"] else "NO")
        name = r["drafter"] if len(r["drafter"]) < 24 else "..." + r["drafter"][-21:]
        ratio = fmt(r["ratio"], ".2f") + ("x" if r["ratio"] else "")
        span = r.get("ratio_range")
        busy = r.get("draft_s", 0.0) + r.get("verify_s", 0.0)
        t.add_row(
            name,
            r["prompt_class"],
            fmt(r["decode_tps"], ".1f"),
            ratio,
            "-" if not span or r["drafter"] == "plain" else f"{span[0]:.2f}-{span[1]:.2f}",
            fmt(r["acceptance"], ".0%"),
            fmt(r.get("accepted_per_step"), ".2f"),
            fmt(r["draft_s"] / busy if busy else None, ".0%"),  # the share of the steps' time spent drafting
            fmt(r["from_draft"], ".0%"),
            same,
        )
    Console().print(t)
