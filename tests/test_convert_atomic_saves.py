"""Saves are atomic: a save that fails or is killed half-way leaves the previous checkpoint whole and
no temporary behind; concurrent saves to one path (threads and processes) end with one complete,
consistent file. Also: a checkpoint of a user's spec carries the spec's text, never a path, and
the converter modules are attributes of ``novolstm.convert`` without importing any framework."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import novolstm
from novolstm.checkpoint import CheckpointError
from novolstm.convert import safe_io

UNITS = 64  # about 1 MB a file
KILLED_UNITS = 128  # about 5 MB: writing it takes most of a save's time, so a kill lands mid-write


def params(seed: int, units: int = UNITS) -> dict:
    """Weights whose every value says which save wrote them."""
    return {
        k: np.full_like(v, seed, dtype=np.float32)
        for k, v in novolstm.init_params("lstm", 4 * units, units, seed=0).items()
    }


def written_by(path) -> int:
    loaded, _ = novolstm.load(path, spec="lstm")
    seeds = {float(v.flat[0]) for v in loaded.values()} | {float(np.unique(v)[0]) for v in loaded.values()}
    assert len(seeds) == 1 and all(len(np.unique(v)) == 1 for v in loaded.values()), "a file mixing two saves"
    return int(seeds.pop())


def leftovers(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def test_a_failing_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    novolstm.save(params(1), path, spec="lstm")
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safe_io.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        novolstm.save(params(2), path, spec="lstm")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_a_failing_replace_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    novolstm.save(params(1), path, spec="lstm")

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(safe_io.os, "replace", refuse)
    with pytest.raises(PermissionError):
        novolstm.save(params(2), path, spec="lstm")
    monkeypatch.undo()
    assert written_by(path) == 1
    assert leftovers(tmp_path) == []


_SAVER = textwrap.dedent("""
    import sys, time, numpy as np, novolstm
    from novolstm.convert import safe_io
    path, seed = sys.argv[1], int(sys.argv[2])
    base = novolstm.init_params("lstm", 4 * {units}, {units}, seed=0)

    def stall(src, dst):  # the bytes are on disk under the temporary name; the target is untouched
        print("mid-save", flush=True)
        time.sleep(600)

    safe_io.os.replace = stall
    novolstm.save({{k: np.full_like(v, seed, dtype=np.float32) for k, v in base.items()}}, path, spec="lstm")
