"""The labeling page through FastAPI's TestClient: auth, next-frame logic, double labels, skip, images.
(Attacks on it - traversal, fixation, tampering, CSRF, brute force, oversized bodies, third votes - are in test_attacks.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipeline.labeling import queue
from pipeline.labeling.app import COOKIE, create_app
from pipeline.store import PredictionStore, label_audit, label_skips, labels, samples
from pipeline.types import ConfigError

from .conftest import CLASSES, Filled, csrf_of, issue_tokens, log_in

ROLES = {"alice": "annotator", "bob": "annotator"}


def shown_frame(html: str) -> str | None:
    m = re.search(r'name="frame_id" value="([^"]+)"', html)
    return m.group(1) if m else None


def visible_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


def login(app, token: str) -> TestClient:
    c = TestClient(app)
    r = log_in(c, token)
    assert r.status_code == 200, r.text
    return c


def answer(c: TestClient, frame_id: str, label: str) -> str:
    r = c.post("/label", data={"frame_id": frame_id, "label": label, "csrf_token": csrf_of(c.get("/").text)})
    assert r.status_code == 200 and r.history and r.history[0].status_code == 303, r.text  # Post/Redirect/Get
    return r.text


@pytest.fixture
def tokens(filled: Filled) -> dict[str, str]:
    return issue_tokens(filled.store, ROLES)


@pytest.fixture
def app(filled: Filled, tokens):
    return create_app(filled.url)


def test_auth_required(app) -> None:
    c = TestClient(app)
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert c.post("/label", data={"frame_id": "x", "label": "box"}).status_code == 401
    assert c.get("/image", params={"frame_id": "r1:cam0:0"}, follow_redirects=False).status_code == 303
    assert c.get("/api/progress").status_code == 401
    r = log_in(c, "wrong-but-long-enough-token-123")
    assert r.status_code == 401 and "That token is not valid" in r.text and 'id="login-error"' in r.text
    assert log_in(c, "").status_code == 401
    # a made-up session cookie is not a login
    c.cookies.set(COOKIE, "YWxpY2U.0000")
    assert c.get("/", follow_redirects=False).status_code == 303


def _logged_in(c: TestClient) -> bool:
    return c.get("/", follow_redirects=False).status_code == 200


def test_logout_ends_the_session_server_side(app, tokens) -> None:
    c = login(app, tokens["alice"])
    secret = c.cookies[COOKIE]
    r = c.post("/logout", data={"csrf_token": csrf_of(c.get("/").text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert COOKIE in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]
    assert not _logged_in(c)
    # the old cookie, replayed, is dead: the session ended in the store, not only in the browser
    t = TestClient(app)
    t.cookies.set(COOKIE, secret)
    assert not _logged_in(t)


def test_cookie_flags(app, tokens) -> None:
    c = TestClient(app)
    r = log_in(c, tokens["alice"])
    cookie = r.history[0].headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie  # plain HTTP: no Secure
    assert r.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_page_shows_frame_buttons_and_no_predictions(app, filled: Filled, tokens) -> None:
    c = login(app, tokens["alice"])
    html = c.get("/").text
    assert shown_frame(html) == filled.frame_ids[0]
    for i, cls in enumerate(CLASSES, 1):
        assert re.search(rf'value="{cls}" class="choice class" data-key="{i}"[^>]*><kbd>{i}</kbd>{cls}</button>', html)
    assert 'data-key="u"' in html and 'data-key="s"' in html
    # predictions are hidden by default: no prediction element, no model name, no confidence
    assert 'id="predictions"' not in html and "inc:1" not in html and "incumbent" not in html
    assert not re.search(r"\d\s*%|confidence|predict", visible_text(html), re.I)
    assert 'src="/image?frame_id=r1%3Acam0%3A0"' in html
    img = c.get("/image", params={"frame_id": filled.frame_ids[0]})
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    assert img.content == Path(filled.store.table_rows(samples, samples.c.frame_id == filled.frame_ids[0])[0]["image_path"]).read_bytes()
    assert c.get("/api/progress").json() == {"annotator": "alice", "labeled_by_you": 0, "your_queue": 6, "awaiting": 6}


def test_next_frame_double_labeling_and_skip(app, filled: Filled, tokens) -> None:
    f = filled.frame_ids  # frame 1 is double_label
    alice, bob = login(app, tokens["alice"]), login(app, tokens["bob"])
    a_html = alice.get("/").text
    assert shown_frame(a_html) == f[0]
    b_html = bob.get("/").text
    assert shown_frame(b_html) == f[1]  # f0 is leased to alice and needs one label
    assert shown_frame(bob.get("/").text) == f[1]  # a reload shows the same frame
    a_html = answer(alice, f[0], "box")
    # f1 needs two annotators: bob holds one slot, alice may take the other
    assert shown_frame(a_html) == f[1]
    a_html = answer(alice, f[1], "pallet")
    assert shown_frame(a_html) == f[2]
    assert 'id="n-mine">2<' in a_html
    b_html = answer(bob, f[1], "unsure")
    assert shown_frame(b_html) == f[3]  # f2 is leased to alice
    assert queue.double_label_pairs(filled.store) == [(f[1], "pallet", "unsure")]
    # alice skips f2: it is hidden from her only, and bob gets it later
    a_html = answer(alice, f[2], "skip")
    assert shown_frame(a_html) == f[4]
    b_html = answer(bob, f[3], "empty")
    assert shown_frame(b_html) == f[2]
    assert filled.store.table_rows(label_skips)[0]["annotator"] == "alice"
    # a double submission (second POST for the same frame) is ignored, not an error
    answer(bob, f[3], "empty")
    got = sorted((r["frame_id"], r["annotator"], r["label"], r["source"]) for r in filled.store.table_rows(labels))
    assert got == sorted([(f[0], "alice", "box", "web"), (f[1], "alice", "pallet", "web"), (f[1], "bob", "unsure", "web"), (f[3], "bob", "empty", "web")])
    # never a frame the annotator already labeled
    for fid in (f[4], f[5]):
        answer(alice, fid, "empty")
    html = answer(bob, f[2], "box")
    assert shown_frame(html) is None and 'id="queue-empty"' in html
    assert shown_frame(alice.get("/").text) is None  # f2 is labeled now; alice had skipped it anyway
    assert alice.get("/api/progress").json() == {"annotator": "alice", "labeled_by_you": 4, "your_queue": 0, "awaiting": 0}


def test_bad_posts(app, filled: Filled, tokens) -> None:
    c = login(app, tokens["alice"])
    csrf = csrf_of(c.get("/").text)
    r = c.post("/label", data={"frame_id": filled.frame_ids[0], "label": "crate", "csrf_token": csrf})
    assert r.status_code == 400 and "&#39;crate&#39; is not a label of this deployment" in r.text
    r = c.post("/label", data={"frame_id": "r1:cam9:99", "label": "box", "csrf_token": csrf})
    assert r.status_code == 404 and "not in the label queue" in r.text
    assert c.post("/label", data={"label": "box", "csrf_token": csrf}).status_code == 400
    assert filled.store.count(labels) == 0 and filled.store.count(label_audit) == 0


def test_a_changed_answer_is_recorded_as_a_change(app, filled: Filled, tokens) -> None:
    c = login(app, tokens["alice"])
    f0 = filled.frame_ids[0]
    answer(c, f0, "box")
    answer(c, f0, "box")  # the same answer again (a double submit) changes nothing
    answer(c, f0, "pallet")  # a re-answer is a change, with old -> new in the audit
    rows = filled.store.table_rows(labels)
    assert [(r["frame_id"], r["annotator"], r["label"]) for r in rows] == [(f0, "alice", "pallet")]
    audit = [(r["action"], r["old_label"], r["new_label"], r["annotator"]) for r in filled.store.table_rows(label_audit, order_by=label_audit.c.id)]
    assert audit == [("create", None, "box", "alice"), ("change", "box", "pallet", "alice")]
    sessions = {r["session_id"] for r in filled.store.table_rows(label_audit)}
    assert len(sessions) == 1 and None not in sessions  # both events name alice's session


def test_images_only_from_the_sample_folder(filled: Filled, tokens, tmp_path: Path) -> None:
    c = login(create_app(filled.url), tokens["alice"])
    for bad in ("../../../../etc/passwd", "/etc/passwd", str(filled.root / "store.db")):
        assert c.get("/image", params={"frame_id": bad}).status_code == 404
    assert c.get("/image", params={"frame_id": filled.frame_ids[0]}).status_code == 200  # under <store folder>/samples
    # with an image root, recorded paths outside it are refused
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    c2 = login(create_app(filled.url, image_root=elsewhere), tokens["alice"])
    assert c2.get("/image", params={"frame_id": filled.frame_ids[0]}).status_code == 403
    c3 = login(create_app(filled.url, image_root=filled.root), tokens["alice"])
    assert c3.get("/image", params={"frame_id": filled.frame_ids[0]}).status_code == 200


def test_show_predictions_behind_toggle(filled: Filled, tokens) -> None:
    c = login(create_app(filled.url, show_predictions=True), tokens["alice"])
    html = c.get("/").text
    assert '<details class="predictions" id="predictions">' in html and "<details class=\"predictions\" id=\"predictions\" open" not in html
    assert "incumbent inc:1: <b>pallet</b> (90%)" in html


def test_config_errors(filled: Filled, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no active annotator tokens"):
        create_app(filled.url)
    empty = PredictionStore(f"sqlite:///{tmp_path / 'empty.db'}")
    issue_tokens(empty, {"alice": "annotator"})
    with pytest.raises(ConfigError, match="no class names"):
        create_app(empty)
    with pytest.raises(ConfigError, match="not 'unsure'/'skip'"):
        create_app(empty, class_names=["a", "skip"])
    assert create_app(empty, class_names=["a", "b"]).state.class_names == ["a", "b"]
    with pytest.raises(ConfigError, match="not a folder"):
        create_app(empty, class_names=["a", "b"], image_root=tmp_path / "nope")
    empty.close()
