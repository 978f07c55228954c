"""Demo data: a realistic installation of the console and its audit trail.

Everything here is a pure function of the seed (and of `end`, handed in by the
caller): the same arguments give the same directory and byte-identical events,
ids included, so a demo store can be rebuilt or resumed and tests can pin it.
Events are plain dicts in the wire format; pydantic would make 120k of them
take tens of seconds, and the pipeline validates them on ingest anyway.

The story: ACME runs one infrastructure with five environments and ten teams.
Over the period a new team (Data Platform) and its applications appear, people
join and leave, a Release Manager role is introduced, an old role and two
applications are retired, the platform is upgraded. Everything else is the
daily noise of a development organisation: logins, publishes, deployments,
plan executions, debugging sessions, permission tweaks.
"""

from __future__ import annotations

import bisect
import heapq
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from producers.contract.directory import (
    Application,
    DeploymentPlan,
    Directory,
    Environment,
    Infrastructure,
    Level,
    Role,
    Team,
    User,
)
from producers.contract.permissions import effective_level, manages_infrastructure
from producers.ids import uuid7

INFRASTRUCTURE_ID = "acme-prod-infra"
EMAIL_DOMAIN = "acme.example"

ADMINISTRATOR = "role-administrator"
DEVELOPER = "role-developer"
TESTER = "role-tester"
VIEWER = "role-viewer"
TEAM_MANAGER = "role-team-manager"
NO_ACCESS = "role-no-access"
OPERATOR = "role-infrastructure-operator"
RELEASE_MANAGER = "role-release-manager"

ANDREA = "andrea.fleet"
TOMAS = "tomas.keller"
PRIYA = "priya.raman"

ANDREA_APPS = ("app-refunds-console", "app-support-tickets", "app-kyc-verification")
TOMAS_TEAMS = ("team-payments", "team-customer-portal")

PERSONAS: list[tuple[str, str, str]] = [
    (
        PRIYA,
        "Administrator",
        "Priya Raman, default role Administrator: Manage Infrastructure and Users, Manage Teams and "
        "Application Roles, Full Control on every application. Sees every task, including every "
        "user's activity log.",
    ),
    (
        TOMAS,
        "Team manager",
        "Tomas Keller, default role No Access, Team Manager of Payments and Customer Portal: the "
        "change logs of those two teams and of their applications (and of deployment plans made only "
        "of them). No activity logs, no users, roles, environments or infrastructure.",
    ),
    (
        ANDREA,
        "Developer with List on a few applications",
        "Andrea Fleet, default role No Access, Developer on three applications (Refunds Console, "
        "Support Tickets, KYC Verification): tasks performed to those three applications and to "
        "deployment plans made only of them. Nothing else, not even her own activity log.",
    ),
]

# --------------------------------------------------------------------------------------
# The directory
# --------------------------------------------------------------------------------------

_TEAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "team-payments": (
        "Payments",
        (
            "Payment Gateway",
            "Invoice Center",
            "Refunds Console",
            "Card Issuing",
            "Billing Engine",
            "Payment Reports",
        ),
    ),
    "team-customer-portal": (
        "Customer Portal",
        (
            "Customer Portal",
            "Self-Service Account",
            "Support Tickets",
            "Knowledge Base",
            "Notification Center",
            "Customer Feedback",
        ),
    ),
    "team-mobile-banking": (
        "Mobile Banking",
        (
            "Mobile Banking App",
            "Mobile Wallet",
            "Push Notifications Service",
            "Branch Locator",
            "Mobile Onboarding",
            "Transfers API",
        ),
    ),
    "team-claims": (
        "Claims Processing",
        (
            "Claims Intake",
            "Claims Adjuster Workbench",
            "Fraud Screening",
            "Policy Lookup",
            "Claims Documents",
            "Claims Analytics",
        ),
    ),
    "team-hr": (
        "HR Self-Service",
        (
            "Employee Portal",
            "Leave Requests",
            "Expense Claims",
            "Recruiting Tracker",
            "Performance Reviews",
            "Payroll Viewer",
        ),
    ),
    "team-supply-chain": (
        "Supply Chain",
        (
            "Inventory Manager",
            "Purchase Orders",
            "Supplier Portal",
            "Warehouse Scanner",
            "Shipment Tracking",
            "Demand Forecast",
        ),
    ),
    "team-data-platform": (
        "Data Platform",
        (
            "Data Catalog",
            "Report Builder",
            "ETL Monitor",
            "Master Data Hub",
            "KPI Dashboard",
            "Data Quality Checks",
        ),
    ),
    "team-internal-tools": (
        "Internal Tools",
        (
            "Service Desk",
            "Asset Register",
            "Meeting Rooms",
            "Access Requests",
            "Change Calendar",
            "Audit Toolkit",
        ),
    ),
    "team-onboarding": (
        "Customer Onboarding",
        (
            "KYC Verification",
            "Account Opening",
            "Document Upload",
            "Identity Check",
            "Welcome Journey",
            "Onboarding Backoffice",
        ),
    ),
    "team-marketing": (
        "Marketing Web",
        (
            "Corporate Website",
            "Campaign Manager",
            "Newsletter Builder",
            "Events Registration",
            "Product Catalog",
            "Promotions Engine",
        ),
    ),
}

_ENVIRONMENTS = (
    ("env-dev", "Development"),
    ("env-test", "Test"),
    ("env-qa", "Quality"),
    ("env-preprod", "Pre-Production"),
    ("env-prod", "Production"),
)

_ROLES = (
    Role(
        id=ADMINISTRATOR,
        name="Administrator",
        app_level="full_control",
        manage_infrastructure=True,
        manage_teams=True,
    ),
    Role(id=OPERATOR, name="Infrastructure Operator", app_level="open_debug", manage_infrastructure=True),
    Role(id=TEAM_MANAGER, name="Team Manager", app_level="change_deploy", manage_teams=True),
    Role(id=RELEASE_MANAGER, name="Release Manager", app_level="change_deploy"),
    Role(id=DEVELOPER, name="Developer", app_level="change_deploy"),
    Role(id=TESTER, name="Tester", app_level="open_debug"),
    Role(id=VIEWER, name="Viewer", app_level="list"),
    Role(id=NO_ACCESS, name="No Access", app_level="none"),
)


@dataclass(frozen=True)
class _Person:
    name: str
    default_role: str
    team_roles: dict[str, str] = field(default_factory=dict)
    app_roles: dict[str, str] = field(default_factory=dict)
    # How busy this person is relative to the others.
    activity: float = 1.0


def _user_id(name: str) -> str:
    ascii_name = name.lower().replace("'", "")
    for accented, plain in (("á", "a"), ("é", "e"), ("í", "i"), ("ü", "u"), ("ñ", "n")):
        ascii_name = ascii_name.replace(accented, plain)
    return ".".join(ascii_name.split())


