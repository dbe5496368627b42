"""The exceptions users catch. Each message names the file or field at fault and says what to do next."""

from __future__ import annotations


class EdgeError(Exception):
    """Base class of every error edge raises on purpose (the CLI prints it as one line, exit 1)."""


class ModelFormatError(EdgeError):
    """A model folder or checkpoint is missing a file, has a broken file, or a wrong field."""


class UnsupportedModelError(EdgeError):
    """The architecture, tensor type or tokenizer is not one edge can run or convert."""


class OutOfMemoryError(EdgeError):
    """The memory plan says the model and its context will not fit this machine."""


class OutputExistsError(EdgeError):
    """The conversion target exists and `force` was not given."""


class DownloadError(EdgeError):
    """Fetching the default model failed (no network, or the package is not where it should be)."""
