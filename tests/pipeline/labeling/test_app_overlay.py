"""Overlays and review mode through FastAPI's TestClient: an overlay only after the annotator's own answer, real
explanations (pipeline.explain through ONNX Runtime), the PNG cache, the model recorded with the run, reviewers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from pipeline.explain import explain_image, overlay
from pipeline.labeling.app import create_app
from pipeline.labeling.overlays import OVERLAY_DIR, run_model_uri
from pipeline.labeling.review import disagreements
from pipeline.store import runs
from tests.helpers.onnx_models import make_tiny_classifier

from .conftest import CLASSES, Filled, issue_tokens, logged_in

TOKENS: dict[str, str] = {}  # filled per test by the `tokens` fixture: {"tok-alice": token, ...}


@pytest.fixture(autouse=True)
def tokens(filled: Filled) -> dict[str, str]:
    """alice is a reviewer (review mode, overlays of complete frames), bob an annotator."""
    got = issue_tokens(filled.store, {"alice": "reviewer", "bob": "annotator"})
    TOKENS.clear()
    TOKENS.update({"tok-alice": got["alice"], "tok-bob": got["bob"]})
    return TOKENS


def login(app, token: str) -> TestClient:
    return logged_in(app, TOKENS.get(token, token))


def shown_frame(html: str) -> str | None:
    m = re.search(r'name="frame_id" value="([^"]+)"', html)
    return m.group(1) if m else None


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_tiny_classifier(tmp_path / "explain.onnx", CLASSES, input_size=(24, 32), seed=3)


def set_run_config(filled: Filled, doc: dict) -> None:
    with filled.store.engine.begin() as conn:
        conn.execute(runs.update().where(runs.c.run_id == "r1").values(config=json.dumps(doc)))


def test_unauthenticated_pages_redirect_to_login(filled: Filled, model: Path) -> None:
    c = TestClient(create_app(filled.url, explain_model=model))
    for url in (f"/overlay?frame_id={filled.frame_ids[0]}", "/status", "/review"):
        r = c.get(url, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", url
    assert c.get("/api/status").status_code == 401


def test_overlay_only_after_own_answer_then_cached(filled: Filled, model: Path) -> None:
    f = filled.frame_ids
    app = create_app(filled.url, explain_model=model)
    alice = login(app, "tok-alice")
    first = shown_frame(alice.get("/").text)
    assert first == f[0]
    # not answered yet: refused, whatever the URL says
    r = alice.get("/overlay", params={"frame_id": f[0]})
    assert r.status_code == 403 and "answer this frame first" in r.text
    assert 'id="overlay-image"' not in alice.get("/", params={"answered": f[0]}).text
    # answer it: redirected to a page showing that frame's overlay, next to the model's answer
    r = alice.post("/label", data={"frame_id": f[0], "label": "box"})
    assert r.history[0].headers["location"] == f"/?answered={f[0].replace(':', '%3A')}"
    assert shown_frame(r.text) == f[1]
    assert f'src="/overlay?frame_id={f[0].replace(":", "%3A")}"' in r.text
    assert re.search(r'id="answered-label">box<', r.text) and re.search(r'id="answered-model"[^>]*>pallet<', r.text)
    png = alice.get("/overlay", params={"frame_id": f[0]})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    img = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (240, 320, 3) and float(img.std()) > 1.0  # the sample's size, not blank
    cached = list((filled.root / "samples" / OVERLAY_DIR).rglob("*.png"))
    assert len(cached) == 1 and cached[0].read_bytes() == png.content
    mtime = cached[0].stat().st_mtime_ns
    assert alice.get("/overlay", params={"frame_id": f[0]}).content == png.content
    assert cached[0].stat().st_mtime_ns == mtime  # served from the cache, not recomputed
    # bob (an annotator) has not answered f0: annotators see only their own answers' overlays (reviewers, like alice,
    # also those of frames that need no more labels: test_reviewer_roles)
    bob = login(app, "tok-bob")
    assert bob.get("/overlay", params={"frame_id": f[0]}).status_code == 403
    # a frame wanting two labels, answered by alice only: still in bob's queue, so never shown to him
    assert alice.post("/label", data={"frame_id": f[1], "label": "pallet"}).status_code == 200
    assert alice.get("/overlay", params={"frame_id": f[1]}).status_code == 200
    r = bob.get("/overlay", params={"frame_id": f[1]})
    assert r.status_code == 403
    # a skip is no answer: no overlay panel after it
    r = alice.post("/label", data={"frame_id": f[2], "label": "skip"})
    assert r.history[0].headers["location"] == "/" and 'id="answered"' not in r.text
    assert alice.get("/overlay", params={"frame_id": f[2]}).status_code == 403
    assert alice.get("/overlay", params={"frame_id": "nope"}).status_code == 404


def test_reviewer_roles(filled: Filled, model: Path) -> None:
    f = filled.frame_ids
    app = create_app(filled.url, explain_model=model)
    alice, bob = login(app, "tok-alice"), login(app, "tok-bob")
    bob.post("/label", data={"frame_id": f[0], "label": "box"})
    assert bob.get("/overlay", params={"frame_id": f[0]}).status_code == 200  # his own answer
    assert alice.get("/overlay", params={"frame_id": f[0]}).status_code == 200  # a reviewer, frame complete
    alice.post("/label", data={"frame_id": f[2], "label": "empty"})
    assert bob.get("/overlay", params={"frame_id": f[2]}).status_code == 403  # not his, and not a reviewer
    r = bob.get("/review")
    assert r.status_code == 403 and "open to the reviewer and admin roles" in r.text
    assert 'href="/review"' not in bob.get("/").text and 'href="/review"' in alice.get("/").text


def test_review_lists_disagreements_most_confident_first(filled: Filled, model: Path) -> None:
    f = filled.frame_ids  # the incumbent predicts CLASSES[(i + 1) % 3] at 0.9: wrong on every frame
    app = create_app(filled.url, explain_model=model)
    alice = login(app, "tok-alice")
    for i, label in [(0, "box"), (2, "empty"), (3, "unsure"), (4, "empty")]:  # 4: the model's own answer
        alice.post("/label", data={"frame_id": f[i], "label": label})
    found = disagreements(filled.store, CLASSES)
    assert [it.frame_id for it in found.items] == [f[0], f[2]]
    assert (found.items[0].truth, found.items[0].predicted, found.items[0].confidence) == ("box", "pallet", pytest.approx(0.9))
    assert found.frames_labelled == 4 and found.no_truth == {"unsure": 1}
    html = alice.get("/review").text
    assert html.count('class="item"') == 2 and f'data-frame-id="{f[0]}"' in html and f'data-frame-id="{f[4]}"' not in html
    assert html.count('class="overlay"') == 2  # both complete: their overlays are offered
    assert 'id="n-disagree">2<' in html and "1 frame(s) labelled unsure only" in html
    assert "No disagreements" in alice.get("/review", params={"role": "shadow"}).text  # no shadow predictions here
    assert alice.get("/review", params={"role": "boss"}).status_code == 400


def test_overlay_model_from_the_run_and_no_explain(filled: Filled, model: Path, tmp_path: Path) -> None:
    f = filled.frame_ids
    app = create_app(filled.url)  # no --explain-model: the run's incumbent
    alice = login(app, "tok-alice")
    r = alice.post("/label", data={"frame_id": f[0], "label": "box"})
    assert 'id="overlay-error"' in r.text and "records no incumbent model" in r.text
    r = alice.get("/overlay", params={"frame_id": f[0]})
    assert r.status_code == 500 and "--explain-model" in r.text
    # the runner records the file it loaded: the overlay uses it
    set_run_config(filled, {"workdir": str(tmp_path), "incumbent": {"uri": "explain.onnx"},
                            "_resolved": {"incumbent": {"path": str(model)}}})
    png = alice.get("/overlay", params={"frame_id": f[0]})
    assert png.status_code == 200
    # it explains the class the stored prediction named ("pallet"), the answer shown next to it
    image = cv2.imread(str(filled.root / "samples" / "r1_cam0_0.jpg"))
    want = overlay(image, explain_image(str(model), image, target="pallet").saliency)
    got = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(got, want)
    assert explain_image(str(model), image).target_class != "pallet"  # not what the model would pick by itself
    # the challenger's model, for the review of its disagreements: the run records none
    r = alice.get("/overlay", params={"frame_id": f[0], "role": "shadow"})
    assert r.status_code == 500 and "records no shadow model" in r.text
    assert alice.get("/overlay", params={"frame_id": f[0], "role": "boss"}).status_code == 400
    # off: no panel, no endpoint
    off = login(create_app(filled.url, explain=False), "tok-alice")
    r = off.post("/label", data={"frame_id": f[2], "label": "empty"})
    assert r.history[0].headers["location"] == "/" and 'id="answered"' not in r.text
    assert off.get("/overlay", params={"frame_id": f[2]}).status_code == 404
    assert 'class="overlay"' not in off.get("/review").text


def test_run_model_uri(tmp_path: Path, model: Path) -> None:
    def run(doc: dict, inc: str = "conveyor:7") -> dict:
        return {"run_id": "r", "incumbent_model": inc, "config": json.dumps(doc)}

    assert run_model_uri(run({"_resolved": {"incumbent": {"path": str(model)}}, "workdir": "w"})) == (str(model), "w")
    # the file the runner loaded is gone: the configured URI, an alias pinned to the version that served
    gone = {"path": str(tmp_path / "gone.onnx")}
    assert run_model_uri(run({"incumbent": {"uri": "models:/conveyor@champion"}, "_resolved": {"incumbent": gone}}))[0] \
        == "models:/conveyor/7"
    assert run_model_uri(run({"incumbent": {"uri": "models:/other@champion"}}))[0] == "models:/other@champion"
    # a relative path of the run's workdir
    assert run_model_uri(run({"incumbent": {"uri": "explain.onnx"}, "workdir": str(tmp_path)}))[0] == str(tmp_path / "explain.onnx")
    assert run_model_uri(run({}))[0] is None
    assert run_model_uri({"run_id": "r", "incumbent_model": None, "config": "{broken"})[0] is None
