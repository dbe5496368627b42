"""`convert(..., to="coreml")`: a checkpoint -> a stateful, compressed Core ML package, verified, atomically.

Steps: open the source (metadata only) -> refuse an unsupported architecture or context from config.json ->
refuse an existing output -> plan tensor names -> build the MIL program, reading and compressing one tensor at
a time -> save the package (with tokenizer, chat template, config and report as a package item) in a
temporary folder -> evaluate the saved program against the MLX model built from the same weights -> rename
into place. Any failure removes the temporary folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np
from rich.table import Table

from edge.checkpoint import read_config
from edge.coreml import contract as cc
from edge.coreml.verify import default_prompts
from edge.errors import EdgeError, OutputExistsError

from ..convert import ConvertPlan, make_recipe, move_into_place, plan, read_tensor
from ..report import file_sha256, key_value_table, progress_bar
from ..source import Quantized, open_source
from .compress import Compressed, make_compression
from .layout import Layout, check_architecture, make_layout
from .program import build_program

PACKAGE_SUFFIX = ".mlpackage"


@dataclass
class CoreMLReport:
    source: str
    source_kind: str
    compression: str
    context: int
    parameters: int = 0
    bytes_out: int = 0
    """Bytes of compressed weights (weight.bin holds them plus alignment)."""
    package_bytes: int = 0
    relative_rms_error: float = 0.0
    forms: dict[str, int] = field(default_factory=dict)
    """Weight matrices per stored form (a quantized source keeps its own bits)."""
    verification: dict | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes_out / max(self.parameters, 1)

    def add(self, stats: dict[str, Compressed]) -> None:
        self.parameters = sum(c.size for c in stats.values())
        self.bytes_out = sum(c.nbytes for c in stats.values())
        err = sum(c.sq_error for c in stats.values())
        norm = sum(c.sq_norm for c in stats.values())
        self.relative_rms_error = float(np.sqrt(err / norm)) if norm else 0.0
        for c in stats.values():
            self.forms[c.form] = self.forms.get(c.form, 0) + 1

    def as_dict(self) -> dict:
        return {**asdict(self), "bits_per_weight": round(self.bits_per_weight, 3)}

    def table(self) -> Table:
        v = self.verification
        rows = [
            ("source", f"{self.source} ({self.source_kind})"),
            ("weights", f"{self.compression}, {self.bits_per_weight:.2f} bits per weight"),
            ("matrices", ", ".join(f"{n} {form}" for form, n in sorted(self.forms.items()))),
            ("parameters", f"{self.parameters / 1e6:.1f} M"),
            ("package size", f"{self.package_bytes / 2**20:.1f} MiB"),
            ("context", f"{self.context} tokens (state size)"),
            ("weight error", f"relative RMS {self.relative_rms_error:.4f}"),
            (
                "verification",
                "skipped"
                if v is None
                else f"top-1 agreement {v['top1_agreement']:.1%} over {v['positions']} positions, "
                f"max |logit error| {v['max_abs_error']:.4g} (NumPy evaluation of the saved program vs MLX)",
            ),
            ("seconds", f"{self.seconds:.1f}"),
        ]
        return key_value_table("Core ML conversion", rows)


def _reader(p: ConvertPlan, keep_quantized: bool) -> Callable[[str], np.ndarray | Quantized | None]:
    """Tensors by name: fp32 NumPy, or (keep_quantized) MLX-quantized sources as they are; None if absent."""
    by_name = {t.name: t for t in p.tensors}

    def read(name: str) -> np.ndarray | Quantized | None:
        t = by_name.get(name)
        if t is None:
            return None
        value = read_tensor(p, t)
        if isinstance(value, Quantized) and keep_quantized:
            return value
        out = np.array(value.dequantize() if isinstance(value, Quantized) else value.astype(mx.float32))
        del value
        mx.clear_cache()
        return out

    return read


def _metadata(layout: Layout, source, compression: str, tokenizer_files: dict[str, bytes]) -> dict[str, str]:
    config_name = source.config.get("_name_or_path") or source.path.stem
    meta = {
        cc.META_NAME: str(config_name),
        cc.META_TASK: "text-generation",
        cc.META_ARCH: str((source.config.get("architectures") or [layout.model_type])[0]),
        cc.META_FRAMEWORK: "edge",
        cc.META_PRECISION: "float16",
        cc.META_CONTEXT: str(layout.context),
        cc.META_COMPRESSION: compression,
    }
    eos = source.config.get("eos_token_id")
    if eos is not None:
        meta[cc.META_EOS] = json.dumps(eos if isinstance(eos, list) else [eos])
    config = json.loads(tokenizer_files.get("tokenizer_config.json", b"{}") or b"{}")
    if isinstance(config.get("chat_template"), str):
        meta[cc.META_CHAT_TEMPLATE] = config["chat_template"]
    return meta


def _reference_module(p: ConvertPlan, read: Callable[[str], np.ndarray | None]):
    """The MLX model with the source's weights in fp32: what the package is compared against."""
    from edge.architecture import skeleton

    model = skeleton(p.source.config, p.source.path)
    model.load_weights([(t.name, mx.array(read(t.name))) for t in p.tensors], strict=True)
    mx.eval(model.parameters())
    return model


