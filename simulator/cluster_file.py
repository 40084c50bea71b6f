"""A cluster from a JSON or TOML file (``python -m simulator replay --cluster-file FILE``).

The file holds ``node_types`` (a list: each entry takes the arguments of
:class:`~simulator.nodes.NodeSpec`, with ``accelerator`` and ``cpu_device`` given by device
name), an optional ``name`` and optional ``devices`` (extra device models by name: the
arguments of :class:`DeviceType`, ``model`` defaulting to the name, ``unavailable`` a list
of windows)::

    {"name": "pai-mini",
     "devices": {"L4": {"kind": "GPU", "speed": {"train": 1.2}, "memory": 24e9}},
     "node_types": [
       {"name": "t4", "accelerator": "T4", "accelerators": 2, "cpus": 96, "count": 4},
       {"name": "v100", "accelerator": "V100", "accelerators": 8, "cpus": 96, "count": 1,
        "max_count": 4, "boot_latency": 120},
       {"name": "cpu", "cpus": 64, "count": 2}]}

Device names are those of :data:`~simulator.devices.DEVICES` (V100, A100, T4, P100, K80,
...) and the file's own ``devices``. Memory is in bytes. A bad file raises
:class:`ClusterFileError` naming the file, the entry and the field.
"""

from __future__ import annotations

import inspect
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simulator.cluster import ClusterConfig
from simulator.devices import DEVICES, DeviceType, Window
from simulator.nodes import NodeSpec

__all__ = ["ClusterFileError", "load_cluster", "cluster_from_dict", "cluster_devices"]

_TOP = ("name", "node_types", "devices")


class ClusterFileError(ValueError):
    """A cluster file that cannot be read: names the file, the entry and the field."""


def _params(cls: type) -> list[inspect.Parameter]:
    """The constructor's keyword parameters: what a file entry may give."""
    return [p for p in inspect.signature(cls).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _names(cls: type) -> list[str]:
    return [p.name for p in _params(cls)]


def _bool_fields(cls: type) -> set[str]:
    return {p.name for p in _params(cls)
            if p.annotation in ("bool", bool) or isinstance(p.default, bool)}


def _check_keys(where: str, entry: Any, accepted: list[str]) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise ClusterFileError(f"{where}: must be a table/object, got {entry!r}")
    unknown = sorted(set(entry) - set(accepted))
    if unknown:
        raise ClusterFileError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
                               f"accepted: {', '.join(accepted)}")
    return dict(entry)


def _device(where: str, name: str, entry: Any) -> DeviceType:
    fields = _check_keys(where, entry, _names(DeviceType))
    fields.setdefault("model", name)
    windows = fields.get("unavailable", [])
    if not isinstance(windows, list):
        raise ClusterFileError(f"{where}.unavailable: must be a list of windows, got {windows!r}")
    ws = []
    for i, w in enumerate(windows):
        wf = _check_keys(f"{where}.unavailable[{i}]", w, _names(Window))
        try:
            ws.append(Window(**wf))
        except (TypeError, ValueError) as e:
            raise ClusterFileError(f"{where}.unavailable[{i}]: {e}") from None
    fields["unavailable"] = tuple(ws)
    try:
        return DeviceType(**fields)
    except (TypeError, ValueError) as e:
        raise ClusterFileError(f"{where}: {e}") from None


def _node(where: str, entry: Any, devices: Mapping[str, DeviceType]) -> NodeSpec:
    fields = _check_keys(where, entry, _names(NodeSpec))
    for key in ("accelerator", "cpu_device"):
        if key in fields:
            dev = fields[key]
            if not isinstance(dev, str) or dev not in devices:
                raise ClusterFileError(f"{where}.{key}: must name a device model; known: "
                                       f"{', '.join(sorted(devices))}; got {dev!r}")
            fields[key] = devices[dev]
    for key in _bool_fields(NodeSpec) & set(fields):
        if not isinstance(fields[key], bool):
            raise ClusterFileError(f"{where}.{key}: must be true or false, got {fields[key]!r}")
    if "name" not in fields:
        raise ClusterFileError(f"{where}: a node type needs a 'name'")
    try:
        return NodeSpec(**fields)
    except (TypeError, ValueError) as e:
        raise ClusterFileError(f"{where}: {e}") from None


def cluster_from_dict(data: Any, where: str = "cluster") -> ClusterConfig:
    """A :class:`ClusterConfig` from the parsed contents of a cluster file (see the module)."""
    top = _check_keys(where, data, list(_TOP))
    devices: dict[str, DeviceType] = dict(DEVICES)
    extra = top.get("devices", {})
    if not isinstance(extra, Mapping):
        raise ClusterFileError(f"{where}: devices: must map device names to models, got {extra!r}")
    for name, entry in extra.items():
        devices[name] = _device(f"{where}: devices.{name}", name, entry)
    nodes = top.get("node_types")
    if not isinstance(nodes, list) or not nodes:
        raise ClusterFileError(f"{where}: node_types: must be a non-empty list of node types, "
                               f"got {nodes!r}")
    specs = [_node(f"{where}: node_types[{i}]", e, devices) for i, e in enumerate(nodes)]
    name = top.get("name", "cluster")
    if not isinstance(name, str) or not name:
        raise ClusterFileError(f"{where}: name: must be a non-empty string, got {name!r}")
    try:
        return ClusterConfig(specs, name=name)
    except (TypeError, ValueError) as e:
        raise ClusterFileError(f"{where}: {e}") from None


def load_cluster(path: str | Path) -> ClusterConfig:
    """Read a cluster file: ``.toml`` as TOML, anything else as JSON."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"cluster file {str(path)!r} does not exist or is not a file")
    where = f"cluster file {str(path)!r}"
    try:
        if p.suffix.lower() == ".toml":
            with p.open("rb") as fh:
                data = tomllib.load(fh)
        else:
            data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ClusterFileError(f"{where}: not valid JSON at line {e.lineno}, column {e.colno}: "
                               f"{e.msg}") from None
    except tomllib.TOMLDecodeError as e:
        raise ClusterFileError(f"{where}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ClusterFileError(f"{where}: not UTF-8 text ({e})") from None
    return cluster_from_dict(data, where)


def cluster_devices(cluster: ClusterConfig) -> dict[str, DeviceType]:
    """:data:`DEVICES` plus the accelerator models of ``cluster`` (by model name)."""
    out = dict(DEVICES)
    for s in cluster.node_specs:
        if s.accelerator is not None:
            out[s.accelerator.model] = s.accelerator
    return out
