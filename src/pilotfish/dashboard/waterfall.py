"""One trace drawn as a waterfall (SVG, on the server, like the graph): a row
per span in call order (each child under its parent, siblings by start
time), its bar placed on the trace's time axis, coloured by service as
Jaeger's timeline colours them; a span with an error is drawn red.

A pure function of Jaeger's trace JSON (tracing/jaeger.py)."""

from __future__ import annotations

from html import escape

from pilotfish.objects import Obj

ROW_H, LABEL_W, BAR_W, TOP = 24, 330, 620, 28
PALETTE = ("#17b8be", "#f8dcaa", "#b6d7a8", "#ea9999", "#c9a0dc", "#fcc75e", "#8fb8e8", "#d5a6bd")
ERROR = "#cc0000"


def ordered(spans: list[Obj]) -> list[tuple[Obj, int]]:
    """(span, depth) in call order; a span whose parent is missing starts a root."""
    ids = {s["spanID"] for s in spans}
    children: dict[str, list[Obj]] = {}
    roots = []
    for span in sorted(spans, key=lambda s: (s["startTime"], s["spanID"])):
        parent = _parent(span)
        if parent is not None and parent in ids and parent != span["spanID"]:
            children.setdefault(parent, []).append(span)
        else:
            roots.append(span)
    out: list[tuple[Obj, int]] = []
    seen: set[str] = set()
    stack = [(root, 0) for root in reversed(roots)]
    while stack:  # iterative: a trace may be deeper than Python's recursion
        span, depth = stack.pop()
        if span["spanID"] in seen:
            continue  # a cycle of parent references
        seen.add(span["spanID"])
        out.append((span, depth))
        stack += [(child, depth + 1) for child in reversed(children.get(span["spanID"], []))]
    return out


def _parent(span: Obj) -> str | None:
    for reference in span.get("references") or []:
        if reference.get("refType") == "CHILD_OF":
            return str(reference.get("spanID"))
    return None


def is_error(span: Obj) -> bool:
    return any(t.get("key") == "error" and t.get("value") is True for t in span.get("tags") or [])


def draw(trace: Obj) -> str:
    spans: list[Obj] = trace["spans"]
    processes: dict[str, Obj] = trace["processes"]
    start = min(s["startTime"] for s in spans)
    end = max(s["startTime"] + s["duration"] for s in spans)
    total = max(end - start, 1)
    services = sorted({processes[s["processID"]]["serviceName"] for s in spans})
    colour = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(services)}
    rows = ordered(spans)
    height = TOP + ROW_H * len(rows) + 8
    width = LABEL_W + BAR_W + 90
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="waterfall" width="100%" '
        f'style="max-width:{width}px" viewBox="0 0 {width} {height}">',
        *_axis(total),
    ]
    for row, (span, depth) in enumerate(rows):
        service = processes[span["processID"]]["serviceName"]
        parts.append(
            _row(
                span,
                service,
                depth,
                row,
                (span["startTime"] - start) / total,
                span["duration"] / total,
                colour[service],
            )
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _axis(total_us: int) -> list[str]:
    ticks = []
    for i in range(5):
        x = LABEL_W + BAR_W * i / 4
        ticks.append(
            f'<line x1="{x:.0f}" y1="16" x2="{x:.0f}" y2="100%" stroke="#e0e0e0"/>'
            f'<text x="{x:.0f}" y="12" class="tick" text-anchor="middle">'
            f"{format_us(total_us * i / 4)}</text>"
        )
    return ticks


def _row(
    span: Obj, service: str, depth: int, row: int, left: float, share: float, colour: str
) -> str:
    y = TOP + row * ROW_H
    x = LABEL_W + BAR_W * left
    w = max(BAR_W * share, 2)
    error = is_error(span)
    indent = 6 + 12 * min(depth, 16)
    label = _fit(f"{service}: {span['operationName']}", (LABEL_W - indent - 12) // 7)
    red = f' fill="{ERROR}"' if error else ""
    return (
        f'<g class="span" data-span-id="{escape(span["spanID"])}" '
        f'data-service="{escape(service)}" data-error="{str(error).lower()}">'
        # the whole row takes the click, not only the text and the bar
        f'<rect x="0" y="{y}" width="{LABEL_W + BAR_W + 90}" height="{ROW_H}" fill="transparent"/>'
        f'<text x="{indent}" y="{y + 16}" class="span-label"{red}>{escape(label)}</text>'
        f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{ROW_H - 8}" rx="2" '
        f'fill="{colour}" stroke="{ERROR if error else colour}"/>'
        f'<text x="{x + w + 4:.1f}" y="{y + 16}" class="span-duration">'
        f"{format_us(span['duration'])}</text></g>"
    )


def _fit(text: str, characters: int) -> str:
    """Cut to about the label column's width (12px text is ~7px a character)."""
    return text if len(text) <= characters else text[: characters - 1] + "\u2026"


def format_us(us: float) -> str:
    """As Jaeger's UI prints a duration: 850μs, 12.3ms, 1.2s."""
    if us < 1000:
        return f"{us:.0f}\u03bcs"
    if us < 1_000_000:
        return f"{us / 1000:.2f}ms"
    return f"{us / 1_000_000:.2f}s"
