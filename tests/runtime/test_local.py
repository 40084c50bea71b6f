"""Local-backend specifics: processes, shared memory, output, imports, policies, nodes."""

from __future__ import annotations

import os
import sys
import time

import pytest

import runtime
from runtime.policies import Place

np = pytest.importorskip("numpy")


def _wait_for(pred, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _segments():
    try:
        return {f for f in os.listdir("/dev/shm") if f.startswith(f"nbc_{os.getpid()}_")}
    except OSError:
        return set()


@runtime.remote
def total(a):
    return float(a.sum()), a.flags.writeable


@runtime.remote
def make(n):
    return np.arange(n, dtype=np.float64)


@runtime.remote
def echo(x):
    print(f"line one {x}")
    print("to stderr", file=sys.stderr)
    return x


@runtime.remote
def heavy_modules():
    return sorted({m.split(".")[0] for m in sys.modules} &
                  {"numpy", "dask", "distributed", "IPython", "ipykernel", "pandas"})


@runtime.remote
def fib(n):
    if n < 2:
        return n
    return sum(runtime.get([fib.remote(n - 1), fib.remote(n - 2)]))


@runtime.remote
def sleeper(s):
    time.sleep(s)
    return s


@runtime.remote
def nested_timeout():
    try:
        runtime.get(sleeper.remote(600), timeout=0.2)
    except runtime.GetTimeoutError:
        return "timed out inside"
    return "no timeout"


@runtime.remote
def pid():
    return os.getpid()


@runtime.remote
def which_node(x=None):
    return x


class _Pickles:
    count = 0

    def __reduce__(self):
        type(self).count += 1
        return (_Pickles, ())


def test_large_arrays_travel_through_shared_memory(local):
    """A 10 MB array reaches a task via shm (read-only, no copy); segments are unlinked."""
    local(num_cpus=2)
    before = _segments()
    arr = np.ones(10 * 2**20 // 8)
    ref = runtime.put(arr)
    assert len(_segments() - before) == 1
    assert runtime.get(total.remote(ref), timeout=60) == (float(arr.size), False)
    assert runtime.get(total.remote(arr), timeout=60)[0] == float(arr.size)  # direct argument
    back = runtime.get(make.remote(1_000_000), timeout=60)
    assert back[-1] == 999_999.0
    del ref, back
    import gc

    gc.collect()
    runtime.get(total.remote(np.zeros(3)), timeout=60)  # lets the driver process frees
    _wait_for(lambda: _segments() <= before | set(), what="freed segments to be unlinked")
    runtime.shutdown()
    assert _segments() == set()


def test_no_shm_left_after_shutdown(local):
    """Shutdown unlinks every segment, also those of results still held."""
    local(num_cpus=1)
    refs = [make.remote(200_000) for _ in range(3)]
    runtime.get(refs, timeout=60)
    assert _segments()
    runtime.shutdown()
    assert _segments() == set()


def test_print_is_forwarded_with_a_prefix(local, capsys):
    """print in a task reaches the driver's stdout/stderr as '(name pid=N) text'."""
    local(num_cpus=1)
    assert runtime.get(echo.remote(7), timeout=60) == 7
    out = capsys.readouterr()
    assert "(echo pid=" in out.out and "line one 7" in out.out
    assert "to stderr" in out.err


def test_output_hook_gets_task_ids(local):
    """The backend calls on_output(task_id, stream, text): the notebook layer routes by id."""
    backend = local(num_cpus=1)
    got = []
    backend.on_output = lambda tid, stream, text: got.append((tid, stream, text))
    a, b = echo.remote("a"), echo.remote("b")
    runtime.get([a, b], timeout=60)
    assert (a.id, "stdout", "line one a\n") in got
    assert (b.id, "stdout", "line one b\n") in got
    assert any(t == a.id and s == "stderr" for t, s, _ in got)


def test_workers_import_little(local):
    """Workers do not import numpy, dask or IPython unless a task does."""
    local(num_cpus=1)
    assert runtime.get(heavy_modules.remote(), timeout=60) == []


def test_function_is_pickled_once(local):
    """A remote function is pickled once, not for every call."""
    local(num_cpus=2)
    marker = _Pickles()

    def uses_marker(i):
        return i if marker else -1

    f = runtime.remote(uses_marker)
    _Pickles.count = 0
    assert runtime.get([f.remote(i) for i in range(20)], timeout=60) == list(range(20))
    assert _Pickles.count == 1


def test_logical_resources_without_hardware(local):
    """init(num_cpus=2, num_gpus=4, resources={TPU: 2, QPU: 1}) works with no GPU."""
    local(num_cpus=2, num_gpus=4, resources={"TPU": 2, "QPU": 1})
    assert runtime.cluster_resources() == {"CPU": 2.0, "GPU": 4.0, "QPU": 1.0, "TPU": 2.0}
    refs = [which_node.options(resources={"QPU": 1}).remote(1),
            which_node.options(num_gpus=4).remote(2),
            which_node.options(resources={"TPU": 0.5}, num_cpus=0.5).remote(3)]
    assert runtime.get(refs, timeout=60) == [1, 2, 3]


def test_nested_recursion_on_one_cpu(local):
    """fib(6) on a single CPU finishes: blocked parents lend their CPU."""
    local(num_cpus=1)
    assert runtime.get(fib.remote(6), timeout=120) == 8
    assert runtime.available_resources() == {"CPU": 1.0}


def test_nested_get_timeout(local):
    """get(timeout=) inside a task raises GetTimeoutError there; the CPU comes back.

    (With one CPU the parent would wait for the CPU it lent to the 600 s child:
    re-acquiring never over-commits.)
    """
    local(num_cpus=2)
    assert runtime.get(nested_timeout.remote(), timeout=60) == "timed out inside"


def test_worker_death_is_noticed_at_once(local):
    """Killing an idle worker publishes worker_died without waiting for a timeout."""
    backend = local(num_cpus=1)
    events = []
    runtime.subscribe(events.append)
    wpid = runtime.get(pid.remote(), timeout=60)
    os.kill(wpid, 9)
    _wait_for(lambda: any(e.kind == "worker_died" and e.data.get("pid") == wpid
                          for e in events), timeout=10, what="worker_died")
    assert runtime.get(pid.remote(), timeout=60) != wpid
    assert wpid not in backend.worker_pids()


def test_heterogeneous_nodes_and_custom_policy(local):
    """nodes= makes labelled virtual nodes; a custom policy object chooses among them."""

    class LastNode:
        name = "last"

        def schedule(self, pending, cluster):
            out = []
            for t in pending:
                fits = list(cluster.fitting(t))
                if fits:
                    out.append(Place(t.id, fits[-1].id))
                    break
            return out

    local(nodes=[{"name": "a100", "num_cpus": 1, "num_gpus": 1, "accelerator_type": "A100",
                  "count": 2},
                 {"name": "cpu", "num_cpus": 2}], policy=LastNode())
    nodes = {n["NodeID"]: n for n in runtime.nodes()}
    assert sorted(nodes) == ["a100-0", "a100-1", "cpu-0"]
    assert nodes["a100-1"]["Labels"]["accelerator_type"] == "A100"
    events = []
    runtime.subscribe(events.append)
    r = which_node.remote(1)
    runtime.get(r, timeout=60)
    assert [e.node for e in events if e.kind == "task_started" and e.task == r.id] == ["cpu-0"]
    g = which_node.options(num_gpus=1).remote(2)
    runtime.get(g, timeout=60)
    assert [e.node for e in events if e.kind == "task_started" and e.task == g.id] == ["a100-1"]


def test_bad_policy_decision_is_a_policy_error(local):
    """A policy placing a task on an unknown node fails that task with PolicyError."""

    class Broken:
        name = "broken"

        def schedule(self, pending, cluster):
            return [Place(t.id, "nowhere") for t in pending]

    local(num_cpus=1, policy=Broken())
    with pytest.raises(runtime.PolicyError, match="broken.*nowhere"):
        runtime.get(which_node.remote(1), timeout=60)


def test_policy_by_name_and_bad_init_options(local):
    """policy='fifo' works; unknown init options and policy names fail naming them."""
    with pytest.raises(TypeError, match="bogus"):
        runtime.init(num_cpus=1, bogus=True)
    assert not runtime.is_initialized()
    with pytest.raises(ValueError, match="no_such_policy"):
        runtime.init(num_cpus=1, policy="no_such_policy")
    assert not runtime.is_initialized()
    local(num_cpus=1, policy="fifo")
    assert runtime.get(which_node.remote(3), timeout=60) == 3


def test_cancel_a_task_blocked_in_nested_get(local):
    """cancel interrupts a task blocked in a nested get; resources are returned."""
    local(num_cpus=2)

    @runtime.remote
    def parent():
        return runtime.get(sleeper.remote(600))

    ref = parent.remote()
    _wait_for(lambda: runtime.current_backend().log.tasks.get(ref.id) is not None and
              runtime.current_backend().log.tasks[ref.id].state == "blocked", what="blocked")
    assert runtime.cancel(ref)
    with pytest.raises(runtime.TaskCancelledError):
        runtime.get(ref, timeout=30)


def test_actor_calls_wait_for_their_arguments_in_order(local):
    """A call whose argument is pending holds later calls back (submission order kept)."""
    local(num_cpus=2)

    @runtime.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, x):
            self.items.append(x)
            return list(self.items)

    a = Log.remote()
    slow = sleeper.remote(0.3)
    r1 = a.add.remote(slow)
    r2 = a.add.remote("after")
    assert runtime.get(r2, timeout=60) == [0.3, "after"]
    assert runtime.get(r1, timeout=60) == [0.3]


def test_autoscaler_adds_a_fitting_node(local):
    """RELIABILITY 8: with an autoscaler whose node type fits, a node is added and the task runs."""
    local(num_cpus=1, autoscaler="demand",
          node_types=[{"name": "qpu", "resources": {"CPU": 1, "QPU": 1}, "max_count": 1}])
    events = []
    runtime.subscribe(events.append)
    assert runtime.get(which_node.options(resources={"QPU": 1}).remote(5), timeout=60) == 5
    assert "qpu-0" in {n["NodeID"] for n in runtime.nodes()}
    assert any(e.kind == "scale_decision" and e.data["add"] == {"qpu": 1} for e in events)
    assert any(e.kind == "node_added" and e.node == "qpu-0" for e in events)
    with pytest.raises(runtime.InfeasibleRequestError, match="no node type"):
        which_node.options(resources={"TPU": 1}).remote(1)
    assert len(runtime.nodes()) == 2  # nothing launched for the infeasible request


def test_kill_with_restart_reruns_the_constructor(local):
    """kill(actor, no_restart=False) restarts it (max_restarts) with fresh state."""
    local(num_cpus=1)

    @runtime.remote(max_restarts=1)
    class Box:
        def __init__(self):
            self.n = 0

        def bump(self):
            self.n += 1
            return self.n, os.getpid()

    b = Box.remote()
    n1, pid1 = runtime.get(b.bump.remote(), timeout=60)
    runtime.get(b.bump.remote(), timeout=60)
    runtime.kill(b, no_restart=False)
    n2, pid2 = runtime.get(b.bump.remote(), timeout=60)
    assert (n1, n2) == (1, 1) and pid2 != pid1
    runtime.kill(b)
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(b.bump.remote(), timeout=30)


SCRIPT = '''
import runtime as rt

@rt.remote
def double(x):
    return 2 * x

class Point:
    def __init__(self, x):
        self.x = x

@rt.remote
def move(p):
    return Point(p.x + 1)

rt.init(num_cpus=1)
print(rt.get(double.remote(21)), rt.get(move.remote(Point(1))).x)
rt.shutdown()
'''


def test_functions_and_classes_from_main_travel_by_value(tmp_path):
    """A script's (or notebook's) __main__ functions and classes work in workers."""
    import subprocess

    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["42", "2"]


def test_cancel_is_recursive(local):
    """Cancelling a parent also cancels the tasks it submitted."""
    local(num_cpus=2)

    @runtime.remote
    def spawner():
        child = sleeper.remote(600)
        return runtime.get(child), child

    ref = spawner.remote()
    backend = runtime.current_backend()
    _wait_for(lambda: len(backend.log.tasks) >= 2 and backend.log.tasks.get(ref.id) is not None
              and backend.log.tasks[ref.id].state == "blocked", what="parent blocked")
    child_id = max(backend.log.tasks)
    assert runtime.cancel(ref)
    with pytest.raises(runtime.TaskCancelledError):
        runtime.get(ref, timeout=30)
    _wait_for(lambda: backend.log.tasks[child_id].state == "cancelled", what="child cancelled")


KERNEL_CODE = '''
import runtime as rt
rt.init(num_cpus=1)
@rt.remote
def f(x):
    print("hi from", x)
    return x * 2
class P:
    def __init__(self, v):
        self.v = v
@rt.remote
def g(p):
    return P(p.v + 1)
print("result", rt.get(f.remote(21)), rt.get(g.remote(P(1))).v)
rt.shutdown()
'''


@pytest.mark.timeout(90)
def test_runs_inside_a_real_kernel():
    """In a Jupyter kernel (threads, __main__ classes) tasks run and print reaches the cell."""
    jc = pytest.importorskip("jupyter_client.manager")
    km, kc = jc.start_new_kernel(kernel_name="python3")
    texts = []
    try:
        reply = kc.execute_interactive(
            KERNEL_CODE, timeout=60,
            output_hook=lambda m: texts.append(m["content"].get("text", ""))
            if m["msg_type"] == "stream" else None)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    out = "".join(texts)
    assert reply["content"]["status"] == "ok", out
    assert "result 42 2" in out
    assert "(f pid=" in out and "hi from 21" in out


def test_policy_preemption_requeues_the_victim(local, tmp_path):
    """A Preempt decision stops a running task; it re-runs later and still succeeds."""
    from runtime.policies import Ledger, Preempt

    class PreemptLow:
        name = "preempt-low"

        def schedule(self, pending, cluster):
            out = []
            with Ledger(cluster) as ledger:  # what this call placed is not free any more
                for t in sorted(pending, key=lambda t: (-t.priority, t.id)):
                    placed = ledger.place(t)
                    if placed is not None:
                        out.append(placed)
                    elif t.priority > 0:
                        victims = [r for r in cluster.running() if r.priority == 0]
                        if victims:
                            out.append(Preempt(victims[0].id))
            return out

    @runtime.remote
    def low(path):
        if os.path.exists(path):
            return "low re-ran"
        open(path, "w").close()
        time.sleep(600)

    local(num_cpus=1, policy=PreemptLow())
    events = []
    runtime.subscribe(events.append)
    marker = str(tmp_path / "low-started")
    lo = low.remote(marker)
    _wait_for(lambda: os.path.exists(marker), what="the low task to start")
    hi = which_node.options(priority=5).remote("high")
    assert runtime.get(hi, timeout=60) == "high"
    assert runtime.get(lo, timeout=60) == "low re-ran"
    assert any(e.kind == "task_preempted" and e.task == lo.id for e in events)


@runtime.remote
def callback_inside():
    slow = sleeper.remote(0.3)
    seen = []
    slow.add_done_callback(seen.append)
    fast = runtime.get(sleeper.remote(0.01))  # must not wait behind the callback helper
    runtime.get(slow)
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    return fast, len(seen)


def test_done_callback_inside_a_task(local):
    """add_done_callback works inside a task, beside the task's own get calls."""
    local(num_cpus=2)
    assert runtime.get(callback_inside.remote(), timeout=60) == (0.01, 1)


def test_refs_from_an_old_session_are_rejected(local):
    """A ref from a shut-down session is an error naming it, never another object's value."""
    local(num_cpus=1)
    old = runtime.put("old value")
    local(num_cpus=1)
    runtime.put("new value")
    with pytest.raises(ValueError, match="another runtime session"):
        which_node.remote(old)
    with pytest.raises(runtime.RuntimeShutdownError):
        runtime.get(old)
