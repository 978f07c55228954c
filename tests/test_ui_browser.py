"""The audit log viewer in a real browser: Debian's Chromium driven by Playwright.

Each test serves the embedded app (the `store` fixture's fresh chDB database)
with uvicorn on a free loopback port, seeds a few hundred events and a directory
with an administrator and a developer who has List on one application only,
then uses the pages as a person would. Screenshots of every page land in
test-artifacts/screenshots/.
"""

from __future__ import annotations

import csv
import io
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import orjson
import pytest
import uvicorn
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from auditlog.embedded import build_embedded
from producers.contract.directory import Directory
from producers.contract.tlog.note import Signer
from query_api.deps import Services
from query_api.settings import ApiSettings
from query_api.ui import SESSION_COOKIE
from storage.retention import LegalHold, Policy, Rule
from storage.store import Store
from stream.checkpointer import Checkpointer
from tests.grants import make_key

pytest_plugins = ["tests.ui.plugin"]


def __getattr__(name: str) -> Any:
    # The marker is registered by tests.ui.plugin, which pytest loads right after
    # importing this module: building the mark on first read avoids an unknown-mark warning.
    if name == "pytestmark":
        return [pytest.mark.browser]
    raise AttributeError(name)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
TIMEZONE = "America/New_York"

# -- the installation ------------------------------------------------------------------

DIRECTORY = Directory.model_validate(
    {
        "roles": [
            {
                "id": "role-admin",
                "name": "Administrator",
                "app_level": "full_control",
                "manage_infrastructure": True,
                "manage_teams": True,
            },
            {"id": "role-dev", "name": "Developer", "app_level": "list"},
        ],
        "users": [
            {"id": "u-admin", "name": "Ada Admin", "default_role": "role-admin"},
            {"id": "u-dev", "name": "Dan Developer", "app_roles": {"app-billing": "role-dev"}},
            {"id": "u-andrea", "name": "Andrea Fleet", "default_role": "role-admin"},
            {"id": "u-bob", "name": "Bob Builder", "default_role": "role-dev"},
        ],
        "teams": [{"id": "team-payments", "name": "Payments"}, {"id": "team-web", "name": "Web"}],
        "applications": [
            {"id": "app-billing", "name": "Billing", "team": "team-payments"},
            {"id": "app-portal", "name": "Customer Portal", "team": "team-web"},
            {"id": "app-search", "name": "Search", "team": "team-web"},
        ],
        "deployment_plans": [
            {"id": "plan-q4", "name": "Q4 release", "applications": ["app-billing", "app-portal"]},
            {"id": "plan-billing", "name": "Billing hotfix", "applications": ["app-billing"]},
        ],
        "environments": [{"id": "env-dev", "name": "Development"}, {"id": "env-prod", "name": "Production"}],
        "infrastructures": [{"id": "acme", "name": "ACME"}],
    }
)
DEV_TARGETS = {("application", "app-billing"), ("deployment_plan", "plan-billing")}
XSS_NAME = "<img src=x onerror=alert(1)>"
LONG_ID = "env-" + "x" * 140
FIXED_AT = "2024-03-01T12:00:00.000Z"  # 07:00:00 in New York
NOT_READS = "-action:audit_log.*"


