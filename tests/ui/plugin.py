"""Registers the `browser` marker for tests/test_ui_browser.py (loaded through its pytest_plugins).

A hook in a test module is never called by pytest, and pyproject's marker list
belongs to the project; a plugin module is the place a single suite can register
its own marker.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives the web viewer in headless Chromium (Debian's chromium package)"
    )
