"""Keras layouts <-> canonical parameters, on NumPy arrays (no framework is imported).

Three layouts:

- ``keras.layers.LSTM`` / ``LSTMCell`` -> the ``lstm`` spec. ``get_weights()`` is
  ``[kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,)]``, gate blocks in the
  order i, f, c, o (Keras' ``c`` is the canonical candidate ``g``). The same layout
  holds the ``keras2_lstm`` spec: Keras 2's LSTM with ``recurrent_activation=
  "hard_sigmoid"`` (its default before 2.3), whose hard sigmoid was
  ``clip(0.2 z + 0.5, 0, 1)``; Keras 3 gives that name to ``relu6(z + 3) / 6``, so
  a Keras 3 layer's ``"hard_sigmoid"`` is refused for both specs.
- ``keras.layers.GRU`` / ``GRUCell`` with ``reset_after=True`` (Keras 3's default)
  -> the ``gru`` spec. ``[kernel (I, 3H), recurrent_kernel (H, 3H), bias (2, 3H)]``,
  blocks in the order z, r, h; ``bias[0]`` is added to the input projection and
  ``bias[1]`` to the recurrent one. The recurrent candidate bias sits inside
  ``r * (h U_h + b)``, so it stays apart (canonical ``b_hn``); the z and r biases are
  plain sums and merge (canonical ``b_z``, ``b_r``). ``reset_after=False`` computes a
  different function and is refused.
- The original NovoLSTM Keras code -> the ``novolstm_reference`` spec: weights
  named ``w_i u_i b_i w_i_prime b_i_prime w_f u_f b_f w_c u_c b_c w_o u_o b_o`` and the
  LayerNormalization's ``gamma``, ``beta``.

Every function returns new arrays in the dtype it was given; canonical -> Keras ->
canonical is exact, and so is Keras -> canonical -> Keras for the LSTM and the
original NovoLSTM layout. For the GRU the second round trip moves the recurrent
z and r biases into the input bias (the function is unchanged).

Examples:
    >>> import numpy as np
    >>> import novolstm
    >>> params = novolstm.init_params("lstm", input_size=3, units=2, seed=0)
    >>> kernel, recurrent_kernel, bias = lstm_from_canonical(params)
    >>> kernel.shape, recurrent_kernel.shape, bias.shape
    ((3, 8), (2, 8), (8,))
    >>> back = lstm_to_canonical([kernel, recurrent_kernel, bias])
    >>> all(np.array_equal(back[k], params[k]) for k in params)
    True
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

from novolstm.convert import ConversionError  # one error type for every converter

__all__ = [
    "lstm_to_canonical",
    "lstm_from_canonical",
    "keras2_lstm_to_canonical",
    "keras2_lstm_from_canonical",
    "gru_to_canonical",
    "gru_from_canonical",
    "novolstm_original_to_canonical",
    "novolstm_original_from_canonical",
    "ORIGINAL_NOVOLSTM_NAMES",
    "check_layer_config",
]

#: Keras' LSTM gate blocks, in kernel order, as canonical gate names.
LSTM_GATES = ("i", "f", "g", "o")
#: Keras' GRU gate blocks (z, r, h), as canonical gate names.
GRU_GATES = ("z", "r", "n")

#: original NovoLSTM Keras weight name -> canonical novolstm_reference name
ORIGINAL_NOVOLSTM_NAMES = {
    "w_i": "W_i", "u_i": "U_i", "b_i": "b_i",
    "w_i_prime": "W_s", "b_i_prime": "b_s",
    "w_f": "W_f", "u_f": "U_f", "b_f": "b_f",
    "w_c": "W_g", "u_c": "U_g", "b_c": "b_g",
    "w_o": "W_o", "u_o": "U_o", "b_o": "b_o",
    "gamma": "gamma_i", "beta": "beta_i",
}  # fmt: skip


# ---------------------------------------------------------------- helpers


def _kernels(weights, what: str, bias_ndim: int | None):
    """(kernel, recurrent_kernel, bias or None) from get_weights() order or a dict."""
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - {"kernel", "recurrent_kernel", "bias"})
        if unknown:
            raise ConversionError(f"{what}: unexpected weights {unknown}; expected kernel, recurrent_kernel and bias")
        try:
            arrays = [weights["kernel"], weights["recurrent_kernel"], weights.get("bias")]
        except KeyError as exc:
            raise ConversionError(f"{what}: missing weight {exc.args[0]!r}") from None
    else:
        arrays = list(weights)
        if len(arrays) not in (2, 3):
            raise ConversionError(
                f"{what}: expected [kernel, recurrent_kernel, bias] (get_weights() order), got {len(arrays)} arrays"
            )
        arrays += [None] * (3 - len(arrays))
    if arrays[0] is None or arrays[1] is None:
        raise ConversionError(f"{what}: missing kernel or recurrent_kernel")
    kernel, recurrent = np.asarray(arrays[0]), np.asarray(arrays[1])
    bias = None if arrays[2] is None else np.asarray(arrays[2])
    if kernel.ndim != 2 or recurrent.ndim != 2:
        raise ConversionError(f"{what}: kernels must be matrices, got shapes {kernel.shape} and {recurrent.shape}")
    if bias is not None and bias_ndim is not None and bias.ndim != bias_ndim:
        raise ConversionError(f"{what}: bias must have {bias_ndim} dimension(s), got shape {bias.shape}")
    for name, a in (("kernel", kernel), ("recurrent_kernel", recurrent), ("bias", bias)):
        if a is not None and a.dtype.kind != "f":
            raise ConversionError(f"{what}: {name} must be floating point, got dtype {a.dtype}")
    return kernel, recurrent, bias


def _units(kernel, recurrent, gates: int, what: str) -> int:
    units = recurrent.shape[0]
    if recurrent.shape != (units, gates * units) or kernel.shape[1] != gates * units:
        raise ConversionError(
            f"{what}: expected kernel (input, {gates}*units) and recurrent_kernel (units, {gates}*units), "
            f"got {kernel.shape} and {recurrent.shape}"
        )
    return units


def _blocks(a, count: int):
    return np.split(np.array(a), count, axis=-1)  # np.array: fresh arrays, the caller's stay untouched


def _check_canonical(params: Mapping, names: Iterable[str], spec: str):
    names = list(names)
    missing, extra = sorted(set(names) - set(params)), sorted(set(params) - set(names))
    if missing or extra:
        raise ConversionError(
            f"{spec} parameters: missing {missing}, unexpected {extra}; expected exactly {names} "
            "(a converter never drops what the target layout cannot hold)"
        )
    arrays = {n: np.asarray(params[n]) for n in names}
    units = next(a.shape[-1] for n, a in arrays.items() if n.startswith("U_") and a.ndim)
    input_size = next(a.shape[0] for n, a in arrays.items() if n.startswith("W_") and a.ndim)
    for n, a in arrays.items():
        expected = (input_size, units) if n.startswith("W_") else (units, units) if n.startswith("U_") else (units,)
        if a.shape != expected:
            raise ConversionError(f"{spec} parameters: {n} must have shape {expected}, got {a.shape}")
    return arrays


# ---------------------------------------------------------------- layer configs

#: spec -> the config values a Keras layer must have to compute it (weights alone cannot say).
#: ``hard_sigmoid`` here means Keras 2's: a config written by Keras 2 (see ``check_layer_config``).
REQUIRED_CONFIG = {
    "lstm": {"activation": "tanh", "recurrent_activation": "sigmoid", "go_backwards": False},
    "keras2_lstm": {"activation": "tanh", "recurrent_activation": "hard_sigmoid", "go_backwards": False},
    "gru": {"activation": "tanh", "recurrent_activation": "sigmoid", "go_backwards": False, "reset_after": True},
}
#: the two functions Keras has called hard_sigmoid
KERAS2_HARD_SIGMOID = "clip(0.2z+0.5, 0, 1)"
KERAS3_HARD_SIGMOID = "relu6(z+3)/6"


def _activation_name(value) -> str:
    # get_config() gives "tanh"; a saved config may give {"class_name": "function", "config": "tanh", ...}
    if isinstance(value, Mapping):
        value = value.get("config", value.get("class_name"))
    return str(value)


def keras_major(keras_version: str | None) -> int | None:
    """The major version of a Keras version string (``"2.2.4"``, ``"2.3.0-tf"``); ``None``: Keras 3.

    Returns:
        The major version, 3 for ``None`` (a config from the Keras 3 of this process), or
        ``None`` when the string names no version (a file that does not record it).

    Examples:
        >>> keras_major("2.2.4"), keras_major("2.3.0-tf"), keras_major(None), keras_major("")
        (2, 2, 3, None)
    """
    if keras_version is None:
        return 3
    m = re.match(r"^\s*(\d+)\.", str(keras_version))
    return int(m.group(1)) if m else None


def _hard_sigmoid_problem(cell: str, keras_version: str | None) -> str | None:
    """Why ``recurrent_activation="hard_sigmoid"`` from ``keras_version`` is not spec ``cell``'s, or None."""
    major = keras_major(keras_version)
    if major is None:
        return (
            f"the config records no Keras version, so it cannot say which hard_sigmoid it means: Keras 2's "
            f"{KERAS2_HARD_SIGMOID} (spec 'keras2_lstm') or Keras 3's {KERAS3_HARD_SIGMOID} (no built-in spec)"
        )
    if major >= 3:
        return (
            f"Keras {major}'s hard_sigmoid is {KERAS3_HARD_SIGMOID}, not the sigmoid of spec 'lstm' nor Keras 2's "
            f"{KERAS2_HARD_SIGMOID} of spec 'keras2_lstm' (they differ by up to 0.083 per gate); no built-in spec "
            "computes an LSTM or GRU with it"
        )
    if cell == "keras2_lstm":
        return None  # Keras 2's function, exactly what keras2_lstm computes
    if cell == "lstm":
        return f"Keras {keras_version}'s hard_sigmoid is {KERAS2_HARD_SIGMOID}: convert with spec 'keras2_lstm', which computes it"
    return f"Keras {keras_version}'s hard_sigmoid is {KERAS2_HARD_SIGMOID}; no built-in spec computes a GRU with it"


