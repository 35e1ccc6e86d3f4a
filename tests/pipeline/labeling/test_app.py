"""The labeling page through FastAPI's TestClient: auth, next-frame logic, double labels, skip, images."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner

from pipeline.labeling import queue
from pipeline.labeling.app import COOKIE, SESSION_MAX_AGE_S, create_app, parse_token_specs, read_tokens_file, session_serializer
from pipeline.store import PredictionStore, label_skips, labels, samples
from pipeline.types import ConfigError

from .conftest import CLASSES, Filled

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}


def shown_frame(html: str) -> str | None:
    m = re.search(r'name="frame_id" value="([^"]+)"', html)
    return m.group(1) if m else None


def visible_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


def login(app, token: str) -> TestClient:
    c = TestClient(app)
    r = c.post("/login", data={"token": token})
    assert r.status_code == 200, r.text
    return c


def answer(c: TestClient, frame_id: str, label: str) -> str:
    r = c.post("/label", data={"frame_id": frame_id, "label": label})
    assert r.status_code == 200 and r.history and r.history[0].status_code == 303  # Post/Redirect/Get
    return r.text


@pytest.fixture
def app(filled: Filled):
    return create_app(filled.url, tokens=TOKENS)


def test_auth_required(app) -> None:
    c = TestClient(app)
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert c.post("/label", data={"frame_id": "x", "label": "box"}).status_code == 401
    assert c.get("/image", params={"frame_id": "r1:cam0:0"}).status_code == 401
    assert c.get("/api/progress").status_code == 401
    r = c.post("/login", data={"token": "wrong"})
    assert r.status_code == 401 and "That token is not valid" in r.text and 'id="login-error"' in r.text
    assert c.post("/login", data={"token": ""}).status_code == 401
    # a forged cookie (annotator name without the right signature) is not a login
    c.cookies.set(COOKIE, "YWxpY2U.0000")
    assert c.get("/", follow_redirects=False).status_code == 303


def _logged_in(c: TestClient) -> bool:
    return c.get("/", follow_redirects=False).status_code == 200


def test_session_cookie_is_signed_and_tampering_is_refused(filled: Filled) -> None:
    app = create_app(filled.url, tokens=TOKENS, secret_key="k1")
    c = login(app, "tok-alice")
    good = c.cookies[COOKIE]
    assert _logged_in(c) and session_serializer("k1").loads(good) == "alice"
    payload, rest = good.split(".", 1)
    # another annotator's name under alice's signature, a changed signature, a truncated cookie: all refused
    bob_payload = session_serializer("k1").dumps("bob").split(".", 1)[0]
    signed, sig = good.rsplit(".", 1)
    flipped_sig = f"{signed}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"  # the first character is all signature bits
    for bad in (f"{bob_payload}.{rest}", flipped_sig, payload, "", "YWxpY2U.0000"):
        t = TestClient(app)
        t.cookies.set(COOKIE, bad)
        assert not _logged_in(t), bad
        assert t.get("/api/progress").status_code == 401
    # signed with another key (e.g. before a restart) or naming someone without a token: refused
    for bad in (session_serializer("k2").dumps("alice"), session_serializer("k1").dumps("mallory")):
        t = TestClient(app)
        t.cookies.set(COOKIE, bad)
        assert not _logged_in(t)
    # a well-signed cookie made elsewhere with the same key works (the key is the only secret)
    t = TestClient(app)
    t.cookies.set(COOKIE, session_serializer("k1").dumps("bob"))
    assert _logged_in(t) and t.get("/api/progress").json()["annotator"] == "bob"


def test_session_cookie_expires(filled: Filled) -> None:
    app = create_app(filled.url, tokens=TOKENS, secret_key="k1")

    class SignedLongAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return super().get_timestamp() - SESSION_MAX_AGE_S - 60

    class SignedRecently(TimestampSigner):
        def get_timestamp(self) -> int:
            return super().get_timestamp() - SESSION_MAX_AGE_S + 60

    for signer, ok in ((SignedLongAgo, False), (SignedRecently, True)):
        ser = session_serializer("k1")
        ser.signer = signer
        t = TestClient(app)
        t.cookies.set(COOKIE, ser.dumps("alice"))
        assert _logged_in(t) is ok


def test_logout_ends_the_session(app) -> None:
    c = login(app, "tok-alice")
    r = c.post("/logout", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert COOKIE in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]
    assert not _logged_in(c)


def test_page_shows_frame_buttons_and_no_predictions(app, filled: Filled) -> None:
    c = login(app, "tok-alice")
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


def test_next_frame_double_labeling_and_skip(app, filled: Filled) -> None:
    f = filled.frame_ids  # frame 1 is double_label
    alice, bob = login(app, "tok-alice"), login(app, "tok-bob")
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


def test_bad_posts(app, filled: Filled) -> None:
    c = login(app, "tok-alice")
    r = c.post("/label", data={"frame_id": filled.frame_ids[0], "label": "crate"})
    assert r.status_code == 400 and "&#39;crate&#39; is not a label of this deployment" in r.text
    r = c.post("/label", data={"frame_id": "r1:cam9:99", "label": "box"})
    assert r.status_code == 404 and "not in the label queue" in r.text
    assert c.post("/label", data={"label": "box"}).status_code == 400
    assert filled.store.count(labels) == 0


def test_images_only_from_samples(filled: Filled, tmp_path: Path) -> None:
    app = create_app(filled.url, tokens=TOKENS)
    c = login(app, "tok-alice")
    for bad in ("../../../../etc/passwd", "/etc/passwd", str(filled.root / "store.db")):
        assert c.get("/image", params={"frame_id": bad}).status_code == 404
    # with an image root, recorded paths outside it are refused
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    c2 = login(create_app(filled.url, tokens=TOKENS, image_root=elsewhere), "tok-alice")
    assert c2.get("/image", params={"frame_id": filled.frame_ids[0]}).status_code == 403
    c3 = login(create_app(filled.url, tokens=TOKENS, image_root=filled.root), "tok-alice")
    assert c3.get("/image", params={"frame_id": filled.frame_ids[0]}).status_code == 200


def test_show_predictions_behind_toggle(filled: Filled) -> None:
    c = login(create_app(filled.url, tokens=TOKENS, show_predictions=True), "tok-alice")
    html = c.get("/").text
    assert '<details class="predictions" id="predictions">' in html and "<details class=\"predictions\" id=\"predictions\" open" not in html
    assert "incumbent inc:1: <b>pallet</b> (90%)" in html


def test_config_errors(filled: Filled, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one token"):
        create_app(filled.url, tokens={})
    empty = PredictionStore(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(ConfigError, match="no class names"):
        create_app(empty, tokens=TOKENS)
    with pytest.raises(ConfigError, match="not 'unsure'/'skip'"):
        create_app(empty, class_names=["a", "skip"], tokens=TOKENS)
    assert create_app(empty, class_names=["a", "b"], tokens=TOKENS).state.class_names == ["a", "b"]
    empty.close()
    assert parse_token_specs(["t1:alice", "t2:bob"]) == {"t1": "alice", "t2": "bob"}
    with pytest.raises(ConfigError, match="expected TOKEN:ANNOTATOR"):
        parse_token_specs(["justatoken"])
    tf = tmp_path / "tokens.txt"
    tf.write_text("# annotators\nt1:alice\n\nt2 : bob\n")
    assert read_tokens_file(tf) == {"t1": "alice", "t2": "bob"}
    tf.write_text("t1:alice\nbroken\n")
    with pytest.raises(ConfigError, match=rf"{tf}:2: expected TOKEN:ANNOTATOR"):
        read_tokens_file(tf)
