"""The `edge` command: convert, verify, generate, chat, info, bench. Each subcommand parses, calls the public API
the way a user would, and prints; heavy modules are imported inside the command that needs them."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import EdgeError


def _resolve_model(model: str | None) -> str:
    """A model folder, or the default model (fetched and converted on first use)."""
    if model:
        return model
    from edge.converters import ensure_default_model

    return str(ensure_default_model(progress=sys.stderr.isatty()))


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", "--temp", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    p.add_argument("--context", type=int, default=None, help="the longest context to plan for")
    p.add_argument(
        "--draft", default=None, help="speculative decoding: lookup, auto, self[:bits], or a draft model folder"
    )


def _sampling(a: argparse.Namespace):
    from edge import Sampling

    return Sampling(
        temperature=a.temperature,
        top_p=a.top_p,
        top_k=a.top_k,
        min_p=a.min_p,
        repetition_penalty=a.repetition_penalty,
        presence_penalty=a.presence_penalty,
        frequency_penalty=a.frequency_penalty,
        seed=a.seed,
        max_tokens=a.max_tokens,
        stop=tuple(a.stop),
    )


def cmd_convert(a: argparse.Namespace) -> int:
    from edge.converters import convert

    report = convert(
        a.src,
        a.output,
        to=a.to,
        bits=a.bits,
        group_size=a.group_size,
        dtype=a.dtype,
        dequantize=a.dequantize,
        force=a.force,
        progress=not a.json and sys.stderr.isatty(),
        palettize=a.palettize,
        context=a.context,
        verify=a.verify,
    )
    if a.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        from rich.console import Console

        Console(stderr=True).print(report.table())
        print(a.output)
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from .coreml.verify import verify_package

    result = verify_package(a.package, a.against)
    if a.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(result)
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    import edge

    model = edge.load(_resolve_model(a.model), context=a.context)
    chat = a.chat if a.chat is not None else model.tokenizer.has_chat_template
    done = None
    for event in model.stream(a.prompt, _sampling(a), chat=chat, system=a.system, draft=a.draft):
        if isinstance(event, edge.Token) and not a.json:
            print(event.text, end="", flush=True)
        elif isinstance(event, edge.Done):
            done = event
    assert done is not None
    if a.json:
        print(json.dumps({"text": done.text, "reason": done.reason, "stats": done.stats.as_dict()}, indent=2))
    else:
        print()
        print(f"[{done.reason}] {done.stats}", file=sys.stderr)
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from .info import describe, render

    info = describe(a.model, context=a.context)
    if a.json:
        print(json.dumps(info, indent=2))
    else:
        render(info)
    return 0


def cmd_chat(a: argparse.Namespace) -> int:
    if a.plain or not (sys.stdin.isatty() and sys.stdout.isatty()):
        from .plain_chat import run_plain_chat

        model = _resolve_model(a.model)
        return run_plain_chat(model, system=a.system, sampling=_sampling(a), context=a.context, draft=a.draft)
    from edge.apps.chat import run_app

    # The app starts at once and fetches / converts / loads the model in a worker.
    settings = {k: getattr(a, k) for k in ("temperature", "top_p", "top_k", "min_p", "max_tokens")}
    settings["draft"] = a.draft or "auto"
    return run_app(a.model, system=a.system, settings=settings, context=a.context)


def cmd_bench(a: argparse.Namespace) -> int:
    import edge

    model = edge.load(_resolve_model(a.model))
    if model._paging:  # measure the weights as they will stay: on 2 MB pages (hugepages.py)
        model._paging.join()
    if a.draft:
        from .bench_speculative import run_speculative_bench

        return run_speculative_bench(model, a)
    from .bench import run_bench

    return run_bench(model, a)


def build_parser() -> argparse.ArgumentParser:
    from edge import __version__

    parser = argparse.ArgumentParser(prog="edge", description="Run LLMs on this device with MLX.")
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a Hugging Face folder or GGUF file to an MLX folder or Core ML package")
    p.add_argument("src", help="Hugging Face / MLX model folder, or .gguf file")
    p.add_argument("-o", "--output", required=True, help="the folder to create")
    p.add_argument("--to", default="mlx", choices=["mlx", "coreml"])
    p.add_argument(
        "--bits",
        type=int,
        default=None,
        help="2, 3, 4, 5, 6 or 8 (default: keep GGUF quantization, else float); Core ML: 4 or 8 (default fp16)",
    )
    p.add_argument("--group-size", type=int, default=None, help="32, 64 or 128 (default 32 for GGUF, else 64)")
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"])
    p.add_argument(
        "--dequantize", action="store_true", help="write float weights (in --dtype), quantized sources included"
    )
    p.add_argument("--palettize", type=int, default=None, help="Core ML: 4 or 6-bit look-up tables")
    p.add_argument("--context", type=int, default=None, help="Core ML: tokens the KV-cache state holds (2048)")
    p.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Core ML: evaluate the saved program against the MLX model (default on)",
    )
    p.add_argument("--force", action="store_true", help="replace the output if it exists")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("verify", help="check a Core ML package against an MLX model (NumPy evaluation, any OS)")
    p.add_argument("package", help="a .mlpackage made by edge convert --to coreml")
    p.add_argument("--against", required=True, help="the MLX model folder to compare with")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("generate", help="generate text from a prompt")
    p.add_argument("model", nargs="?", help="MLX model folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("--system", default=None)
    p.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply the chat template (default: when the model has one)",
    )
    p.add_argument("--json", action="store_true")
    _sampling_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat with a model (the terminal app; plain lines when not a terminal)")
    p.add_argument("model", nargs="?", help="MLX model folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--system", default=None)
    p.add_argument("--plain", action="store_true", help="line-based chat without the full-screen app")
    _sampling_args(p)
    p.set_defaults(func=cmd_chat, max_tokens=512, temperature=0.7, top_p=0.9, min_p=0.05)

    p = sub.add_parser("info", help="what a model is, and what it needs in memory (no weights read)")
    p.add_argument("model", help="MLX or Hugging Face folder, or .gguf file")
    p.add_argument("--context", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="decode and prompt speed of edge against mlx-lm, in one run")
    p.add_argument("model", nargs="?", help="MLX model folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--max-tokens", type=int, default=128, help="decode tokens for edge")
    p.add_argument(
        "--peer-tokens", type=int, default=8, help="decode tokens for the peers (mlx-lm decodes ~0.2 tok/s on CPUs)"
    )
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt length, the same for every engine")
    p.add_argument(
        "--repeats", type=int, default=3, help="edge runs (with --draft: interleaved runs); medians are reported"
    )
    p.add_argument(
        "--peers",
        default=None,
        help="comma-separated peers: mlx_lm, llama_cpp, none (default: mlx_lm,llama_cpp; none with --draft, where "
        "mlx_lm runs each draft model and llama_cpp its prompt lookup)",
    )
    p.add_argument("--gguf", default=None, help="the GGUF for the llama_cpp peer (default: the model's source)")
    p.add_argument("--draft", default=None, help="compare drafters instead: lookup,auto,self:4,DRAFT_FOLDER or all")
    p.add_argument("--draft-model", default=None, help="with --draft all: also bench this draft model folder")
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sample at this temperature, every engine alike, seeded (default 0: greedy; edge chat: 0.7)",
    )
    p.add_argument("--top-p", type=float, default=1.0, help="with --temperature (edge chat: 0.9)")
    p.add_argument("--min-p", type=float, default=0.0, help="with --temperature (edge chat: 0.05)")
    p.add_argument("--top-k", type=int, default=0, help="with --temperature")
    p.add_argument(
        "--draft-length",
        type=int,
        default=None,
        help="with --draft: draft exactly N tokens per step (default adaptive; mlx-lm gets N, else 4)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeError as e:
        print(f"edge: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
