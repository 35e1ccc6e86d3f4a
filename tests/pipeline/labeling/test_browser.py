"""The labeling page end to end in a real browser: Debian's headless Chromium driven by Playwright.

Never runs ``playwright install``: it uses /usr/bin/chromium (Debian package ``chromium``) and is
skipped, with the reason, where that is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.store import label_skips, labels
from tests.helpers.browser import BROWSER_MARKS, CHROMIUM, serving

from .conftest import fill_store, issue_tokens

pytestmark = BROWSER_MARKS


@pytest.fixture
def server(tmp_path: Path):
    from pipeline.labeling.app import create_app

    filled = fill_store(tmp_path / "w", n=6, double=(5,))
    token = issue_tokens(filled.store, {"alice": "annotator"})["alice"]
    with serving(create_app(filled.url)) as base:
        yield base, filled, token
    filled.store.close()


def test_label_with_keyboard_in_chromium(server, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    base, filled, token = server
    f = filled.frame_ids
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(base + "/")
            assert page.url.endswith("/login")
            # a wrong token gets a clear message
            page.fill("#token", "nope")
            with page.expect_navigation():
                page.keyboard.press("Enter")
            assert "That token is not valid" in page.inner_text("#login-error")
            page.fill("#token", token)
            with page.expect_navigation():
                page.keyboard.press("Enter")
            assert page.inner_text("#frame-id") == f[0]
            # the frame is shown large and the image really loaded
            page.wait_for_function("document.getElementById('frame-image').complete")
            assert page.evaluate("document.getElementById('frame-image').naturalWidth") == 320
            box = page.locator("#frame-image").bounding_box()
            assert box["height"] >= 400
            page.screenshot(path=str(tmp_path / "labeling.png"))
            # keys: 1 -> box, 2 -> pallet, s -> skip, u -> unsure, 3 -> empty
            expected_next = {f[0]: f[1], f[1]: f[2], f[2]: f[3], f[3]: f[4], f[4]: f[5]}
            for fid, key in [(f[0], "1"), (f[1], "2"), (f[2], "s"), (f[3], "u"), (f[4], "3")]:
                assert page.inner_text("#frame-id") == fid
                with page.expect_navigation():
                    page.keyboard.press(key)
                assert page.inner_text("#frame-id") == expected_next[fid]
            assert page.inner_text("#n-mine") == "4"
            assert page.inner_text("#n-queue") == "1"
            assert page.inner_text("#n-awaiting") == "2"  # the skipped frame and the last one
        finally:
            browser.close()
    got = sorted((r["frame_id"], r["label"], r["annotator"], r["source"]) for r in filled.store.table_rows(labels))
    assert got == sorted([(f[0], "box", "alice", "web"), (f[1], "pallet", "alice", "web"), (f[3], "unsure", "alice", "web"), (f[4], "empty", "alice", "web")])
    assert [(r["frame_id"], r["annotator"]) for r in filled.store.table_rows(label_skips)] == [(f[2], "alice")]
    assert (tmp_path / "labeling.png").stat().st_size > 10_000