def _default(key: str, keras_version: str | None):
    """A config key's default where a config leaves it out: what that Keras version used."""
    if key == "recurrent_activation":
        # Keras 2.0 to 2.2 (and tf.keras of TF 1) defaulted to hard_sigmoid; 2.3 and Keras 3 to sigmoid.
        m = re.match(r"^\s*(\d+)\.(\d+)", str(keras_version or ""))
        return "hard_sigmoid" if m and (int(m.group(1)), int(m.group(2))) < (2, 3) else "sigmoid"
    return None


def check_layer_config(config: Mapping, cell: str, keras_version: str | None = None) -> None:
    """Refuse a Keras LSTM/GRU layer config (``layer.get_config()``) that spec ``cell`` does not compute.

    Weights do not record activations, and ``"hard_sigmoid"`` names two functions:
    Keras 2's ``clip(0.2 z + 0.5, 0, 1)`` (spec ``keras2_lstm``) and Keras 3's
    ``relu6(z + 3) / 6`` (no built-in spec). ``use_bias`` and ``unit_forget_bias``
    (an initializer) need no check: a missing bias converts to zeros.

    Args:
        config: the layer's config.
        cell: the spec the weights are to compute: ``lstm``, ``keras2_lstm`` or ``gru``.
        keras_version: the Keras that wrote ``config`` (a file's ``keras_version``,
            ``tf.keras.__version__``); ``None`` means Keras 3, this process's. Only a
            Keras 2 config can ask for ``keras2_lstm``: a Keras 3 layer computes Keras 2's
            hard sigmoid only through a custom function, which its config cannot prove.

    Raises:
        ConversionError: a config value the spec does not compute, naming the spec that does.

    Examples:
        >>> check_layer_config({"recurrent_activation": "hard_sigmoid"}, "keras2_lstm", keras_version="2.2.4")
        >>> check_layer_config({"activation": "tanh", "recurrent_activation": "hard_sigmoid"}, "keras2_lstm")
        Traceback (most recent call last):
        ...
        novolstm.convert.ConversionError: Keras layer config: recurrent_activation is 'hard_sigmoid', but spec 'keras2_lstm' computes Keras 2's hard_sigmoid: Keras 3's hard_sigmoid is relu6(z+3)/6, ...
    """
    if cell not in REQUIRED_CONFIG:
        raise ConversionError(f"Keras layers compute {sorted(REQUIRED_CONFIG)}, not {cell!r}")
    for key, wanted in REQUIRED_CONFIG[cell].items():
        if key not in config:
            default = _default(key, keras_version)
            if default is None:
                continue  # an absent key has Keras' default, which is the wanted value
            got = default
        else:
            got = _activation_name(config[key]) if key.endswith("activation") else config[key]
        computes = "Keras 2's hard_sigmoid" if (cell, wanted) == ("keras2_lstm", "hard_sigmoid") else repr(wanted)
        if got == "hard_sigmoid" and key == "recurrent_activation":
            problem = _hard_sigmoid_problem(cell, keras_version)
            if problem is not None:
                raise ConversionError(
                    f"Keras layer config: recurrent_activation is 'hard_sigmoid', but spec {cell!r} computes {computes}: "
                    f"{problem}"
                )
        elif got != wanted:
            hint = (
                " (spec 'lstm' computes it)"
                if (cell, key, got) == ("keras2_lstm", "recurrent_activation", "sigmoid")
                else ""
            )
            raise ConversionError(f"Keras layer config: {key} is {got!r}, but spec {cell!r} computes {computes}{hint}")