def _event(i: int, at: datetime) -> dict[str, Any]:
    actors = [
        {"id": "u-admin", "type": "user"},
        {"id": "u-andrea", "type": "user", "ip": "10.0.0.7"},
        {"id": "u-bob", "type": "user"},
        {"id": "svc-deployer", "name": "Deployer", "type": "service"},
    ]
    apps = ["app-billing", "app-portal", "app-search"]
    pattern = i % 10
    related: list[dict[str, str]] = []
    changes: list[dict[str, Any]] = []
    env: str | None = "env-prod" if i % 3 else "env-dev"
    if pattern in (0, 1, 2, 9):
        verb = ["deploy", "update", "create", "deploy"][pattern % 4]
        target = {"kind": "application", "id": apps[(i // 10) % 3]}
        action = f"application.{verb}"
        if verb == "update":
            changes = [{"field": "description", "old": "old text", "new": "new text"}]
    elif pattern == 3:
        plan = "plan-q4" if (i // 10) % 2 else "plan-billing"
        target = {"kind": "deployment_plan", "id": plan}
        action = "deployment_plan.execute"
        related = [{"kind": "application", "id": a} for a in DIRECTORY.deployment_plans[plan].applications]
    elif pattern == 4:
        target = {"kind": "role", "id": "role-dev" if i % 20 else "role-admin"}
        action = "role.update"
        changes = [
            {"field": "app_level", "old": "list", "new": "change_deploy"},
            {"field": "manage_teams", "old": False, "new": True},
        ]
        env = None
    elif pattern == 5:
        target = {"kind": "user", "id": "u-bob"}
        action = "user.update"
        changes = [{"field": "email", "old": "bob@old.example", "new": "bob@example.com"}]
        env = None
    elif pattern == 6:
        target = {"kind": "team", "id": "team-payments"}
        action = "team.member_add"
        related = [{"kind": "user", "id": "u-bob"}]
        env = None
    elif pattern == 7:
        target = {"kind": "environment", "id": "env-prod"}
        action = "environment.update"
    else:
        target = {"kind": "infrastructure", "id": "acme"}
        action = "infrastructure.update"
        env = None
    outcome = "failure" if i % 7 == 3 else "denied" if i % 11 == 5 else "success"
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": str(uuid.UUID(int=(0xA0 << 120) + i)),
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
        "infrastructure": "acme",
        "actor": actors[i % 4],
        "action": action,
        "target": target,
        "related": related,
        "outcome": outcome,
        "changes": changes,
        "details": {"request": {"attempt": i % 3 + 1, "via": "console"}},
        "source": {"service": "lifetime", "host": "lt-1", "version": "11.2"},
        "request_id": f"req-{i}",
    }
    if env is not None:
        event["environment"] = env
    if outcome != "success":
        event["reason"] = "connection refused" if outcome == "failure" else "missing permission"
    return event


def _special_events() -> dict[str, dict[str, Any]]:
    fixed = {
        "schema_version": 1,
        "event_id": "018e0000-0000-7000-8000-000000000001",
        "occurred_at": FIXED_AT,
        "infrastructure": "acme",
        "environment": "env-prod",
        "actor": {
            "id": "u-andrea",
            "ip": "10.0.0.7",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64) " + "Chrome/156.0 " * 8,
            "session_id": "sess-42",
        },
        "action": "application.update",
        "outcome": "success",
        "target": {"kind": "application", "id": "app-billing"},
        "related": [
            {"kind": "team", "id": "team-payments"},
            {"kind": "environment", "id": LONG_ID, "name": "A very long environment"},
        ],
        "changes": [
            {"field": "app_level", "old": "list", "new": "full_control"},
            {"field": "tags", "old": ["a"], "new": ["a", "b"]},
        ],
        "details": {"ticket": "OPS-1234", "window": {"start": "22:00", "end": "23:00"}},
        "source": {"service": "lifetime", "host": "lt-1", "version": "11.2"},
        "request_id": "req-fixed",
        "correlation_id": "corr-fixed",
    }
    xss = {
        "schema_version": 1,
        "event_id": "018e0000-0000-7000-8000-000000000002",
        "occurred_at": (datetime.now(UTC) - timedelta(hours=30)).isoformat(),
        "infrastructure": "acme",
        "actor": {"id": "u-admin"},
        "action": "application.create",
        "outcome": "success",
        "target": {"kind": "application", "id": "app-xss", "name": XSS_NAME},
        "details": {"note": "<script>alert('x')</script>"},
    }
    return {"fixed": fixed, "xss": xss}


@dataclass
class Installation:
    base_url: str
    admin_key: str
    dev_key: str
    events: list[dict[str, Any]]
    special: dict[str, dict[str, Any]]
    services: Services
    dev_visible: set[str] = field(default_factory=set)

    def count(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        return sum(1 for e in self.events if predicate(e))


class _BackgroundServer:
    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        # Lifespan on: it starts the read auditor, as in production.
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="ui-uvicorn", daemon=True
        )

    def __enter__(self) -> _BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@pytest.fixture
def installation(store: Store) -> Iterator[Installation]:
    # Live updates count every 0.3 s here (5 s by default), so a test sees them at once.
    embedded = build_embedded(store, directory=DIRECTORY, api_settings=ApiSettings(live_interval_s=0.3))
    now = datetime.now(UTC).replace(microsecond=0)
    events = [_event(i, now - timedelta(minutes=5 + 97 * i)) for i in range(300)]
    special = _special_events()
    events += list(special.values())
    report = embedded.services.ingestor.ingest(events, received_at_ms=int(time.time() * 1000))
    assert (report.stored, report.rejected) == (len(events), []), report.rejected[:3]
    # Signed, as `auditlog demo` signs what it seeds: the event page shows each row's proof.
    Checkpointer(store.tree, Signer.generate("auditlog"), origin="auditlog", anchor_dir=None).run()
    admin_key = make_key(store, "u-admin", label="ui test")
    dev_key = make_key(store, "u-dev", label="ui test")
    with _BackgroundServer(embedded.app) as server:
        inst = Installation(
            base_url=f"http://127.0.0.1:{server.port}",
            admin_key=admin_key,
            dev_key=dev_key,
            events=events,
            special=special,
            services=embedded.services,
        )
        inst.dev_visible = {
            e["event_id"] for e in events if (e["target"]["kind"], e["target"]["id"]) in DEV_TARGETS
        }
        yield inst


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    # launch() gives every browser a fresh temporary profile (user-data-dir).
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@dataclass
class Session:
    context: BrowserContext
    page: Page
    base: str
    csp_errors: list[str]
    dialogs: list[str]

    def go(self, path: str) -> int:
        response = self.page.goto(self.base + path)
        assert response is not None
        return response.status

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 0

    def column(self, selector: str, attribute: str | None = None) -> list[str]:
        cells = self.page.locator(f"table.events tbody tr {selector}")
        if attribute is None:
            return [t.strip() for t in cells.all_text_contents()]
        return [cells.nth(i).get_attribute(attribute) or "" for i in range(cells.count())]

    def row_attr(self, attribute: str) -> list[str]:
        rows = self.page.locator("table.events tbody tr")
        return [rows.nth(i).get_attribute(attribute) or "" for i in range(rows.count())]

    def row_ids(self) -> list[str]:
        return self.row_attr("data-event-id")


@pytest.fixture
def open_session(browser: Browser, installation: Installation) -> Iterator[Callable[..., Session]]:
    opened: list[Session] = []

    def open_(key: str | None = None, *, width: int = 1280, height: int = 860) -> Session:
        context = browser.new_context(
            viewport={"width": width, "height": height}, locale="en-US", timezone_id=TIMEZONE
        )
        context.set_default_timeout(15_000)
        page = context.new_page()
        session = Session(context, page, installation.base_url, [], [])
        page.on(
            "console",
            lambda m: (
                session.csp_errors.append(m.text)
                if "Content Security Policy" in m.text or "Refused to" in m.text
                else None
            ),
        )

        def on_dialog(dialog: Any) -> None:
            session.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        if key is not None:
            sign_in(session, key)
        opened.append(session)
        return session

    yield open_
    for s in opened:
        assert s.csp_errors == [], s.csp_errors
        assert s.dialogs == [], "a dialog opened: escaping failed"
        s.context.close()


def sign_in(session: Session, key: str) -> None:
    session.go("/ui/login")
    session.page.fill("#api_key", key)
    session.page.click("button[type=submit]")
    session.page.wait_for_url(re.compile(r"/ui/(\?.*)?$"))


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def walk(s: Session, check: Callable[[Session], None] | None = None) -> list[str]:
    """Every row id from the page shown to the last one, following "Next"."""
    seen: list[str] = []
    while True:
        seen += s.row_ids()
        if check is not None:
            check(s)
        if s.page.locator("#page-next").count() == 0:
            return seen
        with s.page.expect_navigation():
            s.page.click("#page-next")


# -- tests -------------------------------------------------------------------------------


def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_clears_it(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    s = open_session()
    page = s.page
    s.go("/ui/events/" + installation.special["fixed"]["event_id"])
    assert "/ui/login" in page.url
    assert page.title() == "Sign in · Audit log"
    s.shot("login")

    page.fill("#api_key", "alk_not-a-real-key")
    page.click("button[type=submit]")
    assert "not valid" in page.inner_text("#login-error")
    s.shot("login-error")

    page.fill("#api_key", installation.admin_key)
    page.click("button[type=submit]")
    # Back where the visitor was going before being asked to sign in.
    page.wait_for_url(re.compile(r"/ui/events/"))
    cookie = next(c for c in s.context.cookies() if c["name"] == SESSION_COOKIE)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # plain http on loopback; https requests get Secure
    assert cookie["path"] == "/"
    assert SESSION_COOKIE not in page.evaluate("document.cookie")
    assert page.locator(".who-name").inner_text() == "Ada Admin"

    page.click("#sign-out")
    page.wait_for_url(re.compile(r"/ui/login$"))
    assert not [c for c in s.context.cookies() if c["name"] == SESSION_COOKIE]
    s.go("/ui/")
    assert "/ui/login" in page.url


def test_global_log_renders_newest_first_and_search_narrows(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    s = open_session(installation.admin_key)
    page = s.page
    assert page.title() == "Audit log · Audit log"
    assert page.locator("h1").inner_text() == "Audit log"
    assert len(s.row_ids()) == 50
    stamps = s.column("time", "datetime")
    assert stamps == sorted(stamps, reverse=True)
    # Times are converted to the browser's zone; the zone is named above the table.
    first = page.locator("table.events time").first
    assert first.get_attribute("data-localized") == "local"
    assert "UTC" not in first.inner_text()
    assert page.locator("[data-tz]").inner_text() == TIMEZONE.replace("_", " ")
    s.shot("global")

    page.fill("#q", "action:role.*")
    page.press("#q", "Enter")
    page.wait_for_url(re.compile(r"q=action%3Arole"))
    actions = s.column(".col-action")
    expected = installation.count(lambda e: e["action"].startswith("role."))
    assert len(actions) == min(expected, 50)
    assert all(a.startswith("role.") for a in actions)
    assert page.locator('.chip[data-source="action:role.*"]').is_visible()

    page.click('.qchip[data-term="outcome:failure"]')
    page.wait_for_url(re.compile(r"outcome%3Afailure"))
    assert query_of(page.url)["q"] == ["action:role.* outcome:failure"]
    both = installation.count(lambda e: e["action"].startswith("role.") and e["outcome"] == "failure")
    assert len(s.row_ids()) == both > 0
    assert set(s.row_attr("data-outcome")) == {"failure"}
    assert page.locator('.qchip[data-term="outcome:failure"]').get_attribute("aria-pressed") == "true"
    s.shot("global-filtered")

    # The x on a chip removes that qualifier only.
    page.click('.chip[data-source="action:role.*"] .chip-remove')
    page.wait_for_url(lambda url: query_of(url).get("q") == ["outcome:failure"])
    failures = installation.count(lambda e: e["outcome"] == "failure")
    assert len(s.row_ids()) == min(failures, 50)
    assert set(s.row_attr("data-outcome")) == {"failure"}
    assert any(not a.startswith("role.") for a in s.column(".col-action"))

    # Free text and a qualifier together, typed as a person would.
    page.fill("#q", '"connection refused" kind:application')
    page.press("#q", "Enter")
    page.wait_for_url(re.compile(r"kind%3Aapplication"))
    refused = installation.count(
        lambda e: e.get("reason") == "connection refused" and e["target"]["kind"] == "application"
    )
    assert len(s.row_ids()) == refused > 0


def test_invalid_query_shows_the_message_and_token_not_a_500(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    s = open_session(installation.admin_key)
    page = s.page
    page.fill("#q", "action:role.* foo:bar")
    with page.expect_response(lambda r: "/ui/?" in r.url and "live_after" not in r.url) as answer:
        page.press("#q", "Enter")
    assert answer.value.status == 400
    error = page.inner_text("#search-error")
    assert "unknown qualifier 'foo'" in error
    assert "position 14" in error
    assert page.inner_text("#search-error mark") == "foo:bar"
    assert page.locator("#q").get_attribute("aria-invalid") == "true"
    assert page.locator("#q").input_value() == "action:role.* foo:bar"
    assert page.locator("table.events").count() == 0
    s.shot("search-error")

    assert s.go("/ui/?q=" + "%22unterminated") == 400
    assert "unterminated quote" in page.inner_text("#search-error")
    assert s.go("/ui/?q=outcome%3Amaybe") == 400
    assert "unknown outcome 'maybe'" in page.inner_text("#search-error")
    # A cursor that does not belong to the query is explained, not a crash.
    assert s.go("/ui/?cursor=bm90LWEtY3Vyc29y") == 400
    assert "cursor" in page.inner_text("#search-error")


def test_paging_with_the_keyset_cursor_next_and_newer(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    s = open_session(installation.admin_key)
    page = s.page
    # Reads are audited as they happen; the viewer leaves them out unless asked, so pages stay put.
    page.select_option("#limit", "25")
    page.wait_for_url(re.compile(r"limit=25"))
    first = s.row_ids()
    first_times = s.column("time", "datetime")
    assert len(first) == 25
    assert page.locator("#page-newer").count() == 0

    page.click("#page-next")
    page.wait_for_url(re.compile(r"cursor="))
    second = s.row_ids()
    assert len(second) == 25 and not set(first) & set(second)
    assert max(s.column("time", "datetime")) <= min(first_times)
    assert "Page 2" in page.inner_text(".pager")

    page.click("#page-next")
    page.wait_for_url(re.compile(r"trail="))
    third = s.row_ids()
    assert not set(third) & (set(first) | set(second))

    page.click("#page-newer")
    page.wait_for_function("document.querySelector('.page-no').textContent.includes('Page 2')")
    assert s.row_ids() == second
    page.click("#page-newer")
    page.wait_for_function("document.querySelector('.page-no').textContent.includes('Page 1')")
    assert s.row_ids() == first

    # Walking every page sees each event exactly once, also with a relative time in the query.
    # The fixed event (2024) is older than 400 days, so it drops out of the second walk.
    total = len(installation.events)
    for q, expected in ((NOT_READS, total), (NOT_READS + " after:-400d", total - 1)):
        s.go("/ui/?limit=100&q=" + quote(q))
        seen = walk(s)
        assert len(seen) == len(set(seen)) == expected


def test_actor_opens_the_activity_log_and_target_the_change_log(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    s = open_session(installation.admin_key)
    page = s.page
    s.go("/ui/?q=actor%3Au-andrea")
    page.locator("table.events .actor-link").first.click()
    page.wait_for_url(re.compile(r"/ui/users/u-andrea$"))
    assert page.locator("h1").inner_text() == "Andrea Fleet"
    assert page.locator(".eyebrow").first.inner_text().lower() == "activity log"
    andrea = installation.count(lambda e: e["actor"]["id"] == "u-andrea")
    assert len(s.row_ids()) == min(andrea, 50)
    assert set(s.column(".actor-link")) == {"Andrea Fleet"}
    # The export covers the rows shown: log reads are left out of both unless asked for.
    assert query_of(page.get_attribute("#export-csv", "href") or "") == {
        "format": ["csv"],
        "actor": ["u-andrea"],
        "q": [NOT_READS],
    }
    s.shot("activity")

    s.go("/ui/?q=kind%3Arole")
    link = page.locator("table.events .target-link").first
    name = link.inner_text()
    link.click()
    page.wait_for_url(re.compile(r"/ui/entities/role/role-"))
    role_id = page.url.rsplit("/", 1)[1]
    assert page.locator("h1").inner_text() == name
    assert "change log" in page.locator(".eyebrow").first.inner_text().lower()
    expected = installation.count(lambda e: e["target"] == {"kind": "role", "id": role_id})
    assert len(s.row_ids()) == min(expected, 50)
    assert set(s.column(".target-link")) == {name}
    s.shot("change-log")

    # A plan's applications are related entities: their change log includes the plan's tasks.
    s.go("/ui/entities/application/app-portal?limit=200")
    related = installation.count(
        lambda e: (
            e["target"] == {"kind": "application", "id": "app-portal"}
            or {"kind": "application", "id": "app-portal"} in e.get("related", [])
        )
    )
    assert len(s.row_ids()) == related
    assert "deployment_plan.execute" in s.column(".col-action")
    export = page.get_attribute("#export-ndjson", "href") or ""
    assert query_of(export) == {"format": ["ndjson"], "entity": ["application/app-portal"], "q": [NOT_READS]}
    lines = page.request.get(installation.base_url + export).body().splitlines()
    assert {orjson.loads(x)["event_id"] for x in lines if x.strip()} == set(s.row_ids())


def test_event_detail_shows_all_fields_and_the_changes_as_a_diff(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    s = open_session(installation.admin_key)
    page = s.page
    s.go("/ui/?q=action%3Arole.update")
    row_id = s.row_ids()[0]
    page.locator("table.events .event-link").first.click()
    page.wait_for_url(re.compile(r"/ui/events/" + row_id))
    cells = page.locator("#diff tbody tr")
    assert cells.count() == 2
    assert page.inner_text("#diff tbody tr:nth-child(1) th") == "app_level"
    assert page.text_content("#diff tbody tr:nth-child(1) del") == "removed: list"
    assert page.text_content("#diff tbody tr:nth-child(1) ins") == "added: change_deploy"

    def rgb(selector: str) -> tuple[int, ...]:
        value = page.eval_on_selector(selector, "e => getComputedStyle(e).color")
        return tuple(int(x) for x in re.findall(r"\d+", value)[:3])

    old, new = rgb("#diff del"), rgb("#diff ins")
    assert old[0] > old[1] + 60, f"old values are not red: {old}"
    assert new[1] > new[0] + 40, f"new values are not green: {new}"

    fixed = installation.special["fixed"]
    assert s.go("/ui/events/" + fixed["event_id"]) == 200
    assert page.title() == "application.update · event · Audit log"
    assert "07:00:00" in page.inner_text("#occurred") and "2024" in page.inner_text("#occurred")
    assert page.text_content("#diff tbody tr:nth-child(2) ins") == 'added: ["a","b"]'
    details = page.inner_text("#details-json")
    assert '"ticket": "OPS-1234"' in details and '\n  "window": {\n    "end"' in details
    related = page.inner_text("#related")
    assert "Payments" in related and LONG_ID in related
    body = page.inner_text("main")
    for text in ("Andrea Fleet", "Billing", "10.0.0.7", "sess-42", "req-fixed", "corr-fixed", "lifetime"):
        assert text in body
    s.shot("event")
    proof = page.locator("#proof")
    assert proof.get_attribute("data-state") == "proven"
    assert "matches its signed leaf" in proof.inner_text()
    assert page.get_attribute("#proof-link", "href") == f"/v1/events/{fixed['event_id']}/proof"

    assert s.go("/ui/events/" + str(uuid.uuid4())) == 404
    assert page.inner_text("#problem-title") == "Event not found"
    assert s.go("/ui/events/not-a-uuid") == 404


def test_developer_sees_only_rows_of_its_application(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    s = open_session(installation.dev_key)
    page = s.page
    assert page.locator(".who-name").inner_text() == "Dan Developer"
    assert page.locator(".mainnav").inner_text().strip() == "Global log"  # no "My activity"
    s.go("/ui/?limit=100")

    def only_its_application(s: Session) -> None:
        assert set(s.column(".col-target .target-link")) <= {"Billing", "Billing hotfix"}
        assert set(s.column(".col-target .kind")) <= {"Application", "Deployment plan"}

    seen = walk(s, only_its_application)
    assert set(seen) == installation.dev_visible and len(seen) == len(installation.dev_visible)
    # No activity log for this persona, so actors are plain text.
    assert page.locator("table.events .actor-link").count() == 0
    s.shot("developer")

    assert s.go("/ui/users/u-admin") == 403
    assert page.inner_text("#problem-title") == "Not allowed"
    assert "Manage Infrastructure and Users" in page.inner_text("#problem-message")
    s.shot("forbidden")
    assert s.go("/ui/entities/role/role-admin") == 403
    assert s.go("/ui/entities/application/app-portal") == 403
    assert s.go("/ui/entities/deployment_plan/plan-q4") == 403
    assert s.go("/ui/entities/application/app-billing") == 200
    assert len(s.row_ids()) > 0

    hidden = next(e for e in installation.events if e["event_id"] not in installation.dev_visible)
    assert s.go("/ui/events/" + hidden["event_id"]) == 404
    assert s.go("/ui/events/" + installation.special["fixed"]["event_id"]) == 200
    # Related entities the developer may not read are shown, but not as links.
    assert page.locator("#related a").count() == 0

    assert s.go("/ui/?q=kind%3Arole") == 200
    assert page.locator("#no-results").is_visible()

    # Exports carry the same query; whatever the export endpoint answers stays inside the scope.
    s.go("/ui/?q=outcome%3Afailure")
    csv_href = page.get_attribute("#export-csv", "href") or ""
    ndjson_href = page.get_attribute("#export-ndjson", "href") or ""
    assert query_of(csv_href) == {"format": ["csv"], "q": ["outcome:failure " + NOT_READS]}
    assert query_of(ndjson_href) == {"format": ["ndjson"], "q": ["outcome:failure " + NOT_READS]}
    assert urlsplit(ndjson_href).path == "/v1/events/export"
    # The export endpoint takes the same cookie: what it streams stays inside the scope too.
    failures = {e["event_id"] for e in installation.events if e["outcome"] == "failure"}
    for href in (ndjson_href, csv_href):
        answer = page.request.get(installation.base_url + href)
        assert answer.status == 200, answer.status
        if href == ndjson_href:
            ids = {orjson.loads(x)["event_id"] for x in answer.body().splitlines() if x.strip()}
        else:
            table = list(csv.DictReader(io.StringIO(answer.text())))
            ids = {r["event_id"] for r in table}
        assert ids == failures & installation.dev_visible


def test_everything_is_escaped(open_session: Callable[..., Session], installation: Installation) -> None:
    s = open_session(installation.admin_key)
    page = s.page
    s.go("/ui/?q=" + quote("entity:application/app-xss"))
    assert s.column(".target-link") == [XSS_NAME]
    assert page.locator("table.events img").count() == 0
    page.locator("table.events .event-link").first.click()
    page.wait_for_url(re.compile(r"/ui/events/"))
    assert "<script>alert('x')</script>" in page.inner_text("#details-json")
    assert page.locator("main script").count() == 0
    # Search text comes back into the page as text, not markup.
    s.go("/ui/?q=%22%3Cb%3Ebold%3C%2Fb%3E%22")
    assert page.locator("#q").input_value() == '"<b>bold</b>"'
    assert page.locator(".chip-value").inner_text() == "<b>bold</b>"
    assert page.locator(".chip b").count() == 0


def test_narrow_screen_has_no_horizontal_overflow(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    s = open_session(installation.admin_key, width=375, height=812)
    page = s.page
    fixed = installation.special["fixed"]["event_id"]
    pages = {
        "mobile-global": "/ui/?q=action%3Arole.*%20-outcome%3Asuccess",
        "mobile-error": "/ui/?q=action%3Arole.*%20nope%3Ax",
        "mobile-activity": "/ui/users/u-andrea",
        "mobile-change-log": "/ui/entities/application/app-billing",
        "mobile-event": "/ui/events/" + fixed,
        "mobile-not-found": "/ui/events/" + str(uuid.uuid4()),
    }
    for name, path in pages.items():
        s.go(path)
        widths = page.evaluate(
            "[document.body.scrollWidth, document.documentElement.scrollWidth, window.innerWidth]"
        )
        wide = page.evaluate(
            "Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right"
            " > window.innerWidth + 1).slice(-3).map(e => e.tagName + '.' + e.className + '#' + e.id)"
        )
        assert max(widths[:2]) <= widths[2], f"{name} overflows horizontally: {widths}, widest: {wide}"
        s.shot(name)
    s.go("/ui/")
    assert page.eval_on_selector("table.events tbody tr", "e => getComputedStyle(e).display") == "block"
    assert page.eval_on_selector("table.events thead", "e => e.getBoundingClientRect().width") <= 1

    s.page.click("#sign-out")
    page.wait_for_url(re.compile(r"/ui/login$"))
    widths = page.evaluate("[document.body.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1]
    s.shot("mobile-login")


def test_page_views_are_recorded_as_audit_log_reads(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    dev = open_session(installation.dev_key)
    dev.go("/ui/?q=" + quote("outcome:failure"))
    dev.go("/ui/events/" + installation.special["fixed"]["event_id"])
    assert installation.services.auditor is not None

    admin = open_session(installation.admin_key)
    admin.go("/ui/?q=" + quote("action:audit_log.read actor:u-dev"))
    assert len(admin.row_ids()) >= 3  # sign-in landing page, the search, the event
    assert set(admin.column(".col-action")) == {"audit_log.read"}
    # The record of the event's view, found by the event's id in its details (the search page's
    # live stream is recorded too, and may land after it).
    fixed = installation.special["fixed"]["event_id"]
    admin.go("/ui/?q=" + quote(f"action:audit_log.read actor:u-dev {fixed}"))
    assert len(admin.row_ids()) == 1
    admin.page.locator("table.events .event-link").first.click()
    admin.page.wait_for_url(re.compile(r"/ui/events/"))
    details = admin.page.inner_text("#details-json")
    assert '"client": "ui"' in details and installation.special["fixed"]["event_id"] in details
    admin.shot("audit-read")


def test_retention_page_shows_the_policy_holds_and_purges_to_administrators_only(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    retention = installation.services.store.retention
    now_ms = int(time.time() * 1000)
    policy = Policy(default_days=365, rules=(Rule(days=2555, environment="env-prod"),))
    retention.set_policy("acme", policy, by="u-admin", now_ms=now_ms)
    retention.create_hold(
        LegalHold(
            hold_id=str(uuid.uuid4()), infrastructure="acme", name="Case <b>42</b>", reason="litigation",
            created_at_ms=now_ms, created_by="u-admin", environment="env-prod", actor="u-andrea",
        )
    )  # fmt: skip
    admin = open_session(installation.admin_key)
    assert "Retention" in admin.page.locator(".mainnav").inner_text()
    admin.page.click(".mainnav >> text=Retention")
    admin.page.wait_for_url(re.compile(r"/ui/retention$"))
    page = admin.page
    assert page.inner_text("#default-days") == "365 days"
    assert page.locator("#rules tbody tr").all_inner_texts() == ["Production\tany\t2555 days"]
    [hold] = page.locator("#holds tbody tr").all_inner_texts()
    assert "Case <b>42</b>" in hold and "environment Production, actor Andrea Fleet" in hold
    assert page.locator("#no-purges").is_visible()
    admin.shot("retention")
    narrow = open_session(installation.admin_key, width=375, height=812)
    narrow.go("/ui/retention")
    widths = narrow.page.evaluate("[document.body.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths
    narrow.shot("mobile-retention")

    dev = open_session(installation.dev_key)
    assert "Retention" not in dev.page.locator(".mainnav").inner_text()
    assert dev.go("/ui/retention") == 403
    assert "Manage Infrastructure and Users" in dev.page.inner_text("#problem-message")


# -- the overview: timeline, facets, total; pickers, time zone, saved searches -----------


def _bar_counts(s: Session) -> list[int]:
    bars = s.page.locator("#timeline a.bar")
    return [int(bars.nth(i).get_attribute("data-count") or 0) for i in range(bars.count())]


def _facet(s: Session, column: str) -> dict[str, int]:
    items = s.page.locator(f'.facet[data-facet="{column}"] li')
    out = {}
    for i in range(items.count()):
        value = items.nth(i).locator(".facet-value").inner_text().strip()
        out[value] = int(items.nth(i).locator(".facet-count").inner_text().replace(",", ""))
    return out


def _total(s: Session) -> int:
    return int(s.page.locator("#total strong").inner_text().replace(",", ""))


@pytest.mark.parametrize("width", [1400, 375])
@pytest.mark.parametrize("persona", ["admin", "developer"])
def test_overview_counts_the_callers_rows_and_its_controls_filter(
    open_session: Callable[..., Session], installation: Installation, persona: str, width: int
) -> None:
    key = installation.admin_key if persona == "admin" else installation.dev_key
    visible = [
        e for e in installation.events if persona == "admin" or e["event_id"] in installation.dev_visible
    ]
    s = open_session(key, width=width, height=900)
    page = s.page
    # Log reads are hidden by default: the total is the installation's own events in scope.
    assert _total(s) == len(visible)
    assert sum(_bar_counts(s)) == len(visible)
    outcomes = {o: sum(1 for e in visible if e["outcome"] == o) for o in ("success", "failure", "denied")}
    assert _facet(s, "outcome") == {o: n for o, n in outcomes.items() if n}
    s.shot(f"overview-{persona}-{width}")

    # A facet value filters on it; the total, the timeline and the rows follow.
    page.click('.facet[data-facet="outcome"] .facet-value:text-is("failure")')
    page.wait_for_url(lambda url: query_of(url).get("q") == ["outcome:failure"])
    assert _total(s) == sum(_bar_counts(s)) == outcomes["failure"]
    assert set(s.row_attr("data-outcome")) == {"failure"}

    # Alt-click excludes the value instead.
    action = page.locator('.facet[data-facet="action"] .facet-value').first.inner_text().strip()
    page.click(f'.facet[data-facet="action"] .facet-value:text-is("{action}")', modifiers=["Alt"])
    page.wait_for_url(lambda url: query_of(url).get("q") == [f"outcome:failure -action:{action}"])
    expected = sum(1 for e in visible if e["outcome"] == "failure" and e["action"] != action)
    assert _total(s) == expected
    assert action not in s.column(".col-action")

    # The last two days in hourly bars: a click on a bar zooms into its hour.
    s.go("/ui/?q=" + quote("after:-2d"))
    counts = _bar_counts(s)
    assert len(counts) >= 40 and sum(counts) == _total(s)
    busiest = max(range(len(counts)), key=lambda i: counts[i])
    with page.expect_navigation():
        page.locator("#timeline a.bar").nth(busiest).dispatch_event("click")
    q = query_of(page.url)["q"][0]
    assert q.startswith("after:") and " before:" in q
    assert _total(s) == len(s.row_ids()) == counts[busiest]
    s.shot(f"timeline-zoomed-{persona}-{width}")


def test_dragging_across_the_timeline_zooms_into_that_range(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    s = open_session(installation.admin_key, width=1400)
    page = s.page
    s.go("/ui/?q=" + quote("after:-2d kind:application"))
    counts = _bar_counts(s)
    box = page.locator("#timeline svg").bounding_box()
    assert box is not None
    step = box["width"] / len(counts)
    first, last = 10, 25
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + step * (first + 0.5), y)
    page.mouse.down()
    page.mouse.move(box["x"] + step * (last + 0.5), y, steps=8)
    with page.expect_navigation():
        page.mouse.up()
    q = query_of(page.url)["q"][0]
    assert q.startswith("kind:application after:") and " before:" in q
    assert _total(s) == sum(counts[first : last + 1])


def test_log_reads_are_hidden_until_one_click_shows_them(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    s = open_session(installation.admin_key)
    page = s.page
    s.go("/ui/")  # this very view is recorded as a read
    assert not any(a.startswith("audit_log.") for a in s.column(".col-action"))
    assert "Log reads hidden" in page.inner_text("#reads-toggle")
    page.click("#reads-toggle")
    page.wait_for_url(lambda url: query_of(url).get("reads") == ["shown"])
    assert "audit_log.read" in s.column(".col-action")
    assert page.inner_text("#reads-toggle") == "Hide log reads"
    # Paging and filters keep them shown.
    page.click('.qchip[data-term="after:-24h"]')
    page.wait_for_url(lambda url: query_of(url).get("reads") == ["shown"])
    assert "audit_log.read" in s.column(".col-action")


def test_times_switch_between_the_browsers_zone_and_utc_and_stay_switched(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    s = open_session(installation.admin_key)
    page = s.page
    fixed = f'table.events tr[data-event-id="{installation.special["fixed"]["event_id"]}"] time'
    s.go("/ui/?q=" + quote("before:2024-03-02"))
    assert page.inner_text(fixed) == "Mar 01, 2024, 07:00:00 AM"  # New York
    page.click("#tz-toggle")
    assert page.inner_text(fixed) == "Mar 01, 2024, 12:00:00 PM UTC"
    assert page.inner_text("[data-tz]") == "UTC"
    page.reload()
    assert page.inner_text(fixed) == "Mar 01, 2024, 12:00:00 PM UTC"
    assert page.inner_text("#tz-toggle") == "Show local time"
    page.click("#tz-toggle")
    assert page.inner_text(fixed) == "Mar 01, 2024, 07:00:00 AM"


@pytest.mark.parametrize("width", [1400, 375])
def test_pickers_add_terms_and_searches_are_saved_and_shared(
    open_session: Callable[..., Session], installation: Installation, width: int
) -> None:
    s = open_session(installation.admin_key, width=width, height=900)
    page = s.page
    page.select_option("#pick-env", "Production")
    page.wait_for_url(lambda url: query_of(url).get("q") == ["env:Production"])
    production = [e for e in installation.events if e.get("environment") == "env-prod"]
    assert _total(s) == len(production)
    assert set(s.column(".col-env")) == {"Productionenv-prod"}
    page.select_option("#pick-kind", "application")
    page.wait_for_url(lambda url: query_of(url).get("q") == ["env:Production kind:application"])
    assert set(s.column(".col-target .kind")) == {"Application"}
    page.select_option("#pick-actor", "u-andrea")
    page.wait_for_url(lambda url: "actor:u-andrea" in query_of(url)["q"][0])
    assert set(s.column(".actor-link")) == {"Andrea Fleet"}

    # A range picked in the browser's zone (New York) arrives in UTC.
    s.go("/ui/")
    page.fill("#pick-from", "2024-03-01T06:00")
    page.fill("#pick-to", "2024-03-01T08:00")
    page.click("#apply-range")
    page.wait_for_url(lambda url: "after:" in (query_of(url).get("q") or [""])[0])
    assert query_of(page.url)["q"] == ["after:2024-03-01T11:00:00Z before:2024-03-01T13:00:00Z"]
    assert s.row_ids() == [installation.special["fixed"]["event_id"]]
    s.shot(f"pickers-{width}")

    # Saved in this browser, under a name; a link brings the search back.
    page.click("#saved-menu summary")
    page.fill("#save-name", "The fixed event")
    page.click("#save-search")
    saved = page.locator("#saved-list a")
    assert saved.all_inner_texts() == ["The fixed event"]
    s.go("/ui/?q=kind%3Arole")
    page.click("#saved-menu summary")
    with page.expect_navigation():
        page.click('#saved-list a:text-is("The fixed event")')
    assert s.row_ids() == [installation.special["fixed"]["event_id"]]
    s.shot(f"saved-searches-{width}")


def test_live_updates_count_new_matching_events_and_can_be_paused(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    s = open_session(installation.admin_key)
    page = s.page
    s.go("/ui/?q=" + quote("kind:application"))
    assert page.inner_text("#live-status") == "Live"
    assert page.locator("#live-show").is_hidden()
    newest = s.row_ids()[0]

    def ingest(i: int, kind: str = "application") -> str:
        event = _event(1000 + i, datetime.now(UTC))
        event["target"] = {"kind": kind, "id": "app-billing" if kind == "application" else "role-dev"}
        event["event_id"] = str(uuid.uuid4())
        report = installation.services.ingestor.ingest([event], received_at_ms=int(time.time() * 1000))
        assert report.stored == 1
        return str(event["event_id"])

    first = ingest(1)
    ingest(2, kind="role")  # not matching: not counted
    page.wait_for_selector("#live-show:visible")
    assert page.inner_text("#live-show") == "Show 1 new event"
    s.shot("live-updates")

    page.click("#live-pause")
    assert page.inner_text("#live-status") == "Paused"
    ingest(3)
    time.sleep(1.0)
    assert page.inner_text("#live-show") == "Show 1 new event"  # paused: not counted
    page.click("#live-pause")
    expect(page.locator("#live-show")).to_have_text("Show 2 new events")

    page.click("#live-show")
    page.wait_for_load_state()
    ids = s.row_ids()
    assert first in ids[:2] and newest in ids


def test_live_updates_count_only_what_the_caller_may_read(
    open_session: Callable[..., Session], installation: Installation
) -> None:
    s = open_session(installation.dev_key, width=375, height=812)
    page = s.page
    assert page.inner_text("#live-status") == "Live"
    for app in ("app-portal", "app-search", "app-billing"):
        event = _event(2000, datetime.now(UTC))
        event.update(event_id=str(uuid.uuid4()), target={"kind": "application", "id": app})
        assert (
            installation.services.ingestor.ingest([event], received_at_ms=int(time.time() * 1000)).stored == 1
        )
    expect(page.locator("#live-show")).to_have_text("Show 1 new event")
    time.sleep(1.0)
    expect(page.locator("#live-show")).to_have_text("Show 1 new event")
    s.shot("mobile-live-developer")
