"""`import novolstm` must not import any deep-learning framework: backends are
loaded only when asked for. Checked in a fresh interpreter, whether or not the
frameworks are installed. (How long the import takes is a benchmark, not a test.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "onnx", "onnxruntime")

PROBE = f"""
import json, sys
import novolstm
frameworks = {FRAMEWORKS!r}
loaded = sorted(
    name for name in sys.modules
    if name.partition(".")[0] in frameworks
)
print(json.dumps(loaded))
"""


def test_import_novolstm_loads_no_framework(tmp_path):
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,  # not the repository: import the installed package
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"`import novolstm` imported {loaded}"


LAZY_PROBE = """
import sys
import novolstm
assert "numpy" not in sys.modules, "import novolstm loaded numpy"
novolstm.list_specs()  # spec handling needs no numpy either
assert "numpy" not in sys.modules, "list_specs loaded numpy"
novolstm.run  # the first use of a numeric name loads it
assert "numpy" in sys.modules
print("ok")
"""


def test_public_names_load_lazily(tmp_path):
    proc = subprocess.run([sys.executable, "-c", LAZY_PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
