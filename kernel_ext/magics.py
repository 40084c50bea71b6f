"""The ``%cluster``, ``%%remote`` and ``%remote_preset`` magics.

``%%remote`` turns a cell into one task (:mod:`kernel_ext.remote`): the names it
reads (found by :mod:`kernel_ext.capture`) travel with cloudpickle,
:func:`kernel_ext.cellrun.run_cell` runs it on a worker, the names it assigns (and
the shipped values it changes in place) come back, and its output and displays
stream into the cell through :mod:`kernel_ext.output`. Everything goes through
the public ``runtime`` API, so it works on every backend; ``%cluster connect
ADDRESS`` passes the address straight to ``runtime.init``.
"""

from __future__ import annotations

import ast
import re
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

import runtime
from kernel_ext import holders
from kernel_ext.handles import RemoteCell
from kernel_ext.output import OutputRouter, StreamRelay, current_parent
from kernel_ext.remote import CellRunner
from kernel_ext.workerns import SetupCell

__all__ = ["ClusterMagics"]


def _literal(text: str, ns: dict[str, Any]) -> Any:
    if text.isidentifier() and text in ns:
        return ns[text]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _cellify(text: str) -> str:
    """``%remote`` -> ``%%remote`` (argparse names the cell magic with one ``%``)."""
    return re.sub(r"(?<!%)%remote\b", "%%remote", text)


def _parse(fn: Any, line: str, cell: bool = False) -> Any:
    """``parse_argstring`` whose ``UsageError`` always carries the magic's usage."""
    try:
        return parse_argstring(fn, line)
    except UsageError as exc:
        usage = fn.parser.format_usage().strip().lstrip(":").strip()
        text = str(exc)
        if usage not in text:
            text = f"{text}\nusage: {usage}"
        raise UsageError(_cellify(text) if cell else text) from None


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
        self.setups: list[SetupCell] = []  # %%remote --all cells, replayed on new workers
        self.runner = CellRunner(self)

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
                holders.forget_book(self.router.backend)
                self.setups.clear()  # a new cluster: its workers know none of them
            self.router = OutputRouter(backend).install()
            holders.book_for(backend)  # actors from now on are named in notices
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
            holders.forget_book(self.router.backend)
            self.router = None
        self.setups.clear()

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
              help="monitor --text: print changes for S seconds, in the background")
    @argument("--stop", action="store_true",
              help="monitor: stop the monitors (and --follow printers) started here")
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
            return holders.StatusView(backend)
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

        if args.stop:
            n = len(self.monitors)
            for m in self.monitors:
                m.close()
            self.monitors.clear()
            print(f"stopped {n} monitor(s)")
            return None
        in_kernel = hasattr(self.shell, "kernel")
        mon = make_monitor(backend, interval=args.interval, text=args.text or not in_kernel)
        if isinstance(mon, TextMonitor):
            if args.follow:
                if args.follow <= 0:
                    raise UsageError(f"--follow {args.follow:g}: expected seconds > 0")
                relay = StreamRelay(current_parent(self.shell), sys.stdout, sys.stderr)
                mon.follow_in_background(args.follow, relay)
                self.monitors.append(mon)
                print(f"printing the cluster on each change for {args.follow:g} s in the "
                      f"background; %cluster monitor --stop stops it")
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
        self._options(_parse(self.remote, flags, cell=True))  # validate now

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
              help="cancel the task after S seconds (virtual seconds on sim)")
    @argument("--retries", type=int, default=None, metavar="N",
              help="run the cell again up to N times if its worker dies (default 0)")
    @argument("--all", action="store_true",
              help="a setup cell: run it in every worker (output labelled per node); its "
                   "names stay there for later cells, and new workers run it first")
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
            In [6]: %%remote --all
               ...: import torch
        """
        return self._remote(line, cell)

    def _options(self, args: Any) -> dict[str, Any]:
        return self.runner.options(args)

    def _remote(self, line: str, cell: str) -> Any:
        return self.runner.run(_parse(self.remote, line, cell=True), cell)


if ClusterMagics.remote.__doc__:  # magic_arguments wrote the usage with one %
    ClusterMagics.remote.__doc__ = _cellify(ClusterMagics.remote.__doc__)
