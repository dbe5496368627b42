"""Converters: Hugging Face folders, MLX folders and GGUF files -> quantized MLX model folders."""

from .convert import convert, plan
from .default_model import ensure_default_model
from .report import ConversionReport
from .source import open_source

__all__ = ["convert", "plan", "open_source", "ensure_default_model", "ConversionReport"]
