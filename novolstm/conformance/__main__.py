"""``python -m novolstm.conformance [FOLDER]``: write the golden vectors of every built-in cell
(default ``spec/golden``, run from the repository root)."""

import sys
from pathlib import Path

from .golden import write_golden

if __name__ == "__main__":  # pragma: no cover - the script that writes spec/golden/
    write_golden(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("spec/golden"))
