"""Speculative decoding: drafters propose, the target verifies in one pass, the output stays the target's.

`make_drafter(spec, model)` turns what a user writes (`draft=` on `generate`, `stream`, `Chat`; `--draft`
on the CLI) into a drafter: "lookup" (prompt lookup), "auto" (prompt lookup with adaptive length),
"auto:SPEC" (prompt lookup, then SPEC where lookup has nothing, while SPEC is measured to pay), "self" /
"self:3" (the target quantized in memory to 4 / 3 bits), a draft model folder or `Model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import EdgeError
from .adaptive import DraftLength
from .auto import AutoDrafter
from .drafters import Drafter, ModelDrafter, PromptLookup, check_compatible, lower_bit_copy

if TYPE_CHECKING:
    from ..model import Model


def make_drafter(spec, target: Model) -> Drafter | None:
    """A drafter for `target` from a user's `draft=` value (None, 'none' and 'off' mean no drafting)."""
    from ..model import Model, load

    if spec is None or spec in ("none", "off", "plain"):
        return None
    if spec == "lookup":
        return PromptLookup(name=spec)
    if isinstance(spec, str) and (spec == "auto" or spec.startswith("auto:")):
        rest = spec.partition(":")[2]
        if rest in ("auto", "lookup") or rest.startswith("auto:"):
            raise EdgeError(f"draft='{spec}': after 'auto:' name a draft model folder or self[:bits].")
        return AutoDrafter(make_drafter(rest, target) if rest else None)
    if isinstance(spec, str) and (spec == "self" or spec.startswith("self:")):
        bits = int(spec.partition(":")[2] or 4)
        if bits not in (2, 3, 4, 6, 8):
            raise EdgeError(f"draft='{spec}': self-draft bits must be 2, 3, 4, 6 or 8.")
        if getattr(target.module, "is_coreml", False):
            raise EdgeError(f"draft='{spec}': a Core ML package cannot be re-quantized in memory; use lookup or auto.")
        return lower_bit_copy(target, bits)
    if isinstance(spec, (str, Path)):
        if not Path(spec).expanduser().is_dir():
            raise EdgeError(f"draft='{spec}' is not 'lookup', 'auto', 'auto:SPEC', 'self[:bits]' or a model folder.")
        spec = load(spec)
    if isinstance(spec, Model):
        check_compatible(target, spec)
        return ModelDrafter(spec.module, f"draft:{spec.path.name}")
    if hasattr(spec, "propose") and hasattr(spec, "sync"):
        return spec
    raise EdgeError(f"draft={spec!r} is not a drafter edge knows.")


__all__ = [
    "make_drafter",
    "Drafter",
    "PromptLookup",
    "ModelDrafter",
    "DraftLength",
    "check_compatible",
    "lower_bit_copy",
]
