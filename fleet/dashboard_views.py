"""Dashboard page bodies: fleet overview, device page and events (read-only views).

Each function takes an open SQLAlchemy session (or engine) and returns a `Safe`
HTML fragment; fleet/dashboard.py wraps it in the page shell. Device condition
(`ok`, `degraded`, `stale`, `offline`) is derived from the registry row and its last
health report by `condition()`, a pure function.
The rollout pages are in fleet/dashboard_rollouts.py.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet.dashboard_history import history_section
from fleet.dashboard_html import (
    Safe,
    ago,
    badge,
    bar_chart,
    h,
    join,
    kv,
    link,
    pre_json,
    section,
    stacked_bar,
    table,
    utc,
)
from fleet.models import Device, Event, Reported

STALE_HEALTH_S = 90.0
"""Online but no health for this long: `stale` (three of the agent's default 30 s)."""
PAGE_SIZE = 200
CONDITION_KIND = {"ok": "ok", "degraded": "warn", "stale": "warn", "offline": "off"}


def condition(online: bool, health: dict[str, Any] | None, health_at: float | None,
              now: float) -> str:  # fmt: skip
    """ok, degraded (degraded backend, a camera not streaming, provider error), stale, offline."""
    if not online:
        return "offline"
    if health is not None:
        inference = health.get("inference") or {}
        cameras = health.get("cameras") or {}
        not_streaming = any(
            isinstance(c, dict) and c.get("state") not in (None, "streaming")
            for c in cameras.values()
        )
        if inference.get("degraded") or not_streaming or health.get("provider_error"):
            return "degraded"
    if health_at is None or now - health_at > STALE_HEALTH_S:
        return "stale"
    return "ok"


def device_link(device_id: str) -> Safe:
    return link(f"/ui/devices/{quote(device_id)}", device_id)


def snapshot_img(event_id: str, thumb: bool = True) -> Safe:
    src = h(f"/ui/snapshots/{quote(event_id)}")
    cls = "thumb" if thumb else "full"
    return Safe(
        f'<a href="{src}"><img class="{cls}" src="{src}" alt="snapshot" loading="lazy"></a>'
    )


def _health_brief(health: dict[str, Any] | None) -> str:
    cams = (health or {}).get("cameras") or {}
    if not cams:
        return "-"
    up = sum(1 for c in cams.values() if isinstance(c, dict) and c.get("state") == "streaming")
    fps = [c.get("fps_processed") for c in cams.values() if isinstance(c, dict)]
    total = sum(f for f in fps if isinstance(f, int | float))
    return f"{up}/{len(cams)} cams, {total:.1f} fps"


# --------------------------------------------------------------------------- overview
def overview(s: Session, state: str | None, q: str | None, page_no: int) -> Safe:
    now = time.time()
    rep_rows = s.execute(select(Reported.device_id, Reported.update_state)).all()
    updates: dict[str, str | None] = {r[0]: r[1] for r in rep_rows}
    rows, conds, models = [], Counter[str](), Counter[str]()
    for d in s.scalars(select(Device).order_by(Device.id)):
        cond = condition(d.online, d.last_health, d.last_health_at, now)
        conds[cond] += 1
        models[str(d.versions.get("model", "-"))] += 1
        if (state and cond != state) or (q and q.lower() not in d.id.lower()):
            continue
        rows.append((
            device_link(d.id), badge(cond, CONDITION_KIND[cond]), d.session,
            f"{ago(d.last_health_at, now)} · {_health_brief(d.last_health)}",
            d.versions.get("model", "-"), d.versions.get("agent", "-"),
            updates.get(d.id) or "-", ", ".join(d.tags),
        ))  # fmt: skip
    total = sum(conds.values())
    summary = stacked_bar([(c, conds[c], CONDITION_KIND[c]) for c in CONDITION_KIND])
    cards = join(
        Safe(f'<div class="card {CONDITION_KIND[c]}"><b>{conds[c]}</b>{h(c)}</div>')
        for c in CONDITION_KIND
    )
    versions = table(("model version", "devices"), models.most_common())
    states = Counter(v or "-" for v in updates.values())
    upd = table(("update state", "devices"), states.most_common())
    start = max(0, page_no) * PAGE_SIZE
    shown = rows[start : start + PAGE_SIZE]
    devices = table(
        ("device", "condition", "session", "last health", "model", "agent", "update", "tags"),
        shown, "devices",
    )  # fmt: skip
    return join([
        Safe(f'<h1>Fleet <small>{total} devices</small></h1><div class="cards">{cards}</div>'),
        summary,
        Safe('<div class="cols">'), section("Versions", versions), section("Updates", upd),
        Safe("</div>"),
        section("Devices", join([_filter_form(state, q), devices,
                                 _pager(len(rows), page_no, state, q)])),
    ])  # fmt: skip


def _filter_form(state: str | None, q: str | None) -> Safe:
    opts = join(
        Safe(f'<option value="{c}"{" selected" if c == state else ""}>{c}</option>')
        for c in ("", *CONDITION_KIND)
    )
    return Safe(
        '<form class="filters" method="get" action="/ui/">'
        f'<input name="q" placeholder="device id contains" value="{h(q or "")}">'
        f'<select name="state">{opts}</select><button type="submit">Filter</button></form>'
    )


def _pager(n: int, page_no: int, state: str | None, q: str | None) -> Safe:
    pages = (n + PAGE_SIZE - 1) // PAGE_SIZE
    if pages <= 1:
        return Safe("")
    base = {k: v for k, v in (("state", state), ("q", q)) if v}
    links = join(
        link("/ui/?" + urlencode({**base, "page": i}), i + 1) if i != page_no
        else Safe(f"<b>{i + 1}</b>") for i in range(pages)
    )  # fmt: skip
    return Safe(f'<p class="pager">page {links}</p>')


# --------------------------------------------------------------------------- device
def device_page(s: Session, dev: Device) -> Safe:
    now = time.time()
    rep = s.get(Reported, dev.id)
    cond = condition(dev.online, dev.last_health, dev.last_health_at, now)
    state = "online" if dev.online else f"offline ({dev.offline_reason or '-'})"
    facts = kv([
        ("state", state), ("session", dev.session), ("protocol", dev.protocol or "-"),
        ("first seen", utc(dev.first_seen)), ("last seen", ago(dev.last_seen, now)),
        ("last health", f"#{dev.health_seq} {ago(dev.last_health_at, now)}"),
        ("tags", ", ".join(dev.tags) or "-"),
        *((f"version: {k}", v) for k, v in sorted(dev.versions.items())),
    ])  # fmt: skip
    events = s.scalars(
        select(Event).where(Event.device_id == dev.id)
        .order_by(Event.wall_time.desc(), Event.id.desc()).limit(12)
    ).all()  # fmt: skip
    more = link(f"/ui/events?device={quote(dev.id)}", "all events")
    return join([
        Safe(f"<h1>{h(dev.id)} {badge(cond, CONDITION_KIND[cond])}</h1>"),
        section("Device", facts),
        _health_section(dev.last_health),
        history_section(s, dev.id),
        _update_section(dev.desired, rep),
        section("Recent events", events_table(events, with_device=False),
                Safe(f" <small>{more}</small>")),
    ])  # fmt: skip


def _health_section(health: dict[str, Any] | None) -> Safe:
    if not health:
        return section("Health", Safe("<p>No health report yet.</p>"))
    cams = {k: v for k, v in (health.get("cameras") or {}).items() if isinstance(v, dict)}
    rows = [(
        cid, badge(c.get("state", "-"), "ok" if c.get("state") == "streaming" else "warn"),
        c.get("fps_processed", "-"), c.get("drops", "-"), c.get("reconnects", "-"),
        _lat(c.get("latency_ms")), c.get("detections_per_frame", "-"),
        _get(c.get("confidence"), "mean"),
        ", ".join((c.get("drift") or {}).get("active", []) or []) or "-",
    ) for cid, c in sorted(cams.items())]  # fmt: skip
    cam_table = table(
        ("camera", "state", "fps", "drops", "reconnects", "latency p50/p95/p99 ms",
         "detections/frame", "confidence", "drift"), rows,
    )  # fmt: skip
    fps = [(cid, _num(c.get("fps_processed")), 10.0) for cid, c in sorted(cams.items())]
    lat = [(f"{cid} {q}", _num((c.get("latency_ms") or {}).get(q)), 100.0)
           for cid, c in sorted(cams.items()) for q in ("p50", "p95", "p99")
           if isinstance(c.get("latency_ms"), dict)]  # fmt: skip
    charts = bar_chart("frames/s processed per camera", fps) if fps else Safe("")
    if lat:
        charts = Safe(charts + bar_chart("frame latency (ms)", lat, " ms"))
    inference, system = health.get("inference") or {}, health.get("system") or {}
    publisher = health.get("publisher") or {}
    outbox = publisher.get("outbox") or {}
    facts = kv([
        ("backend", inference.get("backend", "-")), ("degraded", inference.get("degraded", "-")),
        ("outbox depth", outbox.get("depth", "-")),
        ("uptime", f"{_num(health.get('uptime_s')):.0f} s"),
        *((f"system: {k}", v) for k, v in sorted(system.items()) if not isinstance(v, dict | list)),
    ])  # fmt: skip
    raw = Safe(f"<details><summary>last health payload</summary>{pre_json(health)}</details>")
    note = Safe('<p class="note">Bars show the latest report; see "Health over time" below.</p>')
    return section("Health", join([facts, Safe('<div class="charts">'), charts, Safe("</div>"),
                                   note, cam_table, raw]))  # fmt: skip


def _lat(v: Any) -> str:
    if not isinstance(v, dict):
        return "-"
    return " / ".join(str(v.get(q, "-")) for q in ("p50", "p95", "p99"))


def _get(v: Any, key: str) -> Any:
    return v.get(key, "-") if isinstance(v, dict) else "-"


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) else 0.0


