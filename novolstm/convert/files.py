"""Weight files in every supported format, read to and written from canonical parameters.

The canonical form here is always per layer: ``{"l0": {...}, "l0_reverse": {...},
"l1": ...}``, one canonical dict per cell of a (possibly stacked, possibly
bidirectional) layer. A file format is a pair of functions in ``FORMATS``.

Formats:
    canonical: novolstm's safetensors checkpoint (``novolstm.checkpoint``).
    torch: a torch state dict saved as safetensors
        (``safetensors.torch.save_file(module.state_dict(), path)``), or a ``.pt`` /
        ``.pth`` file of ``torch.save(module.state_dict())`` read with
        ``torch.load(weights_only=True)`` (no code is ever unpickled): nn.LSTM, nn.LSTMCell,
        nn.GRU, nn.GRUCell, alone or inside a whole model's state dict (``prefix`` picks
        them out). Layouts ``bias`` (default) and ``no_bias`` (a module built with
        ``bias=False``). Written as safetensors.
    onnx: an ONNX model with ``LSTM`` nodes (``GRU`` nodes with ``linear_before_reset=1``
        for the ``gru`` spec): one per layer, in the order they feed each other (what
        ``torch.onnx.export`` writes for ``num_layers=2``), each forward, reverse or
        bidirectional.
    keras: a Keras 3 ``.weights.h5`` (``model.save_weights``) or ``.keras`` archive of
        LSTM / GRU / Bidirectional layers, or a Keras 2 ``.h5`` (whose hard-sigmoid LSTMs
        read as ``keras2_lstm``; ``novolstm.convert.keras_files``).
    flax: ``flax.serialization.to_bytes`` of a linen or nnx cell's parameters, the
        ``layout`` option naming (or, reading, detected as) the cell
        (``novolstm.convert.flax_files``).
"""

from __future__ import annotations

import re

import numpy as np

from novolstm.convert import LOSSY_FORMS, ConversionError, drop

LAYER_KEY = re.compile(r"^l(\d{1,6})(_reverse)?$")


class ReverseOnly(ConversionError):
    """Layers that run only backwards in time (ONNX ``direction="reverse"``): a format without them refuses."""


def layered(params: dict) -> dict:
    """One canonical dict -> ``{"l0": it}``; a per-layer dict is returned as it is."""
    if params and all(isinstance(v, dict) for v in params.values()):
        return params
    return {"l0": params}


def structure(layers: dict, reverse_only_ok: bool = False) -> tuple[int, bool]:
    """(number of layers, bidirectional) of a per-layer dict, checking the keys are complete.

    Layers ``l0 .. l<n-1>``, each with ``l<k>_reverse`` when bidirectional. Layers that
    are all ``l<k>_reverse`` alone run only backwards in time: refused (``ReverseOnly``)
    unless ``reverse_only_ok``, and then reported as not bidirectional.
    """
    keys = sorted(layers)
    matches = [m for m in map(LAYER_KEY.match, keys) if m]
    if not keys or len(matches) != len(keys):
        raise ConversionError(f"layer keys {keys[:10]}: expected 'l0', 'l0_reverse', 'l1', ...")
    forward = {int(m.group(1)) for m in matches if not m.group(2)}
    reverse = {int(m.group(1)) for m in matches if m.group(2)}
    if reverse and not forward:
        if not reverse_only_ok:
            raise ReverseOnly(
                "these layers run only backwards in time (ONNX direction='reverse'); the target holds forward and "
                "bidirectional layers only: convert to ONNX, or export a bidirectional or forward model"
            )
        forward, reverse = reverse, set()
    count = len(forward)
    if reverse and reverse != forward and forward == set(range(count)):
        raise ConversionError(
            f"layer keys {keys[:10]}: some layers are bidirectional and some are not; a stack is one or the other"
        )
    if forward != set(range(count)) or (reverse and reverse != forward):
        expected = [f"l{n}{s}" for n in range(count) for s in (("", "_reverse") if reverse else ("",))]
        raise ConversionError(f"layer keys {keys[:10]}: expected {expected[:10]}")
    check_stack(layers, count, bool(reverse))
    return count, bool(reverse)