_PEOPLE: tuple[_Person, ...] = (
    # Administrators and infrastructure operators.
    _Person("Priya Raman", ADMINISTRATOR, activity=1.6),
    _Person("Daniel Okafor", ADMINISTRATOR),
    _Person("Sofia Lindqvist", ADMINISTRATOR, activity=0.7),
    _Person("Hiroshi Tanaka", OPERATOR),
    _Person("Fatima Al-Sayed", OPERATOR, activity=0.8),
    # Team managers: no default access, management of their teams only.
    _Person("Tomas Keller", NO_ACCESS, team_roles={t: TEAM_MANAGER for t in TOMAS_TEAMS}, activity=1.3),
    _Person("Laura Martínez", NO_ACCESS, team_roles={"team-mobile-banking": TEAM_MANAGER}),
    _Person("Kwame Mensah", NO_ACCESS, team_roles={"team-claims": TEAM_MANAGER, "team-hr": TEAM_MANAGER}),
    # Developers on every application.
    _Person("Grace Liu", RELEASE_MANAGER, activity=1.4),
    _Person("Ben Carter", DEVELOPER, activity=1.2),
    _Person("Olivia Brown", DEVELOPER),
    _Person("Lucas Silva", DEVELOPER, activity=1.1),
    _Person("Emma Schulz", DEVELOPER, activity=0.9),
    _Person("Rahul Mehta", DEVELOPER, activity=1.3),
    _Person("Chloe Dubois", DEVELOPER, activity=0.8),
    # Developers of their team's applications.
    _Person("Mateo Rossi", NO_ACCESS, team_roles={"team-payments": DEVELOPER}, activity=1.2),
    _Person("Aisha Khan", NO_ACCESS, team_roles={"team-customer-portal": DEVELOPER}),
    _Person(
        "Jonas Weber", NO_ACCESS, team_roles={"team-mobile-banking": DEVELOPER, "team-onboarding": DEVELOPER}
    ),
    _Person("Nina Petrova", NO_ACCESS, team_roles={"team-supply-chain": DEVELOPER}),
    _Person("Samuel Adeyemi", NO_ACCESS, team_roles={"team-data-platform": DEVELOPER}, activity=1.2),
    _Person("Elena Popescu", NO_ACCESS, team_roles={"team-claims": DEVELOPER}),
    _Person("Yuki Sato", NO_ACCESS, team_roles={"team-marketing": DEVELOPER}, activity=0.9),
    _Person("Liam O'Connor", NO_ACCESS, team_roles={"team-internal-tools": DEVELOPER}),
    _Person("Zara Ahmed", NO_ACCESS, team_roles={"team-hr": DEVELOPER}, activity=0.8),
    # The source document's example user: Developer on three applications only.
    _Person("Andrea Fleet", NO_ACCESS, app_roles={a: DEVELOPER for a in ANDREA_APPS}, activity=2.5),
    # Testers.
    _Person("Marta Nowak", TESTER),
    _Person("Diego Fernández", TESTER, activity=0.9),
    _Person("Hannah Fischer", TESTER, activity=0.8),
    _Person("Omar Haddad", NO_ACCESS, team_roles={"team-payments": TESTER}),
    # Read-only people: audit, PMO, support.
    _Person("Isabelle Moreau", VIEWER, activity=0.4),
    _Person("Patrick Walsh", VIEWER, activity=0.3),
    _Person("Mei Chen", VIEWER, activity=0.5),
    # Mixed grants.
    _Person(
        "Arjun Nair",
        VIEWER,
        team_roles={"team-internal-tools": DEVELOPER},
        app_roles={"app-payment-gateway": TESTER},
    ),
    _Person(
        "Sara Johansson",
        NO_ACCESS,
        app_roles={"app-kpi-dashboard": VIEWER, "app-report-builder": VIEWER},
        activity=0.4,
    ),
    _Person(
        "Victor Almeida",
        NO_ACCESS,
        app_roles={
            a: TESTER
            for a in ("app-claims-intake", "app-fraud-screening", "app-policy-lookup", "app-claims-documents")
        },
        activity=0.7,
    ),
    # Joined during the period (see _SCRIPT).
    _Person("Noah Williams", NO_ACCESS, team_roles={"team-data-platform": DEVELOPER}),
    _Person("Lea Müller", TESTER),
    _Person("Ethan Park", DEVELOPER),
    # Left during the period: deactivated, their roles taken away (see _PAST_GRANTS).
    _Person("Julia Novak", NO_ACCESS),
    _Person("Marco Bianchi", NO_ACCESS),
)

# What the people who left held while they worked here.
_PAST_GRANTS: dict[str, _Person] = {
    "julia.novak": _Person("Julia Novak", DEVELOPER),
    "marco.bianchi": _Person("Marco Bianchi", NO_ACCESS, team_roles={"team-supply-chain": DEVELOPER}),
}

# id, name, applications (by name), created during the period at this fraction of it (None: before).
_PLANS: tuple[tuple[str, str, tuple[str, ...], float | None], ...] = (
    (
        "plan-payments-2-4",
        "Payments 2.4 release",
        ("Payment Gateway", "Billing Engine", "Invoice Center"),
        None,
    ),
    ("plan-refunds-hotfix", "Refunds hotfix", ("Refunds Console",), None),
    (
        "plan-portal-spring",
        "Customer Portal spring release",
        ("Customer Portal", "Self-Service Account", "Support Tickets", "Notification Center"),
        None,
    ),
    (
        "plan-mobile-sprint-31",
        "Mobile sprint 31",
        ("Mobile Banking App", "Mobile Wallet", "Transfers API"),
        None,
    ),
    (
        "plan-claims-q2",
        "Claims Q2 release",
        ("Claims Intake", "Fraud Screening", "Claims Documents", "Policy Lookup", "Claims Analytics"),
        None,
    ),
    ("plan-kyc-regulatory", "KYC regulatory update", ("KYC Verification", "Identity Check"), 0.07),
    ("plan-hr-benefits", "HR benefits season", ("Employee Portal", "Leave Requests", "Payroll Viewer"), 0.14),
    (
        "plan-supply-chain-wms",
        "Warehouse scanner rollout",
        ("Warehouse Scanner", "Inventory Manager", "Shipment Tracking"),
        0.24,
    ),
    (
        "plan-data-platform-launch",
        "Data Platform launch",
        ("Data Catalog", "Report Builder", "ETL Monitor", "KPI Dashboard"),
        0.33,
    ),
    ("plan-support-tickets-sla", "Support Tickets SLA timers", ("Support Tickets", "Knowledge Base"), 0.41),
    (
        "plan-onboarding-revamp",
        "Onboarding journey revamp",
        ("Account Opening", "Document Upload", "Welcome Journey", "KYC Verification", "Identity Check"),
        0.5,
    ),
    ("plan-refunds-support", "Refunds from the support desk", ("Refunds Console", "Support Tickets"), 0.57),
    (
        "plan-internal-tools",
        "Internal tools monthly",
        ("Service Desk", "Access Requests", "Change Calendar"),
        0.68,
    ),
    (
        "plan-marketing-campaign",
        "Autumn campaign",
        ("Campaign Manager", "Promotions Engine", "Corporate Website"),
        0.77,
    ),
    (
        "plan-payments-2-5",
        "Payments 2.5 release",
        ("Payment Gateway", "Card Issuing", "Payment Reports", "Refunds Console"),
        0.88,
    ),
    ("plan-maintenance-window", "Quarterly maintenance window", (), 0.62),
)

# Entities gone by now: deleted during the period, so the directory no longer lists them.
_RETIRED_APPS = (
    ("app-legacy-intranet", "Legacy Intranet", "team-internal-tools", 0.30),
    ("app-old-claims-portal", "Old Claims Portal", "team-claims", 0.66),
)
_RETIRED_PLANS: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("plan-2024-payments-hotfix-7", "Payments hotfix 7", ("Payment Gateway",), 0.12),
    ("plan-claims-legacy-cutover", "Claims legacy cutover", ("Old Claims Portal", "Claims Intake"), 0.38),
    ("plan-intranet-sunset", "Intranet sunset", ("Legacy Intranet", "Service Desk"), 0.29),
    ("plan-mobile-sprint-28", "Mobile sprint 28", ("Mobile Banking App", "Branch Locator"), 0.84),
)
_RETIRED_ROLE = ("role-contractor-legacy", "Contractor (legacy)", 0.55)

_NEW_APPS_AT = {"Promotions Engine": 0.60}
_DATA_PLATFORM_CREATED_AT = 0.20
_PREPROD_REGISTERED_AT = 0.15
_RELEASE_MANAGER_CREATED_AT = 0.40
_UPGRADE_AT = 0.65
_JOINED = {"noah.williams": 0.22, "lea.muller": 0.48, "ethan.park": 0.72}
_LEFT = {"julia.novak": 0.35, "marco.bianchi": 0.58}
_PLATFORM_VERSIONS = ("11.17.3", "11.18.1")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _app_id(name: str) -> str:
    return "app-" + _slug(name)


def _people() -> list[tuple[str, _Person]]:
    return [(_user_id(p.name), p) for p in _PEOPLE]


