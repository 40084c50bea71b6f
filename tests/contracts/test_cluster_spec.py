"""Node descriptions shared by every backend."""

import pytest

from runtime.autoscaling import NodeType
from runtime.cluster import TaskInfo, check_feasible, parse_nodes
from runtime.resources import Resources


def test_single_node_from_keywords():
    """num_cpus/num_gpus/resources make one logical node."""
    (g,) = parse_nodes(num_cpus=2, num_gpus=4, resources={"TPU": 2, "QPU": 1})
    assert g.resources == {"CPU": 2, "GPU": 4, "TPU": 2, "QPU": 1}


def test_heterogeneous_nodes_with_labels():
    """Dicts with accelerator_type become labelled node types with counts."""
    groups = parse_nodes([
        {"name": "a100", "num_cpus": 4, "num_gpus": 1, "accelerator_type": "A100", "count": 2},
        {"name": "cpu", "resources": {"CPU": 2}},
    ])
    assert [(g.name, g.count) for g in groups] == [("a100", 2), ("cpu", 1)]
    assert groups[0].accelerator_type == "A100"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ([{"name": "x", "resources": {"CPU": -1}}], "CPU"),
        ([{"name": "x", "count": -1}], "count"),
        ([{"name": "x", "colour": "red"}], "colour"),
        ([{"name": "x"}, {"name": "x"}], "twice"),
    ],
)
def test_bad_node_specs_name_the_field(spec, needle):
    """A bad node description fails with the field in the message."""
    with pytest.raises((TypeError, ValueError), match=needle):
        parse_nodes(spec)


def test_node_type_validation():
    """NodeType refuses negative latency and min > max."""
    with pytest.raises(ValueError, match="boot_latency"):
        NodeType("g", {"CPU": 1}, boot_latency=-1)
    with pytest.raises(ValueError, match="min_count"):
        NodeType("g", {"CPU": 1}, min_count=3, max_count=1)


def test_infeasible_message_names_resource_and_cluster():
    """A QPU request on a CPU-only cluster names QPU and what nodes have."""
    task = TaskInfo(1, "q", Resources({"CPU": 1, "QPU": 1}))
    with pytest.raises(ValueError, match=r"QPU=1.*CPU=2"):
        check_feasible(task, [("n1", Resources({"CPU": 2}), {})])
    # an addable node type that fits makes it feasible
    check_feasible(task, [("n1", Resources({"CPU": 2}), {})],
                   [("qpu", Resources({"CPU": 1, "QPU": 1}), {})])
    acc = TaskInfo(2, "t", Resources({"CPU": 1}), accelerator_type="H100")
    with pytest.raises(ValueError, match=r"'H100'.*accelerator types there: \(no accelerator\), A100"):
        check_feasible(acc, [("n1", Resources({"CPU": 2}), {"accelerator_type": "A100"}),
                             ("n2", Resources({"CPU": 2}), {})])
