"""edge's own kernels, each beside the MLX ops it replaces (which stay its tested reference).

`cpu`: quantized matrix products for MLX's affine 4/8-bit layout on CPUs (AVX2 / NEON / portable),
compiled on first use into the cache; `quantized`: the drop-in layers that call them.
"""

from .cpu import KernelStatus, load_extension, status
from .quantized import use_kernels

__all__ = ["KernelStatus", "load_extension", "status", "use_kernels"]
