"""JAX cells of the built-in specs, by the specs' class names: pure functions over parameter dicts.

``NovoLSTMCell(units)``, ``LSTMCell``, ``GRUCell``, ``PeepholeLSTMCell``,
``NovoLSTMReferenceCell``: ``init``, ``step``, ``sequence`` and ``bidirectional`` as
documented in docs/jax.md; the Flax modules are in ``novolstm.flax``. Importing this
module imports jax; each class is generated on first use and is the very class
``novolstm.get_cell("jax", spec)`` returns.

Examples:
    >>> import jax.numpy as jnp
    >>> from novolstm.jax import LSTMCell
    >>> cell = LSTMCell(4)
    >>> outputs, (h, c) = cell.sequence(cell.init(0, input_size=3), jnp.ones((2, 5, 3)))
    >>> outputs.shape
    (2, 5, 4)
"""

import jax  # noqa: F401 - importing novolstm.jax imports jax, as documented

from novolstm.generated import builtin_classes, public_class

_CLASSES = builtin_classes("jax", ("Cell",))
__all__ = sorted(_CLASSES)


def __getattr__(name):
    return public_class("jax", _CLASSES, name, globals())


def __dir__():
    return sorted(set(globals()) | set(__all__))
