"""Blobs: pickled values whose large buffers live in shared memory (or on disk).

A value travels between the driver and workers as a *blob*: the pickle bytes
(protocol 5), its out-of-band buffers, and the ids of the object refs pickled
inside it. Small buffers ride inline; when the buffers of one value add up to
``SHM_THRESHOLD`` bytes or more they are written once into one *segment*, a file
in the shared-memory directory (``/dev/shm``), and readers map that file instead
of receiving the bytes through a pipe (numpy arrays then come out zero-copy and
read-only, as in Ray).

A small ``/dev/shm`` (Docker's default is 64 MB) must never kill a process:
segments are written with ``write()``, which fails with ``ENOSPC`` when the
filesystem is full (writing through a mapping would raise SIGBUS), and a value
that does not fit, or would leave less than a tenth of the filesystem free, goes
to a file in the *spill directory* on disk instead (slower, but it works), with
one warning per session. The driver owns every segment and unlinks it when the
object is freed or at shutdown; segment names start with ``nbc_<driver pid>_``,
so a shutdown sweeps any a crashed worker left behind, and the next ``init()``
sweeps those of a driver that crashed (its pid is gone).

Settings (``init()`` options of the local backend, or environment variables):
``shm_dir`` / ``NBCLUSTER_SHM_DIR`` (default ``/dev/shm``), ``shm_size`` /
``NBCLUSTER_SHM_SIZE`` (bytes of it the store may assume it has, e.g. ``64M``;
default: the filesystem's size) and ``spill_dir`` / ``NBCLUSTER_SPILL_DIR``
(default ``<tempdir>/nbcluster-<uid>``).
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import pickle
import re
import tempfile
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import cloudpickle

from runtime.errors import ObjectSpilledWarning

__all__ = ["SHM_THRESHOLD", "Blob", "StoreSettings", "configure", "settings", "serialize",
           "deserialize", "unlink", "sweep", "sweep_orphans", "blob_size", "contained",
           "is_spilled", "note_spilled", "ref_pickled", "parse_size"]

#: Out-of-band buffers totalling at least this many bytes go to a segment.
SHM_THRESHOLD = 256 * 1024

# (data, inline_buffers, segment, contained) where segment is None or
# (path, [(offset, length), ...]) and contained is None or a tuple of object ids
# whose refs were pickled inside the value (3-tuples without it are accepted too)
Blob = tuple[Any, ...]

_counter = itertools.count()
_PREFIX_RE = re.compile(r"^nbc_(\d+)_")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_ENOSPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


@dataclass(frozen=True)
class StoreSettings:
    """Where segments go: the shared-memory directory, its assumed size, the spill dir."""

    shm_dir: str = "/dev/shm"
    shm_size: int | None = None
    spill_dir: str | None = None

    def spill_path(self) -> str:
        """The spill directory (default ``<tempdir>/nbcluster-<uid>``)."""
        return self.spill_dir or os.path.join(tempfile.gettempdir(), f"nbcluster-{os.getuid()}")


_settings = StoreSettings()
_warned = [False]
_spill_ready: set[str] = set()
_tl = threading.local()  # .ids: refs pickled by the serialize() running in this thread


def parse_size(value: Any, what: str) -> int | None:
    """Bytes from ``64M``, ``1.5GiB``, ``1000000`` or an int (None/"" -> None)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what}={value!r}: expected a size in bytes such as 67108864, "
                         f"'64M' or '2GiB'")
    if isinstance(value, (int, float)):
        if value != value or value <= 0:
            raise ValueError(f"{what}={value!r}: expected a size > 0 in bytes, such as "
                             f"67108864, '64M' or '2GiB'")
        return int(value)
    m = _SIZE_RE.match(str(value))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{what}={value!r}: expected a size > 0 in bytes, such as 67108864, "
                         f"'64M' or '2GiB' (units K, M, G, T; powers of 1024)")
    unit = (m.group(2) or "").lower()[:1]
    return int(float(m.group(1)) * _UNITS[unit])


def configure(shm_dir: str | None = None, shm_size: Any = None,
              spill_dir: str | None = None) -> StoreSettings:
    """Set where this process writes segments (arguments first, then the environment)."""
    global _settings
    env = os.environ
    sdir = shm_dir if shm_dir is not None else env.get("NBCLUSTER_SHM_DIR") or "/dev/shm"
    size_src = "shm_size" if shm_size is not None else "NBCLUSTER_SHM_SIZE"
    size = parse_size(shm_size if shm_size is not None else env.get("NBCLUSTER_SHM_SIZE"),
                      size_src)
    spill = spill_dir if spill_dir is not None else env.get("NBCLUSTER_SPILL_DIR") or None
    for name, value in (("shm_dir", sdir), ("spill_dir", spill)):
        if value is not None and (not isinstance(value, str) or not os.path.isabs(value)):
            raise ValueError(f"{name}={value!r}: expected an absolute directory path")
    _settings = StoreSettings(os.path.normpath(sdir), size,
                              os.path.normpath(spill) if spill else None)
    _warned[0] = False
    return _settings


