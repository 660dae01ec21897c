"""Redraw every plot the docs publish from the results files beside them, without measuring again.

    python benchmarks/replot.py [--machine TEXT]

docs/benchmarks/<backend>/<shape>/ratios.png from results.json there, and
docs/evaluation/curves.png from docs/evaluation/results.json. --machine names the machine
the benchmarks ran on, for the titles, where results.json does not record it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from novolstm.bench.harness import plot
from novolstm.evaluation import load_results, plot_curves

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machine", default="the project's 2-core machine", help="the machine the benchmarks ran on")
    args = parser.parse_args()
    for results in sorted(DOCS.glob("benchmarks/*/*/results.json")):
        plot(json.loads(results.read_text()), results.with_name("ratios.png"), machine=args.machine)
        print(results.with_name("ratios.png").relative_to(DOCS.parent))
    evaluation = DOCS / "evaluation" / "results.json"
    plot_curves(load_results(evaluation), evaluation.with_name("curves.png"))
    print(evaluation.with_name("curves.png").relative_to(DOCS.parent))


if __name__ == "__main__":
    main()
