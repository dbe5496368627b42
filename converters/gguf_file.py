"""A lean GGUF (v2/v3) parser: metadata as plain Python values, tensor infos, and tensor data read on demand.

Why not `gguf.GGUFReader`: it builds numpy objects for every vocabulary entry and merge, which took 196 MB
and 2.3 s for SmolLM2's 49k-token vocabulary, more than the whole conversion otherwise needs. Type names
and block sizes still come from the `gguf` package's tables.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from edge.errors import ModelFormatError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    type_name: str
    shape: tuple[int, ...]
    """Logical shape, outermost first (GGUF stores it innermost first)."""
    offset: int
    nbytes: int


class _Cursor:
    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str):
        try:
            value = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error:
            raise ModelFormatError(f"{self.path} ends inside its GGUF header: the file is truncated.") from None
        self.pos += struct.calcsize(fmt)
        return value[0] if len(value) == 1 else value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise ModelFormatError(f"{self.path} ends inside its GGUF header: the file is truncated.")
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.take("<I"), self.take("<Q")
            if etype in _SCALARS and etype != 7:
                fmt = _SCALARS[etype]
                size = struct.calcsize(fmt)
                arr = np.frombuffer(self.buf, dtype=np.dtype(fmt), count=count, offset=self.pos)
                self.pos += size * count
                return arr.tolist()
            return [self.value(etype) for _ in range(count)]
        raise ModelFormatError(f"{self.path} has a GGUF metadata value of unknown type {vtype}.")


class GGUFFile:
    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            try:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:
                raise ModelFormatError(f"{path} is empty.") from None
        c = _Cursor(self._map, path)
        magic, version = c.take("<4s"), c.take("<I")
        if magic != b"GGUF" or version not in (2, 3):
            raise ModelFormatError(f"{path} is not a GGUF v2/v3 file (magic {magic!r}, version {version}).")
        n_tensors, n_kv = c.take("<Q"), c.take("<Q")
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise ModelFormatError(f"{path} has an implausible GGUF header (damaged file).")
        self.metadata: dict = {}
        for _ in range(n_kv):
            key = c.string()
            self.metadata[key] = c.value(c.take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = c.string()
            dims = [c.take("<Q") for _ in range(c.take("<I"))]
            infos.append((name, dims, c.take("<I"), c.take("<Q")))
        align = int(self.metadata.get("general.alignment", 32))
        data_start = c.pos + (-c.pos % align)
        self.tensors: list[GGUFTensor] = []
        for name, dims, type_id, offset in infos:
            try:
                qtype = GGMLQuantizationType(type_id)
            except ValueError:
                raise ModelFormatError(f"{path}: tensor {name} has unknown GGML type id {type_id}.") from None
            block, size = GGML_QUANT_SIZES[qtype]
            nbytes = int(np.prod(dims, dtype=np.int64)) // block * size
            tensor = GGUFTensor(name, qtype.name, tuple(reversed(dims)), data_start + offset, nbytes)
            if tensor.offset + nbytes > len(self._map):
                raise ModelFormatError(f"{path} is truncated: tensor {name} ends beyond the end of the file.")
            self.tensors.append(tensor)

    def data(self, t: GGUFTensor) -> np.ndarray:
        """The tensor's raw bytes, read from the file (not through the map: mapped pages would stay resident)."""
        return np.fromfile(self.path, dtype=np.uint8, count=t.nbytes, offset=t.offset)
