"""Independent jobs with arrival processes: Poisson, bursts, long-lived services, QPU jobs."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator, Sequence

from runtime.resources import Resources
from simulator.workloads.base import Const, Dist, Exp, Shape, SimTask, rng_for

__all__ = ["JobMix", "Services", "QPUJobs"]


def _check_pos(where: str, name: str, v: float, *, allow_zero: bool = False) -> None:
    ok = (v >= 0 if allow_zero else v > 0) and v < math.inf
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok:
        raise ValueError(f"{where}: {name} must be a finite number {'>=' if allow_zero else '>'} 0, "
                         f"got {v!r}")


class JobMix:
    """``n`` single-task jobs drawn from ``shapes``, arriving as a Poisson process or in bursts.

    ``rate`` is arrivals per second (Poisson). With ``burst_size > 1`` jobs arrive
    in bursts of that size, bursts forming a Poisson process of rate
    ``rate / burst_size``. ``tenants`` maps tenant name to weight. ``slo`` sets a
    deadline of ``slo`` x the job's duration.
    """

    def __init__(self, n: int, rate: float, shapes: Sequence[Shape],
                 tenants: dict[str, float] | None = None, *, burst_size: int = 1,
                 slo: float | None = None, max_retries: int = 3, start: float = 0.0,
                 name: str = "jobmix") -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"JobMix: n must be an int >= 0, got {n!r}")
        _check_pos("JobMix", "rate", rate)
        if not shapes:
            raise ValueError("JobMix: shapes must hold at least one Shape, got []")
        if isinstance(burst_size, bool) or not isinstance(burst_size, int) or burst_size < 1:
            raise ValueError(f"JobMix: burst_size must be an int >= 1, got {burst_size!r}")
        if slo is not None:
            _check_pos("JobMix", "slo", slo)
        self.n, self.rate, self.shapes = n, float(rate), list(shapes)
        self.tenants = dict(tenants or {"default": 1.0})
        for t, w in self.tenants.items():
            _check_pos("JobMix", f"tenants[{t!r}]", w)
        self.burst_size, self.slo, self.max_retries, self.start = burst_size, slo, max_retries, start
        self.name = name

    def tasks(self, seed: int) -> Iterator[SimTask]:
        """Yield the jobs in arrival order."""
        rng = rng_for(seed, self.name)
        shape_cum = list(itertools.accumulate(s.weight for s in self.shapes))
        tenant_names = list(self.tenants)
        tenant_cum = list(itertools.accumulate(self.tenants.values()))
        t = self.start
        burst_rate = self.rate / self.burst_size
        for i in range(self.n):
            if i % self.burst_size == 0:
                t += rng.expovariate(burst_rate)
            s = self.shapes[bisect.bisect(shape_cum, rng.random() * shape_cum[-1])
                            if len(self.shapes) > 1 else 0]
            tenant = tenant_names[bisect.bisect(tenant_cum, rng.random() * tenant_cum[-1])
                                  if len(tenant_names) > 1 else 0]
            d = s.duration(rng)
            yield SimTask(i, t, d, s.request, name=s.kind, kind=s.kind, tenant=tenant,
                          accelerator_type=s.accelerator_type, max_retries=self.max_retries,
                          deadline=None if self.slo is None else max(self.slo * d, 1e-9))


class Services:
    """``n`` long-lived services (actors) that start at ``start`` and hold resources for ``lifetime``.

    Each is one task of priority 10 and kind ``kind`` (give it a kind the speed table
    does not list, so its lifetime is not scaled by device speed); other work runs
    on what the services leave free.
    """

    def __init__(self, n: int, request: dict[str, float] | Resources, lifetime: float,
                 *, start: float = 0.0, kind: str = "service", tenant: str = "default",
                 name: str = "services") -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"Services: n must be an int >= 0, got {n!r}")
        _check_pos("Services", "lifetime", lifetime)
        _check_pos("Services", "start", start, allow_zero=True)
        self.n, self.lifetime, self.start = n, lifetime, start
        self.request = request if isinstance(request, Resources) else Resources(
            request, where="Services request")
        self.kind, self.tenant, self.name = kind, tenant, name

    def tasks(self, seed: int) -> Iterator[SimTask]:
        """Yield the services (all at ``start``)."""
        for i in range(self.n):
            yield SimTask(i, self.start, self.lifetime, self.request, name=self.kind,
                          kind=self.kind, tenant=self.tenant, priority=10)


class QPUJobs:
    """Quantum jobs: Poisson arrivals, ``shots`` per job, one job at a time per QPU.

    Run time on a QPU = ``overhead`` + shots x the device's ``shot_time`` (a
    ``QPU=1`` request makes the device exclusive). ``tenants`` share the QPU.
    """

    def __init__(self, n: int, rate: float, shots: Dist = Const(4000.0), overhead: float = 2.0,
                 tenants: Sequence[str] = ("default",), name: str = "qpu") -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"QPUJobs: n must be an int >= 0, got {n!r}")
        _check_pos("QPUJobs", "rate", rate)
        _check_pos("QPUJobs", "overhead", overhead, allow_zero=True)
        if not tenants:
            raise ValueError("QPUJobs: tenants must name at least one tenant, got []")
        self.n, self.rate, self.shots, self.overhead = n, rate, shots, overhead
        self.tenants, self.name = list(tenants), name
        self.request = Resources({"CPU": 1, "QPU": 1})

    def tasks(self, seed: int) -> Iterator[SimTask]:
        """Yield the jobs in arrival order."""
        rng = rng_for(seed, self.name)
        t = 0.0
        arrivals = Exp(1.0 / self.rate)
        for i in range(self.n):
            t += arrivals(rng)
            shots = max(1, int(round(self.shots(rng))))
            yield SimTask(i, t, self.overhead, self.request, name="circuit", kind="circuit",
                          tenant=self.tenants[i % len(self.tenants)], shots=shots)
