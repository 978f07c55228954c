"""The audit log viewer: server-rendered pages over the same scoped reader as the API.

Sign-in checks an API key and opens a server-side session (`query_api.sessions`);
the HttpOnly, SameSite=Strict cookie (`SESSION_COOKIE`) holds only the session's
random id, so the JSON/CSV export endpoints can authenticate the browser with it
and the key never reaches the browser's storage. Sign-out is a POST carrying the
session's CSRF token and ends the session on the server. Every page resolves the
caller exactly as the API does (session -> key -> `Caller` -> `scope_for`) and
reads only through `services.store.reader` with that scope: the viewer can never
show a row the global log would hide.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode
from uuid import UUID

import jinja2
import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from producers.contract.directory import Directory
from producers.contract.event import ENTITY_KINDS
from producers.contract.permissions import (
    Caller,
    ReadScope,
    may_manage,
    may_read_activity_log,
    may_read_entity,
    scope_for,
)

# Re-exported: one cookie name for the viewer and the API's cookie authentication.
from query_api.deps import SESSION_COOKIE as SESSION_COOKIE
from query_api.deps import Services, ServicesDep, caller_from_session
from query_api.retention import HoldOut, retention_of
from query_api.routes import Reading
from query_api.search import QUALIFIERS, SearchSyntaxError, Term, Text, compile_query, parse, token_end
from query_api.serialize import event_out, summary_out
from query_api.sessions import csrf_ok
from query_api.ui_live import live_stream, wants_live
from query_api.ui_proof import proof_panel
from query_api.ui_summary import (
    FACET_QUALIFIERS,
    HIDE_READS,
    facet_panel,
    reads_shown,
    term,
    timeline_bars,
    with_term,
    without_time,
)
from storage.reader import CursorError, EventFilter, View
from storage.store import hash_key

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
STATIC_PATH = "/ui/static"

PAGE_SIZES = (25, 50, 100, 200)
MAX_LOGIN_BODY = 8 * 1024
# Each cursor is ~100 characters; past this the oldest "Newer" steps are forgotten
# so that the URL stays well under common proxy limits.
MAX_TRAIL = 30
_CURSOR_RE = re.compile(r"^[A-Za-z0-9_-]{1,512}$")

QUICK_FILTERS: tuple[tuple[str, str], ...] = (
    ("Failures", "outcome:failure"),
    ("Denied", "outcome:denied"),
    ("Last 24 hours", "after:-24h"),
    ("Last 7 days", "after:-7d"),
    ("Applications", "kind:application"),
    ("Deployment plans", "kind:deployment_plan"),
    ("Users", "kind:user"),
    ("Roles", "kind:role"),
    ("Teams", "kind:team"),
    ("Environments", "kind:environment"),
    ("Infrastructure", "kind:infrastructure"),
)

KIND_LABELS = {
    "application": "Application",
    "deployment_plan": "Deployment plan",
    "user": "User",
    "team": "Team",
    "role": "Role",
    "environment": "Environment",
    "infrastructure": "Infrastructure",
}

# Pages hold audit data: nothing inline, nothing cached, nothing framed.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _asset_version() -> str:
    digest = hashlib.sha256()
    for name in ("app.css", "app.js"):
        path = STATIC_DIR / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.globals["asset_version"] = _asset_version()
_env.globals["kind_name"] = lambda kind: KIND_LABELS.get(kind, kind)
templates = Jinja2Templates(env=_env)

router = APIRouter(prefix="/ui", include_in_schema=False)


# -- sessions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    caller: Caller
    directory: Directory
    scope: ReadScope
    base: str
    """root_path of the app, prefixed to every link."""
    session_id: str
    csrf_token: str
    """Posted back by the sign-out form: a cross-site request cannot know it."""

    @property
    def display_name(self) -> str:
        user = self.directory.users.get(self.caller.user_id)
        return user.name if user is not None else self.caller.user_id


def _base(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _cookie_path(request: Request) -> str:
    # The export endpoints under /v1 need the cookie too, so it covers the whole app.
    return _base(request) or "/"


def _safe_next(request: Request, target: str | None) -> str:
    home = _base(request) + "/ui/"
    if not target:
        return home
    # Only paths inside the viewer: no scheme, no host, no protocol-relative tricks.
    if target.startswith(home) and not target.startswith("//") and "\\" not in target:
        return target
    return home


def _login_redirect(request: Request, *, clear: bool) -> HTTPException:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = _base(request) + "/ui/login?" + urlencode({"next": target})
    headers = {"Location": location, **_SECURITY_HEADERS}
    if clear:
        headers["Set-Cookie"] = (
            f"{SESSION_COOKIE}=; Max-Age=0; Path={_cookie_path(request)}; HttpOnly; SameSite=Strict"
        )
    return HTTPException(status.HTTP_303_SEE_OTHER, detail="sign in first", headers=headers)


def get_session(request: Request, services: ServicesDep) -> Session:
    """The signed-in caller, resolved through the same key lookup and scoping as the API."""
    session_id = request.cookies.get(SESSION_COOKIE)
    signed_in = caller_from_session(services, session_id)
    if signed_in is None:
        raise _login_redirect(request, clear=session_id is not None)
    server_session, caller = signed_in
    directories = services.directory.get()
    return Session(
        caller=caller,
        directory=directories.get(caller.infrastructure) or Directory(infrastructure=caller.infrastructure),
        scope=scope_for(caller, directories),
        base=_base(request),
        session_id=server_session.id,
        csrf_token=server_session.csrf_token,
    )


CurrentSession = Annotated[Session, Depends(get_session)]


def _render(
    request: Request,
    name: str,
    context: Mapping[str, Any],
    *,
    status_code: int = 200,
    session: Session | None = None,
) -> Response:
    ctx: dict[str, Any] = {
        "base": _base(request),
        "static": _base(request) + STATIC_PATH,
        "session": session,
        "may_read_activity": bool(session and may_read_activity_log(session.scope)),
        "may_manage": bool(session and may_manage(session.scope)),
        "my_activity_href": user_href(_base(request), session.caller.user_id) if session else "",
        "nav": "",
        **context,
    }
    return templates.TemplateResponse(
        request, name, ctx, status_code=status_code, headers=dict(_SECURITY_HEADERS)
    )


def _audit(request: Request, session: Session, services: Services, details: dict[str, Any]) -> None:
    """Pages are reads like the API's, recorded the same way (`audit_log.read`)."""
    reading = Reading(request=request, caller=session.caller, scope=session.scope, services=services)
    reading.audit("audit_log.read", {"client": "ui", **details})


