"""The graph drawn as SVG on the server: a pure function of the graph JSON.

Drawn here rather than by a JavaScript graph library because a mesh graph is
small (tens of nodes), a layered left-to-right layout (callers left of what
they call, the gateway first) reads well for it, and the same picture then
needs no package manager, no build and no download: the page just swaps in
the SVG each update pushes. Colours are Kiali's: green healthy, orange
degraded, red failure, grey idle.
"""

from __future__ import annotations

from html import escape
from typing import Any

Json = dict[str, Any]
COLOURS = {"healthy": "#3f9c35", "degraded": "#ec7a08", "failure": "#cc0000", "idle": "#8a8d90"}
COLUMN_W, ROW_H, MARGIN = 170, 78, 80
MAX_DEPTH = 32


def columns(graph: Json) -> dict[str, int]:
    """Each node's column: the longest chain of calls leading to it (cycles cut)."""
    incoming: dict[str, list[str]] = {n["id"]: [] for n in graph["nodes"]}
    for edge in graph["edges"]:
        if edge["source"] != edge["target"]:
            incoming[edge["target"]].append(edge["source"])
    depth = {node: 0 for node in incoming}
    for _ in range(MAX_DEPTH):  # relax until stable; a cycle stops at MAX_DEPTH
        changed = False
        for node, sources in incoming.items():
            deepest = max((depth[s] + 1 for s in sources), default=0)
            if deepest > depth[node] and deepest <= MAX_DEPTH:
                depth[node], changed = deepest, True
        if not changed:
            break
    return depth


def layout(graph: Json) -> dict[str, tuple[float, float]]:
    by_column: dict[int, list[str]] = {}
    for node, column in sorted(columns(graph).items()):
        by_column.setdefault(column, []).append(node)
    return {
        node: (MARGIN + column * COLUMN_W, MARGIN + row * ROW_H)
        for column, nodes in by_column.items()
        for row, node in enumerate(nodes)
    }


def edge_label(edge: Json, show: str = "rps") -> str:
    """The label Kiali's edge labels show: request rate (or error share, or p99)."""
    if edge["protocol"] == "tcp" and "tcp" in edge and not edge["requests"]:
        return f"{edge['tcp']['sentBytesPerSecond']:.0f}B/s"
    if show == "errors":
        return f"{100 * (edge['errorRate'] or 0.0):.1f}%"
    if show == "p99":
        return "-" if edge["p99"] is None else f"{edge['p99']:.0f}ms"
    text = f"{edge['rps']:.2f}rps"
    if edge["errorRate"]:
        text += f" {100 * edge['errorRate']:.0f}%err"
    return text


def draw(graph: Json, show: str = "rps") -> str:
    at = layout(graph)
    width = max((x for x, _ in at.values()), default=0) + MARGIN + 80
    height = max((y for _, y in at.values()), default=0) + MARGIN + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="100%" '
        f'style="max-width:{width:.0f}px" viewBox="0 0 {width:.0f} {height:.0f}">',
        "<defs>",
        *(
            f'<marker id="arrow-{h}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
            f'markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z" fill="{c}"/></marker>'
            for h, c in COLOURS.items()
        ),
        "</defs>",
    ]
    parts += [_edge(edge, at, show) for edge in graph["edges"]]
    parts += [_node(node, at[node["id"]]) for node in graph["nodes"]]
    parts.append("</svg>")
    return "\n".join(parts)


def _edge(edge: Json, at: dict[str, tuple[float, float]], show: str) -> str:
    (x1, y1), (x2, y2) = at[edge["source"]], at[edge["target"]]
    x1, x2 = x1 + 16, x2 - 18
    mid_x, mid_y = (x1 + x2) / 2, (y1 + y2) / 2
    colour = COLOURS[edge["health"]]
    lock = " [mTLS]" if edge["mtls"] >= 0.5 else ""  # text: no emoji font on a server
    dash = ' stroke-dasharray="6 4"' if edge["protocol"] == "tcp" else ""
    return (
        f'<g class="edge" data-source="{escape(edge["source"])}" '
        f'data-target="{escape(edge["target"])}" data-health="{edge["health"]}">'
        f'<path d="M{x1:.0f},{y1:.0f} C{mid_x:.0f},{y1:.0f} {mid_x:.0f},{y2:.0f} '
        f'{x2:.0f},{y2:.0f}" fill="none" stroke="{colour}" stroke-width="2"{dash} '
        f'marker-end="url(#arrow-{edge["health"]})"/>'
        f'<text x="{mid_x:.0f}" y="{mid_y - 5:.0f}" text-anchor="middle" class="edge-label" '
        f'fill="{colour}">{escape(edge_label(edge, show))}{lock}</text></g>'
    )


def _node(node: Json, position: tuple[float, float]) -> str:
    x, y = position
    colour = COLOURS[node["health"]] if node["requests"] else "#6a6e73"
    if node["type"] == "service":
        shape = f'<path d="M{x},{y - 15} L{x + 15},{y + 11} L{x - 15},{y + 11} z"'
    elif node.get("gateway") or node["type"] == "unknown":
        shape = f'<rect x="{x - 13}" y="{y - 13}" width="26" height="26"'
    else:
        shape = f'<circle cx="{x}" cy="{y}" r="14"'
    label = escape(node["name"])
    link = (
        f"#/{node['type']}/{escape(node['namespace'])}/{label}"
        if node["type"] != "unknown"
        else "#/graph"
    )
    return (
        f'<a href="{link}"><g class="node {node["type"]}" data-id="{escape(node["id"])}" '
        f'data-health="{node["health"]}">'
        f'{shape} fill="#fff" stroke="{colour}" stroke-width="3"/>'
        f'<text x="{x}" y="{y + 30}" text-anchor="middle" class="node-label">{label}</text>'
        "</g></a>"
    )
