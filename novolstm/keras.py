"""Keras 3 classes of the built-in specs, by the specs' class names, registered for serialization.

``NovoLSTM``, ``LSTM``, ``GRU``, ``PeepholeLSTM``, ``NovoLSTMReference`` are layers over
sequences, as ``keras.layers.LSTM``; ``NovoLSTMCell``, ``LSTMCell``, ... are cells for
``keras.layers.RNN``, as ``keras.layers.LSTMCell`` (see docs/keras.md). Each is the very class
``novolstm.get_layer("keras", spec)`` / ``novolstm.get_cell("keras", spec)`` returns.

Importing this module imports keras and registers every class under ``novolstm>`` + its
name: Keras resolves a saved model's custom classes only from its registry, so
``import novolstm.keras`` before ``keras.models.load_model`` is all a fresh process needs.
The cells and layers of specs that are not built in save the spec's text in their config
and register as ``novolstm>SpecCell`` / ``novolstm>SpecLayer``, which regenerate them from it.

Examples:
    >>> import numpy as np
    >>> from novolstm.keras import GRU
    >>> layer = GRU(4, seed=0, return_sequences=True)
    >>> tuple(layer(np.ones((2, 5, 3), "float32")).shape)
    (2, 5, 4)
"""

import keras

from novolstm.generated import builtin_classes, public_class

_CLASSES = builtin_classes("keras", ("Layer", "Cell"))
__all__ = sorted(_CLASSES)

# Generated and registered now, not on first use: a .keras file names them only by registered name.
for _name, (_spec_name, _attr) in _CLASSES.items():
    _cls = public_class("keras", _CLASSES, _name, globals())
    # Files saved before the classes had names registered them as "novolstm><spec>.Cell" (".Layer"):
    # that name loads them too, and the class's own name (registered last) is what new files carry.
    keras.saving.register_keras_serializable("novolstm", f"{_spec_name}.{_attr}")(_cls)
    keras.saving.register_keras_serializable("novolstm", _name)(_cls)


class _FromSpecText:
    """Rebuilds a cell or layer of a spec that is not built in from the spec text in its config."""

    def __init__(self, attr):
        self.attr = attr

    def from_config(self, config):
        from novolstm.api import load_generated
        from novolstm.spec_loader import loads_spec

        if not isinstance(config.get("spec"), str):
            raise ValueError(f"novolstm>Spec{self.attr}: expected the spec's TOML text under 'spec' in the config")
        spec = loads_spec(config["spec"])
        if spec.hash != config.get("spec_hash"):
            raise ValueError(
                f"novolstm>Spec{self.attr}: the config's spec {spec.name!r} has sha256 {spec.hash[:12]}..., "
                f"but spec_hash says {str(config.get('spec_hash'))[:12]}...: the config was altered; not loaded"
            )
        return getattr(load_generated(spec, "keras"), self.attr).from_config(dict(config))


_LOADERS = {attr: _FromSpecText(attr) for attr in ("Cell", "Layer")}
for _attr, _loader in _LOADERS.items():
    keras.saving.register_keras_serializable("novolstm", f"Spec{_attr}")(_loader)


def adopt_spec_classes(module, spec):
    """Register the classes of a spec that is not built in as novolstm>SpecCell / novolstm>SpecLayer.

    Called by novolstm.generated.adopt for each such generated Keras module: the classes carry
    the spec's text in their config, and the loaders above regenerate them from it.
    """
    for attr, loader in _LOADERS.items():
        cls = getattr(module, attr)
        if attr == "Cell":
            cls.spec_text = spec.dumps()
        keras.saving.register_keras_serializable("novolstm", f"Spec{attr}")(cls)  # the name its configs carry
        keras.saving.register_keras_serializable("novolstm", f"Spec{attr}")(loader)  # what loads that name
    # The generated module registered its classes under their class names too: a built-in
    # class of the same name keeps its registration.
    for name in (spec.class_name, spec.class_name + "Cell"):
        if name in _CLASSES:
            keras.saving.register_keras_serializable("novolstm", name)(globals()[name])