def settings() -> StoreSettings:
    """The settings in force in this process (workers get the driver's)."""
    return _settings


def use(s: StoreSettings) -> None:
    """Adopt settings received from the driver (in a worker process)."""
    global _settings
    _settings = s


# ----------------------------------------------------------------- refs inside values
def ref_pickled(oid: int) -> bool:
    """Record that a ref was pickled; False when no :func:`serialize` runs in this thread."""
    ids = getattr(_tl, "ids", None)
    if ids is None:
        return False
    ids.append(oid)
    return True


def contained(blob: Blob) -> tuple[int, ...]:
    """Ids of the refs pickled inside a blob's value (workers record them)."""
    return (blob[3] or ()) if len(blob) > 3 else ()


# ----------------------------------------------------------------- writing segments
def _prefix(owner_pid: int) -> str:
    return f"nbc_{owner_pid}_"


def _shm_has_room(s: StoreSettings, total: int) -> bool:
    """Whether ``total`` bytes fit in the shm dir and leave a tenth of it free."""
    try:
        st = os.statvfs(s.shm_dir)
    except OSError:
        return False
    size = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    if s.shm_size is not None:
        used = 0
        try:
            with os.scandir(s.shm_dir) as it:
                for e in it:
                    try:
                        used += e.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue
        except OSError:
            return False
        size = min(size, s.shm_size)
        free = min(free, s.shm_size - used)
    return free - total >= size // 10


def _spill_dir(s: StoreSettings) -> str:
    """The spill directory, made private to this user (0700, ours, not a symlink)."""
    path = s.spill_path()
    if path in _spill_ready:
        return path
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"spill directory {path} must be a directory owned by uid "
                              f"{os.getuid()} with mode 0700 (set NBCLUSTER_SPILL_DIR or "
                              f"spill_dir= to another one)")
    _spill_ready.add(path)
    return path


def _write_file(path: str, raws: list[memoryview]) -> list[tuple[int, int]]:
    """Create ``path`` (0600, exclusive) and write the buffers with ``write()``."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    spans = []
    off = 0
    try:
        for r in raws:
            n = r.nbytes
            done = 0  # write(), never a mapping: a full tmpfs gives ENOSPC, not SIGBUS
            while done < n:
                done += os.write(fd, r[done:done + (1 << 30)])
            spans.append((off, n))
            off += n
    except BaseException:
        os.close(fd)
        unlink(path)
        raise
    os.close(fd)
    return spans


def _store(raws: list[memoryview], total: int, owner_pid: int) -> tuple[str, Any, bool]:
    """Write the buffers to a new segment; returns (path, spans, spilled to disk)."""
    s = _settings
    name = f"{_prefix(owner_pid)}{os.getpid()}_{next(_counter)}"
    first_error: OSError | None = None
    if _shm_has_room(s, total):
        path = os.path.join(s.shm_dir, name)
        try:
            return path, _write_file(path, raws), False
        except OSError as exc:  # full after all (another process wrote meanwhile)
            if exc.errno not in _ENOSPACE and exc.errno not in (errno.ENOENT, errno.EACCES,
                                                                errno.EROFS):
                raise
            first_error = exc
    path = os.path.join(_spill_dir(s), name)
    try:
        return path, _write_file(path, raws), True
    except OSError as exc:
        shm = f"{s.shm_dir} is full or unusable ({first_error})" if first_error else \
            f"{s.shm_dir} lacks room"
        raise OSError(exc.errno, f"cannot store a value of {total / 2**20:.1f} MiB: {shm}, "
                      f"and writing it to the spill directory {os.path.dirname(path)} failed "
                      f"({exc.strerror}); free disk space or set NBCLUSTER_SPILL_DIR") from exc


def serialize(value: Any, owner_pid: int) -> Blob:
    """Pickle ``value``; big out-of-band buffers go to a new segment named for ``owner_pid``.

    Never dies of a full shared-memory filesystem: such values go to the spill dir."""
    buffers: list[pickle.PickleBuffer] = []
    outer = getattr(_tl, "ids", None)
    _tl.ids = ids = []
    try:
        try:  # plain pickle is several times faster; cloudpickle for what it cannot do
            data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
            if b"__main__" in data:  # by reference to the notebook/script: must go by value
                raise pickle.PicklingError("refers to __main__")
        except Exception:  # noqa: BLE001 - lambdas, __main__ classes, closures...
            buffers.clear()
            ids.clear()
            data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    finally:
        _tl.ids = outer
    refs = tuple(ids) or None
    if not buffers:
        return (data, None, None, refs)
    raws = [b.raw() for b in buffers]
    total = sum(r.nbytes for r in raws)
    if total < SHM_THRESHOLD:
        return (data, [bytes(r) for r in raws], None, refs)
    path, spans, spilled = _store(raws, total, owner_pid)
    if spilled and owner_pid == os.getpid():
        note_spilled(path, total)
    return (data, None, (path, spans), refs)


def deserialize(blob: Blob) -> Any:
    """Inverse of :func:`serialize` (segment buffers are mapped read-only, no copy)."""
    data, inline, shm = blob[0], blob[1], blob[2]
    if shm is None:
        return pickle.loads(data, buffers=inline or ())
    path, spans = shm
    size = spans[-1][0] + spans[-1][1] if spans else 0
    if not size:
        return pickle.loads(data, buffers=[b"" for _ in spans])
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    view = memoryview(m)
    return pickle.loads(data, buffers=[view[o:o + n] for o, n in spans])


def blob_size(blob: Blob) -> int:
    """Bytes a blob holds (pickle + buffers)."""
    data, inline, shm = blob[0], blob[1], blob[2]
    return len(data) + sum(map(len, inline or ())) + sum(n for _, n in (shm[1] if shm else ()))


def is_spilled(blob: Blob) -> bool:
    """Whether the blob's buffers live in the spill directory (on disk)."""
    shm = blob[2]
    return shm is not None and not shm[0].startswith(_settings.shm_dir + os.sep)


