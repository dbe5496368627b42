"""Point an already-loaded shared library's imported functions at other code, in place (Linux, ELF64).

Why: when `mlx` is imported before `edge`, libmlx's `cblas_sgemm` is already bound to MLX's reference BLAS
and loading edge's shim globally no longer interposes it. The dynamic linker keeps the function's address
in a GOT slot named by a relocation; rewriting that one pointer reroutes every later call. Only the
slots of the named symbols are touched, and only when the library is mapped exactly once.
"""

from __future__ import annotations

import ctypes
import os
import struct

_JUMP_SLOT_OR_GLOB_DAT = {6, 7, 1025, 1026}  # x86_64 GLOB_DAT/JUMP_SLOT, aarch64 GLOB_DAT/JUMP_SLOT
_SHT_RELA, _PROT_READ, _PROT_RW = 4, 0x1, 0x1 | 0x2


def _sections(data: bytes) -> list[tuple]:
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    return [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]


def relocated_slots(path: str, names: set[str]) -> dict[str, int]:
    """{symbol: slot offset from the load base} for GLOB_DAT / JUMP_SLOT relocations of `names`."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}
    sections = _sections(data)
    slots: dict[str, int] = {}
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type != _SHT_RELA or not entsize:
            continue
        symtab, strtab = sections[link], sections[sections[link][6]]
        for off in range(offset, offset + size, entsize):
            r_offset, r_info, _ = struct.unpack_from("<QQq", data, off)
            if (r_info & 0xFFFFFFFF) not in _JUMP_SLOT_OR_GLOB_DAT:
                continue
            (st_name,) = struct.unpack_from("<I", data, symtab[4] + (r_info >> 32) * symtab[9])
            start = strtab[4] + st_name
            name = data[start : data.index(b"\0", start)].decode()
            if name in names:
                slots[name] = r_offset
    return slots


def loaded_library(prefix: str) -> str | None:
    """The path of a mapped shared library whose file name starts with `prefix`."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and os.path.basename(parts[5]).startswith(prefix):
                return parts[5]
    return None


def _mappings(path: str) -> list[tuple[int, int, str, int]]:
    real = os.path.realpath(path)
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and os.path.realpath(parts[5]) == real:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi, parts[1], int(parts[2], 16)))
    return out


def rebind(path: str, targets: dict[str, int]) -> int:
    """Write `targets` ({symbol: function address}) into the loaded library's slots; return how many changed."""
    maps = _mappings(path)
    bases = [lo for lo, _, _, file_off in maps if file_off == 0]
    if len(bases) != 1:
        return 0
    base = bases[0]
    libc = ctypes.CDLL(None, use_errno=True)
    page = os.sysconf("SC_PAGE_SIZE")
    done = 0
    for name, offset in relocated_slots(path, set(targets)).items():
        slot = base + offset
        region = next(((lo, hi, perms) for lo, hi, perms, _ in maps if lo <= slot < hi), None)
        if region is None:
            continue
        start = slot & ~(page - 1)
        read_only = "w" not in region[2]  # a RELRO page: open it for this one write, then close it again
        if read_only and libc.mprotect(ctypes.c_void_p(start), page, _PROT_RW) != 0:
            continue
        ctypes.c_void_p.from_address(slot).value = targets[name]
        if read_only:
            libc.mprotect(ctypes.c_void_p(start), page, _PROT_READ)
        done += 1
    return done
