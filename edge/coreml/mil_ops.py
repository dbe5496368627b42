"""NumPy definitions of the MIL ops edge's Core ML packages use, one small function each.

Each takes the op's inputs by name (values already in NumPy; fp16 raised to fp32 by the caller, which
casts results back to the declared type, as Core ML computes in fp32 and stores fp16) and returns the output
value (a tuple for ops with several outputs). They follow the op definitions in coremltools'
`converters/mil/mil/ops/defs` (iOS 15-18 opsets), written from those definitions, not from edge's converter.
"""

from __future__ import annotations

import numpy as np

NP_DTYPES = {
    "fp16": np.float16,
    "fp32": np.float32,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


def _blocks(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Expand per-block parameters to `shape` (block size per axis = shape / parameter shape)."""
    for axis, (n, m) in enumerate(zip(shape, values.shape, strict=True)):
        if n % m:
            raise ValueError(f"axis {axis}: {m} blocks do not divide size {n}")
        values = np.repeat(values, n // m, axis=axis)
    return values


def constexpr_blockwise_shift_scale(data, scale, offset=None):
    """output = scale * (data - offset), scale and offset shared by blocks."""
    values = data.astype(np.float32)
    if offset is not None:
        values = values - _blocks(offset.astype(np.float32), data.shape)
    return values * _blocks(scale.astype(np.float32), data.shape)


def constexpr_lut_to_dense(indices, lut, vector_axis=None):
    """output[i] = lut[block of i][indices[i]]; lut has rank indices.rank + 2: (*groups, K, VECTOR_SIZE).

    With VECTOR_SIZE > 1 each index fetches a vector, laid out along `vector_axis` (the output is
    VECTOR_SIZE times longer there); the groups divide the output's dimensions.
    """
    rank, vsize = indices.ndim, lut.shape[-1]
    vaxis = int(vector_axis) % rank if vsize > 1 else -1
    out_shape = [n * (vsize if a == vaxis else 1) for a, n in enumerate(indices.shape)]
    group_index = tuple(
        ((np.arange(n) * (vsize if a == vaxis else 1)) // (out_shape[a] // g)).reshape(
            [-1 if b == a else 1 for b in range(rank)]
        )
        for a, (n, g) in enumerate(zip(indices.shape, lut.shape[:rank], strict=True))
    )
    values = lut[group_index + (indices.astype(np.int64),)]  # (*indices.shape, VECTOR_SIZE)
    if vsize == 1:
        return values[..., 0].astype(np.float32)
    values = np.moveaxis(values, -1, vaxis + 1)  # each vector right after its index's position
    return values.reshape(out_shape).astype(np.float32)


def gather(x, indices, axis=0, batch_dims=0, validate_indices=False):
    """np.take along `axis`; the first `batch_dims` axes of x and indices are paired, not gathered over."""
    indices = indices.astype(np.int64)
    if not batch_dims:
        return np.take(x, indices, axis=int(axis))
    return np.stack([gather(xb, ib, int(axis) - 1, batch_dims - 1) for xb, ib in zip(x, indices, strict=True)])


def shape(x):
    return np.array(x.shape, dtype=np.int32)


def _slices(x, begin, end, stride=None, begin_mask=None, end_mask=None) -> tuple[slice, ...]:
    """Python slices for a MIL slice: a set mask bit ignores begin/end on that axis; negatives count from the end."""
    index = []
    for i in range(x.ndim):
        b = None if begin_mask is not None and begin_mask[i] else int(begin[i])
        e = None if end_mask is not None and end_mask[i] else int(end[i])
        index.append(slice(b, e, 1 if stride is None else int(stride[i])))
    return tuple(index)


def slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    out = x[_slices(x, begin, end, stride, begin_mask, end_mask)]
    if squeeze_mask is not None and np.any(squeeze_mask):
        out = out.squeeze(axis=tuple(int(i) for i in np.flatnonzero(squeeze_mask)))
    return out


def slice_update(x, update, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    """x with the slice x[begin:end:stride] replaced by update (squeezed axes restored first)."""
    out = np.array(x, copy=True)
    index = _slices(x, begin, end, stride, begin_mask, end_mask)
    out[index] = np.reshape(update, out[index].shape)
    return out


def add(x, y):
    return x + y


def sub(x, y):
    return x - y


def mul(x, y):
    return x * y


def real_div(x, y):
    return x / y


def concat(values, axis, interleave=False):
    """Values joined along `axis`; interleaved: element i of every value in turn (all the same shape)."""
    axis = int(axis) % values[0].ndim
    if not interleave:
        return np.concatenate(values, axis=axis)
    stacked = np.stack(values, axis=axis + 1)
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return stacked.reshape(shape)


def reshape(x, shape):
    shape = [int(x.shape[i]) if int(d) == 0 else int(d) for i, d in enumerate(shape)]
    return np.reshape(x, shape)


def transpose(x, perm):
    return np.transpose(x, [int(p) for p in perm])


def expand_dims(x, axes):
    return np.expand_dims(x, tuple(int(a) for a in axes))


def squeeze(x, axes=None):
    return np.squeeze(x, axis=None if axes is None else tuple(int(a) for a in axes))


def tile(x, reps):
    return np.tile(x, [int(r) for r in reps])


def split(x, axis, num_splits=None, split_sizes=None):
    if split_sizes is not None:
        return tuple(np.split(x, np.cumsum(split_sizes)[:-1], axis=int(axis)))
    return tuple(np.split(x, int(num_splits), axis=int(axis)))


def cast(x, dtype):
    return x.astype(NP_DTYPES[str(dtype)])


def reduce_mean(x, axes=None, keep_dims=False):
    return np.mean(x, axis=None if axes is None else tuple(int(a) for a in axes), keepdims=bool(keep_dims))


def rsqrt(x, epsilon=1e-12):
    return 1.0 / np.sqrt(x + np.float32(epsilon))


def silu(x):
    return x / (1.0 + np.exp(-x))


def linear(x, weight, bias=None):
    out = x @ weight.T
    return out if bias is None else out + bias


def matmul(x, y, transpose_x=False, transpose_y=False):
    if transpose_x:
        x = np.swapaxes(x, -1, -2)
    if transpose_y:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def range_1d(end, start, step):
    return np.arange(int(start), int(end), int(step), dtype=np.int32)


def scaled_dot_product_attention(query, key, value, attn_mask=None):
    """softmax(Q K^T / sqrt(E) + mask) V; a bool mask keeps True and drops False."""
    scores = (query @ np.swapaxes(key, -1, -2)) / np.sqrt(np.float32(query.shape[-1]))
    if attn_mask is not None:
        scores = np.where(attn_mask, scores, -np.inf) if attn_mask.dtype == np.bool_ else scores + attn_mask
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ value


OPS = {
    f.__name__: f
    for f in (
        constexpr_blockwise_shift_scale,
        constexpr_lut_to_dense,
        gather,
        shape,
        slice_by_index,
        slice_update,
        add,
        sub,
        mul,
        real_div,
        concat,
        reshape,
        transpose,
        expand_dims,
        squeeze,
        tile,
        split,
        cast,
        reduce_mean,
        rsqrt,
        silu,
        linear,
        matmul,
        range_1d,
        scaled_dot_product_attention,
    )
}
CONSTEXPR = ("constexpr_blockwise_shift_scale", "constexpr_lut_to_dense")
MOVES = frozenset(
    (
        "gather",
        "shape",
        "slice_by_index",
        "slice_update",
        "concat",
        "reshape",
        "transpose",
        "expand_dims",
        "squeeze",
        "tile",
        "split",
    )
)
"""Ops that only move values: exact in any dtype, so they run on fp16 as stored (no fp32 round trip)."""
