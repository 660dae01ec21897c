"""Weight converters: every framework layout to and from the canonical parameters.

Porting is a hub: each module here converts one framework's native layout to the
canonical one (one named tensor per projection, no gate order) and back, so N
converters give N x N paths. Converters work on NumPy arrays and import no
framework. A conversion that would lose information refuses with a clear error
unless the caller asks for the lossy form explicitly.
"""


class ConversionError(ValueError):
    """Weights that the target layout cannot represent, or that are not what they claim to be."""