# ---------------------------------------------------------------- LSTM


def _lstm_to_canonical(weights, spec: str) -> dict[str, np.ndarray]:
    what = f"Keras LSTM weights ({spec})"
    kernel, recurrent, bias = _kernels(weights, what, bias_ndim=1)
    units = _units(kernel, recurrent, 4, what)
    if bias is None:
        bias = np.zeros(4 * units, kernel.dtype)
    if bias.shape != (4 * units,):
        raise ConversionError(f"{what}: bias must have shape ({4 * units},), got {bias.shape}")
    params = {}
    for gate, w, u, b in zip(LSTM_GATES, _blocks(kernel, 4), _blocks(recurrent, 4), _blocks(bias, 4)):
        params[f"W_{gate}"], params[f"U_{gate}"], params[f"b_{gate}"] = w, u, b
    return params


def _lstm_from_canonical(params: Mapping, spec: str) -> list[np.ndarray]:
    names = [f"{k}_{g}" for g in LSTM_GATES for k in ("W", "U", "b")]
    p = _check_canonical(params, names, spec)
    return [np.concatenate([p[f"{k}_{g}"] for g in LSTM_GATES], axis=-1) for k in ("W", "U", "b")]


def lstm_to_canonical(
    weights, config: Mapping | None = None, keras_version: str | None = None
) -> dict[str, np.ndarray]:
    """``keras.layers.LSTM(...).get_weights()`` (or a dict by name) -> ``lstm`` parameters.

    ``use_bias=False`` layers (two arrays) get zero biases. Pass the layer's
    ``get_config()`` as ``config`` to have it checked (``check_layer_config``, with
    ``keras_version``).
    """
    if config is not None:
        check_layer_config(config, "lstm", keras_version)
    return _lstm_to_canonical(weights, "lstm")


