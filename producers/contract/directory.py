"""The console's directory: roles, users, teams, applications, deployment plans, environments.

It is part of the contract because management services publish it (as entity
snapshots on the compacted topic `audit.directory`) and the pipeline reads it
twice: to enrich events with display names, and to turn a caller into grants.
The permission rules themselves live in `producers.contract.permissions`.

An installation may serve several infrastructures (tenants), each with its own
directory: entity ids are only unique inside one infrastructure. `Directory` is
one infrastructure's; `Directories` is the installation's, by infrastructure id,
and the set of infrastructures it serves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from enum import IntEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger("auditlog.directory")


class Level(IntEnum):
    """Application permission levels of the console, ordered."""

    NONE = 0
    LIST = 1
    OPEN_DEBUG = 2
    CHANGE_DEPLOY = 3
    FULL_CONTROL = 4

    @classmethod
    def parse(cls, value: Any) -> Level:
        if isinstance(value, Level):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        names = ", ".join(m.name.lower() for m in cls)
        raise ValueError(f"unknown application level {value!r}; expected one of {names}")


LevelName = Literal["none", "list", "open_debug", "change_deploy", "full_control"]

_Model = ConfigDict(extra="forbid", frozen=True)


class Role(BaseModel):
    model_config = _Model

    id: str
    name: str
    app_level: LevelName = "none"
    manage_infrastructure: bool = False
    manage_teams: bool = False

    @property
    def level(self) -> Level:
        return Level.parse(self.app_level)


class User(BaseModel):
    model_config = _Model

    id: str
    name: str
    email: str | None = None
    default_role: str | None = None
    team_roles: dict[str, str] = {}
    """team id -> role id: applies to the team's applications and to managing that team."""
    app_roles: dict[str, str] = {}
    """application id -> role id."""


class Team(BaseModel):
    model_config = _Model

    id: str
    name: str


class Application(BaseModel):
    model_config = _Model

    id: str
    name: str
    team: str | None = None


class DeploymentPlan(BaseModel):
    model_config = _Model

    id: str
    name: str
    applications: list[str] = []


class Environment(BaseModel):
    model_config = _Model

    id: str
    name: str


class Infrastructure(BaseModel):
    model_config = _Model

    id: str
    name: str


DirectoryKind = Literal[
    "role", "user", "team", "application", "deployment_plan", "environment", "infrastructure"
]
_MODELS: dict[str, type[BaseModel]] = {
    "role": Role,
    "user": User,
    "team": Team,
    "application": Application,
    "deployment_plan": DeploymentPlan,
    "environment": Environment,
    "infrastructure": Infrastructure,
}
_PLURAL = {
    "role": "roles",
    "user": "users",
    "team": "teams",
    "application": "applications",
    "deployment_plan": "deployment_plans",
    "environment": "environments",
    "infrastructure": "infrastructures",
}


InfrastructureId = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^/\s]+$")]


