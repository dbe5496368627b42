"""Check a Core ML package against an MLX model on the same tokens, on a machine without Core ML.

Each prompt runs through the package the way generation does: one prefill call, then single-token decode
calls with the state carried between them. Every position's logits are compared with the MLX model's logits
for the same tokens (one full forward pass): max absolute error and top-1 agreement.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..errors import EdgeError
from ..tokenizer import Tokenizer
from .backend import PackageModule

DECODE_STEPS = 6
MAX_PROMPT_TOKENS = 64


@dataclass
class Verification:
    max_abs_error: float
    mean_abs_error: float
    top1_agreement: float
    positions: int
    prompts: int
    decode_steps: int
    """Single-token calls per prompt after its prefill call."""

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"top-1 agreement {self.top1_agreement:.1%} over {self.positions} positions "
            f"({self.prompts} prompts, prefill + {self.decode_steps} decode steps each), "
            f"max |logit error| {self.max_abs_error:.4g}, mean {self.mean_abs_error:.3g}"
        )


def default_prompts() -> list[str]:
    return json.loads((files("edge.assets") / "verify_prompts.json").read_text())


def prompt_ids(tokenizer: Tokenizer, prompt: str, limit: int) -> list[int]:
    ids = (
        tokenizer.render([{"role": "user", "content": prompt}])
        if tokenizer.has_chat_template
        else tokenizer.encode(prompt)
    )
    return ids[:limit]


def compare(
    module: PackageModule,
    reference,
    tokenizer: Tokenizer,
    prompts: list[str] | None = None,
    decode_steps: int = DECODE_STEPS,
    max_tokens: int = MAX_PROMPT_TOKENS,
    advance: Callable[[], None] = lambda: None,
) -> Verification:
    """Logits of the package (through `module`) against `reference`, an mlx-lm model, prompt by prompt
    (`advance` is called after each)."""
    prompts = default_prompts() if prompts is None else prompts
    limit = min(max_tokens, module.context)
    max_err, abs_sum, agree, positions = 0.0, 0.0, 0, 0
    for prompt in prompts:
        ids = prompt_ids(tokenizer, prompt, limit)
        if len(ids) < 2:
            continue
        split = max(1, len(ids) - decode_steps)
        cache = module.make_cache()
        parts = [module(mx.array(ids[:split])[None], cache=cache)[0]]
        parts += [module(mx.array(ids[j : j + 1])[None], cache=cache)[0] for j in range(split, len(ids))]
        got = np.concatenate([np.array(p) for p in parts], axis=0)
        want = np.array(reference(mx.array(ids)[None])[0].astype(mx.float32))
        err = np.abs(got - want)
        max_err = max(max_err, float(err.max()))
        abs_sum += float(err.mean()) * len(ids)
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        positions += len(ids)
        advance()
    if not positions:
        raise ValueError("no prompt gave two or more tokens to compare")
    return Verification(max_err, abs_sum / positions, agree / positions, positions, len(prompts), decode_steps)


def verify_package(package: str | Path, against: str | Path, prompts: list[str] | None = None) -> Verification:
    """`edge verify`: a saved package (NumPy evaluation of its program) against an MLX model folder."""
    from ..model import load
    from .package import open_package
    from .reference import MILReference

    pkg = open_package(package)
    mlx_model = load(against)
    tokenizer = Tokenizer.load(pkg.tokenizer_dir, eos_token_ids=pkg.config.get("eos_token_id"))
    if tokenizer.vocab_size != mlx_model.tokenizer.vocab_size:
        raise EdgeError(
            f"{pkg.path} has a vocabulary of {tokenizer.vocab_size} tokens but {against} has "
            f"{mlx_model.tokenizer.vocab_size}: they are not the same model."
        )
    module = PackageModule(MILReference(pkg), pkg.context)
    return compare(module, mlx_model.module, tokenizer, prompts)
