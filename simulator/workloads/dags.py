"""DAG workloads: a :class:`Dag` builder (cycles refused at construction) and the seed's patterns.

Patterns: map-reduce; many models trained on the same data; different functions
on different data; nested parallelism (a tree whose inner nodes combine their
children's results). :class:`DagJobs` makes a workload of DAG jobs arriving as a
Poisson process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

from runtime.resources import Resources
from simulator.workloads.base import SimTask, as_request, rng_for

__all__ = ["Dag", "DagJobs", "map_reduce", "many_models", "different_functions", "nested_tree"]

CPU1 = Resources({"CPU": 1})
GPU1 = Resources({"CPU": 1, "GPU": 1})


class Dag:
    """A job made of named steps with dependencies; also a one-shot workload (``tasks``)."""

    def __init__(self, name: str = "dag") -> None:
        self.name = name
        self._steps: dict[str, dict] = {}

    def add(self, step: str, duration: float, request: Mapping[str, float] | Resources = CPU1,
            deps: Sequence[str] = (), *, kind: str | None = None,
            accelerator_type: str | None = None, max_retries: int = 3) -> Dag:
        """Add a step (``duration`` seconds at speed 1) after ``deps``; returns self."""
        if step in self._steps:
            raise ValueError(f"Dag {self.name!r}: step {step!r} added twice")
        if not (0.0 <= duration < math.inf):
            raise ValueError(f"Dag {self.name!r}: step {step!r} duration must be a finite "
                             f"number >= 0, got {duration!r}")
        self._steps[step] = dict(duration=float(duration), deps=tuple(deps),
                                 request=as_request(request, f"Dag step {step!r} request"),
                                 kind=kind or step.rstrip("0123456789_-") or step,
                                 accelerator_type=accelerator_type, max_retries=max_retries)
        return self

    def order(self) -> list[str]:
        """Steps in a topological order; ``ValueError`` naming a cycle or an unknown dep."""
        for s, d in self._steps.items():
            for dep in d["deps"]:
                if dep not in self._steps:
                    raise ValueError(f"Dag {self.name!r}: step {s!r} depends on unknown "
                                     f"step {dep!r}")
        out: list[str] = []
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done
        for root in self._steps:
            if state.get(root):
                continue
            stack: list[tuple[str, int]] = [(root, 0)]
            path: list[str] = []
            while stack:
                s, i = stack.pop()
                if i == 0:
                    state[s] = 1
                    path.append(s)
                deps = self._steps[s]["deps"]
                if i < len(deps):
                    stack.append((s, i + 1))
                    d = deps[i]
                    if state.get(d) == 1:
                        cyc = path[path.index(d):] + [d]
                        raise ValueError(f"Dag {self.name!r}: deps has a cycle: "
                                         f"{' -> '.join(reversed(cyc))}")
                    if not state.get(d):
                        stack.append((d, 0))
                else:
                    state[s] = 2
                    path.pop()
                    out.append(s)
        return out

    def __len__(self) -> int:
        return len(self._steps)

    def instantiate(self, first_id: int, submit: float, *, tenant: str = "default",
                    job: int | None = None, deadline: float | None = None) -> list[SimTask]:
        """Tasks for one run of the DAG, ids from ``first_id``, all submitted at ``submit``."""
        ids = {}
        out = []
        for n, step in enumerate(self.order()):
            d = self._steps[step]
            ids[step] = first_id + n
            out.append(SimTask(first_id + n, submit, d["duration"], d["request"], name=step,
                               kind=d["kind"], tenant=tenant,
                               accelerator_type=d["accelerator_type"],
                               deps=[ids[x] for x in d["deps"]],
                               job=first_id if job is None else job,
                               max_retries=d["max_retries"], deadline=deadline))
        return out

    def tasks(self, seed: int) -> Iterator[SimTask]:
        """The DAG once, at time 0 (so a ``Dag`` is itself a workload)."""
        yield from self.instantiate(0, 0.0)


def map_reduce(n_map: int = 8, n_reduce: int = 2, map_time: float = 10.0,
               reduce_time: float = 5.0, name: str = "mapreduce") -> Dag:
    """``n_map`` map steps, then ``n_reduce`` reduce steps each needing every map."""
    dag = Dag(name)
    maps = [f"map{i}" for i in range(n_map)]
    for m in maps:
        dag.add(m, map_time)
    for r in range(n_reduce):
        dag.add(f"reduce{r}", reduce_time, deps=maps)
    return dag


def many_models(n_models: int = 6, prep_time: float = 30.0, train_time: float = 300.0,
                name: str = "many_models") -> Dag:
    """Seed pattern: load the data once, train many models on it (GPU), pick the best."""
    dag = Dag(name).add("prep", prep_time, CPU1)
    for i in range(n_models):
        dag.add(f"train{i}", train_time, GPU1, deps=["prep"], kind="train")
    return dag.add("select", 5.0, CPU1, deps=[f"train{i}" for i in range(n_models)])


def different_functions(n_items: int = 4, name: str = "different_functions") -> Dag:
    """Seed pattern: different functions on different data (independent prep -> infer chains)."""
    dag = Dag(name)
    for i in range(n_items):
        dag.add(f"prep{i}", 20.0 + 5 * i, CPU1, kind="prep")
        dag.add(f"infer{i}", 40.0, GPU1, deps=[f"prep{i}"], kind="infer")
    return dag


def nested_tree(depth: int = 3, fanout: int = 2, leaf_time: float = 10.0,
                combine_time: float = 1.0, name: str = "nested") -> Dag:
    """Seed pattern: nested parallelism as a tree; each inner node combines its children."""
    if depth < 0 or fanout < 1:
        raise ValueError(f"nested_tree: need depth >= 0 and fanout >= 1, got depth={depth!r}, "
                         f"fanout={fanout!r}")
    dag = Dag(name)

    def build(path: str, level: int) -> str:
        step = f"n{path}"
        if level == depth:
            dag.add(step, leaf_time, kind="leaf")
        else:
            kids = [build(f"{path}_{k}", level + 1) for k in range(fanout)]
            dag.add(step, combine_time, deps=kids, kind="combine")
        return step

    build("", 0)
    return dag


class DagJobs:
    """``n`` DAG jobs from ``make(rng)`` arriving as a Poisson process of ``rate`` per second."""

    def __init__(self, n: int, rate: float, make: Callable[..., Dag] | Dag,
                 tenants: Sequence[str] = ("default",), slo: float | None = None,
                 name: str = "dagjobs") -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"DagJobs: n must be an int >= 0, got {n!r}")
        if not (0 < rate < math.inf):
            raise ValueError(f"DagJobs: rate must be a finite number > 0, got {rate!r}")
        self.n, self.rate, self.make, self.tenants, self.slo = n, rate, make, list(tenants), slo
        self.name = name
        if isinstance(make, Dag):
            make.order()  # refuse cycles now

    def tasks(self, seed: int) -> Iterator[SimTask]:
        """Yield each job's steps (topological order) at its arrival time."""
        rng = rng_for(seed, self.name)
        t = 0.0
        nxt = 0
        for j in range(self.n):
            t += rng.expovariate(self.rate)
            dag = self.make if isinstance(self.make, Dag) else self.make(rng)
            steps = dag.instantiate(nxt, t, tenant=self.tenants[j % len(self.tenants)],
                                    deadline=self.slo)
            nxt += len(steps)
            yield from steps
