"""Tiny models built by the tests themselves: a real `tokenizers` BPE tokenizer, Hugging Face folders of
random llama / qwen2 / mistral models, and GGUF files written the way llama.cpp writes them."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

CORPUS = [
    "Once upon a time there was a little robot who loved to read books about the sea.",
    "The quick brown fox jumps over the lazy dog, and the dog does not mind at all.",
    "Unified memory lets the processor and the graphics unit share the same bytes.",
    "Café, naïve, déjà vu: accents and emoji like 🙂 and 🚀 are bytes too.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Hello! How are you today? I am fine, thank you. What is the capital of France? Paris.",
    "日本語のテキストも少しあります。",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ARCHS = {
    "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "tie_word_embeddings": True},
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "tie_word_embeddings": False,
        "use_sliding_window": False,
    },
    "mistral": {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "tie_word_embeddings": False,
        "sliding_window": None,
    },
}


def build_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def write_tokenizer(folder: Path, tok, chat_template: str | None = CHATML) -> None:
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "unk_token": None,
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def tiny_config(arch: str, vocab_size: int, **overrides) -> dict:
    config = {
        **ARCHS[arch],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 256,
        "vocab_size": vocab_size,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "eos_token_id": 2,
    }
    config.update(overrides)
    return config


def random_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Hugging Face-named fp32 weights, scaled so that logits are spread (not all near-ties)."""
    from mlx_lm.utils import _get_classes

    model_cls, args_cls = _get_classes(config)
    model = model_cls(args_cls.from_dict(config))
    rng = np.random.default_rng(seed)
    weights = {}
    for name, p in tree_flatten(model.parameters()):
        if name.endswith("norm.weight"):
            w = 1.0 + 0.1 * rng.standard_normal(p.shape)
        elif name.endswith("bias"):
            w = 0.02 * rng.standard_normal(p.shape)
        else:
            w = (
                rng.standard_normal(p.shape)
                / np.sqrt(p.shape[-1])
                * (2.0 if "embed" in name or "lm_head" in name else 1.0)
            )
        weights[name] = w.astype(np.float32)
    return weights


def write_hf_model(
    folder: Path, arch: str = "llama", *, dtype: str = "float32", shards: int = 1, seed: int = 0, tok=None, **overrides
) -> Path:
    """A Hugging Face model folder: config.json, safetensors (optionally sharded with an index), tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = tok or build_tokenizer()
    config = tiny_config(arch, tok.get_vocab_size(), torch_dtype=dtype, **overrides)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(folder, tok)
    weights = random_weights(config, seed)
    names = sorted(weights)
    groups = [names[i::shards] for i in range(shards)]
    mx_dtype = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}[dtype]
    weight_map = {}
    for i, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        mx.save_safetensors(
            str(folder / fname), {n: mx.array(weights[n]).astype(mx_dtype) for n in group}, metadata={"format": "pt"}
        )
        weight_map.update({n: fname for n in group})
    if shards > 1:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def load_hf_weights(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update({k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(f)).items()})
    return out


# ---- GGUF, as llama.cpp's convert_hf_to_gguf.py writes a llama model ----

GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "input_layernorm": "attn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf: str) -> str:
    base, suffix = hf.rsplit(".", 1)
    if base == "model.embed_tokens":
        return f"token_embd.{suffix}"
    if base == "model.norm":
        return f"output_norm.{suffix}"
    if base == "lm_head":
        return f"output.{suffix}"
    parts = base.split(".")
    return f"blk.{parts[2]}.{GGUF_NAMES['.'.join(parts[3:])]}.{suffix}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF half-rotation rows -> interleaved-pair rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(
    path: Path,
    hf_folder: Path,
    qtype: str = "Q4_1",
    embed_qtype: str = "Q8_0",
    tensor_type_override: dict | None = None,
) -> Path:
    import gguf

    config = json.loads((hf_folder / "config.json").read_text())
    weights = load_hf_weights(hf_folder)
    tok = json.loads((hf_folder / "tokenizer.json").read_text())
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config["rope_theta"])
    w.add_rope_dimension_count(config["head_dim"])
    w.add_vocab_size(config["vocab_size"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list([t for t, _ in vocab])
    special = {a["content"] for a in tok["added_tokens"]}
    w.add_token_types([3 if t in special else 1 for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_eos_token_id(2)
    w.add_chat_template(CHATML)
    for name in sorted(weights):
        arr = weights[name]
        if name.endswith("q_proj.weight"):
            arr = llama_cpp_permute(arr, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            arr = llama_cpp_permute(arr, config["num_key_value_heads"])
        t = (tensor_type_override or {}).get(name) or (
            "F32" if arr.ndim == 1 else embed_qtype if "embed" in name else qtype
        )
        qt = getattr(gguf.GGMLQuantizationType, t)
        data = arr.astype(np.float16) if t == "F16" else arr if t == "F32" else gguf.quants.quantize(arr, qt)
        w.add_tensor(gguf_name(name), data, raw_dtype=qt if t not in ("F32", "F16") else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
