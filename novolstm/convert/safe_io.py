"""Bounded reads and atomic writes for every weight file novolstm reads or writes.

A weight file comes from anywhere, so a reader takes only what it can check: a
regular file (never a FIFO or a device, which could block or never end), at most a
known number of bytes, and JSON of a bounded nesting depth. A writer never leaves a
half-written file where a good one was: the bytes go to a temporary file in the
target's own directory (unnamed where the system allows it, so a killed process
leaves nothing behind), are flushed to the disk, and replace the target in one
``os.replace``. Concurrent writers to one path each replace it whole: the last one
wins, and nobody ever reads a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat

#: JSON nesting any file of ours needs is 4 (a safetensors header: object, entry, shape list);
#: a Keras config nests layers in layers, so its readers pass their own limit
MAX_JSON_DEPTH = 64


def regular_file_size(path, error: type[Exception]) -> int:
    """The size of ``path``, refused (``error``) unless it is a regular file.

    A FIFO, a socket or a device would block a reader or never end; a directory is no file.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: not a regular file (a FIFO, device, socket or directory); expected a weight file")
    return info.st_size


def read_bytes(path, limit: int, error: type[Exception], what: str = "file") -> bytes:
    """All bytes of the regular file ``path``, refused (``error``) when it is larger than ``limit``."""
    size = regular_file_size(path, error)
    if size > limit:
        raise error(f"{path}: {size} bytes, more than the {limit} a {what} may have")
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:  # grew while we read it
        raise error(f"{path}: more than the {limit} bytes a {what} may have")
    return data


def json_depth_ok(text: str, max_depth: int) -> bool:
    """Whether the brackets of JSON ``text`` nest at most ``max_depth`` deep (strings skipped).

    A linear scan before parsing: json.loads recurses once per level, so a few kilobytes
    of ``[`` would otherwise cost a RecursionError deep inside the parser.

    Args:
        text: JSON text.
        max_depth: the deepest nesting of objects and arrays allowed.

    Returns:
        True when no bracket outside a string opens deeper than ``max_depth``.

    Examples:
        >>> json_depth_ok('{"a": [1, {"b": "[[["}]}', 3), json_depth_ok('[[[[0]]]]', 3)
        (True, False)
    """
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def loads_json(raw: bytes | str, where: str, error: type[Exception], max_depth: int = MAX_JSON_DEPTH):
    """Parse JSON of at most ``max_depth`` nesting levels, with no duplicate keys, or raise ``error``."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not UTF-8 text: {exc}") from None
    if not json_depth_ok(text, max_depth):
        raise error(f"{where}: JSON nested more than {max_depth} levels deep")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as exc:  # JSONDecodeError, or a duplicate key
        raise error(f"{where}: corrupt JSON: {exc}") from None


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` all at once: the old file stays whole until the new one is on disk.

    The bytes go to a temporary file in the same directory, which is flushed and fsynced,
    then moved over ``path`` with ``os.replace``; on any error the temporary is removed.
    A process killed mid-write cannot remove its own temporary: its name carries the
    host and process id, and the next save to the same path removes it once that
    process is gone. Where the file system can link an unnamed ``O_TMPFILE`` file,
    nothing named exists until the bytes are on disk.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    _sweep(folder, name)
    temporary = None
    try:
        temporary = _write_unnamed(folder, name, data) or _write_named(folder, name, data)
        os.replace(temporary, path)
        temporary = None
        _fsync_dir(folder)
    finally:
        if temporary:
            _remove(temporary)


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.[0-9a-f]{12}\.tmp$")
_UNNAMED = {"works": hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")}


def _temporary_name(folder: str, name: str) -> str:
    return os.path.join(folder, f".{name}.{_HOST}.{os.getpid()}.{os.urandom(6).hex()}.tmp")


def _write_named(folder: str, name: str, data: bytes) -> str:
    temporary = _temporary_name(folder, name)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _remove(temporary)
        raise
    return temporary


def _write_unnamed(folder: str, name: str, data: bytes) -> str | None:
    """An ``O_TMPFILE`` file with ``data``, linked under a temporary name; None where that is impossible."""
    if not _UNNAMED["works"]:
        return None
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o666)
    except OSError:
        _UNNAMED["works"] = False
        return None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
        temporary = _temporary_name(folder, name)
        try:
            os.link(f"/proc/self/fd/{fh.fileno()}", temporary, follow_symlinks=True)
        except OSError:  # e.g. a /proc from another mount namespace: fall back to a named file
            _UNNAMED["works"] = False
            return None
    return temporary


def _sweep(folder: str, name: str) -> None:
    """Remove temporaries of saves to ``name`` whose process (on this host) no longer runs."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        m = _TEMPORARY.match(entry)
        if m and m["name"] == name and m["host"] == _HOST and not _alive(int(m["pid"])):
            _remove(os.path.join(folder, entry))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
