"""edge's own kernels, each beside the MLX ops it replaces (which stay its tested reference).

`cpu`: builds and loads the extension (quantized products for MLX's affine 4/8-bit weights on CPUs:
AVX-512 / AVX2 / portable), compiled on first use into the cache; `layout`: the packed form of the weights
the products read; `quantized`: the drop-in layers that repack and call them; `fused`: whole
decoder layers as one kernel each (the per-node cost of MLX's graph on a CPU is the other bottleneck).
"""

from .cpu import KernelStatus, load_extension, status
from .fused import fuse
from .quantized import use_kernels

__all__ = ["KernelStatus", "fuse", "load_extension", "status", "use_kernels"]
