"""Text and HTML views of a cluster (reprs, ``%cluster status``, the text monitor).

Reads only the backend's node list, its ``describe()`` and the event-fed
:class:`~runtime.events.ClusterLog`, so it looks the same on every backend.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from runtime.backends.base import sum_resources
from runtime.events import TASK_STATES
from runtime.resources import format_resources

if TYPE_CHECKING:
    from runtime.backends.base import Backend

__all__ = ["status_text", "status_html", "status_rows"]


def _fmt(v: float) -> str:
    return f"{v:g}"


def status_rows(backend: Backend) -> dict[str, Any]:
    """The data both views show: header, node rows, totals and task counts."""
    nodes = backend.nodes()
    rows = []
    for n in nodes:
        used = {k: n.total.get(k, 0.0) - n.free.get(k, 0.0) for k in n.total}
        rows.append({
            "id": n.id, "type": n.node_type, "state": n.state,
            "accelerator": n.accelerator_type or "",
            "resources": " ".join(f"{k} {_fmt(used[k])}/{_fmt(v)}" for k, v in n.total.items()
                                  if k != "memory"),
        })
    counts = backend.log.counts()
    return {
        "describe": backend.describe(),
        "nodes": rows,
        "total": sum_resources(nodes),
        "available": sum_resources(nodes, free=True),
        "tasks": {s: counts.get(s, 0) for s in TASK_STATES},
    }


def _header(d: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in d.items() if k != "backend" and v not in (None, "")]
    return f"{d.get('backend', '?')} cluster" + (f" ({', '.join(parts)})" if parts else "")


def status_text(backend: Backend) -> str:
    """A plain-text table of nodes, resources used/total and tasks by state."""
    data = status_rows(backend)
    lines = [_header(data["describe"])]
    rows = data["nodes"]
    if rows:
        w_id = max(4, *(len(r["id"]) for r in rows))
        w_ty = max(4, *(len(r["type"]) for r in rows))
        w_st = max(5, *(len(r["state"]) for r in rows))
        lines.append(f"  {'node':<{w_id}}  {'type':<{w_ty}}  {'state':<{w_st}}  used/total")
        for r in rows:
            acc = f" [{r['accelerator']}]" if r["accelerator"] else ""
            lines.append(f"  {r['id']:<{w_id}}  {r['type']:<{w_ty}}  {r['state']:<{w_st}}  "
                         f"{r['resources']}{acc}")
    else:
        lines.append("  (no nodes)")
    lines.append(f"  resources: {format_resources(data['available'])} free of "
                 f"{format_resources(data['total'])}")
    lines.append("  tasks: " + ", ".join(f"{k} {v}" for k, v in data["tasks"].items()))
    return "\n".join(lines)


def status_html(backend: Backend) -> str:
    """The same as :func:`status_text`, as an HTML table for notebooks."""
    data = status_rows(backend)
    e = html.escape
    head = f"<b>{e(_header(data['describe']))}</b>"
    body = "".join(
        f"<tr><td>{e(r['id'])}</td><td>{e(r['type'])}</td><td>{e(r['state'])}</td>"
        f"<td>{e(r['accelerator'])}</td><td>{e(r['resources'])}</td></tr>"
        for r in data["nodes"]
    )
    tasks = " &middot; ".join(f"{e(k)}: {v}" for k, v in data["tasks"].items())
    return (
        f"<div class='nbcluster-status'>{head}"
        "<table><thead><tr><th>node</th><th>type</th><th>state</th><th>accelerator</th>"
        f"<th>used/total</th></tr></thead><tbody>{body}</tbody></table>"
        f"<div>free {e(format_resources(data['available']))} of "
        f"{e(format_resources(data['total']))}</div><div>tasks: {tasks}</div></div>"
    )
