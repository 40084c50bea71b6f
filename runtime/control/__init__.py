"""The one control plane: the index, the pending queue, the decision round, the scale planner.

Backends (local, dask, sim) and the simulator's engine own one :class:`ControlPlane`
each; it is the only code that calls a policy's ``schedule()`` and an autoscaler's
``decide()``, and it validates every decision before its :class:`Actuator` (the
backend) carries it out. See ``docs/control-plane.md``.
"""

from runtime.control.actuator import Actuator, NullActuator
from runtime.control.index import ClusterIndex, IndexGroup, IndexNode, score_of
from runtime.control.plane import ControlPlane, greedy_by_shape, preemptive
from runtime.control.queue import PendingQueue
from runtime.control.scale import ScalePlanner

__all__ = ["Actuator", "ClusterIndex", "ControlPlane", "IndexGroup", "IndexNode",
           "NullActuator", "PendingQueue", "ScalePlanner", "greedy_by_shape", "preemptive",
           "score_of"]
