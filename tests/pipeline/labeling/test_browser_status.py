"""The overlay after an answer and the /status page in a real browser: Debian's headless Chromium driven by
Playwright (never ``playwright install``; skipped, with the reason, where /usr/bin/chromium is absent).

The status page is screenshotted in the test and the PNG checked: written, of the page's size, not blank, and the
page's figures are the ones computed from the store the test filled."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from pipeline.config import EvalConfig
from pipeline.labeling.status import build_status, deployments
from tests.helpers.browser import BROWSER_MARKS, chromium, log_in, serving
from tests.helpers.onnx_models import make_tiny_classifier

from .conftest import CLASSES, fill_store, issue_tokens
from .test_status import NOW, fill

pytestmark = BROWSER_MARKS


def test_overlay_appears_after_the_answer(tmp_path: Path) -> None:
    from pipeline.labeling.app import create_app

    filled = fill_store(tmp_path / "w", n=4)
    model = make_tiny_classifier(tmp_path / "m.onnx", CLASSES, input_size=(24, 32), seed=3)
    f = filled.frame_ids
    token = issue_tokens(filled.store, {"alice": "reviewer"})["alice"]
    with serving(create_app(filled.url, explain_model=model)) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        # not logged in: the overlay and the status page send the browser to the login page
        for url in (f"/overlay?frame_id={f[0]}", "/status"):
            page.goto(base + url)
            assert page.url.endswith("/login"), url
        log_in(page, base, token)
        assert page.inner_text("#frame-id") == f[0]
        assert page.locator("#overlay-image").count() == 0  # nothing before the answer
        with page.expect_navigation():
            page.keyboard.press("1")
        assert page.inner_text("#frame-id") == f[1]
        assert page.inner_text("#answered-id") == f[0] and page.inner_text("#answered-label") == "box"
        page.wait_for_function("document.getElementById('overlay-image').complete", timeout=30_000)
        assert page.evaluate("document.getElementById('overlay-image').naturalWidth") == 320
        shot = page.locator("#overlay-image").screenshot()
        img = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] >= 100 and float(img.std()) > 1.0  # rendered, not blank
        filled.store.close()


def test_status_page_renders_the_figures(tmp_path: Path) -> None:
    from pipeline.labeling.app import create_app

    store = fill(tmp_path)
    doc = build_status(store, deployments(store)[0], EvalConfig(), now=NOW)
    shot_path = tmp_path / "status.png"
    token = issue_tokens(store, {"manager": "reviewer"})["manager"]
    with serving(create_app(store, eval_config=EvalConfig())) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        log_in(page, base, token)
        page.goto(base + "/status")
        assert "champion inc:1, challenger sh:2 in shadow" in page.inner_text("#status-title")
        table = page.inner_text("#status-table")
        for r in doc["rows"]:
            assert r["accuracy_text"] in table, r["camera"]
        assert "$0.0015" in table  # serving cost per 1,000 predictions (the run summary's)
        assert re.search(r"5 label\(s\) this week", page.inner_text("#labels"))
        assert page.locator("svg.spark").count() >= 6
        assert page.locator("#decision .headline").inner_text().strip()
        page.screenshot(path=str(shot_path), full_page=True)
    img = cv2.imread(str(shot_path))
    assert img is not None and shot_path.stat().st_size > 20_000
    assert img.shape[1] == 1400 and img.shape[0] >= 1000
    assert float(img.astype(np.float32).var()) > 0.0
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # text, boxes and sparklines, not one flat colour
    store.close()
