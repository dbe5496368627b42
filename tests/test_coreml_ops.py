"""Each op of edge's NumPy MIL evaluator against the op's definition, written out here with plain loops or
NumPy, independent of the converter (coremltools' op docs: converters/mil/mil/ops/defs)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import edge  # noqa: F401  (environment defaults)
from edge.coreml import mil_ops as ops

rng = np.random.default_rng(0)


def test_blockwise_shift_scale_matches_the_element_formula():
    data = rng.integers(-8, 8, size=(6, 8)).astype(np.int8)
    scale = rng.random((3, 2)).astype(np.float16)
    offset = rng.integers(-3, 3, size=(3, 2)).astype(np.int8)
    out = ops.constexpr_blockwise_shift_scale(data, scale, offset)
    want = np.empty((6, 8), np.float32)
    for i, j in itertools.product(range(6), range(8)):
        want[i, j] = np.float32(scale[i // 2, j // 4]) * (data[i, j] - offset[i // 2, j // 4])
    np.testing.assert_array_equal(out, want)
    no_offset = np.repeat(np.repeat(scale.astype(np.float32), 2, axis=0), 4, axis=1) * data
    np.testing.assert_array_equal(ops.constexpr_blockwise_shift_scale(data, scale), no_offset)


def test_lut_to_dense_picks_each_groups_table():
    indices = rng.integers(0, 4, size=(6, 2)).astype(np.uint8)
    lut = rng.random((2, 1, 4, 1)).astype(np.float16)  # two tables, three rows each
    out = ops.constexpr_lut_to_dense(indices, lut)
    want = np.array([[lut[i // 3, 0, indices[i, j], 0] for j in range(2)] for i in range(6)], np.float32)
    np.testing.assert_array_equal(out, want)
    # the docs' example: 2 groups of a 2-bit table over axis 0
    idx = np.array([2, 3, 3, 0, 1, 0, 3, 0, 2, 1, 0, 3], np.uint8).reshape(6, 2)
    table = np.array([1.0, 5.0, 9.0, 13.0, 2.0, 10.0, 18.0, 26.0], np.float16).reshape(2, 1, 4, 1)
    np.testing.assert_array_equal(
        ops.constexpr_lut_to_dense(idx, table), [[9, 13], [13, 1], [5, 1], [26, 2], [18, 10], [2, 26]]
    )


def test_vector_lut_fills_vectors_along_the_axis():
    """The docs' case 2.1: 1-bit indices (2, 2, 2), one table of two 3-vectors, vector_axis 1 -> (2, 6, 2)."""
    indices = np.array([[[0, 0], [1, 0]], [[1, 1], [0, 0]]], np.uint8)
    lut = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]], np.float16).reshape(1, 1, 1, 2, 3)
    out = ops.constexpr_lut_to_dense(indices, lut, vector_axis=1)
    assert out.shape == (2, 6, 2)
    for i, j, k, v in itertools.product(range(2), range(2), range(2), range(3)):
        assert out[i, j * 3 + v, k] == lut[0, 0, 0, indices[i, j, k], v]


def test_gather_with_batch_dims_pairs_the_leading_axes():
    x = rng.random((3, 5, 4))
    idx = rng.integers(0, 5, size=(3, 2))
    out = ops.gather(x, idx, axis=1, batch_dims=1)
    assert out.shape == (3, 2, 4)
    for b, j in itertools.product(range(3), range(2)):
        np.testing.assert_array_equal(out[b, j], x[b, idx[b, j]])


def test_concat_interleave_alternates_elements():
    a, b = np.arange(6).reshape(2, 3), 10 + np.arange(6).reshape(2, 3)
    out = ops.concat([a, b], axis=1, interleave=True)
    np.testing.assert_array_equal(out, [[0, 10, 1, 11, 2, 12], [3, 13, 4, 14, 5, 15]])


