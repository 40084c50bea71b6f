"""Local backend: objects made inside tasks are freed, a race in the reader, messages.

RELIABILITY 25 (objects live as long as a ref exists, wherever made), the
"dictionary changed size during iteration" race under kills, and messages that
must not mislead: an exception needing constructor arguments keeps its type,
message and traceback; a timeout says what the tasks are doing.
"""

from __future__ import annotations

import contextlib
import gc
import linecache
import os
import signal
import sys
import time

import pytest

import runtime
from runtime.errors import GetTimeoutError, TaskError
from tests.reliability.helpers import alive, segments, wait_for

np = pytest.importorskip("numpy")
pytestmark = pytest.mark.timeout(90)

MiB = 2**20


@runtime.remote
def noop():
    return None


@runtime.remote
def put_inside(i):
    """A 1 MiB put made inside a task, handed back to the driver."""
    return runtime.put(np.full(MiB // 8, float(i)))


@runtime.remote
def put_in_a_dict(i):
    return {"ref": runtime.put(np.full(MiB // 8, float(i))), "i": i}


@runtime.remote
def put_and_drop(i):
    r = runtime.put(np.full(MiB // 8, float(i)))
    return float(runtime.get(r)[0])


@runtime.remote
def child_of(i):
    return np.full(MiB // 8, float(i))


@runtime.remote
def submit_inside(i):
    return child_of.remote(i)


@runtime.remote
class Keeper:
    def __init__(self):
        self.refs = []

    def keep(self, i):
        self.refs.append(runtime.put(np.full(MiB // 8, float(i))))
        return len(self.refs)

    def first(self):
        return float(runtime.get(self.refs[0])[0])


def _settle(backend):
    """Let the driver fold in what workers reported (one round trip to a worker)."""
    runtime.get(noop.remote(), timeout=30)
    return backend


def test_objects_put_inside_tasks_are_freed_once_no_ref_is_left(local, store_dirs):
    """Issue 11.3: 60 tasks each put 1 MiB and return the ref. The values stay readable
    after the tasks' workers dropped their refs, and once the driver drops them too
    every segment is gone (before: all were held until shutdown)."""
    shm, _ = store_dirs
    backend = local(num_cpus=2)
    outer = [put_inside.remote(i) for i in range(60)]
    inner = runtime.get(outer, timeout=60)
    _settle(backend)
    assert len(segments(shm)) >= 60
    del outer
    gc.collect()
    _settle(backend)
    assert [float(runtime.get(r, timeout=30)[0]) for r in inner] == [float(i) for i in range(60)]
    del inner
    gc.collect()
    wait_for(lambda: not segments(_settle(backend) and shm), 20, "every segment to be freed")
    assert len(backend._objs) <= 2


def test_refs_inside_returned_values_and_dropped_puts(local, store_dirs):
    """A ref inside a returned dict keeps its object while the dict's object lives; a put
    a task drops itself is freed when the task ends; nested submits are freed too."""
    shm, _ = store_dirs
    backend = local(num_cpus=2)
    assert runtime.get([put_and_drop.remote(i) for i in range(10)], timeout=60) == \
        [float(i) for i in range(10)]
    wait_for(lambda: not segments(_settle(backend) and shm), 20, "dropped puts to be freed")
    d = runtime.get(put_in_a_dict.remote(7), timeout=30)
    children = runtime.get([submit_inside.remote(i) for i in range(5)], timeout=30)
    assert [float(runtime.get(c, timeout=30)[0]) for c in children] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert float(runtime.get(d["ref"], timeout=30)[0]) == 7.0
    del d, children
    gc.collect()
    wait_for(lambda: not segments(_settle(backend) and shm), 20, "returned refs to be freed")


def test_a_ref_an_actor_keeps_lives_until_the_actor_dies(local, store_dirs):
    """Refs held in an actor's state keep their objects; killing the actor frees them."""
    shm, _ = store_dirs
    backend = local(num_cpus=1)
    k = Keeper.remote()
    assert runtime.get([k.keep.remote(i) for i in range(3)], timeout=30) == [1, 2, 3]
    gc.collect()
    _settle(backend)
    assert len(segments(shm)) == 3
    assert runtime.get(k.first.remote(), timeout=30) == 0.0
    runtime.kill(k)
    wait_for(lambda: not segments(_settle(backend) and shm), 20, "the actor's objects to go")


@runtime.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


def _zombie(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1][:1] == "Z"


@runtime.remote
def until_file(path):
    while not os.path.exists(path):
        time.sleep(0.005)
    return "ended"


def _reader_frame(backend):
    frame = sys._current_frames().get(backend._reader.ident)
    while frame is not None and frame.f_code.co_name != "_read_forever":
        frame = frame.f_back
    return frame


def _reader_line(backend, offset: int = 0) -> str:
    frame = _reader_frame(backend)
    if frame is None:
        return ""
    return linecache.getline(frame.f_code.co_filename, frame.f_lineno + offset)


def _reader_holds_a_result(backend) -> bool:
    """The reader thread has read a worker's result and waits for the backend's lock."""
    frame = _reader_frame(backend)
    if frame is None or not any(b"done" in m for m in frame.f_locals.get("msgs") or ()):
        return False
    return "with self._lock" in _reader_line(backend) and "self._closed" in \
        _reader_line(backend, 1)


@contextlib.contextmanager
def _lock_while_reader_polls(backend):
    """Hold the backend's lock, taken while the reader thread waits in poll() (so the
    next thing it reads, it reads with the lock held by us)."""
    deadline = time.monotonic() + 20
    while True:
        backend._lock.acquire()
        quiet = all(w.ready for w in backend._workers.values())  # no hello on its way
        if quiet and ".poll(" in _reader_line(backend):
            break
        backend._lock.release()
        assert time.monotonic() < deadline, "the reader never went back to poll()"
        time.sleep(0.005)
    try:
        yield
    finally:
        backend._lock.release()


def test_a_worker_dying_while_the_scheduler_walks_the_workers_is_no_dict_race(local, tmp_path):
    """Issue 11.7, made deterministic. A worker sends a result and dies before the
    driver folds it in; the driver then hands that (dead) worker the next task, the
    send fails, and handling the death (a retry, a new worker) in the middle of the
    scheduler's walk raised 'dictionary changed size during iteration' in the reader
    thread (and, for nested submits, out of the user's task)."""
    backend = local(num_cpus=2)
    flag = str(tmp_path / "end")
    first = until_file.options(max_retries=3).remote(flag)
    other = nap.options(max_retries=3).remote(60)
    wait_for(lambda: len(backend._workers) == 2 and all(
        w.task is not None and w.task.state == "running" for w in backend._workers.values()),
        30, "both tasks to run")
    w1 = next(w for w in backend._workers.values() if w.task.id == first.id)
    more = [nap.options(max_retries=3).remote(0.01) for _ in range(4)]  # no CPU free now
    with _lock_while_reader_polls(backend):
        open(flag, "w").close()
        wait_for(lambda: _reader_holds_a_result(backend), 20, "the reader to read the result")
        os.kill(w1.pid, signal.SIGKILL)
        wait_for(lambda: _zombie(w1.pid), 20, "the worker to be dead")
    wait_for(lambda: first.done() and ".poll(" in _reader_line(backend), 20,
             "the reader to fold the result in")
    assert runtime.get(first, timeout=30) == "ended"
    runtime.cancel(other, force=True)
    assert runtime.get(more, timeout=60) == [0.01] * 4
    assert backend.errors == []
    assert not alive(w1.pid)


class NeedsTwo(Exception):
    """An exception whose constructor needs two arguments (default unpickling fails)."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b} went wrong")
        self.a = a
        self.b = b


@runtime.remote
def raise_needs_two():
    raise NeedsTwo(1, 2)


def test_an_exception_needing_constructor_arguments_keeps_type_message_traceback(local):
    """Issue 11.9: it used to come back as 'could not unpickle a task's error'."""
    local(num_cpus=1)
    with pytest.raises(NeedsTwo) as info:
        runtime.get(raise_needs_two.remote(), timeout=30)
    err = info.value
    assert isinstance(err, TaskError)
    assert "1 and 2 went wrong" in str(err)
    assert "raise_needs_two" in err.remote_traceback and "NeedsTwo" in err.remote_traceback
    assert (err.cause.a, err.cause.b) == (1, 2)


def test_a_timeout_says_what_the_tasks_are_doing(local):
    """Issue 11.9: no 'the tasks keep running' when nothing runs; each state is named."""
    local(num_cpus=1, resources={"slot": 1})
    busy = nap.remote(5)
    wait_for(lambda: "running" in _timeout_message(busy), 20, "the first task to run")
    queued = nap.remote(0.01)  # waits for the CPU (or is sent ahead to the busy worker)
    msg = _timeout_message(queued)
    assert ("is queued behind a running task on local-0" in msg
            or "waits for a node with CPU=1 free" in msg), msg
    assert "keep running" not in msg and "none of them is running" in msg
    other = nap.options(resources={"slot": 1}).remote(0.01)
    msg = _timeout_message(other)
    assert "waits for a node with CPU=1, slot=1 free" in msg and "keep running" not in msg
    msg = _timeout_message(busy)
    assert "is running on local-0 (attempt 1)" in msg and "keep going" in msg
    runtime.cancel(busy, force=True)
    assert runtime.get([queued, other], timeout=30) == [0.01, 0.01]


def _timeout_message(ref) -> str:
    try:
        runtime.get(ref, timeout=0.05)
    except GetTimeoutError as exc:
        return str(exc)
    return ""
