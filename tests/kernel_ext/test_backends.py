"""%%remote on the sim and dask backends: `%cluster connect` passes the address through."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell

import runtime

pytestmark = [pytest.mark.timeout(90)]


@pytest.fixture
def ip():
    """A plain IPython shell with the extension and no cluster; disconnects after."""
    if runtime.is_initialized():
        runtime.shutdown()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kernel_ext")
    try:
        yield shell
    finally:
        shell.run_line_magic("cluster", "disconnect")
        shell.run_line_magic("unload_ext", "kernel_ext")
        runtime.shutdown()


def test_sim_backend_runs_cells_in_virtual_time(ip, capsys):
    """On the sim backend a cell's sleep is virtual; names and results come back."""
    handle = ip.run_line_magic("cluster", "connect sim")
    assert handle.backend.kind == "sim"
    ip.run_cell("xs = [1, 2, 3]")
    res = ip.run_cell("%%remote\nimport time\nprint('in sim')\ntime.sleep(3600)\n"
                      "total = sum(xs)\ntotal * 2")
    assert res.error_in_exec is None and res.result == 12 and ip.user_ns["total"] == 6
    assert runtime.now() >= 3600
    ip.run_line_magic("cluster", "monitor --text")
    out = capsys.readouterr().out
    assert "in sim" in out and "virtual time 36" in out
    err = ip.run_cell("%%remote\nraise KeyError('missing')").error_in_exec
    assert isinstance(err, KeyError) and isinstance(err, runtime.TaskError)


@pytest.mark.dask
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dask_backend_by_address_and_by_client_variable(ip, tmp_path):
    """`%cluster connect tcp://...` and `%cluster connect NAME` (a Client) both work."""
    from tests.dask.cluster import dask_cluster, run_options

    with dask_cluster(tmp_path / "dask", {"w1": (2, {"CPU": 2})}) as dc:
        poll = run_options()["poll_interval"]
        handle = ip.run_line_magic("cluster", f"connect {dc.address} -O poll_interval={poll}")
        assert handle.backend.kind == "dask"
        ip.run_cell("ys = [4, 5]")
        res = ip.run_cell("%%remote\ns = sum(ys)\ns + 1")
        assert res.error_in_exec is None and res.result == 10 and ip.user_ns["s"] == 9
        ip.run_line_magic("cluster", "disconnect")
        ip.run_cell(f"from distributed import Client\nclient = Client({dc.address!r})")
        try:
            handle = ip.run_line_magic("cluster", "connect client")
            assert handle.backend.kind == "dask"
            assert ip.run_cell("%%remote\nsum(ys) * 2").result == 18
        finally:
            ip.run_line_magic("cluster", "disconnect")
            ip.run_cell("client.close()")
