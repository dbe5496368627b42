"""`MILReference`: evaluate the MIL program saved in a package with NumPy, states included.

It is edge's proof of a package on machines without Core ML: the program is read back from the saved
package (coremltools' milproto loader, the same bytes Core ML compiles), every op runs through its NumPy
definition in `mil_ops`, and it offers Core ML's stateful interface (`make_state`, `predict(inputs, state)`),
so the runtime drives it exactly as it drives Core ML.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UnsupportedModelError
from .contract import import_coremltools
from .mil_ops import CONSTEXPR, MOVES, OPS
from .package import Package, open_package


def _declared(var) -> type:
    from coremltools.converters.mil.mil import types

    return types.nptype_from_builtin(var.dtype)


def _raise(value):
    """fp16 values are computed in fp32 (as Core ML's CPU and GPU paths accumulate)."""
    if isinstance(value, np.ndarray) and value.dtype == np.float16:
        return value.astype(np.float32)
    if isinstance(value, (list, tuple)):
        return [_raise(v) for v in value]
    return value


def _store(value, var):
    dtype = _declared(var)
    if dtype in (np.float16, np.float32, np.int32, np.bool_):
        return np.asarray(value).astype(dtype, copy=False)
    return np.asarray(value)


class MILReference:
    """A package's main function, evaluated op by op in NumPy."""

    def __init__(self, package: Package | str | Path):
        import_coremltools()
        from coremltools.converters.mil.frontend.milproto.load import load

        self.package = package if isinstance(package, Package) else open_package(package)
        spec = self.package.spec
        weights = str(self.package.weights_dir)
        program = load(spec, specification_version=spec.specificationVersion, file_weights_dir=weights)
        self.function = program.functions["main"]
        self.states = {s.name: tuple(int(d) for d in s.type.stateType.arrayType.shape) for s in spec.description.state}
        unknown = sorted(
            {op.op_type for op in self.function.operations} - set(OPS) - {"const", "read_state", "coreml_update_state"}
        )
        if unknown:
            raise UnsupportedModelError(
                f"{self.package.path}: the reference evaluator has no definition of {', '.join(unknown)}."
            )
        self.outputs = [v.name for v in self.function.outputs]
        self.constants = self._fold_constants()

    def _fold_constants(self) -> dict[str, np.ndarray]:
        """Values of const and constexpr ops, computed once (Core ML decompresses constexpr at load, too)."""
        env: dict[str, np.ndarray] = {}
        for op in self.function.operations:
            if op.op_type == "const":
                env[op.outputs[0].name] = _raise(np.asarray(op.outputs[0].val))
            elif op.op_type in CONSTEXPR:
                args = {k: env[v.name] for k, v in op.inputs.items()}
                env[op.outputs[0].name] = OPS[op.op_type](**args).astype(np.float32)
        return env

    def make_state(self) -> dict[str, np.ndarray]:
        """Zeroed states (the contract's states are fp16)."""
        return {name: np.zeros(shape, dtype=np.float16) for name, shape in self.states.items()}

    def predict(self, inputs: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for `inputs`; `state` (from make_state) is read and updated in place, as Core ML's is."""
        env = dict(self.constants)
        env.update({k: np.asarray(v) for k, v in inputs.items()})
        for op in self.function.operations:
            if op.op_type == "const" or op.op_type in CONSTEXPR:
                continue
            if op.op_type == "read_state":
                env[op.outputs[0].name] = state[op.inputs["input"].name]
                continue
            if op.op_type == "coreml_update_state":
                value = env[op.inputs["value"].name]
                state[op.inputs["state"].name] = value.astype(state[op.inputs["state"].name].dtype)
                env[op.outputs[0].name] = value
                continue
            args = {
                k: [env[x.name] for x in v] if isinstance(v, (list, tuple)) else env[v.name]
                for k, v in op.inputs.items()
            }
            if op.op_type not in MOVES:
                args = {k: _raise(v) for k, v in args.items()}
            result = OPS[op.op_type](**args)
            results = result if isinstance(result, tuple) else (result,)
            for var, value in zip(op.outputs, results, strict=True):
                env[var.name] = _store(value, var)
        return {name: env[name] for name in self.outputs}
