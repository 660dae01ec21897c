"""Every ordered pair of frameworks' native layers: weights ported from X to Y through files and
the canonical hub give the same outputs and final state (collected in the all-backends env).

X's layer holds probe weights (distinct per gate, non-zero distinct biases); X's framework
saves them in its own format (torch safetensors state dict, Keras .keras archive, Flax
to_bytes, the ONNX model, a canonical checkpoint); novolstm converts that file to Y's
format; Y's framework loads it; both run the same input from the same non-zero state,
and each is held to the float64 reference's tolerance, as is their difference.
"""

from __future__ import annotations

import itertools

import pytest

from novolstm.convert.native import NATIVES
from novolstm.convert.verify import verify_port

STEPS = 64  # as verify-port's default: rounding error has room to grow through the recurrence

LSTM = ["torch", "keras", "flax", "flax-lstmcell", "onnx", "numpy"]
GRU = [
    name for name in LSTM if "gru" in NATIVES[name].cells
]  # reset_after-style GRUs: torch, Keras, Flax GRUCell, ONNX
PAIRS = [("lstm", a, b) for a, b in itertools.permutations(LSTM, 2)] + [
    ("gru", a, b) for a, b in itertools.permutations(GRU, 2)
]
DEVIATIONS: dict = {}


@pytest.mark.parametrize("cell,source,target", PAIRS, ids=[f"{c}-{a}-to-{b}" for c, a, b in PAIRS])
def test_all_ports_agree(cell, source, target, record_property):
    report = verify_port(source, target, cell, steps=STEPS, seed=PAIRS.index((cell, source, target)))
    worst = max(float(report.step_error.max()), report.state_error)
    DEVIATIONS[(cell, source, target)] = (worst, report.source_deviation, report.target_deviation)
    record_property("max_abs_difference", worst)
    assert report.passed, report.format()


def test_all_ports_cover_every_pair():
    assert len(PAIRS) == 6 * 5 + 5 * 4
    assert set(GRU) == {"torch", "keras", "flax", "onnx", "numpy"}


@pytest.fixture(scope="module", autouse=True)
def print_deviations():
    yield
    if DEVIATIONS:  # shown with pytest -s: the figures docs/porting.md quotes
        for (cell, a, b), (worst, da, db) in sorted(DEVIATIONS.items()):
            print(f"\n{cell:5} {a:>14} -> {b:<14} max|A-B| {worst:.2e}  A-ref {da:.2e}  B-ref {db:.2e}", end="")
