"""nbcluster's runtime: Ray-style tasks, actors and objects on local, dask and sim backends.

Port a Ray program with ``import runtime as ray``::

    import runtime as rt

    @rt.remote(num_gpus=1)
    def train(x):
        return x * 2

    rt.init(num_cpus=2, num_gpus=1)       # local worker processes, nothing to start
    print(rt.get([train.remote(i) for i in range(4)]))
    rt.shutdown()

Every public name is listed in ``__all__`` below.
"""

from runtime.api import (
    ActorClass,
    ClusterHandle,
    RemoteFunction,
    available_resources,
    cancel,
    cluster_resources,
    current_backend,
    get,
    init,
    is_initialized,
    kill,
    nodes,
    now,
    put,
    remote,
    shutdown,
    sleep,
    subscribe,
    wait,
)
from runtime.autoscaling import NodeType, ScaleDecision
from runtime.errors import (
    ActorDiedError,
    GetTimeoutError,
    InfeasibleRequestError,
    NBClusterError,
    ObjectLostError,
    PolicyError,
    RuntimeShutdownError,
    SerializationError,
    SimDeadlock,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)
from runtime.events import Event, EventKind
from runtime.refs import ActorHandle, ObjectRef
from runtime.resources import Resources

__version__ = "0.1.0"

__all__ = [
    "ActorClass",
    "ActorDiedError",
    "ActorHandle",
    "ClusterHandle",
    "Event",
    "EventKind",
    "GetTimeoutError",
    "InfeasibleRequestError",
    "NBClusterError",
    "NodeType",
    "ObjectLostError",
    "ObjectRef",
    "PolicyError",
    "RemoteFunction",
    "Resources",
    "RuntimeShutdownError",
    "ScaleDecision",
    "SerializationError",
    "SimDeadlock",
    "TaskCancelledError",
    "TaskError",
    "WorkerCrashedError",
    "available_resources",
    "cancel",
    "cluster_resources",
    "current_backend",
    "get",
    "init",
    "is_initialized",
    "kill",
    "nodes",
    "now",
    "put",
    "remote",
    "shutdown",
    "sleep",
    "subscribe",
    "wait",
]