def lstm_from_canonical(params: Mapping) -> list[np.ndarray]:
    """``lstm`` parameters -> ``[kernel, recurrent_kernel, bias]`` for ``LSTM.set_weights``."""
    return _lstm_from_canonical(params, "lstm")


def keras2_lstm_to_canonical(
    weights, config: Mapping | None = None, keras_version: str | None = None
) -> dict[str, np.ndarray]:
    """Keras 2's ``LSTM(recurrent_activation="hard_sigmoid").get_weights()`` -> ``keras2_lstm`` parameters.

    The layout is ``lstm_to_canonical``'s (gate blocks i, f, c, o). Weights do not say
    which activation they were trained with: pass the layer's ``get_config()`` and the
    Keras version that made it (``tf.keras.__version__`` for tf.keras 2) to have it
    checked. A Keras 3 config is refused (its ``hard_sigmoid`` is ``relu6(z + 3) / 6``);
    a Keras 3 LSTM whose recurrent activation is Keras 2's formula as a custom function
    converts without ``config``.

    Args:
        weights: ``[kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,)]`` or a dict by those names.
        config: the layer's config, checked by ``check_layer_config(config, "keras2_lstm", keras_version)``.
        keras_version: the Keras that wrote ``config``; ``None`` means Keras 3.

    Returns:
        The ``keras2_lstm`` parameters, in the weights' dtype.

    Raises:
        ConversionError: weights of the wrong shapes, or a config that computes another function.

    Examples:
        >>> import numpy as np
        >>> weights = [np.zeros((3, 8)), np.zeros((2, 8)), np.arange(8.0)]
        >>> keras2_lstm_to_canonical(weights, {"recurrent_activation": "hard_sigmoid"}, "2.2.4")["b_f"]
        array([2., 3.])
        >>> keras2_lstm_to_canonical(weights, {"recurrent_activation": "hard_sigmoid"})
        Traceback (most recent call last):
        ...
        novolstm.convert.ConversionError: Keras layer config: recurrent_activation is 'hard_sigmoid', but spec 'keras2_lstm' computes Keras 2's hard_sigmoid: Keras 3's hard_sigmoid is relu6(z+3)/6, ...
    """
    if config is not None:
        check_layer_config(config, "keras2_lstm", keras_version)
    return _lstm_to_canonical(weights, "keras2_lstm")


