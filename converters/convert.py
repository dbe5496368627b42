"""`convert()`: a checkpoint (HF folder, MLX folder, GGUF) -> an mlx-lm compatible MLX folder, atomically.

Steps: open the source (metadata only) -> check the architecture against mlx-lm -> refuse an existing
output -> plan every output tensor from headers (validating names and shapes against the architecture)
-> stream tensors into shards in a temporary folder beside OUT -> write config, tokenizer, edge.json ->
rename into place. Any failure removes the temporary folder; OUT is never half-written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from edge.architecture import skeleton
from edge.errors import EdgeError, ModelFormatError, OutputExistsError

from . import recipe as rcp
from .report import ConversionReport, file_sha256, progress_bar
from .safetensors_io import plan_shards, write_shards
from .source import Source, open_source

DEFAULT_SHARD_BYTES = 5 * 2**30


@dataclass
class ConvertPlan:
    source: Source
    recipe: rcp.Recipe
    model: nn.Module
    """The architecture's lazy skeleton (shapes and `sanitize`, no weights)."""
    tensors: list[rcp.TensorPlan] = field(default_factory=list)


def _default_dtype(source: Source) -> mx.Dtype:
    name = source.config.get("torch_dtype") or source.config.get("dtype")
    return rcp.DTYPES.get(name if name in ("float16", "bfloat16") else "float16", mx.float16)


def make_recipe(
    source: Source, bits: int | None, group_size: int | None, dtype: str | None, dequantize: bool = False
) -> rcp.Recipe:
    if dequantize and bits is not None:
        raise EdgeError("--dequantize writes float weights; it cannot be combined with --bits.")
    if bits is not None and bits not in rcp.BITS:
        raise EdgeError(f"--bits {bits} is not supported; choose one of {', '.join(map(str, rcp.BITS))}.")
    gs = group_size or (32 if source.kind == "gguf" else 64)
    if gs not in rcp.GROUP_SIZES:
        raise EdgeError(f"--group-size {gs} is not supported; choose one of {', '.join(map(str, rcp.GROUP_SIZES))}.")
    if dtype is not None and dtype not in rcp.DTYPES:
        raise EdgeError(f"--dtype {dtype} is not supported; choose one of {', '.join(rcp.DTYPES)}.")
    return rcp.Recipe(bits, gs, rcp.DTYPES[dtype] if dtype else _default_dtype(source), dequantize)


def plan(source: Source, recipe: rcp.Recipe) -> ConvertPlan:
    """Decide every output tensor from headers alone; raise on names or shapes the architecture rejects."""
    model = skeleton(source.config, source.path)
    expected = {k: v.shape for k, v in tree_flatten(model.parameters())}
    quantizable = {f"{p}.weight" for p, m in model.named_modules() if hasattr(m, "to_quantized")}
    out = ConvertPlan(source, recipe, model)
    seen: set[str] = set()
    where = source.path.name
    for st in source.tensors:
        names = list(model.sanitize({st.name: mx.zeros((1,))}).keys()) if hasattr(model, "sanitize") else [st.name]
        if not names:
            continue  # dropped by the architecture (tied lm_head, rotary buffers)
        name = names[0]
        if name not in expected:
            raise ModelFormatError(
                f"{where}: tensor {st.name} is not part of a {source.config['model_type']} model with this config.json."
            )
        if tuple(expected[name]) != tuple(st.shape):
            raise ModelFormatError(
                f"{where}: tensor {st.name} has shape {list(st.shape)} but config.json implies {list(expected[name])}."
            )
        seen.add(name)
        out.tensors.append(rcp.plan_tensor(st, name, name in quantizable, recipe))
    missing = sorted(set(expected) - seen)
    if missing:
        raise ModelFormatError(
            f"{where}: the checkpoint lacks {missing[0]} ({len(missing)} tensors missing); is a shard missing?"
        )
    out.tensors.sort(key=lambda t: t.name)
    return out


def _output_config(p: ConvertPlan) -> dict:
    config = dict(p.source.config)
    config.pop("quantization_config", None)
    config.pop("quantization", None)
    quantized = [t for t in p.tensors if t.mode in ("keep", "quantize")]
    if quantized:
        counts: dict[tuple[int, int], int] = {}
        for t in quantized:
            counts[(t.bits, t.group_size)] = counts.get((t.bits, t.group_size), 0) + 1
        bits, gs = max(counts, key=lambda k: counts[k])
        q: dict = {"group_size": gs, "bits": bits, "mode": "affine"}
        for t in p.tensors:
            path = t.name.removesuffix(".weight")
            if t.mode == "float" and t.name.endswith(".weight") and len(t.source.shape) == 2:
                q[path] = False
            elif t.mode != "float" and (t.bits, t.group_size) != (bits, gs):
                q[path] = {"group_size": t.group_size, "bits": t.bits, "mode": "affine"}
        config["quantization"] = q
        config["quantization_config"] = q
    config["torch_dtype"] = p.recipe.describe()["dtype"]
    return config


