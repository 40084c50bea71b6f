"""The magics in an in-process IPython shell: registration and errors caught before submission."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import runtime


@pytest.fixture
def ip():
    """An in-process shell with the extension loaded."""
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kernel_ext")
    yield shell
    shell.run_line_magic("unload_ext", "kernel_ext")


def test_load_twice_registers_once_and_unload_cleans_up():
    """Loading twice is harmless; unloading removes every magic and preset."""
    import kernel_ext

    shell = InteractiveShell.instance()
    kernel_ext.load_ipython_extension(shell)
    magics = shell._kernel_ext_magics
    kernel_ext.load_ipython_extension(shell)
    assert shell._kernel_ext_magics is magics
    shell.run_line_magic("remote_preset", "gpu2 --gpus 2")
    assert "gpu2" in shell.magics_manager.magics["cell"]
    kernel_ext.unload_ipython_extension(shell)
    table = shell.magics_manager.magics
    assert "cluster" not in table["line"] and "remote" not in table["cell"]
    assert "gpu2" not in table["cell"] and "remote_preset" not in table["line"]
    kernel_ext.unload_ipython_extension(shell)  # twice: harmless


def test_help_has_usage_and_examples(ip):
    """%%remote? and %cluster? show magic_arguments usage and a transcript example."""
    doc = ip.magics_manager.magics["cell"]["remote"].__doc__
    assert "::\n\n  %remote [--cpus CPUS]" in doc or "%remote [--cpus CPUS]" in doc
    assert "In [2]: %%remote" in doc and "--bg" in doc and "--timeout S" in doc
    cdoc = ip.magics_manager.magics["line"]["cluster"].__doc__
    assert "{connect,status,scale,disconnect,monitor}" in cdoc and "In [1]:" in cdoc


def run(ip, src):
    """Run a cell; return its error (None when it succeeded)."""
    res = ip.run_cell(src)
    return res.error_in_exec or res.error_before_exec


def test_unknown_flag_is_usage_error(ip, capsys):
    """An unknown flag raises UsageError with the usage line, no traceback."""
    err = run(ip, "%%remote --bogus 1\nx = 1\n")
    assert isinstance(err, UsageError)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "usage: %%remote [--cpus" in text and "Traceback" not in text
    assert "%remote [" not in text.replace("%%remote [", "")  # the cell magic's own name
    assert isinstance(run(ip, "%%remote --cpus -1\nx = 1\n"), UsageError)
    assert "--cpus -1" in (lambda o: o.out + o.err)(capsys.readouterr())
    assert isinstance(run(ip, "%%remote --resources TPU=two\nx = 1\n"), UsageError)
    assert isinstance(run(ip, "%cluster frobnicate"), UsageError)


def test_cpu_or_gpu_in_resources_points_to_their_flag(ip):
    """--resources GPU=1 names the flag, the value and the flag to use, in clean text."""
    err = run(ip, "%%remote --resources GPU=1\nx = 1\n")
    assert isinstance(err, UsageError)
    assert str(err) == "--resources 'GPU=1': GPU has its own flag; use --gpus 1 instead"
    err = run(ip, "%%remote --resources TPU=1,CPU=0.5\nx = 1\n")
    assert str(err) == "--resources 'TPU=1,CPU=0.5': CPU has its own flag; use --cpus 0.5 instead"
    err = run(ip, "%%remote --cpus -1\nx = 1\n")
    assert str(err) == "--cpus -1.0: expected a number >= 0 (finite)"
    err = run(ip, "%%remote --resources TPU=-2\nx = 1\n")
    assert isinstance(err, UsageError) and str(err).startswith("--resources ")
    assert "  " not in str(err) and "resources=" not in str(err)


def test_syntax_error_reported_before_submission(ip, capsys):
    """A syntax error is shown with the cell's line number; nothing is submitted."""
    was = runtime.is_initialized()
    err = run(ip, "%%remote\nx = 1\ny = (2,\n")
    assert isinstance(err, UsageError)
    text = capsys.readouterr()
    shown = text.out + text.err
    assert "SyntaxError: '(' was never closed" in shown and "line 3" in shown
    assert "nothing was submitted" in shown and "Traceback" not in shown
    assert runtime.is_initialized() == was  # no cluster was started for it


def test_ipython_syntax_in_cell_is_refused(ip, capsys):
    """Shell escapes and magics cannot run remotely; the message says so."""
    err = run(ip, "%%remote\n!ls\n")
    assert err is not None
    text = capsys.readouterr()
    assert "plain Python" in text.out + text.err


def test_unpicklable_variable_named_before_submission(ip, capsys):
    """A variable that cannot be shipped is named, with its type and failing attribute."""
    ip.run_cell("import threading\nclass Holder:\n    def __init__(self):\n"
                "        self.lock = threading.Lock()\nh = Holder()\n")
    was = runtime.is_initialized()
    err = run(ip, "%%remote\nprint(h)\n")
    assert isinstance(err, runtime.SerializationError)
    text = capsys.readouterr()
    shown = text.out + text.err
    assert "'h'" in shown and "Holder" in shown and ".lock" in shown and "lock" in shown
    assert "Traceback" not in shown
    assert runtime.is_initialized() == was


def test_push_of_missing_variable_is_usage_error(ip):
    """--push names must exist."""
    assert isinstance(run(ip, "%%remote --push nope\nx = 1\n"), UsageError)


def test_preset_validates_flags(ip):
    """A preset with a bad flag is refused when defined."""
    with pytest.raises(UsageError):
        ip.run_line_magic("remote_preset", "bad --gpus lots")
    with pytest.raises(UsageError):
        ip.run_line_magic("remote_preset", "remote --gpus 1")  # an existing magic