def keras2_lstm_from_canonical(params: Mapping) -> list[np.ndarray]:
    """``keras2_lstm`` parameters -> ``[kernel, recurrent_kernel, bias]`` for a Keras 2 ``LSTM.set_weights``.

    The layer must compute Keras 2's hard sigmoid: ``recurrent_activation="hard_sigmoid"``
    in Keras 2, a custom function ``clip(0.2 z + 0.5, 0, 1)`` in Keras 3.
    """
    return _lstm_from_canonical(params, "keras2_lstm")


# ---------------------------------------------------------------- GRU


def gru_to_canonical(weights, config: Mapping | None = None, keras_version: str | None = None) -> dict[str, np.ndarray]:
    """``keras.layers.GRU(reset_after=True).get_weights()`` (or a dict by name) -> ``gru`` parameters.

    ``config``: the layer's ``get_config()``, checked by ``check_layer_config`` (with ``keras_version``).
    """
    if config is not None:
        check_layer_config(config, "gru", keras_version)
    kernel, recurrent, bias = _kernels(weights, "Keras GRU weights", bias_ndim=None)  # (3H,) gets its own message
    units = _units(kernel, recurrent, 3, "Keras GRU weights")
    if bias is None:
        bias = np.zeros((2, 3 * units), kernel.dtype)
    if bias.shape == (3 * units,):
        raise ConversionError(
            "Keras GRU weights: a bias of shape (3*units,) comes from GRU(reset_after=False), which applies the "
            "reset gate before the recurrent matmul; the canonical gru is the reset_after=True form"
        )
    if bias.shape != (2, 3 * units):
        raise ConversionError(f"Keras GRU weights: bias must have shape (2, {3 * units}), got {bias.shape}")
    input_bias, recurrent_bias = _blocks(bias[0], 3), _blocks(bias[1], 3)
    params = {}
    for k, (gate, w, u) in enumerate(zip(GRU_GATES, _blocks(kernel, 3), _blocks(recurrent, 3))):
        params[f"W_{gate}"], params[f"U_{gate}"] = w, u
        if gate == "n":  # the recurrent candidate bias is gated by r: it must stay apart
            params["b_n"], params["b_hn"] = input_bias[k], recurrent_bias[k]
        else:  # both biases sit in the same sum: they merge exactly
            params[f"b_{gate}"] = input_bias[k] + recurrent_bias[k]
    return params


