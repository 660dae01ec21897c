"""A one-line progress bar on standard error (no dependency)."""

from __future__ import annotations

import sys


def progress_bar(label: str, total: int, quiet: bool = False):
    """``show(done, note="")`` redraws ``label [####....] done/total note``; a newline at the end.

    Examples:
        >>> show = progress_bar("demo", 2, quiet=True)
        >>> show(1, "loss 0.5")
    """

    def show(done: int, note: str = ""):
        if quiet:
            return
        filled = int(30 * done / max(1, total))
        sys.stderr.write(f"\r{label:<32} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {note}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show
