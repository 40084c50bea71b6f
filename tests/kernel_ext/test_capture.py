"""Cell analysis: which names a %%remote cell reads and which it assigns."""

from __future__ import annotations

import pytest

from kernel_ext.capture import analyze_cell, split_last_expression
from kernel_ext.cellrun import CellPayload, ModuleRef, ReprOnly, pack, run_cell, unpack


def reads(src: str) -> set[str]:
    """The names a cell reads."""
    return set(analyze_cell(src).reads)


def test_reads_names_used_before_assignment():
    """A name used before the cell binds it is read; one bound first is not."""
    assert reads("y = x + 1\nz = y * 2") == {"x"}
    assert reads("x = x + 1") == {"x"}


def test_function_locals_are_not_reads_but_its_globals_are():
    """Parameters and locals of a function defined in the cell are not shipped."""
    r = reads("def f(a):\n    b = a + 1\n    return helper(b) + scale\n")
    assert r == {"helper", "scale"}


def test_comprehension_and_loop_targets_are_not_reads():
    """Loop, with and comprehension targets bind before their bodies use them."""
    r = reads("for i in items:\n    total = i\n"
              "with ctx() as fh:\n    fh.write('x')\n"
              "sq = [k * k for k in data]\n")
    assert r == {"items", "ctx", "data"}


def test_conditional_binding_still_reads():
    """A name bound only in one branch may come from the namespace."""
    assert "x" in reads("if flag:\n    x = 1\nprint(x)")


def test_writes_in_order_including_imports_defs_and_globals():
    """Assigned names, imports, defs, classes and `global` writes come back in order."""
    a = analyze_cell("import numpy as np\nx = 1\ndef f():\n    global g\n    g = 2\n"
                     "class C: pass\nfor i in range(2): pass\n")
    assert a.writes[:2] == ("np", "x")
    assert {"f", "g", "C", "i"} <= set(a.writes)
    assert a.imports == {"np": "numpy"}


def test_last_expression_detected_and_split():
    """A trailing expression is evaluated separately so its value can be displayed."""
    assert analyze_cell("x = 1\nx + 1").has_last_expression
    assert not analyze_cell("x = 1").has_last_expression
    body, last = split_last_expression("x = 1\nx + 1", line_offset=1)
    assert len(body.body) == 1 and last is not None and last.body.lineno == 3


def test_syntax_error_raises():
    """Bad code raises SyntaxError from the analysis, before anything runs."""
    with pytest.raises(SyntaxError):
        analyze_cell("x = (1,\n")


def test_run_cell_executes_pulls_and_returns_last_value():
    """The task body runs the code with shipped values and pulls assigned names."""
    payload = CellPayload("import math\ny = x * 2\nz = math.sqrt(16)\ny + 1", "<t>", 1,
                          {"x": pack(20)}, ("y", "z", "math", "missing"))
    res = run_cell(payload)
    assert unpack(res.values["y"]) == 40 and unpack(res.values["z"]) == 4.0
    assert res.values["math"] == ModuleRef("math")
    assert "missing" not in res.values
    assert res.has_result and unpack(res.result) == 41


def test_run_cell_skips_unpicklable_names_and_reprs_results():
    """A name that cannot travel back is reported, not fatal; the result falls back to repr."""
    payload = CellPayload("import threading\nlock = threading.Lock()\nok = 1\nlock", "<t>", 1,
                          {}, ("lock", "ok"))
    res = run_cell(payload)
    assert unpack(res.values["ok"]) == 1 and set(res.values) == {"ok"}
    assert "lock" in res.skipped and "lock" in res.skipped["lock"].lower()
    shown = unpack(res.result)
    assert isinstance(shown, ReprOnly) and "lock" in repr(shown)


def test_pack_keeps_main_functions_by_value_and_big_buffers_out_of_band():
    """A function from __main__ travels by value; a large array's buffer stays out of band."""
    import pickle

    import numpy as np

    ns: dict = {"__name__": "__main__"}
    exec("def triple(v):\n    return 3 * v\n", ns)
    packed = pack(ns["triple"])
    assert unpack(pickle.loads(pickle.dumps(packed)))(5) == 15
    arr = np.arange(300_000, dtype=np.float64)
    big = pack(arr)
    assert len(big.data) < 10_000 and len(big.buffers) == 1
    assert isinstance(big.buffers[0], pickle.PickleBuffer)
    again = pickle.loads(pickle.dumps(big, protocol=5))
    assert np.array_equal(unpack(again), arr)


def test_run_cell_error_carries_trimmed_traceback():
    """A failing cell's exception keeps its type and carries only the cell's frames."""
    payload = CellPayload("def f():\n    raise KeyError('k')\nf()", "<remote cell 9>", 1, {}, ())
    with pytest.raises(KeyError) as info:
        run_cell(payload)
    text = info.value._nbcluster_remote_tb
    assert text.startswith("Traceback") and '<remote cell 9>", line 4' in text
    assert "cellrun.py" not in text and "raise KeyError('k')" in text