class DirectorySnapshot(BaseModel):
    """One entity's latest state, as carried on `audit.directory` (key = infrastructure/kind/id).

    `entity` None is a tombstone: the entity was deleted.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    infrastructure: InfrastructureId
    kind: DirectoryKind
    id: str
    entity: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.infrastructure}/{self.kind}/{self.id}"

    @staticmethod
    def tombstone_for_key(key: str) -> DirectorySnapshot:
        """The deletion of `infrastructure/kind/id` (a null record on the compacted topic)."""
        infrastructure, _, rest = key.partition("/")
        kind, _, ident = rest.partition("/")
        if not (infrastructure and kind and ident):
            raise ValueError(f"directory key {key[:200]!r} is not infrastructure/kind/id")
        return DirectorySnapshot.model_validate({"infrastructure": infrastructure, "kind": kind, "id": ident})


class DirectoryError(ValueError):
    pass


class Directory(BaseModel):
    """An immutable view of one infrastructure's directory. Lookups are by id.

    `infrastructure` is the id of the infrastructure it belongs to ('' only for the
    empty directory of an infrastructure nobody loaded). A file may leave it out
    when it lists exactly one infrastructure entity: that one is meant.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    infrastructure: str = ""
    roles: dict[str, Role] = {}
    users: dict[str, User] = {}
    teams: dict[str, Team] = {}
    applications: dict[str, Application] = {}
    deployment_plans: dict[str, DeploymentPlan] = {}
    environments: dict[str, Environment] = {}
    infrastructures: dict[str, Infrastructure] = {}
    version: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="before")
    @classmethod
    def _lists_to_maps(cls, data: Any) -> Any:
        # Files list entities; the model indexes them by id.
        if not isinstance(data, dict):
            return data
        out = dict(data)
        infras = out.get("infrastructures")
        if not out.get("infrastructure") and isinstance(infras, list) and len(infras) == 1:
            only = infras[0]
            ident = only.get("id") if isinstance(only, dict) else getattr(only, "id", None)
            if isinstance(ident, str):
                out["infrastructure"] = ident
        for plural in _PLURAL.values():
            value = out.get(plural)
            if isinstance(value, list):
                mapped: dict[str, Any] = {}
                for item in value:
                    ident = item.get("id") if isinstance(item, dict) else getattr(item, "id", None)
                    if ident is None:
                        raise ValueError(f"{plural}: every entry needs an id")
                    if ident in mapped:
                        raise ValueError(f"{plural}: duplicate id {ident!r}")
                    mapped[str(ident)] = item
                out[plural] = mapped
        return out

    @model_validator(mode="after")
    def _references_resolve(self) -> Directory:
        for user in self.users.values():
            refs = [user.default_role, *user.team_roles.values(), *user.app_roles.values()]
            for role_id in refs:
                if role_id is not None and role_id not in self.roles:
                    raise ValueError(f"user {user.id!r} refers to unknown role {role_id!r}")
        return self

    # -- lookups used by enrichment -------------------------------------------------

    @cached_property
    def _names(self) -> dict[tuple[str, str], str]:
        # Enrichment asks for two or three names per event: one flat dict lookup each.
        return {
            (kind, ident): entity.name
            for kind, plural in _PLURAL.items()
            for ident, entity in getattr(self, plural).items()
        }

    def display_name(self, kind: str, ident: str) -> str | None:
        return self._names.get((kind, ident))

    @cached_property
    def _ids_by_label(self) -> dict[tuple[str, str], tuple[str, ...]]:
        by_label: dict[tuple[str, str], list[str]] = {}
        for (kind, ident), name in self._names.items():
            for label in {ident.casefold(), name.casefold()}:
                by_label.setdefault((kind, label), []).append(ident)
        return {key: tuple(sorted(set(ids))) for key, ids in by_label.items()}

    def resolve(self, kind: str, label: str) -> tuple[str, ...]:
        """The ids of the `kind` entities whose id or name is `label`, case-insensitively
        (names are not unique: two users may both be called Sam Lee)."""
        return self._ids_by_label.get((kind, label.casefold()), ())

    def plan_applications(self, plan_id: str) -> list[str] | None:
        plan = self.deployment_plans.get(plan_id)
        return list(plan.applications) if plan is not None else None

    def application_team(self, app_id: str) -> str | None:
        app = self.applications.get(app_id)
        return app.team if app is not None else None

    # -- snapshots ------------------------------------------------------------------

    def snapshots(self) -> list[DirectorySnapshot]:
        out = []
        for kind, plural in _PLURAL.items():
            for ident, entity in sorted(getattr(self, plural).items()):
                out.append(
                    DirectorySnapshot(
                        infrastructure=self.infrastructure,
                        kind=kind,
                        id=ident,
                        entity=entity.model_dump(mode="json"),
                    )
                )
        return out

    def apply(self, snapshots: list[DirectorySnapshot]) -> Directory:
        """A new directory with the snapshots applied in order (last one wins)."""
        data: dict[str, dict[str, Any]] = {
            plural: {i: e.model_dump(mode="json") for i, e in getattr(self, plural).items()}
            for plural in _PLURAL.values()
        }
        for snap in snapshots:
            table = data[_PLURAL[snap.kind]]
            if snap.entity is None:
                table.pop(snap.id, None)
            else:
                entity = dict(snap.entity)
                entity["id"] = snap.id
                table[snap.id] = entity
        infrastructure = self.infrastructure or next((s.infrastructure for s in snapshots), "")
        if any(s.infrastructure != infrastructure for s in snapshots):
            raise DirectoryError(f"snapshots of another infrastructure applied to {infrastructure!r}")
        try:
            return Directory.model_validate(
                {**data, "infrastructure": infrastructure, "version": self.version + len(snapshots)}
            )
        except ValidationError as exc:
            raise DirectoryError(str(exc)) from None

    @staticmethod
    def from_snapshots(snapshots: list[DirectorySnapshot], *, infrastructure: str = "") -> Directory:
        return Directory(infrastructure=infrastructure).apply(snapshots)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


