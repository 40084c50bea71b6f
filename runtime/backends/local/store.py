"""Blobs: pickled values whose large buffers live in POSIX shared memory.

A value travels between the driver and workers as a *blob*: the pickle bytes
(protocol 5) plus its out-of-band buffers. Small buffers ride inline; when the
buffers of one value add up to ``SHM_THRESHOLD`` bytes or more they are copied
once into one shared-memory segment, and readers map that segment instead of
receiving the bytes through a pipe (numpy arrays then come out zero-copy and
read-only, as in Ray). The driver owns every segment and unlinks it when the
object is freed or at shutdown; segment names start with ``nbc_<driver pid>_``,
so a shutdown can sweep any a crashed worker left behind.
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
from typing import Any

import cloudpickle

try:
    import _posixshmem  # CPython's own shm_open/shm_unlink, without the resource tracker
except ImportError:  # pragma: no cover - non-POSIX
    _posixshmem = None

__all__ = ["SHM_THRESHOLD", "Blob", "serialize", "deserialize", "unlink", "sweep", "blob_size"]

#: Out-of-band buffers totalling at least this many bytes go to shared memory.
SHM_THRESHOLD = 256 * 1024

# (data, inline_buffers, shm) where shm is None or (segment name, [(offset, length), ...])
Blob = tuple[bytes, "list[bytes] | None", "tuple[str, list[tuple[int, int]]] | None"]

_counter = itertools.count()
_SHM_DIR = "/dev/shm"


def _prefix(owner_pid: int) -> str:
    return f"nbc_{owner_pid}_"


def serialize(value: Any, owner_pid: int) -> Blob:
    """Pickle ``value``; big out-of-band buffers go to a new shm segment named for ``owner_pid``."""
    buffers: list[pickle.PickleBuffer] = []
    try:  # plain pickle is several times faster; cloudpickle for what it cannot do
        data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        if b"__main__" in data:  # by reference to the notebook/script: must go by value
            raise pickle.PicklingError("refers to __main__")
    except Exception:  # noqa: BLE001 - lambdas, __main__ classes, closures...
        buffers.clear()
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    if not buffers:
        return (data, None, None)
    raws = [b.raw() for b in buffers]
    total = sum(r.nbytes for r in raws)
    if total < SHM_THRESHOLD or _posixshmem is None:
        return (data, [bytes(r) for r in raws], None)
    name = f"/{_prefix(owner_pid)}{os.getpid()}_{next(_counter)}"
    fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
    try:
        os.ftruncate(fd, total)
        with mmap.mmap(fd, total) as m:
            spans = []
            off = 0
            for r in raws:
                n = r.nbytes
                m[off:off + n] = r
                spans.append((off, n))
                off += n
    except BaseException:
        os.close(fd)
        unlink(name)
        raise
    os.close(fd)
    return (data, None, (name, spans))


def deserialize(blob: Blob) -> Any:
    """Inverse of :func:`serialize` (shared-memory buffers are mapped read-only, no copy)."""
    data, inline, shm = blob
    if shm is None:
        return pickle.loads(data, buffers=inline or ())
    name, spans = shm
    fd = _posixshmem.shm_open(name, os.O_RDONLY, mode=0o600)
    try:
        size = spans[-1][0] + spans[-1][1] if spans else 0
        m = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else None
    finally:
        os.close(fd)
    if m is None:
        return pickle.loads(data, buffers=[b"" for _ in spans])
    view = memoryview(m)
    return pickle.loads(data, buffers=[view[o:o + n] for o, n in spans])


def blob_size(blob: Blob) -> int:
    """Bytes a blob holds (pickle + buffers)."""
    data, inline, shm = blob
    return len(data) + sum(map(len, inline or ())) + sum(n for _, n in (shm[1] if shm else ()))


def unlink(name: str) -> None:
    """Remove a segment (no error when it is already gone)."""
    if _posixshmem is None:
        return
    try:
        _posixshmem.shm_unlink(name)
    except (FileNotFoundError, OSError):
        pass


def sweep(owner_pid: int) -> int:
    """Unlink every segment named for ``owner_pid`` (leftovers of crashed workers)."""
    n = 0
    try:
        names = os.listdir(_SHM_DIR)
    except OSError:
        return 0
    prefix = _prefix(owner_pid)
    for fname in names:
        if fname.startswith(prefix):
            unlink("/" + fname)
            n += 1
    return n