def build_directory(seed: int) -> Directory:
    """The installation as it is at the end of the period.

    The seed only shuffles e-mail address styles; the cast and the grants are
    fixed, because the demo's narrative (and its printed URLs) name them.
    """
    rng = random.Random(f"directory:{seed}")
    users = []
    for uid, person in _people():
        first, *_, last = uid.split(".")
        email = f"{uid}@{EMAIL_DOMAIN}" if rng.random() < 0.8 else f"{first[0]}{last}@{EMAIL_DOMAIN}"
        users.append(
            User(
                id=uid,
                name=person.name,
                email=email,
                default_role=person.default_role,
                team_roles=dict(person.team_roles),
                app_roles=dict(person.app_roles),
            )
        )
    apps = [
        Application(id=_app_id(app), name=app, team=team_id)
        for team_id, (_, names) in _TEAMS.items()
        for app in names
    ]
    plans = [
        DeploymentPlan(id=pid, name=name, applications=[_app_id(a) for a in app_names])
        for pid, name, app_names, _ in _PLANS
    ]
    return Directory(
        infrastructure=INFRASTRUCTURE_ID,
        roles={r.id: r for r in _ROLES},
        users={u.id: u for u in users},
        teams={tid: Team(id=tid, name=name) for tid, (name, _) in _TEAMS.items()},
        applications={a.id: a for a in apps},
        deployment_plans={p.id: p for p in plans},
        environments={eid: Environment(id=eid, name=name) for eid, name in _ENVIRONMENTS},
        infrastructures={
            INFRASTRUCTURE_ID: Infrastructure(
                id=INFRASTRUCTURE_ID, name="ACME Corp OutSystems Infrastructure"
            )
        },
    )


# --------------------------------------------------------------------------------------
# The events
# --------------------------------------------------------------------------------------

_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS
_MINUTE_MS = 60_000

# Relative activity by hour of day (UTC, the installation's office time) and weekday (Mon=0).
_HOUR_WEIGHT = (
    0.02,
    0.02,
    0.02,
    0.02,
    0.02,
    0.03,
    0.05,
    0.2,
    0.6,
    1.0,
    1.0,
    1.0,
    0.6,
    0.8,
    1.0,
    1.0,
    1.0,
    0.7,
    0.35,
    0.15,
    0.1,
    0.08,
    0.05,
    0.03,
)
_WEEKDAY_WEIGHT = (1.0, 1.05, 1.0, 1.05, 0.85, 0.07, 0.04)

# Share of the day-to-day tasks; one-off tasks (creations, deletions, upgrades) are scripted.
_ACTION_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("user.login", 200),
    ("application.publish", 150),
    ("application.deploy", 110),
    ("application.tag_version", 50),
    ("application.open_debug", 45),
    ("application.update", 40),
    ("application.set_permission", 14),
    ("deployment_plan.update", 22),
    ("deployment_plan.execute", 18),
    ("deployment_plan.abort", 3),
    ("user.update", 9),
    ("user.password_reset", 8),
    ("user.role_change", 8),
    ("team.update", 4),
    ("team.member_add", 3),
    ("team.member_remove", 2),
    ("team.application_add", 0.3),
    ("role.update", 2),
    ("environment.update", 5),
    ("environment.configure", 12),
    ("environment.sync", 20),
    ("infrastructure.configure", 3),
    ("infrastructure.update", 0.2),
)

_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
    "Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
    "Safari/537.36 Edg/124.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 "
    "Safari/605.1.15",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "ServiceStudio/11.54.48 (Windows NT 10.0)",
)
_SOURCE_HOSTS = ("lt-01.acme.internal", "lt-02.acme.internal")

_CI: dict[str, Any] = {
    "id": "svc-ci",
    "name": "CI pipeline (Jenkins)",
    "type": "service",
    "ip": "10.0.5.20",
    "user_agent": "LifeTimeDeploymentAPI-client/2.3 python-requests/2.31",
}
_SCHEDULER: dict[str, Any] = {
    "id": "lifetime-scheduler",
    "name": "LifeTime scheduler",
    "type": "system",
    "ip": "10.0.0.10",
}

# Deployments walk the pipeline one environment at a time.
_PROMOTIONS = (
    ("env-dev", "env-test", 40),
    ("env-test", "env-qa", 28),
    ("env-qa", "env-preprod", 14),
    ("env-qa", "env-prod", 6),
    ("env-preprod", "env-prod", 12),
)

_ALWAYS = (-(2**62), 2**62)
ANY_ADMIN = "@admin"


_DAY_PREFIX: dict[int, str] = {}


def _format_ms(ms: int) -> str:
    """RFC 3339 with milliseconds and Z; strftime per event was a tenth of the generation time."""
    day, in_day = divmod(ms, _DAY_MS)
    prefix = _DAY_PREFIX.get(day)
    if prefix is None:
        prefix = _DAY_PREFIX[day] = datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%dT")
    seconds, millis = divmod(in_day, 1000)
    minutes, sec = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{prefix}{hour:02d}:{minute:02d}:{sec:02d}.{millis:03d}Z"


def _module(app_name: str, suffix: str) -> str:
    return "".join(w[:1].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9]+", app_name) if w) + suffix


@dataclass(order=True)
class _Pending:
    at_ms: int
    seq: int
    build: Callable[[int], dict[str, Any] | None] = field(compare=False)


