"""The operator's web dashboard: server-rendered HTML pages under /ui.

Pages: fleet overview (`/ui/`), device page (`/ui/devices/<id>`), events with
snapshot thumbnails (`/ui/events`), and rollouts (`/ui/rollouts`) when the database
has a `rollouts` table. No JavaScript framework: pages are complete HTML; a small
script (`/ui/static/dashboard.js`) re-fetches the page body when auto-refresh is on.

Authentication uses the API's own tokens (fleet/auth.py). A browser logs in once
with a form (`POST /ui/login`); the token is then kept in an HttpOnly, SameSite=Strict
cookie (Secure over HTTPS) and checked, like a Bearer token, on every request, so
a revoked token stops working at once. Tokens never appear in URLs (they would
leak into logs and history). The pages only read; the POSTs are login and logout.
Every response carries a strict Content-Security-Policy (no inline script/style).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from agent.protocol import InvalidIdError, validate_id
from fleet.api import FleetState, StateDep
from fleet.auth import check_token
from fleet.dashboard_html import Safe, h, page
from fleet.dashboard_rollouts import rollout_page, rollout_tables, rollouts_page
from fleet.dashboard_views import CONDITION_KIND, device_page, events_page, overview
from fleet.models import Device, Event

log = logging.getLogger(__name__)

COOKIE = "edge_fleet_token"
COOKIE_MAX_AGE_S = 12 * 3600
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_LOGIN_BODY = 4096

dashboard = APIRouter(include_in_schema=False)


class LoginRequiredError(Exception):
    """No valid token cookie: the page answers with a redirect to the login form."""


def _user(request: Request, st: FleetState) -> str:
    token = request.cookies.get(COOKIE)
    name = check_token(st.db, token) if token else None
    if name is None:
        raise LoginRequiredError
    return name


def _nav(st: FleetState) -> list[tuple[str, str]]:
    nav = [("Overview", "/ui/"), ("Events", "/ui/events")]
    if rollout_tables(st.db.engine)[0] is not None:
        nav.append(("Rollouts", "/ui/rollouts"))
    return nav


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)


def _render(request: Request, st: FleetState, title: str, active: str,
            build: Callable[[], Safe | None]) -> Response:  # fmt: skip
    """Authenticate, then wrap `build()` (a Safe fragment, or None for 404) in the shell."""
    try:
        _user(request, st)
    except LoginRequiredError:
        return _to_login(request)
    body = build()
    if body is None:
        missing = Safe(f"<h1>Not found</h1><p>{h(title)}</p>")
        return _html(page("Not found", missing, nav=_nav(st), active=""), 404)
    return _html(page(title, body, nav=_nav(st), active=active))


# --------------------------------------------------------------------------- login
LOGIN = """<h1>Sign in</h1>{error}
<form class="login" method="post" action="/ui/login">
<input type="hidden" name="next" value="{next}">
<label>API token <input type="password" name="token" autocomplete="current-password"
 required autofocus></label><button type="submit">Sign in</button></form>
