"""The ``%cluster``, ``%%remote`` and ``%remote_preset`` magics.

``%%remote`` turns a cell into one task: the names it reads (found by
:mod:`kernel_ext.capture`) travel with cloudpickle, :func:`kernel_ext.cellrun.run_cell`
runs it on a worker, the names it assigns come back, and its output streams into
the cell through :mod:`kernel_ext.output`. Everything goes through the public
``runtime`` API, so it works on every backend; ``%cluster connect ADDRESS``
passes the address straight to ``runtime.init``.
"""

from __future__ import annotations

import ast
import math
import re
import sys
import threading
import traceback
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

import runtime
from kernel_ext.capture import analyze_cell
from kernel_ext.cellrun import CellPayload, pack, run_cell
from kernel_ext.handles import RemoteCell, _poll_for, clean_error
from kernel_ext.output import OutputRouter, StreamRelay, current_parent
from runtime.options import validate_options
from runtime.serialization import describe_unpicklable

__all__ = ["ClusterMagics"]


def _csv(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def _literal(text: str, ns: dict[str, Any]) -> Any:
    if text.isidentifier() and text in ns:
        return ns[text]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _flagify(text: str, flags: dict[str, str]) -> str:
    """Say ``--cpus -1`` where the runtime's message says ``num_cpus=-1``."""
    for key, flag in flags.items():
        text = re.sub(rf"\b{key}=(?=[^\s/,:.;)])", f"{flag} ", text)  # key=VALUE
        text = re.sub(rf"\b{key}=", flag, text)  # a bare key=
    return text


def _parse(fn: Any, line: str) -> Any:
    """``parse_argstring`` whose ``UsageError`` always carries the magic's usage."""
    try:
        return parse_argstring(fn, line)
    except UsageError as exc:
        usage = fn.parser.format_usage().strip().lstrip(":").strip()
        text = str(exc)
        if usage in text:
            raise
        raise UsageError(f"{text}\nusage: {usage}") from None


@magics_class
class ClusterMagics(Magics):
    """Holds the extension's state: output router, presets, monitors, background cells."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.router: OutputRouter | None = None
        self.presets: dict[str, str] = {}
        self.monitors: list[Any] = []
        self.cells: list[RemoteCell] = []
        self.notices: list[str] = []

    # ------------------------------------------------------------------ helpers
    def _backend(self, auto: bool) -> Any:
        if not runtime.is_initialized():
            if not auto:
                raise UsageError("no cluster is connected: use %cluster connect "
                                 "[local|sim|tcp://host:port]")
            handle = self._init(None, {})
            n = handle.backend.cluster_resources()
            msg = (f"%%remote: no cluster was connected; started the local default "
                   f"({', '.join(f'{k}={v:g}' for k, v in n.items() if k != 'memory')}). "
                   f"Use %cluster connect to choose another.")
            self.notices.append(msg)
            print(msg)
        backend = runtime.current_backend()
        self._ensure_router(backend)
        return backend

    def _init(self, address: Any, options: dict[str, Any]) -> Any:
        try:
            return runtime.init(address, **options)
        except (NotImplementedError, TypeError, ValueError) as exc:
            raise UsageError(f"%cluster connect {address or 'local'}: {exc}") from None

    def _ensure_router(self, backend: Any) -> OutputRouter:
        if self.router is None or self.router.backend is not backend:
            if self.router is not None:
                self.router.uninstall()
            self.router = OutputRouter(backend).install()
        return self.router

    def close(self) -> None:
        """Stop monitors and the output relay (used by ``%unload_ext`` and disconnect)."""
        for m in self.monitors:
            close = getattr(m, "close", None)
            if close is not None:
                close()
        self.monitors.clear()
        if self.router is not None:
            self.router.uninstall()
            self.router = None

    # ------------------------------------------------------------------ %cluster
    @magic_arguments()
    @argument("action", nargs="?", default="status",
              choices=["connect", "status", "scale", "disconnect", "monitor"],
              help="what to do (default: status)")
    @argument("target", nargs="?", default=None,
              help="connect: local (default), sim, a dask address such as "
                   "tcp://127.0.0.1:8786, or the name of a variable holding a "
                   "distributed.Client or dask cluster; scale: the node type")
    @argument("count", nargs="?", type=int, default=None, help="scale: the node count")
    @argument("--cpus", type=float, default=None, help="connect: CPUs of the local node")
    @argument("--gpus", type=float, default=None, help="connect: GPUs of the local node")
    @argument("-O", "--opt", action="append", default=[], metavar="KEY=VALUE",
              help="connect: a keyword for runtime.init; VALUE is a Python literal or the "
                   "name of a variable (e.g. -O nodes=my_nodes -O policy=my_policy)")
    @argument("--text", action="store_true", help="monitor: text instead of a widget")
    @argument("--interval", type=float, default=0.5,
              help="monitor: seconds between redraws (default 0.5)")
    @argument("--follow", type=float, default=None, metavar="S",
              help="monitor --text: print changes for S seconds")
    @line_magic
    def cluster(self, line: str) -> Any:
        """Connect to a cluster, show it, scale it, monitor it, disconnect.

        Examples::

            In [1]: %cluster connect --cpus 4
            local cluster ...
            In [2]: %cluster connect sim -O nodes=my_nodes
            In [3]: %cluster connect tcp://127.0.0.1:8786
            In [4]: %cluster status
            In [5]: %cluster scale gpu-node 3   # or %cluster scale 3 with one node type
            In [6]: %cluster monitor            # a live widget (text in a terminal)
            In [7]: %cluster disconnect
        """
        args = _parse(self.cluster, line)
        action = args.action
        if action == "connect":
            return self._connect(args)
        if action == "disconnect":
            if not runtime.is_initialized():
                print("no cluster is connected")
                return None
            self.close()
            runtime.shutdown()
            print("disconnected")
            return None
        if not runtime.is_initialized():
            print("no cluster is connected: use %cluster connect [local|sim|tcp://host:port]")
            return None
        backend = runtime.current_backend()
        if action == "status":
            return runtime.ClusterHandle(backend)
        if action == "scale":
            if args.count is None and args.target is not None and args.target.isdigit():
                args.target, args.count = None, int(args.target)  # %cluster scale N
                types = {n.node_type for n in backend.nodes()}
                if len(types) == 1:
                    args.target = types.pop()
            if args.count is None or args.count < 0:
                raise UsageError("usage: %cluster scale NODE_TYPE COUNT (COUNT an int >= 0)")
            try:
                backend.scale(args.target, args.count)
            except (NotImplementedError, ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"%cluster scale {args.target} {args.count}: {exc}") from None
            return runtime.ClusterHandle(backend)
        return self._monitor(backend, args)

    def _connect(self, args: Any) -> Any:
        if runtime.is_initialized():
            raise UsageError(f"already connected to a {runtime.current_backend().kind} "
                             f"cluster; run %cluster disconnect first")
        options: dict[str, Any] = {}
        if args.cpus is not None:
            options["num_cpus"] = args.cpus
        if args.gpus is not None:
            options["num_gpus"] = args.gpus
        for item in args.opt:
            key, sep, value = item.partition("=")
            if not sep or not key.isidentifier():
                raise UsageError(f"-O {item!r}: expected KEY=VALUE, e.g. -O nodes=my_nodes")
            options[key] = _literal(value, self.shell.user_ns)
        address: Any = None if args.target in (None, "local") else args.target
        ns = self.shell.user_ns
        if isinstance(address, str) and address.isidentifier() and address not in ("sim",) \
                and address in ns:
            address = ns[address]  # a distributed.Client or dask cluster object
        handle = self._init(address, options)
        self._ensure_router(handle.backend)
        return handle

    def _monitor(self, backend: Any, args: Any) -> Any:
        from kernel_ext.monitor import make_monitor
        from kernel_ext.text import TextMonitor

        in_kernel = hasattr(self.shell, "kernel")
        mon = make_monitor(backend, interval=args.interval, text=args.text or not in_kernel)
        if isinstance(mon, TextMonitor):
            if args.follow:
                mon.follow(args.follow)
            else:
                print(mon.render())
            return None
        self.monitors.append(mon)
        return mon

    # ------------------------------------------------------------------ presets
    @line_magic
    def remote_preset(self, line: str) -> None:
        """Define a cell magic that is ``%%remote`` with some flags.

        Example::

            In [1]: %remote_preset gpu --gpus 1 --accelerator A100
            In [2]: %%gpu
               ...: model = train(data)

        With no arguments, lists the presets.
        """
        name, _, flags = line.strip().partition(" ")
        if not name:
            for k, v in self.presets.items():
                print(f"%%{k} = %%remote {v}")
            if not self.presets:
                print("no presets; define one with %remote_preset NAME FLAGS")
            return
        if not name.isidentifier():
            raise UsageError(f"%remote_preset {name!r}: the name must be an identifier")
        cell_magics = self.shell.magics_manager.magics["cell"]
        if name in cell_magics and name not in self.presets:
            raise UsageError(f"%remote_preset {name}: %%{name} is already a cell magic")
        self._options(_parse(self.remote, flags))  # validate now

        def preset(line: str, cell: str) -> Any:
            """Run the cell as ``%%remote`` with the preset's flags first."""
            return self._remote(f"{flags} {line}", cell)

        preset.__doc__ = f"%%{name}: %%remote {flags}"
        self.presets[name] = flags
        self.shell.register_magic_function(preset, "cell", name)

    # ------------------------------------------------------------------ %%remote
    @magic_arguments()
    @argument("--cpus", type=float, default=None, help="CPUs the task needs (default 1)")
    @argument("--gpus", type=float, default=None, help="GPUs the task needs")
    @argument("--resources", default=None, metavar="K=V,...",
              help="custom resources, e.g. TPU=1,QPU=1")
    @argument("--accelerator", default=None, help="accelerator model, e.g. A100")
    @argument("--push", default=None, metavar="a,b", help="also ship these variables")
    @argument("--pull", default=None, metavar="c,d",
              help="bring back only these names (default: every name the cell assigns)")
    @argument("--bg", action="store_true", help="return a handle at once; names arrive later")
    @argument("-o", "--output", default=None, metavar="NAME",
              help="store the last expression's value (with --bg: the handle) in NAME")
    @argument("--timeout", type=float, default=None, metavar="S",
              help="cancel the task after S seconds")
    @cell_magic
    def remote(self, line: str, cell: str) -> Any:
        """Run this cell as one task on the cluster.

        The variables the cell reads are shipped, the names it assigns come back,
        the last expression is displayed, output streams into the cell, and an
        interrupt cancels the task. With no cluster, starts the local default.

        Example::

            In [1]: data = list(range(10))
            In [2]: %%remote --cpus 2
               ...: import os
               ...: total = sum(data)
               ...: print("on", os.getpid())
               ...: total * 2
            on 41231
            Out[2]: 90
            In [3]: total
            Out[3]: 45
            In [4]: %%remote --bg -o job
               ...: slow = expensive()
            Out[4]: <%%remote [4] task 7 on local-0: running>
            In [5]: job.result(); slow
        """
        return self._remote(line, cell)

    def _options(self, args: Any) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        flags = {"num_cpus": "--cpus", "num_gpus": "--gpus", "resources": "--resources",
                 "accelerator_type": "--accelerator"}
        if args.cpus is not None:
            opts["num_cpus"] = args.cpus
        if args.gpus is not None:
            opts["num_gpus"] = args.gpus
        if args.accelerator is not None:
            opts["accelerator_type"] = args.accelerator
        if args.resources is not None:
            res: dict[str, Any] = {}
            for item in _csv(args.resources):
                key, sep, value = item.partition("=")
                try:
                    res[key.strip()] = float(value)
                except ValueError:
                    raise UsageError(f"--resources {args.resources!r}: expected K=V,... with "
                                     f"numbers, e.g. TPU=1,QPU=0.5") from None
                if not sep:
                    raise UsageError(f"--resources {args.resources!r}: expected K=V,...")
                own = {"CPU": "--cpus", "GPU": "--gpus"}.get(key.strip())
                if own is not None:
                    raise UsageError(f"--resources {args.resources!r}: {key.strip()} has its "
                                     f"own flag; use {own} {res[key.strip()]:g} instead")
            opts["resources"] = res
        if args.timeout is not None and (math.isnan(args.timeout) or args.timeout <= 0):
            raise UsageError(f"--timeout {args.timeout}: expected a number of seconds > 0")
        if args.output is not None and not args.output.isidentifier():
            raise UsageError(f"-o {args.output!r}: expected a variable name")
        try:
            return validate_options("task", opts)
        except (TypeError, ValueError) as exc:
            raise UsageError(_flagify(str(exc), flags)) from None

    def _ship(self, names: set[str], pushed: list[str]) -> dict[str, Any]:
        ns = self.shell.user_ns
        values: dict[str, Any] = {}
        for name in pushed:
            if name not in ns:
                raise UsageError(f"--push {name}: there is no variable {name!r}")
        for name in sorted(names | set(pushed)):
            if name not in ns:
                continue  # a builtin, or a NameError the remote run will report
            value = ns[name]
            try:
                values[name] = pack(value)
            except Exception as exc:  # noqa: BLE001 - name the variable and the culprit
                inner = describe_unpicklable(value) or f"{type(exc).__name__}: {exc}"
                raise clean_error(runtime.SerializationError(
                    f"variable {name!r} of type {type(value).__name__} cannot be shipped to "
                    f"the cluster: the failing part is {inner}. Leave it out of the cell, "
                    f"or build it inside the cell.")) from None
        return values

    def _analyze(self, cell: str, filename: str) -> Any:
        try:
            return analyze_cell(cell, filename)
        except SyntaxError as exc:
            # IPython shows any SyntaxError raised by a magic with the magic's own
            # frames; a UsageError carrying the formatted error shows no frames.
            lineno = (exc.lineno or 0) + 1  # the %%remote line is line 1
            transformed = self.shell.transform_cell(cell)
            if transformed.strip() != cell.strip():
                try:
                    ast.parse(transformed)
                except SyntaxError:
                    pass
                else:
                    raise UsageError(f"%%remote cells are plain Python; line {lineno} uses "
                                     f"IPython syntax (%magic, !shell, ?help) that only runs "
                                     f"in the kernel. Nothing was submitted.") from None
            exc.lineno = lineno
            if exc.end_lineno:
                exc.end_lineno += 1
            shown = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
            raise UsageError(f"syntax error in the %%remote cell; nothing was submitted.\n"
                             f"{shown}") from None

    def _remote(self, line: str, cell: str) -> Any:
        args = _parse(self.remote, line)
        opts = self._options(args)
        number = self.shell.execution_count
        filename = f"<remote cell {number}>"
        analysis = self._analyze(cell, filename)
        pushed = _csv(args.push)
        values = self._ship(set(analysis.reads), pushed)
        pull = tuple(_csv(args.pull)) if args.pull is not None else analysis.writes
        backend = self._backend(auto=True)
        router = self._ensure_router(backend)
        fn = runtime.RemoteFunction(run_cell, {**opts, "name": f"%%remote[{number}]",
                                               "max_retries": 0})
        relay = StreamRelay(current_parent(self.shell), sys.stdout, sys.stderr)
        payload = CellPayload(cell, filename, 1, values, pull)
        sys.stdout.flush()
        with router.lock:
            try:
                ref = fn.remote(payload)
            except (runtime.InfeasibleRequestError, runtime.SerializationError) as exc:
                raise clean_error(exc) from None
            router.route(ref.id, relay)
        handle = RemoteCell(ref, number, filename, self.shell.user_ns, router, relay,
                            output_name=args.output if not args.bg else None,
                            background=args.bg)
        if args.bg:
            self.cells = [c for c in self.cells if not c.done()] + [handle]
            if args.output:
                self.shell.user_ns[args.output] = handle
            handle.watch()
            if args.timeout:
                timer = threading.Timer(args.timeout, handle.cancel)
                timer.daemon = True
                timer.start()
            return handle
        return self._block(handle, args.timeout)

    def _block(self, handle: RemoteCell, timeout: float | None) -> Any:
        try:
            done = handle.wait(timeout, poll=_poll_for(handle.ref))
        except KeyboardInterrupt:
            handle.cancel()
            if self.router is not None:
                self.router.unroute(handle.task_id)
            print(f"%%remote: interrupted; task {handle.task_id} cancelled", file=sys.stderr)
            raise
        if not done:
            handle.cancel()
            if self.router is not None:
                self.router.unroute(handle.task_id)
            raise clean_error(runtime.GetTimeoutError(
                f"%%remote --timeout {timeout:g}: the cell ran longer than {timeout:g} s; "
                f"task {handle.task_id} was cancelled"))
        ok, value = handle._settle()
        sys.stdout.flush()
        sys.stderr.flush()
        if handle.skipped:
            for name, why in handle.skipped.items():
                print(f"%%remote: {name!r} was not brought back ({why})", file=sys.stderr)
        if not ok:
            raise value
        return value