def note_spilled(path: str, nbytes: int) -> None:
    """Warn (once per session) that a value went to disk for lack of shared memory."""
    if _warned[0]:
        return
    _warned[0] = True
    s = _settings
    try:
        st = os.statvfs(s.shm_dir)
        size = st.f_blocks * st.f_frsize if s.shm_size is None else s.shm_size
        room = f"{s.shm_dir} holds {size / 2**20:.0f} MiB"
    except OSError:
        room = f"{s.shm_dir} is not usable"
    warnings.warn(ObjectSpilledWarning(
        f"nbcluster: an object of {nbytes / 2**20:.1f} MiB did not fit in shared memory "
        f"({room}); it and later ones that do not fit are written to {os.path.dirname(path)} "
        f"on disk instead (slower; nothing fails). For more shared memory start the "
        f"container with --shm-size=2g, or set NBCLUSTER_SHM_DIR / NBCLUSTER_SHM_SIZE / "
        f"NBCLUSTER_SPILL_DIR (see docs/faults.md). This warning is shown once."),
        stacklevel=_user_level())


def _user_level() -> int:
    """The ``stacklevel`` of the first caller outside the ``runtime`` package."""
    import sys

    pkg = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    f = sys._getframe(1)
    level = 1
    while f is not None and f.f_code.co_filename.startswith(pkg + os.sep):
        f = f.f_back
        level += 1
    return level


def unlink(name: str) -> None:
    """Remove a segment (no error when it is already gone)."""
    try:
        os.unlink(name)
    except OSError:
        pass


def _dirs() -> list[str]:
    s = _settings
    return list(dict.fromkeys([s.shm_dir, s.spill_path()]))


def sweep(owner_pid: int) -> int:
    """Unlink every segment named for ``owner_pid`` (leftovers of crashed workers)."""
    n = 0
    prefix = _prefix(owner_pid)
    for d in _dirs():
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for fname in names:
            if fname.startswith(prefix):
                unlink(os.path.join(d, fname))
                n += 1
    return n


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill(0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def sweep_orphans() -> tuple[int, int]:
    """Unlink segments of drivers that are gone (crashed); returns (files, bytes).

    Only this user's files are touched, and only those whose driver pid no longer
    runs (a pid reused since is left alone: that errs on the side of keeping)."""
    files = size = 0
    uid = os.getuid()
    me = os.getpid()
    alive: dict[int, bool] = {}
    for d in _dirs():
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            m = _PREFIX_RE.match(e.name)
            if not m:
                continue
            pid = int(m.group(1))
            if pid == me:
                continue
            if pid not in alive:
                alive[pid] = _pid_alive(pid)
            if alive[pid]:
                continue
            try:
                st = e.stat(follow_symlinks=False)
                if st.st_uid != uid:
                    continue
                os.unlink(e.path)
            except OSError:
                continue
            files += 1
            size += st.st_size
    return files, size