def _problem(request: Request, session: Session | None, code: int, title: str, message: str) -> Response:
    return _render(
        request,
        "error.html",
        {"title": title, "code": code, "message": message},
        status_code=code,
        session=session,
    )


def _same_origin(request: Request) -> bool:
    """Refuse cross-site form posts (login CSRF): browsers send Origin and Sec-Fetch-Site."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        # Trusted alone when present: a proxy that rewrites Host would break the Origin check.
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return origin == f"{request.url.scheme}://{request.url.netloc}"


# -- links -------------------------------------------------------------------------------


def _seg(value: str) -> str:
    return quote(value, safe="")


def user_href(base: str, user_id: str) -> str:
    return f"{base}/ui/users/{_seg(user_id)}"


def entity_href(base: str, kind: str, entity_id: str) -> str:
    return f"{base}/ui/entities/{_seg(kind)}/{_seg(entity_id)}"


def event_href(base: str, event_id: str) -> str:
    return f"{base}/ui/events/{_seg(event_id)}"


def _with_params(path: str, params: Mapping[str, Any]) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return path + ("?" + urlencode(kept) if kept else "")


# -- the search box ----------------------------------------------------------------------


def _without(q: str, start: int) -> str:
    end = token_end(q, start)
    return (q[:start].rstrip() + " " + q[end:].lstrip()).strip()


@dataclass(frozen=True)
class Chip:
    key: str
    value: str
    negated: bool
    source: str
    remove_href: str


def _chips(q: str, path: str, limit: int, keep: Mapping[str, Any] | None = None) -> list[Chip]:
    query = parse(q)
    items: list[Term | Text] = [*query.terms, *query.texts]
    items.sort(key=lambda item: item.token.position)
    chips = []
    for item in items:
        pos = item.token.position
        remaining = _without(q, pos)
        href = _with_params(path, {"q": remaining, "limit": limit, **(keep or {})})
        source = q[pos : token_end(q, pos)]
        if isinstance(item, Term):
            chips.append(Chip(item.qualifier, ", ".join(item.values), item.negated, source, href))
        else:
            chips.append(Chip("text", item.value, item.negated, source, href))
    return chips


def _quick(
    q: str, path: str, limit: int, chips: list[Chip], keep: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    active = {c.source: c for c in chips}
    out = []
    for label, quick_term in QUICK_FILTERS:
        chip = active.get(quick_term)
        if chip is not None:
            out.append({"label": label, "term": quick_term, "active": True, "href": chip.remove_href})
        else:
            added = (q.strip() + " " + quick_term).strip()
            out.append(
                {
                    "label": label,
                    "term": quick_term,
                    "active": False,
                    "href": _with_params(path, {"q": added, "limit": limit, **(keep or {})}),
                }
            )
    return out


# -- rows --------------------------------------------------------------------------------


def _utc_text(iso: str) -> str:
    return iso.replace("T", " ").replace("Z", " UTC")


def _row(event: dict[str, Any], session: Session) -> dict[str, Any]:
    base = session.base
    actor, target = event["actor"], event["target"]
    readable_target = may_read_entity(session.scope, target["kind"], target["id"])
    return {
        "id": event["event_id"],
        "href": event_href(base, event["event_id"]),
        "occurred_at": event["occurred_at"],
        "occurred_utc": _utc_text(event["occurred_at"]),
        "actor_label": actor["name"] or actor["id"],
        "actor_id": actor["id"],
        "actor_type": actor["type"],
        "actor_href": user_href(base, actor["id"]) if may_read_activity_log(session.scope) else None,
        "action": event["action"],
        "target_label": target["name"] or target["id"],
        "target_id": target["id"],
        "target_kind": target["kind"],
        "target_href": entity_href(base, target["kind"], target["id"]) if readable_target else None,
        "environment": event["environment"] or "",
        "environment_label": (
            session.directory.display_name("environment", event["environment"]) or event["environment"]
        )
        if event["environment"]
        else "",
        "outcome": event["outcome"],
        "reason": event["reason"] or "",
    }


_LATEST_AT_MS = int(datetime(2200, 1, 1, tzinfo=UTC).timestamp() * 1000)


def _int_param(raw: str | None, default: int) -> int:
    if raw is None or not raw.isdigit() or len(raw) > 15:
        return default
    return int(raw)


def _clock(raw: str | None, default: int) -> int:
    value = _int_param(raw, 0)
    # Not a clock this viewer wrote (or past any date an event may carry): the default.
    return value if 0 < value < _LATEST_AT_MS else default


def _trail(raw: str | None) -> list[str]:
    if not raw:
        return []
    return [c for c in raw.split(",") if _CURSOR_RE.match(c)][-MAX_TRAIL:]


@dataclass(frozen=True)
class LogView:
    view: View
    title: str
    heading: str
    kind_label: str
    subject_id: str
    export_filter: dict[str, str]
    """The view as the export endpoint's exact filters, so an export covers the same rows."""


