"""Weight files in every supported format, read to and written from canonical parameters.

The canonical form here is always per layer: ``{"l0": {...}, "l0_reverse": {...},
"l1": ...}``, one canonical dict per cell of a (possibly stacked, possibly
bidirectional) layer. A file format is a pair of functions in ``FORMATS``.

Formats:
    canonical: novolstm's safetensors checkpoint (``novolstm.checkpoint``).
    torch: a torch state dict saved as safetensors
        (``safetensors.torch.save_file(module.state_dict(), path)``): nn.LSTM,
        nn.LSTMCell, nn.GRU, nn.GRUCell. No pickle, so no ``.pt`` files.
    onnx: an ONNX model with an ``LSTM`` node (one layer; forward or bidirectional).
    keras: a Keras 3 ``.weights.h5`` (``model.save_weights``) or ``.keras`` archive of
        LSTM / GRU / Bidirectional layers (``novolstm.convert.keras_files``).
    flax: ``flax.serialization.to_bytes`` of a linen or nnx cell's parameters, the
        ``layout`` option naming (or, reading, detected as) the cell
        (``novolstm.convert.flax_files``).
"""

from __future__ import annotations

import re

from novolstm.convert import LOSSY_FORMS, ConversionError, drop

LAYER_KEY = re.compile(r"^l(\d+)(_reverse)?$")


def layered(params: dict) -> dict:
    """One canonical dict -> ``{"l0": it}``; a per-layer dict is returned as it is."""
    if params and all(isinstance(v, dict) for v in params.values()):
        return params
    return {"l0": params}


def structure(layers: dict) -> tuple[int, bool]:
    """(number of layers, bidirectional) of a per-layer dict, checking the keys are complete."""
    keys = sorted(layers)
    numbers = [int(m.group(1)) for m in map(LAYER_KEY.match, keys) if m]
    count = 1 + max(numbers) if numbers else 0
    bidirectional = any(k.endswith("_reverse") for k in keys)
    expected = {f"l{n}{s}" for n in range(count) for s in (("", "_reverse") if bidirectional else ("",))}
    if set(keys) != expected:
        raise ConversionError(f"layer keys {keys}: expected {sorted(expected)}")
    return count, bidirectional


def _read_canonical(path, cell):
    from novolstm.checkpoint import load

    params, meta = load(path, spec=cell)
    return layered(params)


def _write_canonical(layers, path, cell):
    from novolstm.checkpoint import save

    count, bidirectional = structure(layers)
    save(
        layers["l0"] if (count, bidirectional) == (1, False) else layers,
        path,
        spec=cell,
        layers=count,
        bidirectional=bidirectional,
    )


def _read_torch(path, cell):
    from novolstm.checkpoint import read_safetensors
    from novolstm.convert.torch import from_torch

    tensors, _ = read_safetensors(path)
    return layered(from_torch(tensors, cell=cell))


def _write_torch(layers, path, cell):
    from novolstm.checkpoint import write_safetensors
    from novolstm.convert.torch import to_torch

    write_safetensors(path, to_torch(layers, cell=cell), {"format": "pt"})


def _read_onnx(path, cell):
    from novolstm.convert.onnx import import_lstm_node

    directions = import_lstm_node(path)
    if cell not in ("lstm", "peephole_lstm"):
        raise ConversionError(f"an ONNX LSTM node holds an lstm or peephole_lstm, not {cell!r}")
    return dict(zip(("l0", "l0_reverse"), directions))


def _write_onnx(layers, path, cell):
    from novolstm.convert.onnx import lstm_operator_model

    count, bidirectional = structure(layers)
    if count != 1:
        raise ConversionError(
            f"the ONNX LSTM operator holds one layer; these weights have {count} (export each layer, or use novolstm.export_onnx)"
        )
    directions = [layers["l0"]] + ([layers["l0_reverse"]] if bidirectional else [])
    model = lstm_operator_model(directions, input_size=directions[0]["W_i"].shape[0])
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString())


