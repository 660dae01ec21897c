"""The benchmark's peak-memory measure measures: a known allocation reads as its size, a
call that allocates nothing reads near zero, and an earlier, larger peak does not leak
into a later measurement (the high-water mark is reset). About correctness, not timing."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from novolstm.bench.memory import peak_rss_bytes, peak_traced_bytes, unavailable_reason

MiB = 2**20
#: The kernel batches its resident-set counters per thread (a few hundred KiB of lag),
#: so a measured peak may read a little under the pages actually touched.
SLACK = 2 * MiB

linux_only = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


def _touch(mib: int):
    return np.ones(mib * MiB // 8)  # np.ones writes every page, so all of them are resident


@linux_only
def test_a_200_mib_array_reads_as_200_mib():
    grown = peak_rss_bytes(lambda: _touch(200))
    # Not less than the array (every page was written), and not more than the array plus
    # the interpreter's few MiB of incidental growth.
    assert 200 * MiB - SLACK <= grown < 216 * MiB, grown / MiB


@linux_only
def test_the_peak_counts_memory_freed_before_the_call_returns():
    def allocate_and_free():
        a = _touch(150)
        del a
        return None

    assert peak_rss_bytes(allocate_and_free) >= 150 * MiB - SLACK


@linux_only
def test_an_earlier_larger_peak_is_reset():
    big = _touch(300)
    del big
    grown = peak_rss_bytes(lambda: _touch(50))
    assert 50 * MiB - SLACK <= grown < 66 * MiB, grown / MiB
    assert peak_rss_bytes(lambda: None) < 16 * MiB


def test_off_linux_the_measure_says_why(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert "Linux" in unavailable_reason()
    assert peak_rss_bytes(lambda: _touch(1)) is None


def test_tracemalloc_sees_numpy_buffers():
    assert 40 * MiB <= peak_traced_bytes(lambda: _touch(40)) < 41 * MiB
