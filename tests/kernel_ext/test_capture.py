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
    assert "cellrun.py" not in text and "cellexec.py" not in text and "raise KeyError('k')" in text


def test_augmented_assignment_reads_and_writes_the_name():
    """``x += 1`` needs ``x`` from the notebook and brings it back (also via ``global``)."""
    a = analyze_cell("counter += 1\nnames += ['b']")
    assert {"counter", "names"} <= a.reads and {"counter", "names"} <= set(a.writes)
    a = analyze_cell("def bump():\n    global n\n    n += 1\nbump()")
    assert "n" in a.reads and "n" in a.writes
    assert "total" not in analyze_cell("total = 0\ntotal += 1").reads  # bound first


def test_names_that_may_change_in_place():
    """Item/attribute stores, method calls, aliases and unknown calls may change a value;
    pure reads (operators, builtins, reading methods, indexing) do not."""
    a = analyze_cell("d['k'] = 2\nitems.append(3)\np.x = 100\ncfg.update(a=1)\n"
                     "alias = data\nhelper(conf)\nprint(len(safe), safe[0], safe.get(1))\n"
                     "q = other + 1\nfor row in rows:\n    row.clear()")
    assert set(a.maybe_mutated) == {"d", "items", "p", "cfg", "data", "conf", "rows"}
    assert {"safe", "other"} <= a.reads


def test_trailing_semicolon_marks_the_cell_quiet():
    """A last expression ending with ``;`` (comments allowed after it) is not displayed."""
    assert analyze_cell("x = 1\nx;").quiet
    assert analyze_cell("x = 1\nx;  # hidden").quiet
    assert not analyze_cell("x = 1\nx").quiet
    assert not analyze_cell("s = 'a;'\ns").quiet


def test_run_cell_brings_back_values_changed_in_place():
    """The worker fingerprints the shipped values the cell may change and sends back
    those that changed (and only those)."""
    payload = CellPayload("d['k'] = 2\nitems.append(3)\nprint(len(same))", "<t>", 1,
                          {"d": pack({"k": 1}), "items": pack([1]), "same": pack([7])},
                          (), ("d", "items", "same"))
    res = run_cell(payload)
    assert set(res.mutated) == {"d", "items"}
    assert unpack(res.values["d"]) == {"k": 2} and unpack(res.values["items"]) == [1, 3]
    assert "same" not in res.values and not res.unknown


def test_run_cell_shipped_arrays_are_writable():
    """Small and large numpy arrays arrive writable; writing into them is an in-place change."""
    import numpy as np

    small, big = np.zeros(3), np.zeros(300_000)
    payload = CellPayload("small[0] = 5\nbig[-1] = 7\nsmall.flags.writeable", "<t>", 1,
                          {"small": pack(small), "big": pack(big)}, (), ("small", "big"))
    res = run_cell(payload)
    assert unpack(res.result) is np.True_ or unpack(res.result) is True
    assert set(res.mutated) == {"small", "big"}
    assert unpack(res.values["small"])[0] == 5 and unpack(res.values["big"])[-1] == 7
    assert small[0] == 0  # the original is untouched until the notebook applies it


def test_run_cell_function_globals_are_shared_and_checked():
    """A function from an earlier cell that changes a global changes the cell's copy (when
    the cell has it) or its own copy, which is checked and brought back too."""
    ns: dict = {"__name__": "__main__", "log": [], "seen": set()}
    exec("def note(v):\n    log.append(v)\n    seen.add(v)\n", ns)
    payload = CellPayload("note(1)\nlen(log)", "<t>", 1,
                          {"note": pack(ns["note"]), "log": pack([])}, (), ())
    res = run_cell(payload)
    assert unpack(res.result) == 1  # the cell saw what the function appended
    assert set(res.mutated) == {"log", "seen"}
    assert unpack(res.values["log"]) == [1] and unpack(res.values["seen"]) == {1}


def test_apply_in_place_keeps_the_notebook_object():
    """Dicts, lists, sets, arrays and plain objects are updated in place; others not."""
    import numpy as np

    from kernel_ext.inplace import apply_in_place

    class Point:
        def __init__(self, x):
            self.x = x

    d, lst, s, arr, p = {"a": 1}, [1], {1}, np.zeros(2), Point(1)
    for old, new in ((d, {"b": 2}), (lst, [1, 2]), (s, {3}), (arr, np.ones(2)),
                     (p, Point(5))):
        assert apply_in_place(old, new) is True
    assert d == {"b": 2} and lst == [1, 2] and s == {3} and arr.tolist() == [1, 1] and p.x == 5
    assert apply_in_place((1,), (2,)) is False  # immutable: rebind instead
    assert apply_in_place(np.zeros(2), np.zeros(3)) is False  # another shape
    assert apply_in_place([1], {"a": 1}) is False  # another type


def test_run_cell_turns_sys_exit_into_cell_exit():
    """sys.exit() in a cell becomes CellExit (an Exception), never SystemExit."""
    from kernel_ext.cellrun import CellExit

    with pytest.raises(CellExit) as info:
        run_cell(CellPayload("import sys\nsys.exit(3)", "<t>", 1, {}, ()))
    assert info.value.code == 3 and not isinstance(info.value, SystemExit)


def test_functions_of_real_modules_keep_their_globals():
    """A shipped function from an importable module is never rebound to the cell's names."""
    import json

    payload = CellPayload("dumps({})", "<t>", 1,
                          {"dumps": pack(json.dumps), "_default_encoder": pack("not it")},
                          (), ())
    res = run_cell(payload)
    assert unpack(res.result) == "{}" and not isinstance(json._default_encoder, str)
