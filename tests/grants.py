"""Scopes, directories and keys for tests, made the only way the product allows: through
`scope_for` over a directory, and `KeyRepository.create`."""

from __future__ import annotations

from collections.abc import Iterable

from producers.contract.directory import Directories, Directory
from producers.contract.permissions import Caller, ReadScope, scope_for
from storage.store import Store

INFRA = "acme"


def served(*infrastructures: str) -> Directories:
    """Empty directories for these infrastructures (default: acme): events for them are accepted."""
    return Directories(Directory(infrastructure=i) for i in (infrastructures or (INFRA,)))


def only(directory: Directory) -> Directories:
    return Directories([directory])


def scope(
    *,
    infrastructure: str = INFRA,
    admin: bool = False,
    infra: bool = False,
    apps: Iterable[str] = (),
    manage_teams: Iterable[str] = (),
) -> ReadScope:
    """The scope of a user who holds exactly these grants in `infrastructure`: everything
    (`admin`), *Manage Infrastructure and Users* alone (`infra`), List on `apps`, and
    *Manage Teams* on `manage_teams`."""
    roles = [
        {"id": "admin", "name": "Admin", "app_level": "full_control",
         "manage_infrastructure": True, "manage_teams": True},
        {"id": "viewer", "name": "Viewer", "app_level": "list"},
        {"id": "lead", "name": "Lead", "manage_teams": True},
        {"id": "operator", "name": "Operator", "manage_infrastructure": True},
    ]  # fmt: skip
    user = {
        "id": "u",
        "name": "U",
        "default_role": "admin" if admin else "operator" if infra else None,
        "app_roles": {a: "viewer" for a in apps},
        "team_roles": {t: "lead" for t in manage_teams},
    }
    directory = Directory.model_validate({"infrastructure": infrastructure, "roles": roles, "users": [user]})
    return scope_for(Caller(user_id="u", infrastructure=infrastructure), only(directory))


ALL = scope(admin=True)
NOBODY = scope()


def make_key(store: Store, user_id: str, *, infrastructure: str = INFRA, **options: object) -> str:
    key, _ = store.keys.create(infrastructure=infrastructure, user_id=user_id, **options)  # type: ignore[arg-type]
    return key
