"""edge's own kernels, each beside the MLX ops it replaces (which stay its tested reference).

`cpu`: quantized matrix products for MLX's affine 4/8-bit layout on CPUs (AVX2 / NEON / portable),
compiled on first use into the cache; `quantized`: the drop-in layers that call them; `fused`: whole
decoder layers as one kernel each (the per-node cost of MLX's graph on a CPU is the other bottleneck).
"""

from .cpu import KernelStatus, load_extension, status
from .fused import fuse
from .quantized import use_kernels

__all__ = ["KernelStatus", "fuse", "load_extension", "status", "use_kernels"]
