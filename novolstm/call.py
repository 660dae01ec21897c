"""Checks every backend-neutral call makes before any arithmetic: shapes, dtypes, finiteness.

Policy for non-finite values: ``novolstm.run`` refuses NaN or inf in the inputs,
the initial state and the parameters (``ValueError`` naming the array and the first
bad index). Native cells follow their framework and propagate them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spec_model import Spec

FLOAT_DTYPES = (np.dtype("float32"), np.dtype("float64"))


@dataclass(frozen=True)
class Call:
    params: dict
    x: np.ndarray
    state: tuple | None
    mask: np.ndarray | None


def prepare_call(spec: Spec, params, x, state, mask, lengths, dtype) -> Call:
    """Validate a call and return its arrays in one float dtype, mask as bool (batch, time)."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"x: expected a float array, got dtype {x.dtype}")
    dtype = np.dtype(dtype or (x.dtype if x.dtype in FLOAT_DTYPES else "float64"))
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    if x.ndim != 3:
        raise ValueError(f"x: expected shape (batch, time, input), got {x.shape}")
    batch, steps, input_size = x.shape
    if steps == 0:
        raise ValueError("x: the sequence has length 0; expected at least one time step")
    if batch == 0:
        raise ValueError("x: the batch is empty; expected at least one sequence")
    _finite("x", x)

    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict of canonical names to arrays, got {type(params).__name__}")
    missing = sorted(set(spec.param_names) - set(params))
    extra = sorted(set(params) - set(spec.param_names))
    if missing or extra:
        raise ValueError(
            f"params for {spec.name!r}: missing {missing}, unexpected {extra}; expected {list(spec.param_names)}"
        )
    first = np.shape(params[spec.params[0].name])
    units = first[-1] if first else 0
    if units < 1:
        raise ValueError(f"params[{spec.params[0].name!r}]: cannot read the number of units from shape {first}")
    expected = spec.parameter_shapes(input_size, units)
    arrays = {}
    for name, shape in expected.items():
        value = np.asarray(params[name])
        if value.shape != shape:
            raise ValueError(
                f"params[{name!r}]: expected shape {shape} (input={input_size}, units={units}), got {value.shape}"
            )
        if value.dtype.kind not in "fiu":
            raise TypeError(f"params[{name!r}]: expected a float array, got dtype {value.dtype}")
        _finite(f"params[{name!r}]", value)
        arrays[name] = value.astype(dtype, copy=False)

    if state is not None:
        state = tuple(state) if isinstance(state, (tuple, list)) else (state,)
        if len(state) != len(spec.state_names):
            raise ValueError(f"state: expected {len(spec.state_names)} arrays {spec.state_names}, got {len(state)}")
        checked = []
        for name, s in zip(spec.state_names, state):
            s = np.asarray(s)
            if s.shape != (batch, units):
                raise ValueError(f"state {name!r}: expected shape ({batch}, {units}), got {s.shape}")
            _finite(f"state {name!r}", s)
            checked.append(s.astype(dtype, copy=False))
        state = tuple(checked)

    if mask is not None and lengths is not None:
        raise ValueError("give mask or lengths, not both")
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.shape != (batch,) or lengths.dtype.kind not in "iu":
            raise ValueError(f"lengths: expected integers of shape ({batch},), got {lengths.shape} {lengths.dtype}")
        if (lengths < 0).any() or (lengths > steps).any():
            raise ValueError(f"lengths: expected values in [0, {steps}], got {lengths.tolist()}")
        mask = np.arange(steps)[None, :] < lengths[:, None]
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (batch, steps) or mask.dtype != bool:
            raise ValueError(f"mask: expected a bool array of shape ({batch}, {steps}), got {mask.shape} {mask.dtype}")
    return Call(arrays, x.astype(dtype, copy=False), state, mask)


def _finite(what: str, a: np.ndarray):
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise ValueError(f"{what}: non-finite value {a[index]} at index {index}; inputs must be finite")