def gru_from_canonical(params: Mapping) -> list[np.ndarray]:
    """``gru`` parameters -> ``[kernel, recurrent_kernel, bias (2, 3H)]`` for ``GRU(reset_after=True).set_weights``.

    The z and r biases go to the input bias row; the recurrent row holds only ``b_hn``.
    """
    names = [f"{k}_{g}" for g in ("r", "z", "n") for k in ("W", "U", "b")] + ["b_hn"]
    p = _check_canonical(params, names, "gru")
    zeros = np.zeros_like(p["b_hn"])
    kernel = np.concatenate([p[f"W_{g}"] for g in GRU_GATES], axis=-1)
    recurrent = np.concatenate([p[f"U_{g}"] for g in GRU_GATES], axis=-1)
    bias = np.stack([np.concatenate([p["b_z"], p["b_r"], p["b_n"]]), np.concatenate([zeros, zeros, p["b_hn"]])])
    return [kernel, recurrent, bias]


# ---------------------------------------------------------------- the original NovoLSTM Keras code


def _original_name(name: str) -> str:
    # "novo_lstm/w_i:0", "layer_normalization/gamma" or "w_i" -> "w_i"
    return re.sub(r":\d+$", "", str(name)).rsplit("/", 1)[-1]


def novolstm_original_to_canonical(weights) -> dict[str, np.ndarray]:
    """The original NovoLSTM Keras code's weights -> ``novolstm_reference`` parameters.

    Args:
        weights: a dict or a list of ``(name, array)`` pairs, e.g.
            ``[(v.name, v.numpy()) for v in layer.weights]``. Names may carry a
            layer path and a ``:0`` suffix (Keras 2); ``gamma`` and ``beta`` are the
            LayerNormalization's.
    """
    pairs = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
    params = {}
    for name, value in pairs:
        short = _original_name(name)
        if short not in ORIGINAL_NOVOLSTM_NAMES:
            raise ConversionError(
                f"original NovoLSTM weights: unexpected weight {name!r}; expected {sorted(ORIGINAL_NOVOLSTM_NAMES)}"
            )
        canonical = ORIGINAL_NOVOLSTM_NAMES[short]
        if canonical in params:
            raise ConversionError(f"original NovoLSTM weights: {short!r} given twice (from {name!r})")
        params[canonical] = np.array(value)
    missing = sorted(k for k, v in ORIGINAL_NOVOLSTM_NAMES.items() if v not in params)
    if missing:
        raise ConversionError(f"original NovoLSTM weights: missing {missing}")
    return dict(_check_canonical(params, list(ORIGINAL_NOVOLSTM_NAMES.values()), "novolstm_reference"))


def novolstm_original_from_canonical(params: Mapping) -> dict[str, np.ndarray]:
    """``novolstm_reference`` parameters -> the original code's weights, by its names."""
    p = _check_canonical(params, list(ORIGINAL_NOVOLSTM_NAMES.values()), "novolstm_reference")
    return {original: np.array(p[canonical]) for original, canonical in ORIGINAL_NOVOLSTM_NAMES.items()}
