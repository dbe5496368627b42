"""Rebuild a Hugging Face `tokenizers` tokenizer (tokenizer.json + config + chat template) from GGUF metadata.

GGUF stores a BPE vocabulary and merges plus a pre-tokenizer name (`tokenizer.ggml.pre`); the regexes
below are the ones llama.cpp applies for each name, written as the Hugging Face pre-tokenizer that
produces the same splits.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from edge.errors import UnsupportedModelError

from .source import TokenizerFiles

_LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(regex: bool = True) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=regex)


def _split(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), "isolated"), _byte_level(False)])


PRE_TOKENIZERS = {
    "default": lambda: _byte_level(),
    "gpt2": lambda: _byte_level(),
    "smollm": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _byte_level()]),
    "llama-bpe": lambda: _split(_LLAMA3),
    "llama3": lambda: _split(_LLAMA3),
    "qwen2": lambda: _split(_QWEN2),
}
CONTROL, USER_DEFINED = 3, 4


def tokenizer_files_from_gguf(meta: dict, path: Path, config: dict) -> TokenizerFiles:
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedModelError(
            f"{path}: GGUF tokenizer model '{kind}' is not supported (edge rebuilds 'gpt2' BPE tokenizers); "
            "convert from the Hugging Face folder, which carries tokenizer.json."
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise UnsupportedModelError(
            f"{path}: GGUF pre-tokenizer '{pre}' is unknown to edge (known: {', '.join(PRE_TOKENIZERS)}); "
            "convert from the Hugging Face folder instead."
        )
    tokens: list[str] = meta.get("tokenizer.ggml.tokens")
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=pre in ("llama-bpe", "llama3")
        )
    )
    tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == CONTROL]
    )
    tok.add_tokens(
        [AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == USER_DEFINED]
    )

    ids = {k: meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
    name = lambda i: tokens[i] if i is not None and 0 <= i < len(tokens) else None  # noqa: E731
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    if add_bos and ids["bos"] is not None:
        bos = name(ids["bos"])
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, ids["bos"])]
        )
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(ids["bos"]),
        "eos_token": name(ids["eos"]),
        "unk_token": name(ids["unknown"]),
        "pad_token": name(ids["padding"]),
        "add_bos_token": add_bos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config.get("max_position_embeddings", 2048),
    }
    template = meta.get("tokenizer.chat_template")
    if template:
        tok_config["chat_template"] = template
    eos_ids = [i for i in (ids["eos"], meta.get("tokenizer.ggml.eot_token_id")) if i is not None]
    generation = {
        "bos_token_id": ids["bos"],
        "eos_token_id": sorted(set(eos_ids)) if len(set(eos_ids)) > 1 else ids["eos"],
    }
    files = {
        "tokenizer.json": tok.to_str(),
        "tokenizer_config.json": json.dumps({k: v for k, v in tok_config.items() if v is not None}, indent=2),
        "generation_config.json": json.dumps({k: v for k, v in generation.items() if v is not None}, indent=2),
    }
    return TokenizerFiles({k: v.encode() for k, v in files.items()})