""")


def test_a_killed_save_leaves_the_previous_file_and_its_temporary_is_swept(tmp_path):
    """SIGKILL to a process stopped mid-save (its temporary written, the rename not done; the
    child's os.replace waits, so the kill lands there every time rather than by a timing race):
    the file still loads whole and unchanged; the temporary the killed process could not remove
    goes at the next save to that path."""
    path = tmp_path / "c.safetensors"
    novolstm.save(params(1, KILLED_UNITS), path, spec="lstm")
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVER.format(units=KILLED_UNITS), str(path), "2"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=tmp_path,  # away from the source tree, whose novolstm/ would shadow the installed package
        )
        try:
            assert proc.stdout.readline().strip() == "mid-save"
            assert leftovers(tmp_path), "the stalled save has no temporary on disk"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        assert written_by(path) == 1
    novolstm.save(params(3, KILLED_UNITS), path, spec="lstm")  # sweeps what the killed processes left
    assert written_by(path) == 3
    assert leftovers(tmp_path) == []


def test_concurrent_saves_from_threads_end_with_one_whole_file(tmp_path):
    path = tmp_path / "c.safetensors"
    errors = []

    def save(seed):
        try:
            for _ in range(5):
                novolstm.save(params(seed, 32), path, spec="lstm")
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(seed,)) for seed in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert written_by(path) in range(1, 7)
    assert leftovers(tmp_path) == []


def test_concurrent_saves_from_processes_end_with_one_whole_file(tmp_path):
    path = tmp_path / "c.safetensors"
    code = textwrap.dedent(f"""
        import sys, numpy as np, novolstm
        seed = int(sys.argv[1])
        base = novolstm.init_params("lstm", {4 * UNITS}, {UNITS}, seed=0)
        for _ in range(5):
            novolstm.save({{k: np.full_like(v, seed, dtype=np.float32) for k, v in base.items()}}, sys.argv[2], spec="lstm")
    """)
    # cwd: away from the source tree, whose novolstm/ would shadow the installed package.
    procs = [subprocess.Popen([sys.executable, "-c", code, str(seed), str(path)], cwd=tmp_path) for seed in range(1, 4)]
    assert [p.wait() for p in procs] == [0] * 3
    assert written_by(path) in range(1, 4)
    assert leftovers(tmp_path) == []


def test_every_writer_is_atomic(tmp_path, monkeypatch):
    """The torch, ONNX-free writers share safe_io.atomic_write: a failing write keeps the old file."""
    from novolstm.convert import files

    layers = {"l0": novolstm.init_params("lstm", 2, 3, seed=0)}
    for fmt in ("canonical", "torch"):
        path = tmp_path / f"w.{fmt}"
        files.write(layers, path, fmt, "lstm")
        before = path.read_bytes()
        monkeypatch.setattr(safe_io.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
        with pytest.raises(OSError):
            files.write({"l0": novolstm.init_params("lstm", 2, 3, seed=1)}, path, fmt, "lstm")
        monkeypatch.undo()
        assert path.read_bytes() == before, fmt
    assert leftovers(tmp_path) == []


def test_a_user_spec_travels_as_text_and_loads_without_its_file(tmp_path):
    spec = novolstm.load_spec(os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "cifg.toml"))
    p = novolstm.init_params(spec, 2, 3, seed=0)
    novolstm.save(p, tmp_path / "c.safetensors", spec=spec)
    loaded, meta = novolstm.load(tmp_path / "c.safetensors")  # no spec given: the embedded text is the spec
    assert meta["spec"] == spec.name and novolstm.loads_spec(meta["spec_toml"]).hash == spec.hash
    assert all(np.array_equal(loaded[k], p[k]) for k in p)
    builtin = novolstm.init_params("lstm", 2, 3, seed=0)
    novolstm.save(builtin, tmp_path / "b.safetensors", spec="lstm")
    assert "spec_toml" not in novolstm.load(tmp_path / "b.safetensors")[1]


def test_a_tampered_embedded_spec_is_refused_by_its_hash(tmp_path):
    from novolstm.checkpoint import safetensors_bytes

    p = novolstm.init_params("lstm", 2, 3, seed=0)
    novolstm.save(p, tmp_path / "c.safetensors", spec="lstm")
    _, meta = novolstm.load(tmp_path / "c.safetensors")
    gru = novolstm.load_spec("gru")
    forged = dict(meta, spec_toml=gru.dumps())  # another cell's text under this file's hash
    (tmp_path / "f.safetensors").write_bytes(safetensors_bytes(p, forged))
    with pytest.raises(CheckpointError, match="the cells differ"):
        novolstm.load(tmp_path / "f.safetensors")


def test_converter_modules_are_attributes_without_importing_a_framework(tmp_path):
    code = textwrap.dedent("""
        import sys, novolstm
        mods = [novolstm.convert.torch, novolstm.convert.keras, novolstm.convert.flax, novolstm.convert.onnx, novolstm.convert.files]
        assert [m.__name__ for m in mods] == ["novolstm.convert." + n for n in ("torch", "keras", "flax", "onnx", "files")]
        assert callable(novolstm.convert.torch.from_torch) and callable(novolstm.convert.files.convert)
        loaded = sorted(m for m in ("torch", "tensorflow", "keras", "jax", "flax", "onnx", "onnxruntime", "h5py") if m in sys.modules)
        print(loaded)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.strip() == "[]"