<p class="note">Create a token with <code>edge-fleet token create NAME</code>.</p>"""


def _safe_next(value: str | None) -> str:
    """Only local dashboard paths (no open redirect)."""
    if value and value.startswith("/ui/") and "//" not in value and "\\" not in value:
        return value
    return "/ui/"


def _login_page(next_url: str, error: str | None, status: int = 200) -> HTMLResponse:
    err = f'<p class="error">{h(error)}</p>' if error else ""
    body = Safe(LOGIN.format(error=err, next=h(_safe_next(next_url))))
    return _html(page("Sign in", body, nav=[], active="", tools=False), status)


@dashboard.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@dashboard.get("/ui/login")
def login_form(next: str | None = None) -> HTMLResponse:
    return _login_page(next or "/ui/", None)


@dashboard.post("/ui/login")
async def login(request: Request, st: StateDep) -> Response:
    raw = await request.body()
    if len(raw) > MAX_LOGIN_BODY:
        return _login_page("/ui/", "request too large", 413)
    form = parse_qs(raw.decode("utf-8", "replace"), max_num_fields=4)
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next((form.get("next") or [""])[0])
    name = check_token(st.db, token) if token else None
    if name is None:
        log.warning(
            "dashboard login refused client=%s", request.client.host if request.client else "-"
        )
        return _login_page(target, "Unknown or revoked token.", 401)
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(
        COOKIE, token, max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path="/ui",
    )  # fmt: skip
    log.info("dashboard login name=%s", name)
    return resp


@dashboard.post("/ui/logout")
def logout() -> RedirectResponse:
    resp = RedirectResponse("/ui/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/ui")
    return resp


# --------------------------------------------------------------------------- pages
@dashboard.get("/ui/")
def ui_overview(
    request: Request, st: StateDep, state: str | None = None, q: str | None = None,
    page_no: Annotated[int, Query(alias="page", ge=0, le=10_000)] = 0,
) -> Response:  # fmt: skip
    cond = state if state in CONDITION_KIND else None
    query = (q or "").strip()[:64] or None

    def build() -> Safe:
        with st.db.session() as s:
            return overview(s, cond, query, page_no)

    return _render(request, st, "Fleet", "Overview", build)


@dashboard.get("/ui/devices/{device_id}")
def ui_device(device_id: str, request: Request, st: StateDep) -> Response:
    def build() -> Safe | None:
        try:
            validate_id(device_id)
        except InvalidIdError:
            return None
        with st.db.session() as s:
            dev = s.get(Device, device_id)
            return None if dev is None else device_page(s, dev)

    return _render(request, st, device_id, "Overview", build)


@dashboard.get("/ui/events")
def ui_events(
    request: Request, st: StateDep, *, device: str | None = None, camera: str | None = None,
    rule: str | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Response:  # fmt: skip
    filters = {k: v for k, v in (("device", device), ("camera", camera), ("rule", rule)) if v}

    def build() -> Safe:
        with st.db.session() as s:
            return events_page(s, filters, limit)

    return _render(request, st, "Events", "Events", build)


@dashboard.get("/ui/rollouts")
def ui_rollouts(request: Request, st: StateDep) -> Response:
    def build() -> Safe | None:
        main, children = rollout_tables(st.db.engine)
        if main is None:
            return None
        with st.db.session() as s:
            return rollouts_page(s, main, children)

    return _render(request, st, "Rollouts", "Rollouts", build)


@dashboard.get("/ui/rollouts/{rollout_id}")
def ui_rollout(rollout_id: str, request: Request, st: StateDep) -> Response:
    def build() -> Safe | None:
        main, children = rollout_tables(st.db.engine)
        if main is None or len(rollout_id) > 64:
            return None
        with st.db.session() as s:
            return rollout_page(s, main, children, rollout_id)

    return _render(request, st, f"Rollout {rollout_id}", "Rollouts", build)


# --------------------------------------------------------------------------- files
@dashboard.get("/ui/snapshots/{event_id}")
def ui_snapshot(event_id: str, request: Request, st: StateDep) -> Response:
    try:
        _user(request, st)
    except LoginRequiredError as exc:
        raise HTTPException(status_code=401, detail="log in first") from exc
    with st.db.session() as s:
        rel = s.scalar(
            select(Event.snapshot_path)
            .where(Event.event_id == event_id, Event.snapshot_path.is_not(None))
            .limit(1)
        )
    root = st.cfg.snapshots_dir.resolve()
    path = (root / rel).resolve() if rel else None
    if path is None or root not in path.parents or not path.is_file():
        raise HTTPException(status_code=404, detail="no snapshot for this event")
    return FileResponse(
        path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
    )


@dashboard.get("/ui/static/{name}")
def ui_static(name: str) -> FileResponse:
    media = STATIC_TYPES.get(name)
    if media is None:
        raise HTTPException(status_code=404, detail="not found")
    return FileResponse(
        STATIC_DIR / name, media_type=media, headers={"Cache-Control": "max-age=300"}
    )
