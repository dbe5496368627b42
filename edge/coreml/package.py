"""Open a saved .mlpackage: its spec, metadata, model config and tokenizer folder, checked against the contract."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelFormatError
from .contract import (
    ASSETS_ITEM,
    CAUSAL_MASK,
    INPUT_IDS,
    ITEM_AUTHOR,
    KEY_CACHE,
    LOGITS,
    META_CONTEXT,
    VALUE_CACHE,
    import_coremltools,
)

MODEL_ITEM = ("com.apple.CoreML", "model.mlmodel")


@dataclass
class Package:
    path: Path
    spec: object
    """The Core ML model specification (protobuf)."""
    metadata: dict[str, str]
    config: dict
    """The source model's config.json, carried in the tokenizer item."""
    tokenizer_dir: Path
    context: int
    state_shape: tuple[int, ...] = field(default=())

    @property
    def weights_dir(self) -> Path:
        return self.path / "Data" / "com.apple.CoreML" / "weights"


def _items(path: Path) -> dict[tuple[str, str], Path]:
    manifest = path / "Manifest.json"
    if not manifest.is_file():
        raise ModelFormatError(f"{path} has no Manifest.json: it is not a Core ML package (.mlpackage folder).")
    try:
        entries = json.loads(manifest.read_text())["itemInfoEntries"].values()
        return {(e["author"], e["name"]): path / "Data" / e["path"] for e in entries}
    except (ValueError, KeyError, AttributeError) as e:
        raise ModelFormatError(f"{manifest} is damaged ({type(e).__name__}: {e}); convert the model again.") from None


def open_package(path: str | Path) -> Package:
    """Read a package made by `edge convert --to coreml` without loading it into Core ML (works on any OS)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFormatError(f"{path} does not exist.")
    items = _items(path)
    spec_file = items.get(MODEL_ITEM)
    if spec_file is None or not spec_file.is_file():
        raise ModelFormatError(f"{path} lacks its model specification (Data/com.apple.CoreML/model.mlmodel).")
    tokenizer_dir = items.get((ITEM_AUTHOR, ASSETS_ITEM))
    if tokenizer_dir is None or not (tokenizer_dir / "tokenizer.json").is_file():
        raise ModelFormatError(
            f"{path} carries no tokenizer (item {ITEM_AUTHOR}/{ASSETS_ITEM} with tokenizer.json); "
            "edge needs it to encode prompts. Convert the model again with `edge convert SRC -o OUT --to coreml`."
        )
    ct = import_coremltools()
    spec = ct.utils.load_spec(str(path))
    desc = spec.description
    names = {i.name for i in desc.input} | {s.name for s in desc.state} | {o.name for o in desc.output}
    missing = [n for n in (INPUT_IDS, CAUSAL_MASK, KEY_CACHE, VALUE_CACHE, LOGITS) if n not in names]
    if missing:
        raise ModelFormatError(
            f"{path} is not a stateful language model in the layout edge and swift-transformers use "
            f"(missing {', '.join(missing)})."
        )
    metadata = dict(desc.metadata.userDefined)
    config_file = tokenizer_dir / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    state = next(s for s in desc.state if s.name == KEY_CACHE)
    shape = tuple(int(d) for d in state.type.stateType.arrayType.shape)
    context = int(metadata.get(META_CONTEXT, shape[3]))
    return Package(path, spec, metadata, config, tokenizer_dir, context, shape)
