"""Weight converters: every framework layout to and from the canonical parameters.

Porting is a hub: each module here converts one framework's native layout to the
canonical one (one named tensor per projection, no gate order) and back, so N
converters give N x N paths. Converters work on NumPy arrays and import no
framework. A conversion that would lose information refuses with a clear error
unless the caller asks for the lossy form explicitly (``lossy=True``, ``novolstm
convert --lossy``); then it warns with ``LossyConversionWarning``, naming what it
dropped. Dropping parameters that are exactly zero loses nothing and needs no asking.
"""

import importlib
import warnings

import numpy as np

#: the converter modules, importable as attributes (``novolstm.convert.torch``); none imports a framework
SUBMODULES = ("files", "flax", "flax_files", "keras", "keras_files", "native", "onnx", "safe_io", "torch", "verify")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"novolstm.convert.{name}")
    raise AttributeError(f"module 'novolstm.convert' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))


class ConversionError(ValueError):
    """Weights that the target layout cannot represent, or that are not what they claim to be."""


class LossyConversionWarning(UserWarning):
    """A conversion asked to be lossy dropped nonzero parameters; the message names them."""


#: spec -> (the spec a layout without its extra parameters holds, those parameters)
LOSSY_FORMS = {"peephole_lstm": ("lstm", ("p_i", "p_f", "p_o"))}


def drop(params, names, lossy: bool, why: str) -> dict:
    """``params`` without ``names``: refused when one of them is nonzero, unless ``lossy``.

    Args:
        params: canonical name -> array.
        names: the parameters the target layout cannot hold.
        lossy: drop nonzero ones too, with a ``LossyConversionWarning`` naming them.
        why: what the target lacks, for the message.

    Returns:
        ``params`` without ``names``.

    Raises:
        ConversionError: a nonzero parameter among ``names`` and not ``lossy``.

    Examples:
        >>> drop({"W": np.ones(2), "p": np.zeros(2)}, ["p"], lossy=False, why="no peepholes").keys()
        dict_keys(['W'])
        >>> drop({"W": np.ones(2), "p": np.ones(2)}, ["p"], lossy=False, why="no peepholes")
        Traceback (most recent call last):
        ...
        novolstm.convert.ConversionError: no peepholes: dropping ['p'] (largest |value| 1) would change what the weights compute; pass lossy=True (novolstm convert --lossy) to drop them anyway
    """
    dropped = sorted(n for n in names if n in params)
    largest = max((float(np.max(np.abs(params[n]), initial=0.0)) for n in dropped), default=0.0)
    if largest:
        if not lossy:
            raise ConversionError(
                f"{why}: dropping {dropped} (largest |value| {largest:.3g}) would change what the weights compute; "
                "pass lossy=True (novolstm convert --lossy) to drop them anyway"
            )
        warnings.warn(
            f"{why}: dropped {dropped} (largest |value| {largest:.3g}) as asked (lossy=True)",
            LossyConversionWarning,
            stacklevel=3,
        )
    return {k: v for k, v in params.items() if k not in names}