def _nav(log: LogView, session: Session) -> str:
    if log.view.kind == "global":
        return "global"
    if log.view.kind == "activity" and log.view.actor_id == session.caller.user_id:
        return "mine"
    return ""


# The pickers beside the search box: each adds one term (`from`/`to` are RFC 3339 or a
# datetime-local value, read as UTC; the browser's script sends them in UTC).
_PICKERS = {"env": "env", "kind": "kind", "actor": "actor", "from": "after", "to": "before"}


def _picked_terms(params: Mapping[str, str]) -> list[str]:
    picked = []
    for name, qualifier in _PICKERS.items():
        value = (params.get(name) or "").strip()[:256]
        if value:
            picked.append(term(qualifier, value))
    return picked


def _summary(
    session: Session,
    services: Services,
    log: LogView,
    filters: EventFilter,
    q: str,
    path: str,
    limit: int,
    reads: str | None,
    at_ms: int,
) -> dict[str, Any]:
    """The timeline, the facet panel and the total: two aggregates over the rows of the page's search."""
    reader = services.store.reader

    def link(new_q: str) -> str:
        return _with_params(path, {"q": new_q or None, "limit": limit, "reads": reads})

    facets = reader.facets(
        scope=session.scope, view=log.view, filters=filters, columns=tuple(FACET_QUALIFIERS), size=5
    )
    timeline = reader.timeline(scope=session.scope, view=log.view, filters=filters, now_ms=at_ms, buckets=48)
    base_q = without_time(q)

    def zoom(after: str, before: str) -> str:
        return link(with_term(base_q, f"after:{after} before:{before}"))

    def label(column: str, value: str, item: Mapping[str, Any]) -> str:
        if column == "actor_id":
            return str(item.get("label") or value)
        if column == "target_kind":
            return KIND_LABELS.get(value, value)
        if column == "environment":
            return session.directory.display_name("environment", value) or value
        return value

    return {
        "total": int(facets["total"]),
        "timeline": timeline_bars(timeline, zoom),
        "zoom_base": link(base_q),
        "zoom_q": base_q,
        "facets": facet_panel(facets, q, link, label),
    }


