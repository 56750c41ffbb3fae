"""Dashboard rollout pages, read from the database by reflection.

The views read the `rollouts` table and every `rollout*` table with a `rollout_id`
column (waves, devices, history) without importing the rollout code, so the
dashboard works whether or not that code is installed and follows its columns as
they evolve; with no `rollouts` table the pages and the nav link are omitted.
Progress is the count of a rollout's devices per state, drawn as a stacked bar.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from sqlalchemy import JSON, Engine, MetaData, Table, func, inspect, select
from sqlalchemy.orm import Session

from fleet.dashboard_html import Safe, badge, h, join, kv, link, section, stacked_bar, table, utc

BAD = frozenset({"halted", "failed", "aborted", "rolled_back", "timed_out"})
GOOD = frozenset({"completed", "committed", "succeeded", "done"})
IDLE = frozenset({"waiting", "paused", "created"})
TIME_SUFFIXES = ("_at", "_since", "_until")
HIDDEN_SUFFIXES = ("_desired", "_counters")
"""Bulky JSON columns of child tables, left to the API."""
CHILD_ORDER = ("wave", "device", "history")
ROW_LIMIT = 500


def rollout_tables(engine: Engine) -> tuple[Table | None, list[Table]]:
    """The reflected `rollouts` table (None if absent) and its child tables, waves first."""
    insp = inspect(engine)
    if not insp.has_table("rollouts"):
        return None, []
    md = MetaData()
    main = Table("rollouts", md, autoload_with=engine)
    children = []
    for name in insp.get_table_names():
        is_child = name.startswith("rollout") and name != "rollouts"
        if is_child and "rollout_id" in {c["name"] for c in insp.get_columns(name)}:
            children.append(Table(name, md, autoload_with=engine))

    def rank(t: Table) -> tuple[int, str]:
        hits = [i for i, word in enumerate(CHILD_ORDER) if word in t.name]
        return (hits[0] if hits else len(CHILD_ORDER), t.name)

    return main, sorted(children, key=rank)


def _kind(state: object) -> str:
    return "bad" if state in BAD else "ok" if state in GOOD else "off" if state in IDLE else "info"


def _cell(name: str, value: Any) -> object:
    if value is None:
        return "-"
    if isinstance(value, float) and (name == "at" or name.endswith(TIME_SUFFIXES)):
        return utc(value)
    if name in ("state", "status"):
        return badge(value, _kind(value))
    if isinstance(value, dict | list):
        text = json.dumps(value, sort_keys=True, default=str)
        return text if len(text) <= 120 else text[:117] + "..."
    return value


def _columns(t: Table, child: bool) -> list[str]:
    """The list of rollouts leaves JSON out (the detail page has it); children hide the bulky."""
    return [
        c.name for c in t.columns
        if not (isinstance(c.type, JSON) and (not child or c.name.endswith(HIDDEN_SUFFIXES)))
    ]  # fmt: skip


def _rows(s: Session, t: Table, where: Any = None, *, child: bool,
          extra: dict[Any, Safe] | None = None) -> Safe:  # fmt: skip
    pk = list(t.primary_key.columns)
    q = select(t).order_by(*(pk if child else (c.desc() for c in pk))).limit(ROW_LIMIT)
    if where is not None:
        q = q.where(where)
    names = _columns(t, child)
    at = names.index("state") + 1 if "state" in names else len(names)
    rows = []
    for r in s.execute(q).mappings():
        cells: list[object] = [_cell(n, r[n]) for n in names]
        if not child and "id" in names:
            cells[names.index("id")] = link(f"/ui/rollouts/{quote(str(r['id']))}", r["id"])
        if extra is not None:
            cells.insert(at, extra.get(r.get("id"), Safe("-")))
        rows.append(cells)
    headers: list[str] = list(names)
    if extra is not None:
        headers.insert(at, "devices")
    return table(headers, rows, "rollouts" if not child else "rollout-part")


def _state_table(children: Sequence[Table]) -> Table | None:
    """The per-device table: a child with `device_id` and `state` columns."""
    for t in children:
        if "device_id" in t.c and "state" in t.c and "device" in t.name:
            return t
    return None


def _progress(s: Session, devices: Table | None, rollout_ids: Sequence[Any]) -> dict[Any, Safe]:
    if devices is None or not rollout_ids:
        return {}
    counts: dict[Any, list[tuple[str, int, str]]] = defaultdict(list)
    q = (
        select(devices.c.rollout_id, devices.c.state, func.count())
        .where(devices.c.rollout_id.in_(rollout_ids))
        .group_by(devices.c.rollout_id, devices.c.state)
        .order_by(devices.c.state)
    )
    for rid, state, n in s.execute(q).all():
        counts[rid].append((str(state), int(n), _kind(state)))
    return {rid: stacked_bar(parts, width=300) for rid, parts in counts.items()}


def rollouts_page(s: Session, main: Table, children: Sequence[Table]) -> Safe:
    ids = list(s.scalars(select(main.c.id).order_by(main.c.id.desc()).limit(ROW_LIMIT)))
    progress = _progress(s, _state_table(children), ids) if "id" in main.c else {}
    rows = _rows(s, main, child=False, extra=progress)
    return join([Safe(f"<h1>Rollouts <small>{len(ids)}</small></h1>"), section("All", rows)])


def rollout_page(s: Session, main: Table, children: Sequence[Table], rid: str) -> Safe | None:
    if "id" not in main.c:
        return None
    row = s.execute(select(main).where(main.c.id == _coerce(main.c.id, rid))).mappings().first()
    if row is None:
        return None
    bar = _progress(s, _state_table(children), [row["id"]]).get(row["id"], Safe(""))
    facts = kv((n, _cell(n, v)) for n, v in row.items())
    parts = [Safe(f"<h1>Rollout {h(rid)} {_cell('state', row.get('state'))}</h1>"),
             section("Rollout", join([bar, facts]))]  # fmt: skip
    for child in children:
        where = child.c.rollout_id == row["id"]
        parts.append(section(child.name.replace("_", " "), _rows(s, child, where, child=True)))
    return join(parts)


def _coerce(col: Any, value: str) -> Any:
    try:
        python_type = col.type.python_type
    except NotImplementedError:
        return value
    return int(value) if python_type is int and value.isdigit() else value