def _update_section(desired: dict[str, Any] | None, rep: Reported | None) -> Safe:
    payload = rep.payload if rep else {}
    raw_upd = payload.get("update")
    upd: dict[str, Any] = raw_upd if isinstance(raw_upd, dict) else {}
    state = rep.update_state if rep else None
    kind = {"committed": "ok", "failed": "bad", "rolled_back": "bad", "timed_out": "bad"}
    facts = kv([
        ("update state", badge(state or "-", kind.get(state or "", "info"))),
        ("target", json.dumps(upd.get("target")) if upd.get("target") else "-"),
        ("error", upd.get("error") or payload.get("last_error") or "-"),
        ("reported", ago(rep.timestamp) if rep else "never"),
        ("desired model", ((desired or {}).get("model") or {}).get("version", "-")),
        ("desired config", ((desired or {}).get("config") or {}).get("version", "-")),
    ])  # fmt: skip
    raw = Safe(
        f"<details><summary>desired / reported payloads</summary>{pre_json(desired)}"
        f"{pre_json(payload)}</details>"
    )
    return section("Desired and reported state", join([facts, raw]))


# --------------------------------------------------------------------------- events
def events_table(events: Sequence[Event], with_device: bool = True) -> Safe:
    rows = []
    for e in events:
        row: list[object] = [
            (e.snapshot_path and snapshot_img(e.event_id)) or "-",
            utc(e.wall_time),
        ]
        if with_device:
            row.append(device_link(e.device_id))
        row += [e.camera_id, e.rule_id, e.phase, e.label, f"{e.score:.2f}", e.event_id]
        rows.append(row)
    headers = ["snapshot", "time (UTC)", *(["device"] if with_device else []),
               "camera", "rule", "phase", "label", "score", "event id"]  # fmt: skip
    return table(headers, rows, "events")


def events_page(s: Session, filters: dict[str, str], limit: int) -> Safe:
    q = select(Event).order_by(Event.wall_time.desc(), Event.id.desc()).limit(limit)
    columns = {"device": Event.device_id, "camera": Event.camera_id, "rule": Event.rule_id}
    for key, value in filters.items():
        q = q.where(columns[key] == value)
    events = s.scalars(q).all()
    inputs = join(
        Safe(f'<input name="{k}" placeholder="{k}" value="{h(filters.get(k, ""))}">')
        for k in columns
    )
    form = Safe(
        f'<form class="filters" method="get" action="/ui/events">{inputs}'
        f'<input name="limit" type="number" min="1" max="500" value="{limit}">'
        '<button type="submit">Filter</button></form>'
    )
    total = s.scalar(select(func.count()).select_from(Event)) or 0
    return join([
        Safe(f"<h1>Events <small>{len(events)} shown of {total}</small></h1>"), form,
        events_table(events),
    ])  # fmt: skip
