"""PyTorch classes of the built-in specs, by the specs' class names.

``NovoLSTM``, ``LSTM``, ``GRU``, ``PeepholeLSTM``, ``NovoLSTMReference`` take
``torch.nn.LSTM``'s arguments; ``NovoLSTMCell``, ``LSTMCell``, ... take
``torch.nn.LSTMCell``'s (see docs/torch.md). Importing this module imports torch; each
class is generated on first use and is the very class ``novolstm.get_layer("torch", spec)``
and ``novolstm.get_cell("torch", spec)`` return. Pickles (``torch.save``) name the
classes here, so they load wherever novolstm is installed.

Examples:
    >>> from novolstm.torch import NovoLSTM
    >>> NovoLSTM(8, 16, batch_first=True)
    NovoLSTM(
      8, 16, batch_first=True
      (cells): ModuleDict(
        (l0): NovoLSTMCell(8, 16)
      )
    )
"""

import torch  # noqa: F401 - importing novolstm.torch imports torch, as documented

from novolstm.generated import builtin_classes, public_class

_CLASSES = builtin_classes("torch", ("Layer", "Cell"))
__all__ = sorted(_CLASSES)


def __getattr__(name):
    return public_class("torch", _CLASSES, name, globals())


def __dir__():
    return sorted(set(globals()) | set(__all__))