def convert_coreml(
    src: str | Path,
    out: str | Path,
    *,
    bits: int | None = None,
    palettize: int | None = None,
    context: int | None = None,
    verify: bool = True,
    force: bool = False,
    progress: bool | Callable[[str, int, int], None] = True,
) -> CoreMLReport:
    started = time.perf_counter()
    out = Path(out).expanduser().absolute()
    if out.suffix != PACKAGE_SUFFIX:
        raise EdgeError(f"{out.name}: a Core ML package must be named *.mlpackage (e.g. -o {out.stem}.mlpackage).")
    compression = make_compression(bits, palettize)
    folder = Path(src).expanduser()
    if folder.is_dir():  # refuse from config.json alone, before any weight file is opened
        check_architecture(read_config(folder), folder / "config.json")
    source = open_source(src)
    where = source.path / "config.json" if source.path.is_dir() else source.path
    check_architecture(source.config, where)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists; choose another output or pass --force to replace it.")
    layout = make_layout(source.config, where, context)
    p = plan(source, make_recipe(source, None, None, "float32", dequantize=True))
    read = _reader(p, keep_quantized=True)
    tokenizer = source.tokenizer_files().files
    if "tokenizer.json" not in tokenizer:
        raise EdgeError(f"{source.path}: no tokenizer.json to carry into the package; Core ML apps need it.")
    report = CoreMLReport(str(Path(src).expanduser().absolute()), source.kind, compression.describe(), layout.context)
    sizes = {t.name: t.source.nbytes for t in p.tensors}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task(f"building {compression.kind} program", total=sum(sizes.values()))
            program, stats = build_program(
                layout, read, compression, lambda name: bar.advance(task, sizes.get(name, 0))
            )
            report.add(stats)
            save = bar.add_task("saving package", total=1)
            package = tmp / out.name
            _save(
                program,
                package,
                layout,
                _metadata(layout, source, compression.describe(), tokenizer),
                tokenizer,
                source.config,
            )
            del program
            bar.advance(save, 1)
            hash_task = bar.add_task("hashing inputs", total=sum(f.stat().st_size for f in source.inputs))
            report.inputs = {f.name: file_sha256(f, lambda n: bar.advance(hash_task, n)) for f in source.inputs}
            if verify:
                check = bar.add_task("verifying (NumPy evaluation vs MLX)", total=len(default_prompts()))
                result = _verify(package, p, _reader(p, keep_quantized=False), lambda: bar.advance(check, 1))
                report.verification = result.as_dict()
        report.package_bytes = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
        report.seconds = time.perf_counter() - started
        (package / "Data" / cc.ITEM_AUTHOR / cc.ASSETS_ITEM / "edge.json").write_text(
            json.dumps(report.as_dict(), indent=2)
        )
        move_into_place(package, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _save(program, package: Path, layout: Layout, metadata: dict, tokenizer: dict[str, bytes], config: dict) -> None:
    ct = cc.import_coremltools()
    from coremltools.libmodelpackage import ModelPackage

    n = ct.RangeDim(1, layout.context, default=1)
    end = ct.RangeDim(1, layout.context, default=1)
    inputs = [
        ct.TensorType(name=cc.INPUT_IDS, shape=ct.Shape((1, n)), dtype=np.int32),
        ct.TensorType(name=cc.CAUSAL_MASK, shape=ct.Shape((1, 1, n, end)), dtype=np.float16),
    ]
    with contextlib.redirect_stderr(io.StringIO()):  # coremltools' own pass progress bars
        mlmodel = ct.convert(
            program,
            inputs=inputs,
            minimum_deployment_target=ct.target.iOS18,
            pass_pipeline=ct.PassPipeline.EMPTY,
            skip_model_load=True,
        )
    mlmodel.short_description = f"{metadata[cc.META_NAME]} ({metadata[cc.META_COMPRESSION]}), converted by edge"
    mlmodel.user_defined_metadata.update(metadata)
    mlmodel.save(str(package))
    assets = package.parent / "assets"
    assets.mkdir()
    for name, content in tokenizer.items():
        (assets / name).write_bytes(content)
    (assets / "config.json").write_text(json.dumps(config, indent=2))
    ModelPackage(str(package)).addItem(str(assets), cc.ASSETS_ITEM, cc.ITEM_AUTHOR, "Tokenizer, chat template, config")


def _verify(package: Path, p: ConvertPlan, read, advance):
    from edge.coreml.backend import PackageModule
    from edge.coreml.package import open_package
    from edge.coreml.reference import MILReference
    from edge.coreml.verify import compare
    from edge.tokenizer import Tokenizer

    pkg = open_package(package)
    module = PackageModule(MILReference(pkg), pkg.context)
    reference = _reference_module(p, read)
    tokenizer = Tokenizer.load(pkg.tokenizer_dir, eos_token_ids=pkg.config.get("eos_token_id"))
    return compare(module, reference, tokenizer, advance=advance)
