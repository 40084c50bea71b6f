"""The autoscaler driver: asks the autoscaling policy every ``interval`` and enacts its decision.

The policy (the runtime's, e.g. ``get_autoscaler("demand")``) only recommends;
this driver validates and clamps: unknown node types raise
:class:`~runtime.errors.PolicyError` naming the autoscaler; additions are
clamped to ``max_count`` (booting nodes count, so nothing is launched twice);
removals respect ``min_count`` and drain busy nodes first; infeasible task ids
are reported once. New nodes boot for the type's ``boot_latency`` and cost money
from the moment they are requested.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.errors import PolicyError
from simulator.trace import K

if TYPE_CHECKING:
    from simulator.engine import Simulation

__all__ = ["AutoscalerDriver"]


class AutoscalerDriver:
    """Runs ``sim.autoscaler.decide`` periodically (a plug-in: ``attach(sim)``)."""

    def __init__(self, interval: float = 10.0, max_unmet: int = 10_000) -> None:
        self.interval = interval
        self.max_unmet = max_unmet
        self.sim: Simulation | None = None
        self.reported_infeasible: set[int] = set()
        self.decisions = 0

    def attach(self, sim: Simulation) -> None:
        """Start ticking at time 0 (after the first scheduling round)."""
        self.sim = sim
        self.node_types = sim.cluster.node_types()
        sim.env.call_in(0.0, self._tick, priority=3, background=True)

    def _unmet(self) -> list[Any]:
        sim = self.sim
        assert sim is not None
        out: list[Any] = []
        for g in sim._groups.values():
            out.extend(list(g.queue)[: self.max_unmet])
        out.sort(key=lambda t: t.id)
        return out[: self.max_unmet]

    def _tick(self, ev: Any) -> None:
        sim = self.sim
        assert sim is not None
        if sim.done:
            return
        sim.state._now = sim.now
        name = sim.autoscaler_name
        dec = sim.autoscaler.decide(self._unmet(), sim.state, self.node_types)
        for attr in ("add", "remove", "infeasible"):
            if not hasattr(dec, attr):
                raise PolicyError(f"autoscaler {name!r} returned {dec!r}, expected a "
                                  f"ScaleDecision (missing {attr!r})")
        added: dict[str, int] = {}
        live = sim.state.count_by_type()
        for tname, count in sorted(dict(dec.add).items()):
            if tname not in self.node_types:
                raise PolicyError(f"autoscaler {name!r} asked for unknown node type {tname!r}; "
                                  f"known: {', '.join(self.node_types)}")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise PolicyError(f"autoscaler {name!r} asked for {count!r} nodes of "
                                  f"{tname!r}; expected an int >= 0")
            room = self.node_types[tname].max_count - live[tname]
            n = min(count, max(room, 0))
            if n:
                added[tname] = n
                live[tname] += n
                spec = sim.state.groups[tname].spec
                for _ in range(n):
                    node = sim.add_node(tname, "booting" if spec.boot_latency > 0 else "up")
                    if spec.boot_latency > 0:
                        sim.env.call_in(spec.boot_latency, self._booted, node)
        removed: list[str] = []
        nodes = sim.state.all_nodes()
        for nid in sorted(dict.fromkeys(dec.remove)):
            node = nodes.get(nid)
            if node is None:
                raise PolicyError(f"autoscaler {name!r} asked to remove unknown node {nid!r}")
            tname = node.spec.name
            if live[tname] - 1 < self.node_types[tname].min_count or node.draining_to_remove:
                continue
            live[tname] -= 1
            removed.append(nid)
            if node.tasks:
                node.draining_to_remove = True
                sim.set_node_state(node, "draining", "scale down")
            else:
                sim.remove_node(node, "scaled down")
        new_inf = [t for t in dec.infeasible if t not in self.reported_infeasible]
        self.reported_infeasible.update(new_inf)
        if added or removed or new_inf:
            self.decisions += 1
            sim._emit(K.SCALE, -1, -1, sim.trace.note(
                {"add": added, "remove": removed, "infeasible": sorted(new_inf),
                 "reason": str(getattr(dec, "reason", ""))}))
        sim.env.call_in(self.interval, self._tick, priority=3, background=True)

    def _booted(self, ev: Any) -> None:
        sim = self.sim
        assert sim is not None
        node = ev.args[0]
        if node.id in sim.state.all_nodes() and node.state == "booting":
            sim.set_node_state(node, "up", "booted")