def read_tensor(p: ConvertPlan, t: rcp.TensorPlan) -> mx.array | rcp.Quantized:
    """One source tensor under its output name (the architecture's `sanitize` applied to float tensors)."""
    value = p.source.read(t.source.name)
    if t.name != t.source.name and not isinstance(value, rcp.Quantized):
        value = p.model.sanitize({t.source.name: value})[t.name]
    return value


def _arrays(p: ConvertPlan, report: ConversionReport, advance) -> Iterator[tuple[str, mx.array]]:
    for t in p.tensors:
        value = read_tensor(p, t)
        applied = rcp.apply(t, value)
        report.add(t, applied)
        yield from applied.arrays
        del value, applied
        mx.clear_cache()  # give freed buffers back, so the peak stays near one tensor
        advance(t.source.nbytes)


def convert(
    src: str | Path,
    out: str | Path,
    *,
    to: str = "mlx",
    bits: int | None = None,
    group_size: int | None = None,
    dtype: str | None = None,
    dequantize: bool = False,
    force: bool = False,
    progress: bool | Callable[[str, int, int], None] = True,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    palettize: int | None = None,
    context: int | None = None,
    verify: bool = True,
):
    """Convert a checkpoint to an MLX model folder, or to a Core ML package with to="coreml".

    Args:
        src: a Hugging Face folder (config.json + safetensors), an MLX folder, or a .gguf file.
        out: the folder to create; refused if it exists unless `force`.
        to: "mlx" (an mlx-lm compatible folder) or "coreml" (a stateful .mlpackage for iOS 18 / macOS 15).
        bits: quantize linear and embedding layers to 2-8 bits; None keeps quantized sources
            (GGUF Q4_0/Q4_1/Q8_0) bit for bit and writes float sources in `dtype`.
            For Core ML: 4 (int4 per block of 32), 8 (int8 per channel) or None (fp16).
        group_size: 32, 64 or 128 (default 32 for GGUF, 64 otherwise).
        dtype: float16, bfloat16 or float32 for unquantized tensors, scales and biases.
        dequantize: write every weight in float, quantized sources included.
        progress: a rich progress bar on stderr (True), nothing (False), or `fn(description, done, total)`.
        max_shard_bytes: largest safetensors shard.
        palettize: Core ML only: 4 or 6-bit look-up tables instead of `bits`.
        context: Core ML only: tokens the package's KV-cache state holds (default 2048).
        verify: Core ML only: evaluate the saved program against the MLX model (NumPy) and report it.

    Returns:
        The `ConversionReport` (also saved in OUT/edge.json), or a `CoreMLReport` for Core ML.
    """
    if to == "coreml":
        from .coreml.export import convert_coreml

        if group_size is not None or dtype is not None or dequantize:
            raise EdgeError(
                "--group-size, --dtype and --dequantize apply to MLX folders; Core ML uses --bits/--palettize."
            )
        return convert_coreml(
            src, out, bits=bits, palettize=palettize, context=context, verify=verify, force=force, progress=progress
        )
    if to != "mlx":
        raise EdgeError(f"--to {to} is not a target; choose mlx or coreml.")
    if palettize is not None or context is not None:
        raise EdgeError("--palettize and --context apply to Core ML packages (--to coreml).")
    started = time.perf_counter()
    out = Path(out).expanduser().absolute()
    source = open_source(src)
    recipe = make_recipe(source, bits, group_size, dtype, dequantize)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists; choose another output or pass --force to replace it.")
    p = plan(source, recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    report = ConversionReport(
        source=str(Path(src).expanduser().absolute()), source_kind=source.kind, recipe=recipe.describe()
    )
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task(f"converting {Path(src).name}", total=sum(t.source.nbytes for t in p.tensors))
            outs = [o for t in p.tensors for o in t.outputs]
            shards = plan_shards(outs, max_shard_bytes)
            weight_map = write_shards(tmp, shards, _arrays(p, report, lambda n: bar.advance(task, n)))
            hash_task = bar.add_task("hashing inputs", total=sum(f.stat().st_size for f in source.inputs))
            report.inputs = {f.name: file_sha256(f, lambda n: bar.advance(hash_task, n)) for f in source.inputs}
        total = sum(o.nbytes for o in outs)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        (tmp / "config.json").write_text(json.dumps(_output_config(p), indent=2))
        for name, content in source.tokenizer_files().files.items():
            (tmp / name).write_bytes(content)
        report.finish(bytes_out=total, files=sorted(set(weight_map.values())), seconds=time.perf_counter() - started)
        (tmp / "edge.json").write_text(json.dumps(report.as_dict(), indent=2))
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def move_into_place(tmp: Path, out: Path) -> None:
    if out.exists():  # --force: swap, then delete the old one
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        tmp.rename(out)
