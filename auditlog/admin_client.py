"""The administration endpoints (`query_api.admin`) as the command line calls them, over HTTP.

chDB opens a store in one process only, so while `auditlog serve` runs, `auditlog
directory load` and `auditlog keys ...` go through its API (`--url`, `--key`).
The standard library's HTTP client is enough for four calls.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

import orjson

from producers.contract.directory import Directory


class AdminError(Exception):
    """The server refused, or could not be reached: one line, with its reason."""


class AdminClient:
    def __init__(self, url: str, key: str, *, timeout: float = 60.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise AdminError(f"--url {url[:100]!r} must start with http:// or https://")
        self._base = url.rstrip("/")
        self._key = key
        self._timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = orjson.dumps(body) if body is not None else None
        # The scheme is http(s), checked in __init__.
        request = urllib.request.Request(  # noqa: S310
            self._base + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                return orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = orjson.loads(exc.read()).get("detail")
            except (orjson.JSONDecodeError, AttributeError):
                detail = None
            raise AdminError(f"{self._base} answered {exc.code}: {detail or exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach {self._base}: {reason}") from None

    def replace_directory(self, directory: Directory) -> dict[str, Any]:
        body = directory.model_dump(mode="json", exclude={"version"})
        result: dict[str, Any] = self._call("PUT", "/v1/directory", body)
        return result

    def create_key(
        self,
        *,
        user_id: str,
        label: str,
        can_ingest: bool,
        can_publish_directory: bool,
        expires_at: datetime | None,
    ) -> dict[str, Any]:
        body = {
            "user_id": user_id,
            "label": label,
            "can_ingest": can_ingest,
            "can_publish_directory": can_publish_directory,
            "expires_at": expires_at.isoformat() if expires_at else None,
        }
        result: dict[str, Any] = self._call("POST", "/v1/keys", body)
        return result

    def list_keys(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/v1/keys")
        return result

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/v1/keys/{key_id}")
        return result