def _read_keras(path, cell):
    from novolstm.convert.keras_files import read_keras

    return read_keras(path, cell)


def _write_keras(layers, path, cell):
    from novolstm.convert.keras_files import write_keras

    write_keras(layers, path, cell)


def _read_flax(path, cell, layout=None):
    from novolstm.convert.flax_files import read_flax

    return read_flax(path, cell, layout)


def _write_flax(layers, path, cell, layout=None):
    from novolstm.convert.flax_files import write_flax

    write_flax(layers, path, cell, layout)


#: format name -> (read(path, cell) -> per-layer canonical, write(per-layer canonical, path, cell))
FORMATS = {
    "canonical": (_read_canonical, _write_canonical),
    "torch": (_read_torch, _write_torch),
    "onnx": (_read_onnx, _write_onnx),
    "keras": (_read_keras, _write_keras),
    "flax": (_read_flax, _write_flax),
}
#: formats whose reader and writer take a ``layout`` (which of the framework's cells)
LAYOUT_FORMATS = ("flax",)


def _options(fmt: str, layout):
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; expected one of {sorted(FORMATS)}")
    if layout is None:
        return {}
    if fmt not in LAYOUT_FORMATS:
        raise ConversionError(f"a layout ({layout!r}) applies to the formats {list(LAYOUT_FORMATS)}, not {fmt!r}")
    return {"layout": layout}


def read(path, fmt: str, cell: str, layout: str | None = None) -> dict:
    options = _options(fmt, layout)
    return FORMATS[fmt][0](path, cell, **options)


#: format -> the specs its layouts hold (canonical holds every spec)
HOLDS = {"torch": ("lstm", "gru"), "onnx": ("lstm", "peephole_lstm"), "keras": ("lstm", "gru"), "flax": ("lstm", "gru")}


def write(layers: dict, path, fmt: str, cell: str, layout: str | None = None, lossy: bool = False) -> None:
    """Write per-layer canonical weights of spec ``cell`` in ``fmt``.

    A format without a layout for ``cell`` but with one for its reduced form (a peephole
    LSTM into torch: an LSTM without peepholes) takes the weights when the extra
    parameters are zero, or when ``lossy`` asks to drop them (see ``novolstm.convert.drop``).
    """
    options = _options(fmt, layout)
    layers = layered(layers)
    holds = HOLDS.get(fmt, (cell,))
    if cell not in holds and LOSSY_FORMS.get(cell, (None,))[0] in holds:
        target, extra = LOSSY_FORMS[cell]
        why = f"the {fmt} format holds {list(holds)}, not {cell!r}: writing {target!r}"
        layers = {key: drop(params, extra, lossy, why) for key, params in layers.items()}
        cell = target
    FORMATS[fmt][1](layers, path, cell, **options)


def convert(
    source, destination, src_fmt: str, dst_fmt: str, cell: str, src_layout=None, dst_layout=None, lossy: bool = False
) -> dict:
    """Read ``source`` in ``src_fmt``, write ``destination`` in ``dst_fmt``, through the canonical layout.

    Args:
        source: the weight file to read.
        destination: the weight file to write.
        src_fmt: the format of ``source``, one of ``FORMATS``.
        dst_fmt: the format to write, one of ``FORMATS``.
        cell: the spec the weights are for (``lstm``, ``gru``, ...).
        src_layout: flax only: the source cell's layout (default: detected from the file).
        dst_layout: flax only: the written cell's layout.
        lossy: drop what the target cannot hold (with a ``LossyConversionWarning``)
            instead of refusing.

    Returns:
        The canonical weights, one dict per layer and direction (``l0``, ``l0_reverse``, ...).

    Raises:
        ConversionError: a file of the wrong kind, weights the target cannot hold, or an
            unknown format or layout.
    """
    layers = read(source, src_fmt, cell, src_layout)
    write(layers, destination, dst_fmt, cell, dst_layout, lossy)
    return layers
