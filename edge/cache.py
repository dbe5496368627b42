"""KV caches: mlx-lm's cache classes, plus the prefix bookkeeping that Chat and draft models share.

Both keep the list of tokens a cache holds; to reuse it for new tokens they keep the common prefix and roll
the cache back to it by moving offsets (mlx-lm's `trim_prompt_cache`).
"""

from __future__ import annotations


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def offset(cache: list) -> int:
    """Positions the cache holds."""
    return cache[0].offset if cache else 0


def trim_to(cache: list, keep: int) -> bool:
    """Roll the cache back to its first `keep` positions; False if its layers cannot roll back."""
    from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

    extra = offset(cache) - keep
    if extra <= 0:
        return True
    if not can_trim_prompt_cache(cache):
        return False
    trim_prompt_cache(cache, extra)
    return True


class OffsetCache:
    """A cache whose first `offset` positions are valid: rolling back is moving the offset, since later
    positions are masked or overwritten by the next write (Core ML states, edge's fused-layer caches).
    Duck-types mlx-lm's trimmable caches, so Chat and speculative decoding treat it like theirs."""

    offset: int = 0

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        n = min(self.offset, n)
        self.offset -= n
        return n
