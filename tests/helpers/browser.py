"""Real-browser test helpers: an app served by uvicorn on a free loopback port, Debian's headless Chromium driven by
Playwright (never ``playwright install``; tests using it are skipped, with the reason, where /usr/bin/chromium is
absent: put :data:`BROWSER_MARKS` in the module's ``pytestmark``), and logging in on the labeling page."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (Debian package 'chromium')"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app):
    """Serve ``app`` on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if not th.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        th.join(timeout=10)


@contextmanager
def chromium():
    """A headless Chromium browser (Playwright, the system's /usr/bin/chromium)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            yield browser
        finally:
            browser.close()


def log_in(page, base: str, token: str) -> None:
    """Open the labeling page, get sent to the login, and log in with ``token``."""
    page.goto(base + "/")
    assert page.url.endswith("/login")
    page.fill("#token", token)
    with page.expect_navigation():
        page.keyboard.press("Enter")