def test_gather_and_shape_and_range():
    x = rng.random((5, 3)).astype(np.float32)
    idx = np.array([[4, 0, 4]], np.int32)
    np.testing.assert_array_equal(ops.gather(x, idx, 0), np.stack([x[4], x[0], x[4]])[None])
    np.testing.assert_array_equal(ops.shape(np.zeros((2, 7, 1))), np.array([2, 7, 1], np.int32))
    np.testing.assert_array_equal(ops.range_1d(end=np.int32(7), start=np.int32(3), step=np.int32(2)), [3, 5])


def test_slice_by_index_with_masks_strides_and_squeeze():
    x = np.arange(2 * 5 * 4).reshape(2, 5, 4)
    out = ops.slice_by_index(x, begin=[1, 1, 0], end=[2, 5, 0], stride=[1, 2, 1], end_mask=[False, False, True])
    assert out.shape == (1, 2, 4)
    np.testing.assert_array_equal(out[0, 0], x[1, 1])
    np.testing.assert_array_equal(out[0, 1], x[1, 3])
    out = ops.slice_by_index(
        x,
        begin=[0, -2, 0],
        end=[1, 0, 4],
        begin_mask=[False, False, False],
        end_mask=[False, True, False],
        squeeze_mask=[True, False, False],
    )
    np.testing.assert_array_equal(out, x[0, 3:5])


