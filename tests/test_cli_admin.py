"""The command line against a store that `auditlog serve` holds open: one clear line and exit
code 2 when it cannot open the store, and the same commands through the server's API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

DIRECTORY = {
    "infrastructure": "acme",
    "roles": [
        {"id": "admin", "name": "Admin", "app_level": "full_control", "manage_infrastructure": True},
        {"id": "viewer", "name": "Viewer", "app_level": "list"},
    ],
    "users": [
        {"id": "ada", "name": "Ada", "default_role": "admin"},
        {"id": "dev", "name": "Dev"},
    ],
    "applications": [{"id": "app-1", "name": "One"}],
}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditlog.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, key: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str, str, subprocess.Popen[str]]]:
    store = tmp_path / "store"
    path = tmp_path / "directory.yaml"
    path.write_text(yaml.safe_dump(DIRECTORY))
    assert cli("directory", "load", "--store", str(store), str(path)).returncode == 0
    made = cli("keys", "create", "--store", str(store), "--user", "ada")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "auditlog.cli", "serve", "--store", str(store), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if get(url + "/healthz", key) == 200:
                break
        except OSError:
            pass
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)
    try:
        yield store, url, key, server
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_store_held_by_the_server_gets_one_line_and_exit_2(
    served: tuple[Path, str, str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    store, _, _, server = served
    path = tmp_path / "directory.yaml"
    for args in (
        ("directory", "load", "--store", str(store), str(path)),
        ("keys", "list", "--store", str(store)),
    ):
        run = cli(*args)
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, run.stderr
        assert f"store {store} is open in process {server.pid} (" in lines[0] and " serve)" in lines[0]
        assert "--url" in lines[0] and "Traceback" not in run.stderr


def test_directory_and_keys_through_the_running_server(
    served: tuple[Path, str, str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    _, url, admin, _ = served
    remote = ("--url", url, "--key", admin)
    made = cli("keys", "create", "--user", "dev", "--expires-in-days", "7", *remote)
    assert made.returncode == 0, made.stderr
    dev = made.stdout.strip()
    assert "expires" in made.stderr
    assert get(url + "/v1/entities/application/app-1/changes", dev) == 403

    # Give the developer List on app-1: the running server applies it without a restart.
    dev_with_list = {"id": "dev", "name": "Dev", "app_roles": {"app-1": "viewer"}}
    granted = {**DIRECTORY, "users": [DIRECTORY["users"][0], dev_with_list]}
    path = tmp_path / "granted.yaml"
    path.write_text(yaml.safe_dump(granted))
    loaded = cli("directory", "load", str(path), *remote)
    assert loaded.returncode == 0, loaded.stderr
    assert "through " + url in loaded.stdout
    assert get(url + "/v1/entities/application/app-1/changes", dev) == 200

    listed = cli("keys", "list", *remote)
    assert listed.returncode == 0, listed.stderr
    assert dev not in listed.stdout and admin not in listed.stdout
    dev_line = next(line for line in listed.stdout.splitlines() if " dev " in line)
    key_id = dev_line.split()[0]
    assert "active" in dev_line

    revoked = cli("keys", "revoke", key_id, *remote)
    assert revoked.returncode == 0, revoked.stderr
    assert get(url + "/v1/events", dev) == 401
    assert "revoked" in next(
        line for line in cli("keys", "list", *remote).stdout.splitlines() if key_id in line
    )

    # A wrong key or an unknown id is one line, never a traceback.
    bad = cli("keys", "revoke", "0123456789abcdef", *remote)
    assert bad.returncode == 2 and "404" in bad.stderr and "Traceback" not in bad.stderr
    refused = cli("keys", "list", "--url", url, "--key", dev)
    assert refused.returncode == 2 and "401" in refused.stderr
    body = orjson.loads(urllib.request.urlopen(url + "/openapi.json", timeout=10).read())
    assert {"/v1/keys", "/v1/keys/{key_id}", "/v1/directory"} <= set(body["paths"])
