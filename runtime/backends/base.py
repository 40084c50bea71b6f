"""The backend contract: the one interface local, dask and sim implement.

The API layer (``runtime.api``) validates user input and then calls exactly
these methods. Everything that can block (``get``, ``wait``, ``sleep``) lives
here, never in the API layer, so the sim backend can advance virtual time
instead of blocking. A backend is done when ``tests/conformance`` passes on it.
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from runtime.cluster import NodeInfo, TaskInfo
from runtime.events import ClusterLog, EventBus
from runtime.resources import Resources

if TYPE_CHECKING:
    from runtime.refs import ObjectRef

__all__ = ["TaskSpec", "ActorSpec", "Backend", "sum_resources"]


@dataclass(slots=True)
class TaskSpec:
    """One call of a remote function, validated and ready to run."""

    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    name: str
    options: Mapping[str, Any]  # validated (see runtime.options)
    request: Resources
    max_retries: int = 3
    retry_exceptions: bool | tuple[type[BaseException], ...] = False

    def info(self, task_id: int, now: float = 0.0) -> TaskInfo:
        """The immutable view a policy sees."""
        o = self.options
        return TaskInfo(
            id=task_id, name=self.name, request=self.request,
            kind=o.get("kind") or self.name, accelerator_type=o.get("accelerator_type"),
            tenant=o.get("tenant") or "default", priority=o.get("priority") or 0,
            submitted_at=now,
            duration_hint=o.get("sim_duration") if isinstance(o.get("sim_duration"),
                                                              (int, float)) else None,
        )


@dataclass(slots=True)
class ActorSpec:
    """An actor to create: its class, constructor arguments and validated options."""

    cls: type
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    name: str
    options: Mapping[str, Any]
    request: Resources
    max_restarts: int = 0
    max_task_retries: int = 0
    methods: tuple[str, ...] = field(default_factory=tuple)


def sum_resources(nodes: Sequence[NodeInfo], *, free: bool = False) -> dict[str, float]:
    """Total resources of the live (up or draining) nodes, or with ``free`` the free
    resources of the up nodes, by name."""
    out: dict[str, float] = {}
    for n in nodes:
        if n.state == "up" or (not free and n.state == "draining"):
            for k, v in (n.free if free else n.total).items():
                out[k] = out.get(k, 0.0) + v
    return dict(sorted(out.items()))


class Backend(abc.ABC):
    """Does what the API asks: run tasks and actors, hold objects, publish events.

    Ids (tasks, objects, actors) come from counters, so they are deterministic.
    Every backend publishes the event kinds of :class:`runtime.events.EventKind`
    on ``self.events`` and keeps ``self.log`` (a :class:`ClusterLog`) attached.
    """

    #: "local", "dask" or "sim".
    kind: ClassVar[str] = "?"

    def __init__(self) -> None:
        self.events = EventBus()
        self.log = ClusterLog().attach(self.events)
        self._ids = itertools.count(1)

    def next_id(self) -> int:
        """A fresh id for a task, object or actor (never reused in this backend)."""
        return next(self._ids)

    # Tasks and objects --------------------------------------------------------
    @abc.abstractmethod
    def submit(self, spec: TaskSpec) -> ObjectRef:
        """Queue a task; returns the ref of its result. Raises at once for infeasible
        requests (:class:`InfeasibleRequestError`) and unpicklable arguments."""

    @abc.abstractmethod
    def put(self, value: Any) -> ObjectRef:
        """Store a value in the object store; returns its ref."""

    @abc.abstractmethod
    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        """Block until every ref is done; values in order, or raise the first error
        (in ref order). ``GetTimeoutError`` after ``timeout`` seconds."""

    @abc.abstractmethod
    def wait(self, refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> list[int]:
        """Block until ``num_returns`` refs are done or the timeout passes; return the
        indexes (into ``refs``) of the done ones, at most ``num_returns``, in input order."""

    @abc.abstractmethod
    def done(self, ref: ObjectRef) -> bool:
        """Whether the ref has a value or an error (never blocks)."""

    @abc.abstractmethod
    def add_done_callback(self, ref: ObjectRef, fn: Callable[[ObjectRef], None]) -> None:
        """Call ``fn(ref)`` once the ref is done (at once when it already is), from any thread."""

    @abc.abstractmethod
    def cancel(self, ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> bool:
        """Cancel a task: a pending one never runs; a running one is interrupted
        (killed when ``force``). ``get`` then raises ``TaskCancelledError``.
        Returns False when it was already done."""

    # Actors -------------------------------------------------------------------
    @abc.abstractmethod
    def create_actor(self, spec: ActorSpec) -> int:
        """Start an actor (asynchronously); returns its id."""

    @abc.abstractmethod
    def call_actor(self, actor_id: int, method: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> ObjectRef:
        """Queue a method call; calls on one actor run one at a time, in submission order."""

    @abc.abstractmethod
    def kill_actor(self, actor_id: int, *, no_restart: bool = True) -> None:
        """Kill the actor's process; pending and later calls raise ``ActorDiedError``."""

    # Time ---------------------------------------------------------------------
    @abc.abstractmethod
    def sleep(self, seconds: float) -> None:
        """Sleep (virtual on the sim backend: the cluster advances meanwhile)."""

    @abc.abstractmethod
    def now(self) -> float:
        """Seconds since the backend started (virtual on the sim backend)."""

    # Cluster view -------------------------------------------------------------
    @abc.abstractmethod
    def nodes(self) -> list[NodeInfo]:
        """Every node, in id order, with total and free resources and state."""

    def cluster_resources(self) -> dict[str, float]:
        """Total resources of the live nodes."""
        return sum_resources(self.nodes())

    def available_resources(self) -> dict[str, float]:
        """Free resources of the up nodes."""
        return sum_resources(self.nodes(), free=True)

    def describe(self) -> dict[str, Any]:
        """A summary for reprs and ``%cluster status`` (backend, address, policy...)."""
        return {"backend": self.kind}

    def scale(self, node_type: str | None = None, count: int | None = None) -> None:
        """Add or remove nodes by hand (backends that can; others raise)."""
        raise NotImplementedError(f"the {self.kind} backend cannot scale by hand")

    # Lifecycle ----------------------------------------------------------------
    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop every worker and fail pending refs with ``RuntimeShutdownError``.
        Idempotent: a second call does nothing."""