def assemble_directory(snapshots: Iterable[DirectorySnapshot], *, infrastructure: str = "") -> Directory:
    """A Directory from the latest snapshot per key, tolerant of a stream's order.

    On a compacted topic a user may arrive before the role it refers to, or keep
    referring to a deleted role; `Directory` refuses both. A role that does not
    exist grants nothing, so such references are dropped here (with a warning)
    rather than the whole directory being refused. An entity that fails its own
    model is skipped.
    """
    valid: list[DirectorySnapshot] = []
    for snap in snapshots:
        if snap.entity is None:
            continue
        try:
            validate_snapshot(snap.kind, {**snap.entity, "id": snap.id})
        except (ValidationError, DirectoryError) as exc:
            log.warning("directory: skipping invalid %s: %s", snap.key, str(exc).splitlines()[0])
            continue
        valid.append(snap)
    try:
        return Directory.from_snapshots(valid, infrastructure=infrastructure)
    except DirectoryError:
        pass
    roles = {s.id for s in valid if s.kind == "role"}
    fixed: list[DirectorySnapshot] = []
    for snap in valid:
        if snap.kind == "user" and snap.entity is not None:
            entity = dict(snap.entity)
            dangling = []
            if entity.get("default_role") is not None and entity["default_role"] not in roles:
                dangling.append(entity["default_role"])
                entity["default_role"] = None
            for field in ("team_roles", "app_roles"):
                mapping = dict(entity.get(field) or {})
                for k, role in list(mapping.items()):
                    if role not in roles:
                        dangling.append(role)
                        del mapping[k]
                entity[field] = mapping
            if dangling:
                log.warning(
                    "directory: user %s refers to unknown roles %s; ignored", snap.id, sorted(dangling)
                )
                snap = snap.model_copy(update={"entity": entity})
        fixed.append(snap)
    return Directory.from_snapshots(fixed, infrastructure=infrastructure)


def validate_snapshot(kind: str, entity: dict[str, Any]) -> BaseModel:
    model = _MODELS.get(kind)
    if model is None:
        raise DirectoryError(f"unknown directory kind {kind!r}")
    return model.model_validate(entity)


def load_directory(path: str | Path, *, infrastructure: str | None = None) -> Directory:
    """Load one infrastructure's directory from a JSON or YAML file (lists or id-keyed maps).

    The infrastructure is `infrastructure` if given, else the file's `infrastructure`
    field, else its one `infrastructures` entry; a file that names none is refused.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DirectoryError(f"cannot read directory file {p}: {exc.strerror}") from None
    try:
        data = orjson.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise DirectoryError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise DirectoryError(f"{p}: a directory file holds a mapping of entity lists")
    if infrastructure:
        data = {**data, "infrastructure": infrastructure}
    try:
        directory = Directory.model_validate(data)
    except ValidationError as exc:
        raise DirectoryError(f"{p}: {exc}") from None
    if not directory.infrastructure:
        raise DirectoryError(
            f"{p}: which infrastructure is this directory for? Add 'infrastructure: ID' to the file "
            "(or list exactly one entry under infrastructures), or pass --infrastructure ID"
        )
    return directory


class Directories:
    """The installation's directories, one per infrastructure it serves. Immutable."""

    __slots__ = ("_by_infra", "version")

    def __init__(self, directories: Iterable[Directory] = (), *, version: int = 0) -> None:
        self._by_infra: dict[str, Directory] = {}
        for d in directories:
            if not d.infrastructure:
                raise DirectoryError("a directory without an infrastructure id cannot be served")
            self._by_infra[d.infrastructure] = d
        self.version = version

    def get(self, infrastructure: str) -> Directory | None:
        return self._by_infra.get(infrastructure)

    def __iter__(self) -> Iterator[Directory]:
        return iter(self._by_infra.values())

    @property
    def served(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_infra))

    def replaced(self, directory: Directory) -> Directories:
        """These directories with `directory` as the whole truth for its infrastructure."""
        others = [d for d in self if d.infrastructure != directory.infrastructure]
        return Directories([*others, directory], version=self.version + 1)

    def snapshots(self) -> list[DirectorySnapshot]:
        return [s for d in self for s in d.snapshots()]

    @staticmethod
    def assemble(snapshots: Iterable[DirectorySnapshot], *, version: int = 0) -> Directories:
        """Directories from the latest snapshot per key, tolerant of a stream's order."""
        by_infra: dict[str, list[DirectorySnapshot]] = {}
        for snap in snapshots:
            by_infra.setdefault(snap.infrastructure, []).append(snap)
        return Directories(
            (assemble_directory(snaps, infrastructure=infra) for infra, snaps in sorted(by_infra.items())),
            version=version,
        )