def check_stack(layers: dict, count: int, bidirectional: bool) -> None:
    """Each layer takes as input what the one below outputs: its units, twice when bidirectional."""

    def sizes(params):
        first = next((k for k in sorted(params) if k.startswith("W_")), None)
        recurrent = next((k for k in sorted(params) if k.startswith("U_")), None)
        if first is None or recurrent is None or len(np.shape(params[first])) != 2:
            raise ConversionError(
                f"a layer without an input kernel W_* and a recurrent kernel U_*: {sorted(params)[:10]}"
            )
        return np.shape(params[first])[0], np.shape(params[recurrent])[-1]

    keys = [
        k for n in range(count) for k in ([f"l{n}", f"l{n}_reverse"] if bidirectional else [f"l{n}"]) if k in layers
    ]
    keys = keys or sorted(layers)
    shapes = {k: sizes(layers[k]) for k in keys}
    for n in range(count):
        here = [shapes[k] for k in (f"l{n}", f"l{n}_reverse") if k in shapes]
        if len(set(here)) > 1:
            raise ConversionError(f"layer {n}: the two directions have different sizes (input, units) {here}")
        if n and here:
            below = [shapes[k] for k in (f"l{n - 1}", f"l{n - 1}_reverse") if k in shapes][0]
            wanted = below[1] * (2 if bidirectional else 1)
            if here[0][0] != wanted:
                merged = bidirectional and here[0][0] == below[1]
                raise ConversionError(
                    f"layer {n} takes inputs of size {here[0][0]}, but layer {n - 1} outputs {wanted}"
                    f"{' (both directions concatenated)' if bidirectional else ''}: not one stack"
                    + (
                        "; it reads the two directions merged otherwise (a Keras Bidirectional merge_mode 'sum', "
                        "'ave' or 'mul'), which no canonical layout computes"
                        if merged
                        else ""
                    )
                )


def _read_canonical(path, cell):
    from novolstm.checkpoint import load

    params, meta = load(path, spec=cell)
    return layered(params)


def _write_canonical(layers, path, cell):
    from novolstm.checkpoint import save

    count, bidirectional = structure(layers)  # a reverse-only layer has no canonical checkpoint form
    save(
        layers["l0"] if (count, bidirectional) == (1, False) else layers,
        path,
        spec=cell,
        layers=count,
        bidirectional=bidirectional,
    )


def _read_torch(path, cell, layout=None, prefix=""):
    from novolstm.convert.torch import from_torch, read_state_dict

    state = read_state_dict(path)
    layers = layered(from_torch(state, cell=cell, prefix=prefix or ""))
    if layout is not None:
        has_bias = any(k.startswith(prefix or "") and k[len(prefix or "") :].startswith("bias_") for k in state)
        if has_bias != _torch_bias(layout):
            raise ConversionError(
                f"{path}: torch layout {layout!r}, but the state dict {'has' if has_bias else 'has no'} biases"
            )
    return layers


#: torch's layouts: a module with biases (the default), or one built with ``bias=False``
TORCH_LAYOUTS = ("bias", "no_bias")


def _torch_bias(layout) -> bool:
    if layout is not None and layout not in TORCH_LAYOUTS:
        raise ConversionError(
            f"torch layout {layout!r}: expected 'bias' (the default) or 'no_bias' (a module built with bias=False)"
        )
    return layout != "no_bias"


def _write_torch(layers, path, cell, layout=None, lossy=False):
    from novolstm.checkpoint import write_safetensors
    from novolstm.convert.torch import to_torch

    structure(layers)
    write_safetensors(path, to_torch(layers, cell=cell, bias=_torch_bias(layout), lossy=lossy), {"format": "pt"})


def _read_onnx(path, cell):
    from novolstm.convert.onnx import import_gru_layers, import_lstm_layers

    if cell not in HOLDS["onnx"]:
        raise ConversionError(f"an ONNX LSTM node holds an lstm or peephole_lstm, a GRU node a gru; not {cell!r}")
    if cell == "gru":
        return import_gru_layers(path)
    layers = import_lstm_layers(path)
    want_peepholes = cell == "peephole_lstm"
    for key, params in layers.items():
        if ("p_i" in params) != want_peepholes:
            if want_peepholes:  # no P input: the peepholes are zero, exactly
                params.update({f"p_{g}": np.zeros_like(params["b_i"]) for g in ("i", "f", "o")})
            else:
                layers[key] = drop(
                    params,
                    ["p_i", "p_f", "p_o"],
                    False,
                    "the ONNX LSTM node has peepholes (input P), which spec 'lstm' has not",
                )
    return layers


