"""Side-by-side timing: interleaved repeats, warm-up, medians, ratios.

These machines are shared and noisy, so nothing here is a pass/fail test: callers
compare ratios of candidates measured in the same run, interleaved A, B, A, B so
that drift affects all of them alike.

Examples:
    >>> times = compare({"sum": lambda: sum(range(1000)), "loop": lambda: [i for i in range(1000)]}, repeats=3)
    >>> sorted(times)
    ['loop', 'sum']
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable


def compare(
    candidates: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 1, seed: int = 0
) -> dict[str, float]:
    """Median seconds per call of each candidate, measured interleaved.

    Each repeat runs every candidate once, in an order shuffled afresh per repeat (from
    ``seed``, so a run is reproducible): a candidate that runs right after one that
    leaves caches cold or threads spinning would otherwise pay for it in every repeat.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    order = list(candidates)
    shuffle = random.Random(seed).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            start = time.perf_counter()
            candidates[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def ratio_table(times: dict[str, float], pairs: list[tuple[str, str, float | None]]) -> str:
    """Rows ``numerator / denominator = ratio (target)`` for the given pairs."""
    lines = [f"{name:<40} {1e3 * t:9.2f} ms" for name, t in times.items()]
    lines.append("")
    for num, den, goal in pairs:
        ratio = times[num] / times[den]
        verdict = "" if goal is None else f"  target <= {goal}: {'met' if ratio <= goal else 'MISSED'}"
        lines.append(f"{num} / {den} = {ratio:.3f}{verdict}")
    return "\n".join(lines)
