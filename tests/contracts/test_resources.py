"""Resources: validation, arithmetic and the no-negative-capacity rule."""

import math

import pytest

from runtime.resources import Resources, format_resources


def test_zero_amounts_are_dropped_and_order_does_not_matter():
    """Equal requests compare and hash equal whatever their key order or zero entries."""
    a = Resources({"GPU": 1, "CPU": 2, "TPU": 0})
    b = Resources({"CPU": 2.0, "GPU": 1.0})
    assert a == b and hash(a) == hash(b)
    assert list(a) == ["CPU", "GPU"]


@pytest.mark.parametrize("bad", [{"CPU": -1}, {"CPU": math.nan}, {"GPU": math.inf}])
def test_bad_amounts_are_value_errors_naming_the_resource(bad):
    """A negative, NaN or infinite amount names the resource in a ValueError."""
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        Resources(bad)


def test_non_numeric_amount_is_a_type_error():
    """A string amount is refused with its type named."""
    with pytest.raises(TypeError, match="'TPU'.*str"):
        Resources({"TPU": "two"})


def test_fractional_gpus_fit_ten_times_a_tenth():
    """Ten 0.1-GPU requests fit into one GPU despite float rounding."""
    cap = Resources({"GPU": 1})
    for _ in range(10):
        assert Resources({"GPU": 0.1}).fits(cap)
        cap = cap - {"GPU": 0.1}
    assert not Resources({"GPU": 0.1}).fits(cap)


def test_subtraction_refuses_negative_capacity():
    """Taking more than is there raises instead of going negative."""
    with pytest.raises(ValueError, match="negative"):
        Resources({"CPU": 1}) - {"CPU": 2}


def test_missing_and_format():
    """missing() names what capacity lacks; format_resources reads well."""
    req = Resources({"CPU": 2, "QPU": 1})
    assert req.missing({"CPU": 4}) == {"QPU": 1.0}
    assert format_resources(req) == "CPU=2, QPU=1"
    assert "GiB" in format_resources({"memory": 2 * 1024**3})
