"""Real headless Chromium for browser tests (Debian's `chromium`, driven by Playwright's Python API).

`make test` installs the browser where it can (root + apt); elsewhere these fixtures skip and say why.
Registered for the whole suite by tests/conftest.py: a test just names ``browser`` or ``page``.
A ``page`` collects console errors and uncaught page errors in ``page.console_errors``; a test
asserts it is empty after what the user would wait for.
"""
from __future__ import annotations

import os
import shutil

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    """The system Chromium (never a downloaded one): $CHROMIUM, else the first found on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if os.path.exists(explicit) else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


# One Playwright and one browser per process: every module that imports these fixtures gets its own
# session-scoped fixture definition, and a second sync Playwright in the same thread fails ("Sync API
# inside the asyncio loop"), so the definitions share one instance, closed by the last to finish.
_SHARED: dict = {"users": 0}


@pytest.fixture(scope="session")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("no system Chromium: install Debian's `chromium` (make test does so as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the [test] extra)")
    if _SHARED["users"] == 0:
        pw = sync_api.sync_playwright().start()
        try:
            _SHARED["browser"] = pw.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        except BaseException:
            pw.stop()
            raise
        _SHARED["playwright"] = pw
    _SHARED["users"] += 1
    try:
        yield _SHARED["browser"]
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            _SHARED.pop("browser").close()
            _SHARED.pop("playwright").stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.console_errors = []
    pg.on("console", lambda m: pg.console_errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
    pg.set_default_timeout(20_000)
    try:
        yield pg
    finally:
        context.close()
