"""The package contract: what a stateful language-model package holds, in the layout Swift runtimes load
(swift-transformers' `LanguageModelWithStatefulKVCache`). Converter and runtime both build on these names."""

from __future__ import annotations

import logging

import numpy as np

INPUT_IDS = "inputIds"
"""int32 (1, n): the new tokens, n from 1 to the context length."""
CAUSAL_MASK = "causalMask"
"""fp16 (1, 1, n, end): additive mask, 0 where a new token may attend and -inf elsewhere; end = cached + n."""
KEY_CACHE = "keyCache"
VALUE_CACHE = "valueCache"
"""States, fp16 (layers, 1, kv_heads, context, head_dim); the model writes positions end-n..end-1."""
LOGITS = "logits"
"""fp16 (1, n, vocab)."""
CONTRACT_NAMES = (INPUT_IDS, CAUSAL_MASK, KEY_CACHE, VALUE_CACHE, LOGITS)

ITEM_AUTHOR = "ai.edge"
ASSETS_ITEM = "assets"
"""A package item (folder) with tokenizer.json, tokenizer_config.json (chat template) and config.json."""

# Metadata keys (user-defined). swift-transformers reads the co.huggingface.exporters.* ones.
META_NAME = "co.huggingface.exporters.name"
META_TASK = "co.huggingface.exporters.task"
META_ARCH = "co.huggingface.exporters.architecture"
META_FRAMEWORK = "co.huggingface.exporters.framework"
META_PRECISION = "co.huggingface.exporters.precision"
META_CONTEXT = "ai.edge.context"
META_COMPRESSION = "ai.edge.compression"
META_CHAT_TEMPLATE = "ai.edge.chat_template"
META_EOS = "ai.edge.eos_token_ids"


def causal_mask(cached: int, n: int) -> np.ndarray:
    """The mask for n new tokens after `cached` ones: token i sees positions 0..cached+i."""
    mask = np.zeros((1, 1, n, cached + n), dtype=np.float16)
    mask[0, 0][np.triu(np.ones((n, cached + n), dtype=bool), k=cached + 1)] = -np.inf
    return mask


def import_coremltools():
    """coremltools, imported quietly: on Linux it logs that its macOS-only prediction library is absent."""
    for name in ("coremltools", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import coremltools

    return coremltools
