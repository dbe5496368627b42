"""Core ML packages on the runtime side: the package contract, a NumPy reference evaluator of the saved MIL
program (runs anywhere), and the backend that drives Core ML's stateful prediction (macOS 15+)."""

from .contract import CONTRACT_NAMES, causal_mask
from .package import Package, open_package

__all__ = ["CONTRACT_NAMES", "causal_mask", "Package", "open_package"]