def _pickers(session: Session, summary: dict[str, Any] | None) -> dict[str, Any]:
    """Choices for the pickers: the directory's environments, the kinds, and the actors the
    caller's rows show most (a directory may list thousands; these are the ones here)."""
    actors: list[dict[str, str]] = []
    if summary is not None:
        for facet in summary["facets"]:
            if facet["column"] == "actor_id":
                actors = [{"value": i.value, "label": i.label} for i in facet["items"]]
    environments = sorted(
        ({"value": e.id, "label": e.name} for e in session.directory.environments.values()),
        key=lambda e: e["label"].casefold(),
    )
    kinds = [{"value": k, "label": label} for k, label in KIND_LABELS.items()]
    return {"environments": environments, "kinds": kinds, "actors": actors}


def _log_page(request: Request, session: Session, services: Services, log: LogView) -> Response:
    params = request.query_params
    q = (params.get("q") or "")[:2000]
    default_limit = services.settings.default_page_size
    limit = _int_param(params.get("limit"), default_limit)
    if limit not in PAGE_SIZES and limit != default_limit:
        limit = default_limit
    cursor = params.get("cursor") or None
    if cursor is not None and not _CURSOR_RE.match(cursor):
        cursor = None
    trail = _trail(params.get("trail"))
    # Relative times (after:-7d) are pinned to the first page's clock, or the cursor's
    # query fingerprint would change between pages.
    at_ms = _clock(params.get("at"), int(datetime.now(UTC).timestamp() * 1000))
    now = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    path = request.url.path
    picked = _picked_terms(params)
    if picked:
        # The pickers add terms to the search: the page's address stays the search, whole.
        target = _with_params(
            path, {"q": with_term(q, " ".join(picked)), "limit": limit, "reads": params.get("reads")}
        )
        return RedirectResponse(
            target, status_code=status.HTTP_303_SEE_OTHER, headers=dict(_SECURITY_HEADERS)
        )
    shown = reads_shown(q, params.get("reads"))
    effective = q if shown else with_term(q, HIDE_READS)
    # A search about the reads shows them by itself: no toggle, and nothing to carry in links.
    about_reads = "audit_log" in q
    kept_reads = "shown" if shown and not about_reads else None

    error: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    notes: list[str] = []
    chips: list[Chip] = []
    rows: list[dict[str, Any]] = []
    newest_ms = at_ms
    next_cursor: str | None = None
    status_code = 200
    try:
        compiled = (
            compile_query(effective, now=now, directory=session.directory) if effective.strip() else None
        )
        search = compiled.search if compiled is not None else None
        notes = list(compiled.notes) if compiled is not None else []
        chips = _chips(q, path, limit, {"reads": kept_reads}) if q.strip() else []
        filters = EventFilter(search=search)
        asked = {k: v for k, v in params.multi_items() if k not in ("cursor", "trail", "live_after")}
        if wants_live(request) and cursor is None:
            reader = services.store.reader
            _audit(request, session, services, {"view": log.view.kind, "query": asked, "live": True})
            return live_stream(
                request,
                services,
                session_id=session.session_id,
                key_id=session.caller.key_id,
                count=lambda f: reader.count(scope=session.scope, view=log.view, filters=f),
                filters=filters,
                after_ms=_clock(params.get("live_after"), at_ms),
            )
        with services.read_slots.hold(session.caller.key_id):
            page = services.store.reader.page(
                scope=session.scope, view=log.view, filters=filters, limit=limit, cursor=cursor, summary=True
            )
            summary = _summary(session, services, log, filters, q, path, limit, kept_reads, at_ms)
        rows = [_row(summary_out(r), session) for r in page.items]
        newest_ms = int(page.items[0]["occurred_at_ms"]) if page.items else at_ms
        next_cursor = page.next_cursor
        _audit(
            request,
            session,
            services,
            {"view": log.view.kind, "query": asked, "returned": len(rows), "total": summary["total"]},
        )
    except SearchSyntaxError as exc:
        status_code = 400
        end = token_end(q, exc.position) if exc.position < len(q) else len(q)
        error = {
            "title": "The search could not be read",
            "message": exc.message,
            "token": exc.token,
            "position": exc.position,
            "before": q[: exc.position],
            "mark": q[exc.position : end],
            "after": q[end:],
        }
    except CursorError as exc:
        status_code = 400
        error = {"title": "This page link no longer applies", "message": str(exc), "token": None}

    common = {"q": q or None, "limit": limit, "reads": kept_reads}
    next_href = newer_href = None
    if next_cursor:
        next_trail = [*trail, cursor] if cursor else trail
        next_href = _with_params(
            path, {**common, "cursor": next_cursor, "trail": ",".join(next_trail[-MAX_TRAIL:]), "at": at_ms}
        )
    if cursor:
        newer_href = _with_params(
            path,
            {**common, "cursor": trail[-1] if trail else None, "trail": ",".join(trail[:-1]), "at": at_ms},
        )
    newest_href = _with_params(path, common)
    page_no = (len(trail) + 2) if cursor else 1

    exports = None
    if error is None:
        exports = {
            fmt: _with_params(
                session.base + "/v1/events/export",
                {"format": fmt, **log.export_filter, "q": effective.strip()},
            )
            for fmt in ("csv", "ndjson")
        }
    context = {
        "title": log.title,
        "heading": log.heading,
        "kind_label": log.kind_label,
        "subject_id": log.subject_id,
        "view_kind": log.view.kind,
        "form_action": path,
        "q": q,
        "limit": limit,
        "page_sizes": sorted({*PAGE_SIZES, default_limit}),
        "chips": chips,
        "quick": _quick(q, path, limit, chips, {"reads": kept_reads})
        if error is None or not q.strip()
        else [],
        "error": error,
        "rows": rows,
        "notes": notes,
        "summary": summary,
        "reads_shown": shown,
        "reads_href": None
        if about_reads
        else _with_params(path, {"q": q or None, "limit": limit, "reads": None if shown else "shown"}),
        "pickers": _pickers(session, summary),
        # Live updates on the first page only: what is newer than its newest row.
        "live": {"after": newest_ms, "href": newest_href} if error is None and cursor is None else None,
        "next_href": next_href,
        "newer_href": newer_href,
        "newest_href": newest_href if cursor else None,
        "page_no": page_no,
        "exports": exports,
        "qualifiers": QUALIFIERS,
        "nav": _nav(log, session),
    }
    return _render(request, "log.html", context, status_code=status_code, session=session)


