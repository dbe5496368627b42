"""`edge info`: what a model is and what it needs, from config.json or GGUF metadata alone (no weights read).

A CLI helper: it reads sources through the converters' readers, which the runtime itself never imports.
"""

from __future__ import annotations

from pathlib import Path

from . import blas
from .architecture import TESTED, parameter_count, skeleton
from .errors import UnsupportedModelError
from .kernels import status as kernels_status
from .memory import kv_bytes_per_token, make_plan
from .model import is_package

SCALE_OVERHEAD_BITS = 0.5  # fp16 scale + bias per group of 64 weights


def describe(path: str | Path, context: int | None = None) -> dict:
    from edge.converters import open_source

    from .model import kernels_cover, on_cpu

    info: dict = {"path": str(Path(path).expanduser())}
    if is_package(path):
        return _describe_package(path, info)
    try:
        src = open_source(path)
        config = src.config
        info.update(source=src.kind, model_type=config.get("model_type"))
        params = parameter_count(skeleton(config, src.path))
        info["supported"] = True
        info["tested_family"] = config.get("model_type") in TESTED
    except UnsupportedModelError as e:
        info.update(supported=False, reason=str(e))
        return info
    stored = sum(t.nbytes for t in src.tensors)
    compute = "kernels" if on_cpu() and kernels_cover(config) else "auto"
    plan = make_plan(info["path"], config, params, stored, context=context, on_cpu=on_cpu(), compute=compute)
    quant = config.get("quantization") or {}
    info.update(
        parameters=params,
        stored_bytes=stored,
        stored_quantization={k: quant[k] for k in ("bits", "group_size") if k in quant} or None,
        layers=config.get("num_hidden_layers"),
        hidden_size=config.get("hidden_size"),
        context_length=plan.model_context,
        plan=plan.as_dict(),
        blas=str(blas.verify()),
        kernels=str(kernels_status()),
    )
    kv = kv_bytes_per_token(config, 4 if on_cpu() else 2)
    room = plan.available_bytes - plan.headroom_bytes
    info["at_bits"] = {
        str(bits): {
            "weights_bytes": (w := int(params * (bits + (SCALE_OVERHEAD_BITS if bits < 16 else 0)) / 8)),
            "max_context": max(0, min(plan.model_context, (room - w) // kv)),
        }
        for bits in (4, 8, 16)
    }
    return info


def _describe_package(path: str | Path, info: dict) -> dict:
    """A Core ML package: its contract, compression and report (from its files; Core ML is not needed)."""
    import json

    from .coreml.backend import coreml_available
    from .coreml.contract import META_COMPRESSION
    from .coreml.package import open_package

    pkg = open_package(path)
    report = pkg.tokenizer_dir / "edge.json"
    info.update(
        source="coreml",
        model_type=pkg.config.get("model_type"),
        supported=True,
        context_length=pkg.context,
        state_shape=list(pkg.state_shape),
        compression=pkg.metadata.get(META_COMPRESSION),
        package_bytes=sum(f.stat().st_size for f in pkg.path.rglob("*") if f.is_file()),
        coreml_here=coreml_available() or "available",
        report=json.loads(report.read_text()) if report.is_file() else None,
    )
    return info


def render(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not info.get("supported"):
        console.print(f"[bold]{info['path']}[/]: [red]not supported[/]: {info.get('reason')}")
        return
    if info["source"] == "coreml":
        t = Table(title=f"{info['path']} (Core ML package, {info['model_type']})", show_header=False)
        t.add_column(style="bold")
        t.add_column()
        verification = (info.get("report") or {}).get("verification")
        for k, v in (
            ("weights", info["compression"]),
            ("size", f"{info['package_bytes'] / 2**20:,.1f} MiB"),
            ("context", f"{info['context_length']} tokens (state {info['state_shape']})"),
            ("verified", "no report" if not verification else f"top-1 {verification['top1_agreement']:.1%} vs MLX"),
            ("Core ML here", info["coreml_here"]),
        ):
            t.add_row(k, str(v))
        console.print(t)
        return
    mib = lambda n: f"{n / 2**20:,.0f} MiB"  # noqa: E731
    p = info["plan"]
    t = Table(title=f"{info['path']} ({info['source']}, {info['model_type']})", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("supported", "yes" + ("" if info["tested_family"] else " (family not covered by edge's tests)"))
    t.add_row(
        "parameters", f"{info['parameters'] / 1e6:,.1f} M ({info['layers']} layers, hidden {info['hidden_size']})"
    )
    t.add_row("stored", f"{mib(info['stored_bytes'])}, quantization {info['stored_quantization'] or 'none'}")
    t.add_row("compute here", f"{p['compute']} ({mib(p['weights_bytes'])} of weights in memory)")
    t.add_row(
        "KV cache", f"{p['kv_bytes_per_token'] / 1024:.1f} KiB per token, {mib(p['kv_bytes'])} at {p['context']} tokens"
    )
    t.add_row(
        "needed / available",
        f"{mib(p['needed_bytes'])} / {mib(p['available_bytes'])}: {'fits' if p['fits'] else 'DOES NOT FIT'}",
    )
    t.add_row("longest context here", f"{p['max_context']:,} tokens (model limit {info['context_length']:,})")
    for bits, row in info["at_bits"].items():
        t.add_row(f"at {bits} bits", f"{mib(row['weights_bytes'])}, context up to {row['max_context']:,} tokens")
    t.add_row("BLAS", info["blas"])
    t.add_row("CPU kernels", info["kernels"])
    console.print(t)