class _Generator:
    def __init__(self, directory: Directory, *, count: int, days: int, seed: int, end: datetime) -> None:
        if end.tzinfo is None:
            raise ValueError("end must be timezone-aware")
        if days < 1:
            raise ValueError("days must be at least 1")
        self.directory = directory
        self.count = count
        self.rng = random.Random(seed)
        self.end_ms = int(end.timestamp() * 1000)
        self.days = days
        self.start_ms = self.end_ms - days * _DAY_MS
        self.seq = 0
        self.pending: list[_Pending] = []
        self.sessions: dict[tuple[str, int], str] = {}
        self.versions: dict[str, list[int]] = {}
        self._build_world()

    # -- the world the events happen in ---------------------------------------------

    def _at(self, fraction: float, *, hour: int = 10) -> int:
        """A working-hours moment at `fraction` of the period (shifted off weekends)."""
        day_ms = self.start_ms + int(fraction * self.days) * _DAY_MS
        day_ms -= day_ms % _DAY_MS
        while datetime.fromtimestamp(day_ms / 1000, tz=UTC).weekday() >= 5:
            day_ms += _DAY_MS
        at = day_ms + hour * _HOUR_MS + self.rng.randrange(0, 90 * _MINUTE_MS)
        return min(max(at, self.start_ms + 1), self.end_ms - 1)

    def _build_world(self) -> None:
        d = self.directory
        rng = self.rng
        self.app_names: dict[str, str] = {a.id: a.name for a in d.applications.values()}
        self.app_team: dict[str, str | None] = {a.id: a.team for a in d.applications.values()}
        self.window: dict[tuple[str, str], tuple[int, int]] = {}
        for app_id, name, team, died in _RETIRED_APPS:
            self.app_names[app_id] = name
            self.app_team[app_id] = team
            self.window[("application", app_id)] = (_ALWAYS[0], self._at(died))
        for _, app_names in _TEAMS.values():
            for app_name in app_names:
                if app_name in _NEW_APPS_AT:
                    self.window[("application", _app_id(app_name))] = (
                        self._at(_NEW_APPS_AT[app_name]),
                        _ALWAYS[1],
                    )
        team_born = self._at(_DATA_PLATFORM_CREATED_AT)
        self.window[("team", "team-data-platform")] = (team_born, _ALWAYS[1])
        for i, app_name in enumerate(_TEAMS["team-data-platform"][1]):
            born = team_born + (i + 1) * (self.days * _DAY_MS // 60) + rng.randrange(_HOUR_MS)
            self.window[("application", _app_id(app_name))] = (born, _ALWAYS[1])
        self.window[("environment", "env-preprod")] = (self._at(_PREPROD_REGISTERED_AT), _ALWAYS[1])
        self.window[("role", RELEASE_MANAGER)] = (self._at(_RELEASE_MANAGER_CREATED_AT), _ALWAYS[1])
        self.window[("role", _RETIRED_ROLE[0])] = (_ALWAYS[0], self._at(_RETIRED_ROLE[2]))
        for uid, fraction in _JOINED.items():
            self.window[("user", uid)] = (self._at(fraction, hour=9), _ALWAYS[1])
        for uid, fraction in _LEFT.items():
            self.window[("user", uid)] = (_ALWAYS[0], self._at(fraction, hour=16))

        self.plans: dict[str, tuple[str, list[str]]] = {
            p.id: (p.name, list(p.applications)) for p in d.deployment_plans.values()
        }
        for pid, _name, _apps, born_at in _PLANS:
            if born_at is not None:
                self.window[("deployment_plan", pid)] = (self._at(born_at), _ALWAYS[1])
        for pid, name, app_names, died in _RETIRED_PLANS:
            self.plans[pid] = (name, [_app_id(a) for a in app_names])
            self.window[("deployment_plan", pid)] = (_ALWAYS[0], self._at(died))
        # A plan is only usable while all of its applications exist.
        for pid, (_, apps) in self.plans.items():
            lo, hi = self.window.get(("deployment_plan", pid), _ALWAYS)
            for app_id in apps:
                a_lo, a_hi = self.window.get(("application", app_id), _ALWAYS)
                lo, hi = max(lo, a_lo), min(hi, a_hi)
            self.window[("deployment_plan", pid)] = (lo, hi)
        self.upgrade_ms = self._at(_UPGRADE_AT, hour=20)

        # Grants as they were while people acted: the ones who left held roles then.
        acting = {
            uid: d.users[uid].model_copy(
                update={"default_role": p.default_role, "team_roles": p.team_roles, "app_roles": p.app_roles}
            )
            for uid, p in _PAST_GRANTS.items()
        }
        self.acting_users: dict[str, User] = {uid: acting.get(uid, u) for uid, u in d.users.items()}
        self.activity = {uid: p.activity for uid, p in _people()}

        self.user_ips: dict[str, tuple[str, str]] = {}
        self.user_agents: dict[str, str] = {}
        for n, uid in enumerate(d.users):
            office = f"10.12.{n // 200}.{20 + n % 200}"
            remote = (
                f"198.51.100.{rng.randrange(2, 254)}"
                if rng.random() < 0.5
                else f"203.0.113.{rng.randrange(2, 254)}"
            )
            self.user_ips[uid] = (office, remote)
            self.user_agents[uid] = _USER_AGENTS[rng.randrange(len(_USER_AGENTS))]

        # Some applications are much busier than others.
        app_ids = list(self.app_names)
        self.popularity = {
            a: 1.0 / (1 + rank) ** 0.6 for rank, a in enumerate(rng.sample(app_ids, len(app_ids)))
        }
        self.popular_apps = list(self.popularity)
        self.popular_cum = self._cum(list(self.popularity.values()))

        # Levels as they were while the retired applications still existed: who could act on them.
        retired = {a: Application(id=a, name=n, team=t) for a, n, t, _ in _RETIRED_APPS}
        then = d.model_copy(update={"applications": {**d.applications, **retired}})
        self.levels: dict[str, dict[str, Level]] = {
            uid: {a: effective_level(then, u, a) for a in app_ids} for uid, u in self.acting_users.items()
        }
        self.app_pools = {lvl: self._app_pool(lvl) for lvl in (Level.OPEN_DEBUG, Level.CHANGE_DEPLOY)}
        self.team_pool = self._team_pool()
        infra = [uid for uid, u in self.acting_users.items() if manages_infrastructure(d, u)]
        self.infra_pool = (infra, self._cum([self.activity[u] for u in infra]))
        humans = list(self.acting_users)
        self.human_pool = (humans, self._cum([self.activity[u] for u in humans]))
        self.plan_actors = {
            pid: [
                u
                for u in humans
                if all(self.levels[u].get(a, Level.NONE) >= Level.CHANGE_DEPLOY for a in apps)
            ]
            if apps
            else infra
            for pid, (_, apps) in self.plans.items()
        }
        self.plan_actor_cum = {
            pid: self._cum([self.activity[u] for u in us]) for pid, us in self.plan_actors.items()
        }
        self.plan_ids = list(self.plans)
        self.role_ids = [*list(d.roles), _RETIRED_ROLE[0]]
        self.role_names = {**{r.id: r.name for r in d.roles.values()}, _RETIRED_ROLE[0]: _RETIRED_ROLE[1]}
        # The Developer role is the one people tune most (and the source document's example).
        self.role_weights = self._cum(
            [{DEVELOPER: 8.0, TESTER: 3.0, TEAM_MANAGER: 2.0}.get(r, 1.0) for r in self.role_ids]
        )
        self.env_ids = [e for e, _ in _ENVIRONMENTS]
        self.actions = [a for a, _ in _ACTION_WEIGHTS]
        self.action_cum = self._cum([w for _, w in _ACTION_WEIGHTS])

    def _role(self, role_id: str | None) -> Role:
        return self.directory.roles.get(role_id or "", _ROLES[-1])

    @staticmethod
    def _cum(weights: list[float]) -> list[float]:
        out, total = [], 0.0
        for w in weights:
            total += w
            out.append(total)
        return out

    def _app_pool(
        self, level: Level
    ) -> tuple[list[str], list[float], dict[str, tuple[list[str], list[float]]]]:
        users, weights, apps_of = [], [], {}
        for uid, user in self.acting_users.items():
            apps = [a for a, lvl in self.levels[uid].items() if lvl >= level]
            if not apps:
                continue
            role = self._role(user.default_role)
            # Administrators and team managers can deploy anything they manage but mostly do not.
            factor = 0.15 if role.manage_infrastructure else 0.4 if self._manages_a_team(user) else 1.0
            users.append(uid)
            weights.append(self.activity[uid] * factor)
            apps_of[uid] = (apps, self._cum([self.popularity[a] for a in apps]))
        return users, self._cum(weights), apps_of

    def _manages_a_team(self, user: User) -> bool:
        return any(self._role(r).manage_teams for r in user.team_roles.values())

    def _team_pool(self) -> tuple[list[str], list[float], dict[str, list[str]]]:
        users, weights, teams_of = [], [], {}
        for uid, user in self.acting_users.items():
            if self._role(user.default_role).manage_teams:
                teams = list(self.directory.teams)
            else:
                teams = [t for t, r in user.team_roles.items() if self._role(r).manage_teams]
            if teams:
                users.append(uid)
                weights.append(self.activity[uid])
                teams_of[uid] = teams
        return users, self._cum(weights), teams_of

    # -- small helpers ----------------------------------------------------------------

    def alive(self, kind: str, ident: str, at: int) -> bool:
        lo, hi = self.window.get((kind, ident), _ALWAYS)
        return lo <= at < hi

    def pick(self, items: list[str], cum: list[float], kind: str, at: int) -> str | None:
        for _ in range(12):
            choice = self.weighted(items, cum)
            if self.alive(kind, choice, at):
                return choice
        return None

    def weighted(self, items: list[str], cum: list[float]) -> str:
        # random.choices re-validates its arguments on every call; this is the same draw, cheaper.
        return items[bisect.bisect(cum, self.rng.random() * cum[-1], 0, len(items) - 1)]

    def hex(self, bits: int = 64) -> str:
        return f"{self.rng.getrandbits(bits):0{bits // 4}x}"

    def event_id(self, at: int) -> str:
        # UUIDv7: 48-bit ms time, version, 12 + 62 random bits from the seeded generator.
        rand_a = self.rng.getrandbits(12)
        rand_b = self.rng.getrandbits(62)
        return str(uuid7(at, rand_a << 62 | rand_b))

    def user_actor(self, uid: str, at: int) -> dict[str, Any]:
        day = (at - self.start_ms) // _DAY_MS
        session = self.sessions.get((uid, day))
        if session is None:
            session = self.sessions[(uid, day)] = "sess-" + self.hex(96)
        office, remote = self.user_ips[uid]
        return {
            "id": uid,
            "name": self.directory.users[uid].name,
            "type": "user",
            "ip": remote if self.rng.random() < 0.15 else office,
            "user_agent": self.user_agents[uid],
            "session_id": session,
        }

    def ref(self, kind: str, ident: str) -> dict[str, Any]:
        if kind == "application":
            name: str | None = self.app_names.get(ident)
        elif kind == "deployment_plan":
            name = self.plans[ident][0] if ident in self.plans else None
        elif kind == "role":
            name = self.role_names.get(ident)
        else:
            name = self.directory.display_name(kind, ident)
        out = {"kind": kind, "id": ident}
        if name:
            out["name"] = name
        return out

    def outcome(self) -> str:
        r = self.rng.random()
        return "denied" if r < 0.02 else "failure" if r < 0.07 else "success"

    def event(
        self,
        at: int,
        actor: dict[str, Any],
        action: str,
        target: dict[str, Any],
        *,
        related: list[dict[str, Any]] | None = None,
        environment: str | None = None,
        outcome: str = "success",
        reason: str | None = None,
        changes: list[dict[str, Any]] | None = None,
        details: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> dict[str, Any]:
        version = _PLATFORM_VERSIONS[1] if at >= self.upgrade_ms else _PLATFORM_VERSIONS[0]
        ev: dict[str, Any] = {
            "schema_version": 1,
            "event_id": self.event_id(at),
            "occurred_at": _format_ms(at),
            "infrastructure": INFRASTRUCTURE_ID,
            "actor": actor,
            "action": action,
            "target": target,
            "outcome": outcome,
            "source": {
                "service": "lifetime",
                "host": _SOURCE_HOSTS[self.rng.getrandbits(1)],
                "version": version,
            },
            "request_id": "req-" + self.hex(64),
            "correlation_id": correlation_id or "corr-" + self.hex(64),
        }
        if environment:
            ev["environment"] = environment
        if related:
            ev["related"] = related
        if reason:
            ev["reason"] = reason
        if changes:
            ev["changes"] = changes
        if details:
            ev["details"] = details
        return ev

    def later(self, at: int, build: Callable[[int], dict[str, Any] | None]) -> None:
        if at < self.end_ms:
            self.seq += 1
            heapq.heappush(self.pending, _Pending(at, self.seq, build))

    def pick_change(self, options: list[tuple[str, Any, Any]]) -> dict[str, Any]:
        field_name, old, new = self.rng.choice(options)
        return {"field": field_name, "old": old, "new": new}

    def version_tag(self, app_id: str, *, bump: bool) -> str:
        v = self.versions.get(app_id)
        if v is None:
            v = self.versions[app_id] = [
                1 + self.rng.randrange(4),
                self.rng.randrange(12),
                self.rng.randrange(9),
            ]
        if bump:
            if self.rng.random() < 0.15:
                v[1] += 1
                v[2] = 0
            else:
                v[2] += 1
        return f"{v[0]}.{v[1]}.{v[2]}"

    # -- choosing who did what -----------------------------------------------------

    def app_actor(self, level: Level, at: int) -> tuple[str, str] | None:
        users, cum, apps_of = self.app_pools[level]
        for _ in range(12):
            uid = self.weighted(users, cum)
            if not self.alive("user", uid, at):
                continue
            apps, app_cum = apps_of[uid]
            app = self.pick(apps, app_cum, "application", at)
            if app is not None:
                return uid, app
        return None

    def denied_actor(self, at: int, allowed: Callable[[str], bool]) -> str | None:
        users, cum = self.human_pool
        for _ in range(20):
            uid = self.weighted(users, cum)
            if self.alive("user", uid, at) and not allowed(uid):
                return uid
        return None

    def infra_actor(self, at: int) -> str | None:
        return self.pick(self.infra_pool[0], self.infra_pool[1], "user", at)

    def any_app(self, at: int) -> str | None:
        return self.pick(self.popular_apps, self.popular_cum, "application", at)

    # -- day-to-day tasks ------------------------------------------------------------

    def random_event(self, at: int) -> dict[str, Any] | None:
        action = self.weighted(self.actions, self.action_cum)
        kind = action.partition(".")[0]
        outcome = self.outcome()
        if kind == "application":
            return self.app_event(at, action, outcome)
        if kind == "deployment_plan":
            return self.plan_event(at, action, outcome)
        if kind == "team":
            return self.team_event(at, action, outcome)
        return self.infra_event(at, action, outcome)

    def _denied_app(self, at: int, action: str, level: Level) -> dict[str, Any] | None:
        app = self.any_app(at)
        if app is None:
            return None
        uid = self.denied_actor(at, lambda u: self.levels[u].get(app, Level.NONE) >= level)
        if uid is None:
            return None
        label = {Level.OPEN_DEBUG: "Open & Debug Applications", Level.FULL_CONTROL: "Full Control"}.get(
            level, "Change & Deploy Applications"
        )
        env: str | None = None
        related: list[dict[str, Any]] = []
        details: dict[str, Any] = {"required_permission": label}
        if action == "application.deploy":
            source, env = self.route(at)
            related.append(self.ref("environment", env))
            details.update(from_environment=source, to_environment=env)
        elif action != "application.update":
            env = "env-dev"
            if action == "application.open_debug":
                related.append(self.ref("environment", env))
        return self.event(
            at,
            self.user_actor(uid, at),
            action,
            self.ref("application", app),
            environment=env,
            related=related,
            outcome="denied",
            reason=f"Insufficient permissions: {label} is required on {self.app_names[app]}",
            details=details,
        )

    def app_event(self, at: int, action: str, outcome: str) -> dict[str, Any] | None:
        rng = self.rng
        if action == "application.set_permission":
            return self.set_permission(at, outcome)
        level = Level.OPEN_DEBUG if action == "application.open_debug" else Level.CHANGE_DEPLOY
        if outcome == "denied":
            return self._denied_app(at, action, level)
        if action == "application.deploy" and rng.random() < 0.25:
            app = self.any_app(at)
            if app is None:
                return None
            actor = dict(_CI)
        else:
            picked = self.app_actor(level, at)
            if picked is None:
                return None
            uid, app = picked
            actor = self.user_actor(uid, at)
        name = self.app_names[app]
        target = self.ref("application", app)
        if action == "application.publish":
            duration = int(rng.lognormvariate(10.6, 0.5))
            reason = None
            if outcome == "failure":
                module = _module(name, rng.choice(["_CS", "_UI", "_IS"]))
                reason = f"Publish failed: {rng.randint(1, 7)} errors in module {module}"
            return self.event(
                at,
                actor,
                action,
                target,
                environment="env-dev",
                outcome=outcome,
                reason=reason,
                details={
                    "version": f"{self.version_tag(app, bump=False)}+build.{rng.randrange(1, 9999)}",
                    "modules": rng.randint(1, 9),
                    "duration_ms": duration,
                    "tool": "Service Studio",
                },
            )
        if action == "application.deploy":
            return self.deploy(at, actor, app, outcome)
        if action == "application.tag_version":
            tag = self.version_tag(app, bump=True)
            return self.event(
                at,
                actor,
                action,
                target,
                environment="env-dev",
                outcome=outcome,
                reason="Tag failed: a version with this tag already exists" if outcome == "failure" else None,
                details={
                    "version_tag": tag,
                    "notes": rng.choice(
                        [
                            "Sprint release",
                            "Hotfix",
                            "Regulatory change",
                            "Performance fixes",
                            "UI refresh",
                            "Bug fixes",
                            "New endpoint",
                        ]
                    ),
                },
            )
        if action == "application.open_debug":
            env = "env-dev" if rng.random() < 0.75 else "env-test"
            return self.event(
                at,
                actor,
                action,
                target,
                environment=env,
                outcome=outcome,
                related=[self.ref("environment", env)],
                reason="Debugger could not attach: module is not published in debug mode"
                if outcome == "failure"
                else None,
                details={
                    "module": _module(name, rng.choice(["_CS", "_UI"])),
                    "breakpoints": rng.randint(1, 12),
                },
            )
        # application.update
        change = self.pick_change(
            [
                (
                    "description",
                    f"{name}",
                    f"{name}: {rng.choice(['customer facing', 'back office', 'internal'])}",
                ),
                ("icon", "default.png", f"{_slug(name)}.png"),
                ("default_theme", "AcmeTheme", rng.choice(["AcmeTheme_v2", "OutSystemsUI"])),
                ("monitoring_enabled", False, True),
                ("url_path", f"/{_module(name, '')}", f"/{_slug(name)}"),
            ]
        )
        return self.event(
            at,
            actor,
            action,
            target,
            outcome=outcome,
            reason="Conflict: the application was changed by another user" if outcome == "failure" else None,
            changes=[change],
        )

    def deploy(
        self,
        at: int,
        actor: dict[str, Any],
        app: str,
        outcome: str,
        *,
        route: tuple[str, str] | None = None,
        plan: str | None = None,
        correlation_id: str | None = None,
    ) -> dict[str, Any] | None:
        rng = self.rng
        if route is None:
            route = self.route(at)
        source, dest = route
        name = self.app_names[app]
        related = [self.ref("environment", dest)]
        details: dict[str, Any] = {
            "version_tag": self.version_tag(app, bump=False),
            "from_environment": source,
            "to_environment": dest,
            "duration_ms": int(rng.lognormvariate(11.2, 0.6)),
        }
        if plan is not None:
            related.append(self.ref("deployment_plan", plan))
            details["deployment_plan"] = plan
        reason = None
        if outcome == "failure":
            reason = rng.choice(
                [
                    f"Deployment failed: {rng.randint(1, 5)} errors in module {_module(name, '_CS')}",
                    f"Deployment failed: missing dependency {_module(name, '_IS')} in {dest}",
                    "Deployment failed: timeout waiting for front-end server fe-0"
                    f"{rng.randint(1, 4)} to apply settings",
                ]
            )
        return self.event(
            at,
            actor,
            "application.deploy",
            self.ref("application", app),
            environment=dest,
            related=related,
            outcome=outcome,
            reason=reason,
            details=details,
            correlation_id=correlation_id,
        )

    def route(self, at: int) -> tuple[str, str]:
        for _ in range(6):
            source, dest, _w = self.rng.choices(_PROMOTIONS, weights=[p[2] for p in _PROMOTIONS])[0]
            if self.alive("environment", source, at) and self.alive("environment", dest, at):
                return source, dest
        return "env-dev", "env-test"

    def set_permission(self, at: int, outcome: str) -> dict[str, Any] | None:
        rng = self.rng
        users, cum, teams_of = self.team_pool
        uid = self.pick(users, cum, "user", at)
        if uid is None:
            return None
        team = rng.choice(teams_of[uid])
        apps = [a for a, t in self.app_team.items() if t == team and self.alive("application", a, at)]
        if not apps:
            return None
        app = rng.choice(apps)
        if outcome == "denied":
            denied = self.denied_actor(at, lambda u: u in teams_of and team in teams_of[u])
            if denied is None:
                return None
            uid = denied
        grantee = rng.choice(list(self.acting_users))
        role = rng.choice([DEVELOPER, TESTER, VIEWER, NO_ACCESS])
        old = rng.choice([NO_ACCESS, VIEWER, TESTER])
        return self.event(
            at,
            self.user_actor(uid, at),
            "application.set_permission",
            self.ref("application", app),
            related=[self.ref("user", grantee), self.ref("role", role)],
            outcome=outcome,
            reason="Insufficient permissions: Manage Teams and Application Roles is required"
            if outcome == "denied"
            else "Validation failed: the user is inactive"
            if outcome == "failure"
            else None,
            changes=[{"field": f"role:{grantee}", "old": self.role_names[old], "new": self.role_names[role]}],
        )

    def plan_event(self, at: int, action: str, outcome: str) -> dict[str, Any] | None:
        rng = self.rng
        plan = None
        for _ in range(12):
            candidate = rng.choice(self.plan_ids)
            if self.alive("deployment_plan", candidate, at) and self.plan_actors[candidate]:
                plan = candidate
                break
        if plan is None:
            return None
        _, apps = self.plans[plan]
        if outcome == "denied":
            uid = self.denied_actor(at, lambda u: u in self.plan_actors[plan])
            if uid is None:
                return None
            actor = self.user_actor(uid, at)
        elif action == "deployment_plan.execute" and rng.random() < 0.2:
            actor = dict(_CI)
        else:
            uid = self.pick(self.plan_actors[plan], self.plan_actor_cum[plan], "user", at) or ""
            if not uid:
                return None
            actor = self.user_actor(uid, at)
        related = [self.ref("application", a) for a in apps]
        target = self.ref("deployment_plan", plan)
        denied_reason = (
            "Insufficient permissions: Change & Deploy Applications is required on every application"
        )
        if action == "deployment_plan.update":
            change = self.pick_change(
                [
                    (
                        "notes",
                        "",
                        rng.choice(
                            [
                                "Go/no-go approved by CAB",
                                "Waiting for QA sign-off",
                                "Includes DB migration, run off-hours",
                            ]
                        ),
                    ),
                    ("target_environment", "env-qa", rng.choice(["env-preprod", "env-prod"])),
                    ("applications", [a for a in apps[:-1]], list(apps)),
                    ("scheduled_for", None, _format_ms(at + rng.randrange(1, 72) * _HOUR_MS)),
                ]
            )
            return self.event(
                at,
                actor,
                action,
                target,
                related=related,
                outcome=outcome,
                reason=denied_reason
                if outcome == "denied"
                else "Conflict: the plan is being executed"
                if outcome == "failure"
                else None,
                changes=[change],
            )
        source, dest = self.route(at)
        related.append(self.ref("environment", dest))
        if action == "deployment_plan.abort":
            return self.event(
                at,
                actor,
                action,
                target,
                environment=dest,
                related=related,
                outcome=outcome,
                reason=denied_reason
                if outcome == "denied"
                else "Abort failed: the deployment already finished"
                if outcome == "failure"
                else None,
                details={
                    "aborted_after_ms": rng.randrange(5_000, 600_000),
                    "source_environment": source,
                    "target_environment": dest,
                },
            )
        # deployment_plan.execute: the plan deploys each of its applications in turn.
        correlation = "corr-" + self.hex(64)
        reason = None
        if outcome == "denied":
            reason = denied_reason
        elif outcome == "failure" and apps:
            bad = rng.choice(apps)
            reason = (
                f"Deployment plan failed: application {self.app_names[bad]} has "
                f"{rng.randint(1, 4)} errors in module {_module(self.app_names[bad], '_CS')}"
            )
        elif outcome == "failure":
            reason = "Deployment plan failed: the target environment is not reachable"
        ev = self.event(
            at,
            actor,
            action,
            target,
            environment=dest,
            related=related,
            outcome=outcome,
            reason=reason,
            details={
                "source_environment": source,
                "target_environment": dest,
                "applications": len(apps),
                "duration_ms": rng.randrange(60_000, 1_800_000),
            },
            correlation_id=correlation,
        )
        if outcome == "success":
            step = at
            for app in apps:
                step += rng.randrange(20_000, 120_000)
                self.later(step, self._plan_step(actor, app, (source, dest), plan, correlation))
        return ev

    def _plan_step(
        self, actor: dict[str, Any], app: str, route: tuple[str, str], plan: str, correlation: str
    ) -> Callable[[int], dict[str, Any] | None]:
        return lambda at: self.deploy(
            at, actor, app, "success", route=route, plan=plan, correlation_id=correlation
        )

    def team_event(self, at: int, action: str, outcome: str) -> dict[str, Any] | None:
        rng = self.rng
        users, cum, teams_of = self.team_pool
        uid = self.pick(users, cum, "user", at)
        if uid is None:
            return None
        team = rng.choice(teams_of[uid])
        if not self.alive("team", team, at):
            return None
        if outcome == "denied":
            denied = self.denied_actor(at, lambda u: u in teams_of and team in teams_of[u])
            if denied is None:
                return None
            uid = denied
        target = self.ref("team", team)
        reason = (
            "Insufficient permissions: Manage Teams and Application Roles is required for this team"
            if outcome == "denied"
            else None
        )
        if action == "team.update":
            change = self.pick_change(
                [
                    ("description", "", f"Owns the {self.directory.teams[team].name} applications"),
                    ("slack_channel", "", f"#team-{team.removeprefix('team-')}"),
                    ("cost_center", f"CC-{rng.randrange(1000, 9999)}", f"CC-{rng.randrange(1000, 9999)}"),
                ]
            )
            return self.event(
                at,
                self.user_actor(uid, at),
                action,
                target,
                outcome=outcome,
                reason=reason or ("Validation failed: name already in use" if outcome == "failure" else None),
                changes=[change],
            )
        if action in ("team.member_add", "team.member_remove"):
            member = self.pick(self.human_pool[0], self.human_pool[1], "user", at)
            if member is None:
                return None
            role = rng.choice([DEVELOPER, DEVELOPER, TESTER, VIEWER])
            adding = action == "team.member_add"
            return self.event(
                at,
                self.user_actor(uid, at),
                action,
                target,
                related=[self.ref("user", member), self.ref("role", role)],
                outcome=outcome,
                reason=reason
                or ("Validation failed: the user is already a member" if outcome == "failure" else None),
                changes=[
                    {
                        "field": f"member:{member}",
                        "old": None if adding else self.role_names[role],
                        "new": self.role_names[role] if adding else None,
                    }
                ],
            )
        # team.application_add: an application moves from another team.
        app = self.any_app(at)
        if app is None:
            return None
        old_team = self.app_team.get(app)
        return self.event(
            at,
            self.user_actor(uid, at),
            action,
            target,
            related=[self.ref("application", app)],
            outcome=outcome,
            reason=reason
            or (
                "Conflict: the application is locked by a running deployment"
                if outcome == "failure"
                else None
            ),
            changes=[{"field": "team", "old": old_team, "new": team}],
        )

    def infra_event(self, at: int, action: str, outcome: str) -> dict[str, Any] | None:
        rng = self.rng
        kind = action.partition(".")[0]
        if action == "environment.sync":
            env = rng.choice(self.env_ids)
            if not self.alive("environment", env, at):
                return None
            return self.event(
                at,
                dict(_SCHEDULER),
                action,
                self.ref("environment", env),
                environment=env,
                outcome="failure" if outcome != "success" else "success",
                reason="Synchronization failed: environment did not answer within 120 s"
                if outcome != "success"
                else None,
                details={
                    "applications_synchronized": rng.randint(20, 66),
                    "duration_ms": rng.randrange(800, 45_000),
                },
            )
        if action == "user.login":
            uid = self.pick(self.human_pool[0], self.human_pool[1], "user", at)
            if uid is None:
                return None
            reason: str | None = None
            if outcome == "failure":
                reason = rng.choice(["Invalid credentials", "Invalid credentials", "MFA code expired"])
            elif outcome == "denied":
                reason = "Insufficient permissions: the account is locked after 5 failed attempts"
            return self.event(
                at,
                self.user_actor(uid, at),
                action,
                self.ref("user", uid),
                outcome=outcome,
                reason=reason,
                details={"method": rng.choice(["sso", "sso", "sso", "password"]), "mfa": rng.random() < 0.8},
            )
        if action == "user.password_reset" and rng.random() < 0.6:
            uid = self.pick(self.human_pool[0], self.human_pool[1], "user", at)
            if uid is None:
                return None
            return self.event(
                at,
                self.user_actor(uid, at),
                action,
                self.ref("user", uid),
                outcome="failure" if outcome != "success" else "success",
                reason="Password rejected: does not meet the password policy"
                if outcome != "success"
                else None,
                details={"self_service": True},
            )
        if outcome == "denied":
            uid = (
                self.denied_actor(
                    at, lambda u: self._role(self.acting_users[u].default_role).manage_infrastructure
                )
                or ""
            )
            reason = "Insufficient permissions: Manage Infrastructure and Users is required"
        else:
            uid = self.infra_actor(at) or ""
            reason = None
        if not uid:
            return None
        actor = self.user_actor(uid, at)
        failure = outcome == "failure"
        if kind == "user":
            subject = self.pick(self.human_pool[0], self.human_pool[1], "user", at)
            if subject is None:
                return None
            target = self.ref("user", subject)
            if action == "user.password_reset":
                return self.event(
                    at,
                    actor,
                    action,
                    target,
                    outcome=outcome,
                    reason=reason or ("Mail server unavailable" if failure else None),
                    details={"self_service": False, "notified_by": "email"},
                )
            if action == "user.update":
                change = self.pick_change(
                    [
                        ("email", f"{subject}@old.{EMAIL_DOMAIN}", f"{subject}@{EMAIL_DOMAIN}"),
                        ("phone", None, f"+351 21 {rng.randrange(100, 999)} {rng.randrange(1000, 9999)}"),
                        ("display_name", subject, self.directory.users[subject].name),
                        ("mfa_required", False, True),
                    ]
                )
                return self.event(
                    at,
                    actor,
                    action,
                    target,
                    outcome=outcome,
                    reason=reason or ("Validation failed: e-mail already in use" if failure else None),
                    changes=[change],
                )
            # user.role_change
            new_role = self.weighted(self.role_ids[:-1], self.role_weights[:-1])
            if not self.alive("role", new_role, at):
                new_role = DEVELOPER
            old_role = rng.choice([NO_ACCESS, VIEWER, TESTER, DEVELOPER])
            scope = rng.random()
            related = [self.ref("role", new_role)]
            if scope < 0.4:
                field_name = "default_role"
            elif scope < 0.7:
                team = rng.choice(list(self.directory.teams))
                field_name = f"team_role:{team}"
                related.append(self.ref("team", team))
            else:
                app = self.any_app(at) or "app-payment-gateway"
                field_name = f"app_role:{app}"
                related.append(self.ref("application", app))
            return self.event(
                at,
                actor,
                action,
                target,
                related=related,
                outcome=outcome,
                reason=reason or ("Validation failed: the user is inactive" if failure else None),
                changes=[
                    {"field": field_name, "old": self.role_names[old_role], "new": self.role_names[new_role]}
                ],
            )
        if kind == "role":
            role = self.weighted(self.role_ids, self.role_weights)
            if not self.alive("role", role, at):
                return None
            env = rng.choice(self.env_ids)
            change = self.pick_change(
                [
                    (
                        f"environment:{env}.application_level",
                        "Change & Deploy Applications",
                        "Open & Debug Applications",
                    ),
                    (
                        f"environment:{env}.application_level",
                        "Open & Debug Applications",
                        "Change & Deploy Applications",
                    ),
                    ("can_create_applications", True, False),
                    ("can_reference_system_modules", False, True),
                    ("description", "", "Default role for developers in delivery teams"),
                ]
            )
            return self.event(
                at,
                actor,
                action,
                self.ref("role", role),
                outcome=outcome,
                reason=reason
                or ("Validation failed: a built-in role cannot be renamed" if failure else None),
                changes=[change],
            )
        if kind == "environment":
            env = rng.choice(self.env_ids)
            if not self.alive("environment", env, at):
                return None
            if action == "environment.update":
                change = self.pick_change(
                    [
                        ("description", "", f"{self.directory.environments[env].name} environment"),
                        ("front_end_servers", 2, rng.choice([3, 4])),
                        (
                            "hostname",
                            f"{env.removeprefix('env-')}.acme.internal",
                            f"{env.removeprefix('env-')}-02.acme.internal",
                        ),
                    ]
                )
            else:
                change = self.pick_change(
                    [
                        ("settings.debug_mode", True, False),
                        ("settings.https_only", False, True),
                        ("settings.db_command_timeout_s", 30, 60),
                        ("settings.deployment_zone", "global", "dmz"),
                        ("settings.log_level", "Information", rng.choice(["Warning", "Debug"])),
                    ]
                )
            return self.event(
                at,
                actor,
                action,
                self.ref("environment", env),
                environment=env,
                outcome=outcome,
                reason=reason
                or ("Configuration failed: environment did not acknowledge the change" if failure else None),
                changes=[change],
            )
        # infrastructure.configure / infrastructure.update
        choices: list[tuple[str, Any, Any]]
        if action == "infrastructure.update":
            choices = [
                ("description", "ACME production infrastructure", "ACME Corp OutSystems Infrastructure"),
                ("support_contact", "ops@acme.example", "platform-team@acme.example"),
            ]
        else:
            choices = [
                ("password_policy.min_length", 10, 12),
                ("session_timeout_minutes", 60, 30),
                ("audit_log_retention_days", 365, 730),
                ("smtp.host", "smtp1.acme.internal", "smtp2.acme.internal"),
            ]
        change = self.pick_change(choices)
        return self.event(
            at,
            actor,
            action,
            self.ref("infrastructure", INFRASTRUCTURE_ID),
            outcome=outcome,
            reason=reason
            or ("Configuration failed: value rejected by the platform server" if failure else None),
            changes=[change],
        )

    # -- the scripted story ----------------------------------------------------------

    def resolve_actor(self, who: str | dict[str, Any], at: int) -> dict[str, Any]:
        if isinstance(who, dict):
            return dict(who)
        if who == ANY_ADMIN:
            admins = [u for u in (PRIYA, "daniel.okafor", "sofia.lindqvist") if self.alive("user", u, at)]
            who = self.rng.choice(admins)
        return self.user_actor(who, at)

    def once(
        self, at: int, who: str | dict[str, Any], action: str, target: tuple[str, str], **fields: Any
    ) -> None:
        """Queue a one-off task; `who` is a user id, ANY_ADMIN, or a service/system actor."""
        self.later(
            at,
            lambda when: self.event(when, self.resolve_actor(who, when), action, self.ref(*target), **fields),
        )

    def script(self) -> None:
        """Queue the one-off tasks of the period at their moments."""
        rng = self.rng
        once = self.once
        ref = self.ref
        infra = ("infrastructure", INFRASTRUCTURE_ID)

        # Nightly backups by the scheduler, full ones on Sundays.
        day = self.start_ms - self.start_ms % _DAY_MS + 2 * _HOUR_MS
        while day < self.end_ms:
            if day > self.start_ms:
                sunday = datetime.fromtimestamp(day / 1000, tz=UTC).weekday() == 6
                details = {
                    "kind": "full" if sunday else "incremental",
                    "size_bytes": rng.randrange(2_000_000_000, 9_000_000_000),
                    "duration_ms": rng.randrange(60_000, 900_000),
                }
                once(
                    day + rng.randrange(10 * _MINUTE_MS),
                    _SCHEDULER,
                    "infrastructure.backup",
                    infra,
                    details=details,
                )
            day += _DAY_MS

        once(
            self._at(0.10),
            PRIYA,
            "infrastructure.license_update",
            infra,
            changes=[
                {"field": "license.expires_on", "old": "2025-06-30", "new": "2026-06-30"},
                {"field": "license.application_objects", "old": 450, "new": 600},
            ],
            details={"edition": "Enterprise"},
        )
        once(
            self.upgrade_ms,
            "hiroshi.tanaka",
            "infrastructure.update",
            infra,
            changes=[
                {"field": "platform_version", "old": _PLATFORM_VERSIONS[0], "new": _PLATFORM_VERSIONS[1]}
            ],
            details={"maintenance_window": True, "duration_ms": 2_700_000},
        )

        preprod = ("environment", "env-preprod")
        preprod_at = self.window[preprod][0]
        once(
            preprod_at,
            "hiroshi.tanaka",
            "environment.register",
            preprod,
            environment="env-preprod",
            details={"hostname": "preprod.acme.internal", "front_end_servers": 2},
        )
        once(
            preprod_at + 25 * _MINUTE_MS,
            "hiroshi.tanaka",
            "environment.configure",
            preprod,
            environment="env-preprod",
            changes=[
                {"field": "settings.https_only", "old": False, "new": True},
                {"field": "settings.debug_mode", "old": True, "new": False},
            ],
        )

        data_team = ("team", "team-data-platform")
        team_at = self.window[data_team][0]
        once(
            team_at,
            "daniel.okafor",
            "team.create",
            data_team,
            details={"description": "Reporting and master data"},
        )
        once(
            team_at + 40 * _MINUTE_MS,
            "daniel.okafor",
            "team.member_add",
            data_team,
            related=[ref("user", "samuel.adeyemi"), ref("role", DEVELOPER)],
            changes=[{"field": "member:samuel.adeyemi", "old": None, "new": "Developer"}],
        )
        new_apps = [_app_id(a) for a in _TEAMS["team-data-platform"][1]] + [_app_id(a) for a in _NEW_APPS_AT]
        for app in new_apps:
            team = self.app_team[app] or ""
            born = self.window[("application", app)][0]
            once(
                born - 5 * _MINUTE_MS,
                "samuel.adeyemi" if team == "team-data-platform" else "yuki.sato",
                "application.create",
                ("application", app),
                environment="env-dev",
                details={
                    "template": rng.choice(["Reactive Web App", "Reactive Web App", "Service"]),
                    "version_tag": self.version_tag(app, bump=False),
                },
            )
            once(
                born - 2 * _MINUTE_MS,
                ANY_ADMIN,
                "team.application_add",
                ("team", team),
                related=[ref("application", app)],
                changes=[{"field": "team", "old": None, "new": team}],
            )

        for app_id, _name, _team, _died in _RETIRED_APPS:
            once(
                self.window[("application", app_id)][1],
                ANY_ADMIN,
                "application.delete",
                ("application", app_id),
                details={"reason": "Retired", "last_version": self.version_tag(app_id, bump=False)},
            )

        for pid, _name, apps, born_frac in _PLANS:
            if born_frac is None:
                continue
            # Plans are drawn up by the people who ship them, not by the administrators.
            authors = [u for u in self.plan_actors[pid] if u not in self.infra_pool[0]] or [PRIYA]
            once(
                self.window[("deployment_plan", pid)][0],
                rng.choice(authors),
                "deployment_plan.create",
                ("deployment_plan", pid),
                related=[ref("application", _app_id(a)) for a in apps],
                details={"applications": len(apps)},
            )
        for pid, _name, apps, _died in _RETIRED_PLANS:
            once(
                self.window[("deployment_plan", pid)][1] - _MINUTE_MS,
                ANY_ADMIN,
                "deployment_plan.delete",
                ("deployment_plan", pid),
                related=[ref("application", _app_id(a)) for a in apps],
                details={"reason": "Executed and archived"},
            )

        rm_at = self.window[("role", RELEASE_MANAGER)][0]
        once(
            rm_at,
            PRIYA,
            "role.create",
            ("role", RELEASE_MANAGER),
            details={"application_level": "change_deploy", "based_on": "Developer"},
        )
        once(
            rm_at + 30 * _MINUTE_MS,
            PRIYA,
            "user.role_change",
            ("user", "grace.liu"),
            related=[ref("role", RELEASE_MANAGER)],
            changes=[{"field": "default_role", "old": "Developer", "new": "Release Manager"}],
        )
        once(
            self.window[("role", _RETIRED_ROLE[0])][1],
            "sofia.lindqvist",
            "role.delete",
            ("role", _RETIRED_ROLE[0]),
            details={"users_reassigned": 0},
        )

        for uid in _JOINED:
            joined = self.window[("user", uid)][0]
            user = self.directory.users[uid]
            once(
                joined - 20 * _MINUTE_MS,
                ANY_ADMIN,
                "user.create",
                ("user", uid),
                details={
                    "email": user.email,
                    "default_role": self.role_names[user.default_role or NO_ACCESS],
                },
            )
            for team, role in user.team_roles.items():
                once(
                    joined - 10 * _MINUTE_MS,
                    ANY_ADMIN,
                    "team.member_add",
                    ("team", team),
                    related=[ref("user", uid), ref("role", role)],
                    changes=[{"field": f"member:{uid}", "old": None, "new": self.role_names[role]}],
                )
        for uid in _LEFT:
            left = self.window[("user", uid)][1]
            past = _PAST_GRANTS[uid]
            once(left, ANY_ADMIN, "user.deactivate", ("user", uid), details={"reason": "Left the company"})
            once(
                left + 2 * _MINUTE_MS,
                ANY_ADMIN,
                "user.role_change",
                ("user", uid),
                related=[ref("role", NO_ACCESS)],
                changes=[
                    {"field": "default_role", "old": self.role_names[past.default_role], "new": "No Access"}
                ]
                + [
                    {"field": f"team_role:{t}", "old": self.role_names[r], "new": None}
                    for t, r in past.team_roles.items()
                ],
            )

    # -- the timeline ----------------------------------------------------------------

    def moments(self) -> list[int]:
        """`count` instants in the period, denser on weekday working hours, slightly growing over time."""
        hours = self.days * 24
        cum, total = [], 0.0
        for h in range(hours):
            t0 = self.start_ms + h * _HOUR_MS
            moment = datetime.fromtimestamp(t0 / 1000, tz=UTC)
            total += _HOUR_WEIGHT[moment.hour] * _WEEKDAY_WEIGHT[moment.weekday()] * (0.85 + 0.3 * h / hours)
            cum.append(total)
        slots = self.rng.choices(range(hours), cum_weights=cum, k=self.count)
        slots.sort()
        rand = self.rng.randrange
        times = [self.start_ms + s * _HOUR_MS + rand(_HOUR_MS) for s in slots]
        times.sort()
        return times

    def run(self) -> Iterator[dict[str, Any]]:
        if self.count <= 0:
            return
        times = self.moments()
        self.script()
        produced = 0
        for at in times:
            if produced >= self.count:
                return
            ev: dict[str, Any] | None = None
            # A queued task due by now takes this slot, keeping the count and the rhythm.
            while ev is None and self.pending and self.pending[0].at_ms <= at:
                item = heapq.heappop(self.pending)
                ev = item.build(item.at_ms)
            attempts = 0
            while ev is None and attempts < 8:
                ev = self.random_event(at)
                attempts += 1
            if ev is None:
                continue
            produced += 1
            yield ev


def generate_events(
    directory: Directory, *, count: int, days: int, seed: int, end: datetime
) -> Iterator[dict[str, Any]]:
    """`count` wire-format events spread over the `days` before `end`, deterministic for `seed`.

    `directory` should be `build_directory(seed)`: the story refers to its people and entities.
    """
    return _Generator(directory, count=count, days=days, seed=seed, end=end).run()