# -- routes ------------------------------------------------------------------------------


@router.get("/login", name="ui-login")
def login_form(request: Request, services: ServicesDep, next: str | None = None) -> Response:
    if caller_from_session(services, request.cookies.get(SESSION_COOKIE)) is not None:
        return RedirectResponse(_safe_next(request, next), status_code=status.HTTP_303_SEE_OTHER)
    return _render(request, "login.html", {"title": "Sign in", "next": next or "", "error": None})


@router.post("/login")
async def login(request: Request, services: ServicesDep) -> Response:
    if not _same_origin(request):
        return _problem(
            request, None, 403, "Sign-in refused", "The sign-in form was posted from another site."
        )
    body = await request.body()
    fields: dict[str, list[str]] = {}
    if len(body) <= MAX_LOGIN_BODY and "application/x-www-form-urlencoded" in request.headers.get(
        "content-type", ""
    ):
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    key = (fields.get("api_key") or [""])[0].strip()
    target = (fields.get("next") or [""])[0]
    found = await run_in_threadpool(services.keys.lookup, key)
    if found is None:
        services.failed_auth.record(request, key, via="viewer sign-in")
        message = "Paste an API key." if not key else "That API key is not valid, or it was revoked."
        return _render(
            request,
            "login.html",
            {"title": "Sign in", "next": target, "error": message},
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    session = services.sessions.create(hash_key(key))
    response = RedirectResponse(_safe_next(request, target), status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE,
        session.id,
        max_age=int(services.settings.session_absolute_seconds),
        path=_cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request, services: ServicesDep) -> Response:
    """Ends the session on the server. Only a same-site form carrying the session's CSRF token
    may: a link or a form on another site cannot sign anyone out."""
    session = services.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is not None:
        body = await request.body()
        fields = parse_qs(body[:MAX_LOGIN_BODY].decode("utf-8", "replace")) if body else {}
        token = (fields.get("csrf_token") or [""])[0]
        if not _same_origin(request) or not csrf_ok(session, token):
            return _problem(
                request, None, 403, "Sign-out refused", "The sign-out request did not come from this viewer."
            )
        services.sessions.end(session.id)
    response = RedirectResponse(_base(request) + "/ui/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(
        SESSION_COOKIE,
        path=_cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/")
def global_log(request: Request, session: CurrentSession, services: ServicesDep) -> Response:
    log = LogView(
        view=View(),
        title="Audit log",
        heading="Audit log",
        kind_label="All tasks you may read",
        subject_id="",
        export_filter={},
    )
    return _log_page(request, session, services, log)


@router.get("/users/{user_id:path}")
def user_activity(user_id: str, request: Request, session: CurrentSession, services: ServicesDep) -> Response:
    if not user_id or len(user_id) > 256:
        return _problem(request, session, 404, "Not found", "There is no such user.")
    if not may_read_activity_log(session.scope):
        return _problem(
            request,
            session,
            403,
            "Not allowed",
            "The activity log of a user needs the Manage Infrastructure and Users permission.",
        )
    user = session.directory.users.get(user_id)
    name = user.name if user is not None else user_id
    log = LogView(
        view=View(kind="activity", actor_id=user_id),
        title=f"Activity log: {name}",
        heading=name,
        kind_label="Activity log",
        subject_id=user_id,
        export_filter={"actor": user_id},
    )
    return _log_page(request, session, services, log)


@router.get("/entities/{kind}/{entity_id:path}")
def entity_changes(
    kind: str, entity_id: str, request: Request, session: CurrentSession, services: ServicesDep
) -> Response:
    if kind not in ENTITY_KINDS or not entity_id or len(entity_id) > 256:
        return _problem(request, session, 404, "Not found", "There is no such entity.")
    if not may_read_entity(session.scope, kind, entity_id):
        return _problem(
            request,
            session,
            403,
            "Not allowed",
            f"You may not read the change log of this {KIND_LABELS[kind].lower()}.",
        )
    name = session.directory.display_name(kind, entity_id) or entity_id
    log = LogView(
        view=View(kind="entity", entity_kind=kind, entity_id=entity_id),
        title=f"Change log: {name}",
        heading=name,
        kind_label=f"{KIND_LABELS[kind]} change log",
        subject_id=entity_id,
        export_filter={"entity": f"{kind}/{entity_id}"},
    )
    return _log_page(request, session, services, log)


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


@router.get("/events/{event_id}")
def event_detail(event_id: str, request: Request, session: CurrentSession, services: ServicesDep) -> Response:
    not_found = "No such event, or you may not read it."
    try:
        canonical = str(UUID(event_id))
    except ValueError:
        return _problem(request, session, 404, "Event not found", not_found)
    base = session.base
    event = proof = None
    with services.read_slots.hold(session.caller.key_id):
        row = services.store.reader.get(scope=session.scope, event_id=canonical, provable=True)
        if row is not None:
            event = event_out(row)
            proof = proof_panel(services.store.tree, row, event, f"{base}/v1/events/{canonical}/proof")
    _audit(request, session, services, {"view": "event", "event_id": canonical, "found": row is not None})
    if event is None:
        # Missing and hidden look the same, as in the API: existence is not disclosed.
        return _problem(request, session, 404, "Event not found", not_found)
    related = [
        {
            "kind": r["kind"],
            "id": r["id"],
            "name": r["name"] or r["id"],
            "href": entity_href(base, r["kind"], r["id"])
            if may_read_entity(session.scope, r["kind"], r["id"])
            else None,
        }
        for r in event["related"]
    ]
    changes = [
        {
            "field": c.get("field", ""),
            "old": None if c.get("old") is None else _json_text(c.get("old")),
            "new": None if c.get("new") is None else _json_text(c.get("new")),
        }
        for c in event["changes"]
        if isinstance(c, dict)
    ]
    team_id = event["enrichment"]["application_team_id"]
    team = None
    if team_id:
        team = {
            "id": team_id,
            "name": session.directory.display_name("team", team_id) or team_id,
            "href": entity_href(base, "team", team_id)
            if may_read_entity(session.scope, "team", team_id)
            else None,
        }
    context = {
        "team": team,
        "proof": proof,
        "title": f"{event['action']} · event",
        "event": event,
        "row": _row(event, session),
        "received_utc": _utc_text(event["received_at"]),
        "related": related,
        "changes": changes,
        "details_json": orjson.dumps(event["details"], option=orjson.OPT_INDENT_2).decode()
        if event["details"]
        else "",
        "raw_json": orjson.dumps(event, option=orjson.OPT_INDENT_2).decode(),
        "plan_apps": [
            {
                "id": a,
                "name": session.directory.display_name("application", a) or a,
                "href": entity_href(base, "application", a)
                if may_read_entity(session.scope, "application", a)
                else None,
            }
            for a in event["enrichment"]["plan_application_ids"]
        ],
    }
    return _render(request, "event.html", context, session=session)


def _covers(hold: HoldOut, directory: Directory) -> str:
    parts = []
    if hold.environment:
        parts.append(
            f"environment {directory.display_name('environment', hold.environment) or hold.environment}"
        )
    if hold.entity:
        parts.append(f"entity {hold.entity}")
    if hold.actor:
        parts.append(f"actor {directory.display_name('user', hold.actor) or hold.actor}")
    if hold.since or hold.until:
        parts.append(f"from {hold.since or 'the beginning'} to {hold.until or 'now'}")
    return ", ".join(parts) or "everything"


@router.get("/retention")
def retention(request: Request, session: CurrentSession, services: ServicesDep) -> Response:
    if not may_manage(session.scope):
        return _problem(
            request,
            session,
            403,
            "Not allowed",
            "Retention is shown to holders of Manage Infrastructure and Users.",
        )
    out = retention_of(services, session.caller.infrastructure)
    _audit(request, session, services, {"view": "retention"})
    context = {
        "title": "Retention",
        "nav": "retention",
        "policy": out.policy,
        "holds": [{**h.model_dump(), "covers": _covers(h, session.directory)} for h in out.holds],
        "purges": out.purges,
        "kept_actions": out.kept_actions,
        "env_name": lambda e: session.directory.display_name("environment", e) or e,
    }
    return _render(request, "retention.html", context, session=session)
