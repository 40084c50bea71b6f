"""@remote / .options() validation: errors name the keyword before anything runs."""

import pytest

import runtime
from runtime.options import resource_request, validate_options


@pytest.mark.parametrize(
    ("kwargs", "exc", "needle"),
    [
        ({"num_gpus": -1}, ValueError, "num_gpus"),
        ({"num_cpus": float("nan")}, ValueError, "num_cpus"),
        ({"resources": {"TPU": "two"}}, TypeError, "TPU"),
        ({"resources": {"GPU": 2}}, ValueError, "num_gpus"),
        ({"bogus": 1}, TypeError, "bogus"),
        ({"retry_exceptions": [int]}, TypeError, "retry_exceptions"),
        ({"max_retries": 1.5}, TypeError, "max_retries"),
    ],
)
def test_bad_options_fail_at_decoration(kwargs, exc, needle):
    """Each bad keyword raises at decoration time with the keyword in the message."""
    with pytest.raises(exc, match=needle):
        runtime.remote(**kwargs)


def test_bad_options_fail_at_options_time():
    """.options() validates too, and the original function is untouched."""
    f = runtime.remote(lambda: 1)
    with pytest.raises(ValueError, match="num_cpus"):
        f.options(num_cpus=-2)
    assert f.options(num_cpus=0.5)._request == {"CPU": 0.5}


def test_remote_function_cannot_be_called_directly():
    """Calling a remote function like a plain one explains .remote()."""
    f = runtime.remote(lambda: 1)
    with pytest.raises(TypeError, match=r"\.remote"):
        f()


def test_request_defaults():
    """Tasks ask for one CPU by default; actors for none; GPUs and custom add up."""
    assert resource_request(validate_options("task", {})) == {"CPU": 1}
    assert resource_request(validate_options("actor", {}), default_cpus=0) == {}
    req = resource_request(validate_options("task", {"num_gpus": 0.5, "resources": {"QPU": 1}}))
    assert req == {"CPU": 1, "GPU": 0.5, "QPU": 1}


def test_actor_only_options_are_refused_on_functions():
    """max_restarts belongs to actors: a function refuses it, a class accepts it."""
    with pytest.raises(TypeError, match="max_restarts"):
        runtime.remote(max_restarts=1)(lambda: 1)

    @runtime.remote(max_restarts=1)
    class A:
        def f(self):
            return 1

    assert isinstance(A, runtime.ActorClass)
