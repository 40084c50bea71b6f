"""Worker processes of the local backend: how they start, and the driver's record of each.

Workers are started with ``subprocess`` (fork+exec of a fresh interpreter, never a
bare fork of a kernel that has threads), each with one end of a socketpair as
its connection, in its own session (a terminal Ctrl-C does not reach them). The
parent's ``sys.path`` and working directory travel in the first message, so
modules a notebook can import, workers can import too.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

import runtime
from runtime.backends.local import store
from runtime.backends.local.protocol import dumps

__all__ = ["WorkerProc", "spawn_worker"]

_BOOT = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); import sys; "
         "from runtime.backends.local.worker import main; "
         "main(int(sys.argv[1]), int(sys.argv[2]))")
_HEADER = struct.Struct("!i")  # multiprocessing.connection's frame header
_RUNTIME_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(runtime.__file__)))


class WorkerProc:
    """The driver's record of one worker process."""

    __slots__ = ("proc", "conn", "sock", "pid", "node", "task", "actor", "fns", "dead", "label",
                 "blocked_req", "idle_since", "ready", "queued", "outbuf", "out_lock",
                 "on_backlog", "retiring", "cancel_w", "held", "frames")

    def __init__(self, proc: subprocess.Popen[bytes], conn: Connection, sock: socket.socket,
                 node: str) -> None:
        self.proc = proc
        self.conn = conn  # reading (the reader thread only)
        self.sock = sock  # writing, never blocking: what does not fit waits in outbuf
        self.outbuf: collections.deque[memoryview] = collections.deque()
        self.out_lock = threading.Lock()
        self.on_backlog: Any = None  # called when outbuf becomes non-empty
        self.retiring = False  # told to exit (an extra idle worker)
        self.cancel_w = -1  # write end of the pipe naming tasks to interrupt
        self.pid = proc.pid
        self.node = node
        self.task: Any = None  # the running _Task (plain workers)
        self.actor: Any = None  # the _Actor this process serves (actor workers)
        self.fns: set[int] = set()  # function ids already sent here
        self.dead = False
        self.label = f"{node}/pid {proc.pid}"
        self.blocked_req: Any = None
        self.idle_since = 0.0
        self.ready = False  # said hello: its SIGINT handler is installed
        self.queued: Any = None  # a _Task sent ahead, to start when ``task`` ends
        self.held: dict[int, int] = {}  # object id -> refs to it alive in this process
        #: (task, blocked request) of blocked tasks with a task running inside their wait
        self.frames: list[tuple[Any, Any]] = []

    def send(self, msg: Any) -> bool:
        """Send one message without ever blocking; False when the worker is gone.

        What the socket cannot take now waits in ``outbuf`` (in order) and the
        reader thread writes it when the socket is writable, so a driver thread
        never blocks on a worker that is itself blocked writing to the driver.
        """
        data = dumps(msg)
        frame = memoryview(_HEADER.pack(len(data)) + data)
        with self.out_lock:
            if self.outbuf:
                self.outbuf.append(frame)
                return not self.dead
            try:
                n = self.sock.send(frame, socket.MSG_DONTWAIT)
            except BlockingIOError:
                n = 0
            except OSError:
                return False
            if n < len(frame):
                self.outbuf.append(frame[n:])
                hook = self.on_backlog
                if hook is not None:
                    hook()
        return True

    def flush_out(self) -> bool:
        """Write what the socket takes of ``outbuf``; False when the worker is gone."""
        with self.out_lock:
            buf = self.outbuf
            while buf:
                frame = buf[0]
                try:
                    n = self.sock.send(frame, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return True
                except OSError:
                    buf.clear()
                    return False
                if n < len(frame):
                    buf[0] = frame[n:]
                    return True
                buf.popleft()
        return True

    def interrupt(self, task_id: int) -> None:
        """Interrupt ``task_id`` if (and only if) it is what the worker runs now."""
        try:
            os.write(self.cancel_w, task_id.to_bytes(8, "little"))
        except OSError:
            return
        if self.ready:
            self.kill(signal.SIGINT)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process (no error when it is already gone)."""
        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self, timeout: float = 1.0) -> None:
        """Wait for the process to exit (killing it after ``timeout``) and close the pipe."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                pass
        for c in (self.conn, self.sock):
            try:
                c.close()
            except OSError:
                pass
        if self.cancel_w >= 0:
            try:
                os.close(self.cancel_w)
            except OSError:
                pass
            self.cancel_w = -1

    def __repr__(self) -> str:
        return f"WorkerProc({self.label})"


def spawn_worker(node: str, t0: float) -> WorkerProc:
    """Start one worker process for ``node`` and send it its first message."""
    parent, child = socket.socketpair()
    cancel_r, cancel_w = os.pipe()
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _RUNTIME_ROOT + (os.pathsep + path if path else "")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(child.fileno()), str(cancel_r)],
            pass_fds=(child.fileno(), cancel_r), start_new_session=True, env=env,
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        os.close(cancel_w)
        raise
    finally:
        child.close()
        os.close(cancel_r)
    os.set_blocking(cancel_w, False)
    conn = Connection(os.dup(parent.fileno()))
    w = WorkerProc(proc, conn, parent, node)
    w.cancel_w = cancel_w
    w.send(("init", os.getpid(), list(sys.path), os.getcwd(), node, t0, os.getpid(),
            store.settings()))
    return w