def _write_onnx(layers, path, cell):
    from novolstm.convert.onnx import lstm_stack_model
    from novolstm.convert.safe_io import atomic_write

    count, bidirectional = structure(layers, reverse_only_ok=True)
    reverse_only = not bidirectional and "l0" not in layers
    stack = []
    for n in range(count):
        if reverse_only:
            stack.append(("reverse", [layers[f"l{n}_reverse"]]))
        elif bidirectional:
            stack.append(("bidirectional", [layers[f"l{n}"], layers[f"l{n}_reverse"]]))
        else:
            stack.append(("forward", [layers[f"l{n}"]]))
    model = lstm_stack_model(stack, op="GRU" if cell == "gru" else "LSTM")
    atomic_write(path, model.SerializeToString())


def _read_keras(path, cell):
    from novolstm.convert.keras_files import read_keras

    return read_keras(path, cell)


def _write_keras(layers, path, cell):
    from novolstm.convert.keras_files import write_keras

    write_keras(layers, path, cell)


def _read_flax(path, cell, layout=None):
    from novolstm.convert.flax_files import read_flax

    return read_flax(path, cell, layout)


def _write_flax(layers, path, cell, layout=None, lossy=False):
    from novolstm.convert.flax_files import write_flax

    write_flax(layers, path, cell, layout, lossy=lossy)


#: format name -> (read(path, cell) -> per-layer canonical, write(per-layer canonical, path, cell))
FORMATS = {
    "canonical": (_read_canonical, _write_canonical),
    "torch": (_read_torch, _write_torch),
    "onnx": (_read_onnx, _write_onnx),
    "keras": (_read_keras, _write_keras),
    "flax": (_read_flax, _write_flax),
}
#: formats whose reader and writer take a ``layout`` (which of the framework's cells or forms)
LAYOUT_FORMATS = ("flax", "torch")
#: formats whose reader takes a ``prefix`` (the keys of the recurrent layer in a whole model's weights)
PREFIX_FORMATS = ("torch",)
#: formats whose writer can drop what it cannot hold when asked (``lossy``)
LOSSY_WRITERS = ("flax", "torch")


def _options(fmt: str, layout, prefix=None):
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; expected one of {sorted(FORMATS)}")
    options = {}
    if layout is not None:
        if fmt not in LAYOUT_FORMATS:
            raise ConversionError(f"a layout ({layout!r}) applies to the formats {list(LAYOUT_FORMATS)}, not {fmt!r}")
        options["layout"] = layout
    if prefix:
        if fmt not in PREFIX_FORMATS:
            raise ConversionError(f"a prefix ({prefix!r}) applies to the formats {list(PREFIX_FORMATS)}, not {fmt!r}")
        options["prefix"] = prefix
    return options


def read(path, fmt: str, cell: str, layout: str | None = None, prefix: str | None = None) -> dict:
    """Per-layer canonical weights of spec ``cell`` from ``path`` in format ``fmt``, every layer checked.

    ``prefix`` (torch): read only the keys that start with it, e.g. ``"encoder.rnn."`` in a
    whole model's state dict.
    """
    options = _options(fmt, layout, prefix)
    layers = FORMATS[fmt][0](path, cell, **options)
    structure(layers, reverse_only_ok=True)
    return layers


#: format -> the specs its layouts hold (canonical holds every spec)
HOLDS = {
    "torch": ("lstm", "gru"),
    "onnx": ("lstm", "peephole_lstm", "gru"),
    "keras": ("lstm", "gru"),
    "flax": ("lstm", "gru"),
}
#: format -> where a spec it cannot hold can go instead
ELSEWHERE = {
    "onnx": "novolstm.export_onnx(spec, params) exports any cell as a standard ONNX graph (a Scan); "
    "the LSTM and GRU operators compute only lstm, peephole_lstm and gru",
    "keras": "Keras 3's layers compute only lstm and gru (keras2_lstm is read from Keras 2 .h5 files, not written): "
    "write the canonical format and load it into novolstm.get_layer('keras', spec)",
}


