"""`edge bench MODEL --draft lookup,auto,...`: speculative decoding against plain decoding, same run.

For each drafter and prompt class (input-grounded tasks, open chat; prompts in `assets/spec_prompts.json`):
decode tok/s over the class, the ratio to plain decoding measured in the same run, the acceptance rate,
and whether greedy output was identical to plain. With a draft model and `--peers mlx_lm`, mlx-lm's
`stream_generate(draft_model=...)` runs on the same prompts in a child process (its acceptance counts the
tokens it reports `from_draft`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.resources import files

from .events import Done
from .sampling import Sampling

MLX_LM_SPEC_CHILD = r"""
import json, sys, time
args = json.loads(sys.argv[1])
from mlx_lm import load, stream_generate
from mlx_lm.sample_utils import make_sampler
model, tok = load(args["model"])
draft, _ = load(args["draft"])
sampler = make_sampler(temp=args["temperature"])
tokens = drafted = 0
seconds = 0.0
for prompt in args["prompts"]:
    last = None
    for last in stream_generate(model, tok, prompt, max_tokens=args["max_tokens"], draft_model=draft, sampler=sampler, num_draft_tokens=4):
        drafted += bool(last.from_draft)
    tokens += last.generation_tokens
    seconds += last.generation_tokens / max(last.generation_tps, 1e-9)
print(json.dumps({"decode_tps": tokens / seconds, "from_draft": drafted / max(tokens, 1)}))
"""


def prompt_suite() -> dict[str, list[str]]:
    return json.loads((files("edge.assets") / "spec_prompts.json").read_text())


def _run(model, prompts: list[list[int]], sampling: Sampling, drafter) -> dict:
    from .generate import stream_events

    tokens, seconds, drafted, accepted, outputs, generated = 0, 0.0, 0, 0, [], 0
    for ids in prompts:
        done = [
            e for e in stream_events(model, ids, model.make_cache(), sampling, drafter=drafter) if isinstance(e, Done)
        ][-1]
        s = done.stats
        tokens += max(s.generation_tokens - 1, 0)  # decode tok/s excludes the first token (prefill)
        seconds += max(s.generation_tokens - 1, 0) / s.decode_tps if s.decode_tps else 0.0
        if s.draft:
            drafted, accepted = drafted + s.draft.drafted, accepted + s.draft.accepted
        outputs.append(done.token_ids)
        generated += s.generation_tokens
    return {
        "decode_tps": tokens / seconds if seconds else 0.0,
        "drafted": drafted,
        "accepted": accepted,
        "outputs": outputs,
        "from_draft": accepted / max(generated, 1),
    }


def run_speculative_bench(model, args) -> int:
    from .speculative import make_drafter

    suite = prompt_suite()
    chat = model.tokenizer.has_chat_template
    prompts = {cls: [model.encode(p, chat=chat) for p in texts] for cls, texts in suite.items()}
    sampling = Sampling(max_tokens=args.max_tokens, temperature=args.temperature, seed=0)
    names = [d.strip() for d in args.draft.split(",") if d.strip()]
    if names == ["all"]:
        names = ["lookup", "auto", "self:4"] + ([args.draft_model] if args.draft_model else [])
    plain = {cls: _run(model, ids, sampling, None) for cls, ids in prompts.items()}
    rows = []
    for name in names:
        drafter = make_drafter(name, model)
        for cls, ids in prompts.items():
            r = _run(model, ids, sampling, drafter)
            rows.append(
                {
                    "drafter": name,
                    "prompt_class": cls,
                    "decode_tps": r["decode_tps"],
                    "ratio": r["decode_tps"] / plain[cls]["decode_tps"] if plain[cls]["decode_tps"] else None,
                    "acceptance": r["accepted"] / r["drafted"] if r["drafted"] else 0.0,
                    "from_draft": r["from_draft"],
                    "identical": (r["outputs"] == plain[cls]["outputs"]) if args.temperature == 0 else None,
                }
            )
    for name in names:
        if "mlx_lm" in (args.peers or "") and name not in ("lookup", "auto") and not name.startswith("self"):
            for cls, texts in suite.items():
                rows.append(
                    _mlx_lm_row(
                        str(model.path),
                        name,
                        cls,
                        [model.encode(t, chat=chat) for t in texts],
                        args,
                        plain[cls]["decode_tps"],
                    )
                )
    plain_rows = [
        {
            "drafter": "plain",
            "prompt_class": c,
            "decode_tps": p["decode_tps"],
            "ratio": 1.0,
            "acceptance": None,
            "identical": True,
        }
        for c, p in plain.items()
    ]
    if args.json:
        print(json.dumps(plain_rows + rows, indent=2))
    else:
        _print(model, plain_rows + rows, args)
    return 0


def _mlx_lm_row(model_path: str, draft: str, cls: str, prompts: list[list[int]], args, plain_tps: float) -> dict:
    payload = json.dumps(
        {
            "model": model_path,
            "draft": draft,
            "prompts": prompts,
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
        }
    )
    done = subprocess.run([sys.executable, "-c", MLX_LM_SPEC_CHILD, payload], capture_output=True, text=True)
    if done.returncode != 0:
        return {
            "drafter": f"mlx_lm+{draft}",
            "prompt_class": cls,
            "decode_tps": None,
            "ratio": None,
            "acceptance": None,
            "identical": None,
            "error": done.stderr.strip()[-200:],
        }
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "drafter": f"mlx_lm+{draft}",
        "prompt_class": cls,
        "decode_tps": r["decode_tps"],
        "ratio": r["decode_tps"] / plain_tps,
        "acceptance": r["from_draft"],
        "identical": None,
    }


def _print(model, rows: list[dict], args) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"speculative decoding: {model.path.name}, temperature {args.temperature}, {args.max_tokens} tokens per prompt"
    )
    for col in ("drafter", "prompts", "decode tok/s", "vs plain", "acceptance", "from draft", "identical to plain"):
        t.add_column(col, justify="left" if col in ("drafter", "prompts") else "right")
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    for r in rows:
        same = "-" if r["identical"] is None else ("yes" if r["identical"] else "NO")
        t.add_row(
            r["drafter"],
            r["prompt_class"],
            fmt(r["decode_tps"], ".1f"),
            fmt(r["ratio"], ".2f") + ("x" if r["ratio"] else ""),
            fmt(r["acceptance"], ".0%"),
            same,
        )
    Console().print(t)
