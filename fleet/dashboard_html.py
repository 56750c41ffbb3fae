"""HTML building blocks of the dashboard: escaping, the page shell, tables, badges, SVG charts.

No template engine: every dynamic value goes through `h()` (html.escape) unless it
is already a `Safe` fragment built here. Pages carry no inline script or style, so
the dashboard's Content-Security-Policy can forbid both; charts are inline SVG
with presentation attributes only.
"""

from __future__ import annotations

import html
import json
import string
import time
from collections.abc import Iterable, Sequence
from typing import Any

from fleet import __version__


class Safe(str):
    """A fragment of HTML that is already escaped."""

    __slots__ = ()


def h(value: object) -> Safe:
    """Escape `value` for HTML text or a quoted attribute (None is empty)."""
    if isinstance(value, Safe):
        return value
    return Safe(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[Safe]) -> Safe:
    return Safe("".join(parts))


PAGE = string.Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title · edge-fleet</title>
<link rel="stylesheet" href="/ui/static/dashboard.css">
<script src="/ui/static/dashboard.js" defer></script>
</head><body>
<header><a class="brand" href="/ui/">edge-fleet</a><nav>$nav</nav>$tools</header>
<main id="main">$body</main>
<footer>edge-fleet $version · rendered $now UTC</footer>
</body></html>
"""
)

TOOLS = Safe(
    '<label class="refresh"><input type="checkbox" id="autorefresh"> auto-refresh</label>'
    '<form method="post" action="/ui/logout"><button type="submit">Log out</button></form>'
)


def page(title: str, body: Safe, *, nav: Sequence[tuple[str, str]], active: str,
         tools: bool = True) -> str:  # fmt: skip
    links = join(
        Safe(f'<a href="{h(href)}"{" class=active" if label == active else ""}>{h(label)}</a>')
        for label, href in nav
    )
    return PAGE.substitute(
        title=h(title), nav=links, tools=TOOLS if tools else "", body=body,
        version=h(__version__), now=h(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())),
    )  # fmt: skip


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], cls: str = "") -> Safe:
    head = join(Safe(f"<th>{h(x)}</th>") for x in headers)
    body = join(Safe("<tr>" + "".join(f"<td>{h(c)}</td>" for c in row) + "</tr>") for row in rows)
    if not body:
        body = Safe(f'<tr><td colspan="{len(headers)}" class="empty">nothing yet</td></tr>')
    return Safe(
        f'<table class="{h(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


BADGE_KINDS = frozenset({"ok", "warn", "bad", "off", "info"})


def badge(text: object, kind: str) -> Safe:
    return Safe(f'<span class="badge {kind if kind in BADGE_KINDS else "info"}">{h(text)}</span>')


def link(href: str, text: object) -> Safe:
    return Safe(f'<a href="{h(href)}">{h(text)}</a>')


def section(title: str, content: Safe, extra: Safe | None = None) -> Safe:
    return Safe(f"<section><h2>{h(title)}{extra or ''}</h2>{content}</section>")


def kv(pairs: Iterable[tuple[str, object]]) -> Safe:
    items = join(Safe(f"<dt>{h(k)}</dt><dd>{h(v)}</dd>") for k, v in pairs)
    return Safe(f'<dl class="kv">{items}</dl>')


def pre_json(value: Any) -> Safe:
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    return Safe(f"<pre>{h(text)}</pre>")


def ago(t: float | None, now: float | None = None) -> str:
    if t is None:
        return "never"
    s = max(0.0, (now if now is not None else time.time()) - t)
    if s < 120:
        return f"{s:.0f}s ago"
    return f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago"


def utc(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


# --------------------------------------------------------------------------- charts
COLOURS = {
    "ok": "#2e9d5b",
    "warn": "#d99a1e",
    "bad": "#c8453b",
    "off": "#8a94a3",
    "info": "#3b6fc8",
}


def stacked_bar(parts: Sequence[tuple[str, int, str]], width: int = 600) -> Safe:
    """One horizontal bar split by count (label, count, colour kind), with a legend."""
    total = sum(n for _l, n, _k in parts) or 1
    x, rects, legend = 0.0, [], []
    for label, n, kind in parts:
        w = width * n / total
        colour = COLOURS.get(kind, COLOURS["info"])
        if w > 0:
            rects.append(
                f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="22" fill="{colour}">'
                f"<title>{h(label)}: {n}</title></rect>"
            )
        legend.append(f'<span class="legend {kind}">{h(label)} {n}</span>')
        x += w
    svg = (
        f'<svg class="bar" viewBox="0 0 {width} 22" width="100%" height="22" role="img" '
        'preserveAspectRatio="none" '
        f'aria-label="distribution">{"".join(rects)}</svg>'
    )
    return Safe(f'<div class="stacked">{svg}<div>{"".join(legend)}</div></div>')


def bar_chart(title: str, items: Sequence[tuple[str, float, float]], unit: str = "") -> Safe:
    """Horizontal bars: (label, value, full-scale value)."""
    row_h, label_w, width, fill = 22, 140, 460, COLOURS["info"]
    height = row_h * max(1, len(items)) + 4
    parts = []
    for i, (label, value, full) in enumerate(items):
        y = i * row_h + 2
        w = 0.0 if full <= 0 else max(0.0, min(1.0, value / full)) * (width - label_w - 70)
        parts.append(
            f'<text x="0" y="{y + 15}" font-size="12" fill="#333">{h(label)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="14" fill="{fill}"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" font-size="12" fill="#333">'
            f"{value:.1f}{h(unit)}</text>"
        )
    svg = (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{h(title)}">{"".join(parts)}</svg>'
    )
    return Safe(f"<figure><figcaption>{h(title)}</figcaption>{svg}</figure>")