def write(layers: dict, path, fmt: str, cell: str, layout: str | None = None, lossy: bool = False) -> None:
    """Write per-layer canonical weights of spec ``cell`` in ``fmt``.

    A format without a layout for ``cell`` but with one for its reduced form (a peephole
    LSTM into torch: an LSTM without peepholes) takes the weights when the extra
    parameters are zero, or when ``lossy`` asks to drop them (see ``novolstm.convert.drop``).
    Any other spec the format cannot hold is refused by name; nothing is written.
    """
    options = _options(fmt, layout)
    layers = layered(layers)
    holds = HOLDS.get(fmt, (cell,))
    if cell not in holds:
        if LOSSY_FORMS.get(cell, (None,))[0] not in holds:
            hint = ELSEWHERE.get(fmt, "convert to the canonical format, which holds every spec")
            raise ConversionError(f"the {fmt} format holds the specs {list(holds)}, not {cell!r}: {hint}")
        target, extra = LOSSY_FORMS[cell]
        why = f"the {fmt} format holds {list(holds)}, not {cell!r}: writing {target!r}"
        layers = {key: drop(params, extra, lossy, why) for key, params in layers.items()}
        cell = target
    _check_params(layers, cell)
    if fmt in LOSSY_WRITERS:
        options["lossy"] = lossy
    FORMATS[fmt][1](layers, path, cell, **options)


def _check_params(layers: dict, cell: str) -> None:
    """Every layer holds exactly the parameters of spec ``cell``, in the shapes it needs."""
    from novolstm.spec_loader import load_spec

    spec = load_spec(cell)
    for key, params in layers.items():
        missing, extra = sorted(set(spec.param_names) - set(params)), sorted(set(params) - set(spec.param_names))
        if missing or extra:
            raise ConversionError(f"{key}: parameters of spec {spec.name!r}: missing {missing}, unexpected {extra}")
        input_size = next(np.shape(params[p.name])[0] for p in spec.params if p.shape[0] == "input")
        units = np.shape(params[spec.params[0].name])[-1]
        for name, shape in spec.parameter_shapes(input_size, units).items():
            if np.shape(params[name]) != shape:
                raise ConversionError(f"{key}: {name} has shape {np.shape(params[name])}, expected {shape}")


def convert(
    source,
    destination,
    src_fmt: str,
    dst_fmt: str,
    cell: str,
    src_layout=None,
    dst_layout=None,
    lossy: bool = False,
    prefix: str | None = None,
) -> dict:
    """Read ``source`` in ``src_fmt``, write ``destination`` in ``dst_fmt``, through the canonical layout.

    Args:
        source: the weight file to read.
        destination: the weight file to write (atomically: a failed write leaves it as it was).
        src_fmt: the format of ``source``, one of ``FORMATS``.
        dst_fmt: the format to write, one of ``FORMATS``.
        cell: the spec the weights are for (``lstm``, ``gru``, ...).
        src_layout: flax: the source cell's layout (default: detected from the file);
            torch: ``bias`` or ``no_bias``, checked against the file.
        dst_layout: flax: the written cell's layout; torch: ``no_bias`` for a module built
            with ``bias=False``.
        lossy: drop what the target cannot hold (with a ``LossyConversionWarning``)
            instead of refusing.
        prefix: torch: read only the keys starting with it (a whole model's state dict).

    Returns:
        The canonical weights, one dict per layer and direction (``l0``, ``l0_reverse``, ...).

    Raises:
        ConversionError: a file of the wrong kind or a hostile one, weights the target cannot
            hold, or an unknown format or layout.
    """
    _options(dst_fmt, dst_layout)  # a bad target option fails before the source is read
    layers = read(source, src_fmt, cell, src_layout, prefix)
    write(layers, destination, dst_fmt, cell, dst_layout, lossy)
    return layers