def test_slice_update_writes_only_the_slice():
    x = np.zeros((2, 1, 3, 8, 4), np.float16)
    update = rng.random((1, 1, 3, 2, 4)).astype(np.float16)
    out = ops.slice_update(x, update, begin=[1, 0, 0, 5, 0], end=[2, 1, 3, 7, 4])
    assert x.sum() == 0  # the input is not modified
    want = np.zeros_like(x)
    for h, t, d in itertools.product(range(3), range(2), range(4)):
        want[1, 0, h, 5 + t, d] = update[0, 0, h, t, d]
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize(
    ("name", "fn"),
    [("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("real_div", np.divide)],
)
def test_elementwise_broadcast(name, fn):
    x, y = rng.random((2, 1, 3)).astype(np.float32) + 0.5, rng.random((4, 1)).astype(np.float32) + 0.5
    out = ops.OPS[name](x, y)
    assert out.shape == (2, 4, 3)
    for i, j, k in itertools.product(range(2), range(4), range(3)):
        assert out[i, j, k] == fn(x[i, 0, k], y[j, 0])


def test_shape_ops():
    x = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(ops.reshape(x, [0, -1, 2]), x.reshape(2, 6, 2))
    np.testing.assert_array_equal(ops.transpose(x, [2, 0, 1])[3, 1, 2], x[1, 2, 3])
    assert ops.expand_dims(x, [0, 2]).shape == (1, 2, 1, 3, 4)
    assert ops.squeeze(np.zeros((1, 3, 1)), [0]).shape == (3, 1)
    np.testing.assert_array_equal(ops.tile(np.array([[1, 2]]), [2, 2]), [[1, 2, 1, 2], [1, 2, 1, 2]])
    a, b = ops.split(x, axis=2, split_sizes=[1, 3])
    np.testing.assert_array_equal(a, x[:, :, :1])
    np.testing.assert_array_equal(b, x[:, :, 1:])
    np.testing.assert_array_equal(ops.concat([a, b], axis=2), x)
    assert len(ops.split(x, axis=2, num_splits=2)) == 2
    assert ops.cast(np.array([1.5]), "fp16").dtype == np.float16


def test_reductions_and_activations():
    x = rng.standard_normal((2, 5)).astype(np.float32)
    np.testing.assert_allclose(ops.reduce_mean(x, [-1], True), [[x[0].sum() / 5], [x[1].sum() / 5]], rtol=1e-6)
    v = np.array([0.0, 4.0], np.float32)
    np.testing.assert_allclose(ops.rsqrt(v, epsilon=1e-2), [1 / np.sqrt(0.01), 1 / np.sqrt(4.01)], rtol=1e-6)
    for a in (-3.0, 0.0, 2.5):
        assert ops.silu(np.float32(a)) == pytest.approx(a / (1 + np.exp(-a)), rel=1e-6)


def test_linear_and_matmul():
    x, w, b = rng.random((1, 3, 4)), rng.random((5, 4)), rng.random(5)
    out = ops.linear(x, w, b)
    for t, o in itertools.product(range(3), range(5)):
        assert out[0, t, o] == pytest.approx(sum(x[0, t, i] * w[o, i] for i in range(4)) + b[o])
    y = rng.random((2, 4, 3))
    np.testing.assert_allclose(ops.matmul(rng.random((2, 3, 4)).swapaxes(1, 2), y, transpose_x=True).shape, (2, 3, 3))
    np.testing.assert_allclose(ops.matmul(y, y, transpose_y=True), np.einsum("bik,bjk->bij", y, y))


def test_attention_is_softmax_of_scaled_scores_plus_mask():
    q, k, v = (rng.standard_normal((1, 2, n, 4)).astype(np.float32) for n in (3, 5, 5))
    mask = np.zeros((1, 1, 3, 5), np.float32)
    mask[..., 3:] = -np.inf
    out = ops.scaled_dot_product_attention(q, k, v, mask)
    for h, i in itertools.product(range(2), range(3)):
        scores = [float(q[0, h, i] @ k[0, h, j]) / 2.0 for j in range(3)]  # sqrt(4) = 2; keys 3, 4 masked
        weights = np.exp(scores) / np.exp(scores).sum()
        np.testing.assert_allclose(out[0, h, i], sum(w * v[0, h, j] for j, w in enumerate(weights)), rtol=1e-5)
    np.testing.assert_allclose(ops.scaled_dot_product_attention(q, k, v, mask == 0), out, rtol=1e-6)


def test_every_emitted_op_has_a_definition(tmp_path, hf_models):
    """The evaluator covers each op type the converter writes into a package."""
    from edge.converters import convert
    from edge.coreml.reference import MILReference

    out = convert(
        hf_models["qwen2"], tmp_path / "q.mlpackage", to="coreml", bits=4, context=32, progress=False, verify=False
    )
    assert out.parameters > 0
    ref = MILReference(tmp_path / "q.mlpackage")
    used = {op.op_type for op in ref.function.operations}
    assert used - {"const", "read_state", "coreml_update_state"} <= set(ops.OPS)
    assert {"scaled_dot_product_attention", "constexpr_blockwise_shift_scale", "slice_update"} <= used


def test_states_persist_across_predictions(tmp_path):
    """A two-op stateful program (read_state, add, coreml_update_state): the evaluator carries the state."""
    from edge.coreml.contract import import_coremltools

    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    @mb.program(
        input_specs=[mb.TensorSpec((2,), dtype=types.fp16), mb.StateTensorSpec((2,), dtype=types.fp16)],
        opset_version=ct.target.iOS18,
    )
    def prog(x, acc):
        total = mb.add(x=x, y=mb.read_state(input=acc))
        mb.coreml_update_state(state=acc, value=total)
        return mb.mul(x=total, y=np.float16(2), name="y")

    model = ct.convert(prog, minimum_deployment_target=ct.target.iOS18, skip_model_load=True)
    model.save(str(tmp_path / "acc.mlpackage"))
    from edge.coreml.reference import MILReference

    ref = MILReference(_bare_package(tmp_path / "acc.mlpackage"))
    state = ref.make_state()
    x = np.array([1.0, 0.5], np.float16)
    np.testing.assert_array_equal(ref.predict({"x": x}, state)["y"], [2.0, 1.0])
    np.testing.assert_array_equal(ref.predict({"x": x}, state)["y"], [4.0, 2.0])
    np.testing.assert_array_equal(state["acc"], [2.0, 1.0])


def _bare_package(path):
    """A Package record for a package that is not a language model (no contract checks)."""
    from edge.coreml.contract import import_coremltools
    from edge.coreml.package import Package

    ct = import_coremltools()
    return Package(path, ct.utils.load_spec(str(path)), {}, {}, path, 0)
