"""Attacks on the labeling page, each with its documented refusal (docs/security.md) and the store unchanged: path
traversal (plain, %2e%2e, double-encoded, a poisoned samples row, a symlink out of the sample folder), session fixation,
cookie tampering, a revoked token and a revoked session, CSRF (missing / wrong token, foreign Origin), brute-force login
(lockout shared through the store, logged), oversized and malformed bodies, a third vote. TLS through real uvicorn."""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pipeline.config import LabelAuthConfig
from pipeline.labeling.app import COOKIE, LOGIN_COOKIE, create_app
from pipeline.labeling.auth import issue_token, revoke_token
from pipeline.store import (
    label_audit,
    label_sessions,
    label_skips,
    labels,
    login_attempts,
    samples,
)
from tests.helpers.browser import free_port

from .conftest import Filled, csrf_of, issue_tokens, log_in, login_form_nonce

LABEL_TABLES = (labels, label_audit, label_skips, samples)


def snapshot(filled: Filled, tables=LABEL_TABLES) -> dict:
    return {t.name: sorted(map(repr, filled.store.table_rows(t))) for t in tables}


@pytest.fixture
def tokens(filled: Filled) -> dict[str, str]:
    return issue_tokens(filled.store, {"alice": "annotator", "bob": "annotator", "carol": "reviewer"})


@pytest.fixture
def app(filled: Filled, tokens):
    return create_app(filled.url, explain=False, auth=LabelAuthConfig(max_failures_per_client=8, max_failures_per_annotator=3))


def logged(app, token: str) -> TestClient:
    c = TestClient(app)
    assert log_in(c, token).status_code == 200
    return c


def test_path_traversal(app, filled: Filled, tokens, tmp_path: Path) -> None:
    c = logged(app, tokens["alice"])
    before = snapshot(filled)
    for fid in ("../../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "%252e%252e%252fetc%252fpasswd", "/etc/passwd"):
        r = c.get("/image", params={"frame_id": fid})
        assert r.status_code == 404 and "no sampled frame" in r.text, fid
    for raw in ("/image/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/%252e%252e/%252e%252e/etc/passwd", "/..%2f..%2fetc%2fpasswd"):
        r = c.get(raw)
        assert r.status_code == 404 and "root:" not in r.text, raw
    # a poisoned samples row (a traversal path, or a symlink inside the sample folder pointing out): 403
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    link = filled.root / "samples" / "innocent.jpg"
    os.symlink(secret, link)
    for fid, path in ((filled.frame_ids[0], str(filled.root / "samples" / ".." / ".." / "secret.txt")), (filled.frame_ids[1], str(link))):
        with filled.store.engine.begin() as conn:
            conn.execute(samples.update().where(samples.c.frame_id == fid).values(image_path=path))
        r = c.get("/image", params={"frame_id": fid})
        assert r.status_code == 403 and r.text == "image outside the sample folders", fid
    assert snapshot(filled, (labels, label_audit)) == {k: v for k, v in before.items() if k in ("labels", "label_audit")}


def test_session_fixation(app, tokens) -> None:
    c = TestClient(app)
    planted = "attacker-chosen-session-id"
    c.cookies.set(COOKIE, planted)
    r = log_in(c, tokens["alice"])
    assert r.status_code == 200
    issued = r.history[0].headers["set-cookie"].split(";")[0].split("=", 1)[1]
    assert issued != planted and len(issued) >= 40  # a fresh random session id is issued at login
    t = TestClient(app)
    t.cookies.set(COOKIE, planted)
    assert t.get("/", follow_redirects=False).status_code == 303  # the planted id never became a session


def test_cookie_tampering(app, filled: Filled, tokens) -> None:
    c = logged(app, tokens["alice"])
    good = c.cookies[COOKIE]
    flipped = ("A" if good[0] != "A" else "B") + good[1:]
    for bad in (flipped, good[:-1], good + "x", "", "x" * 500, filled.store.table_rows(label_sessions)[0]["session_id"]):
        t = TestClient(app)
        t.cookies.set(COOKIE, bad)
        assert t.get("/", follow_redirects=False).status_code == 303, bad[:20]  # the stored hash is no cookie either
        assert t.get("/api/progress").status_code == 401


def test_revoked_token_and_revoked_session(app, filled: Filled, tokens) -> None:
    c = logged(app, tokens["alice"])
    assert c.get("/").status_code == 200
    before = snapshot(filled)
    revoke_token(filled.store, "alice")
    assert c.get("/", follow_redirects=False).status_code == 303  # the live session ended at once
    r = c.post("/label", data={"frame_id": filled.frame_ids[0], "label": "box", "csrf_token": "x"})
    assert r.status_code == 401
    r = log_in(TestClient(app), tokens["alice"])
    assert r.status_code == 401 and "That token was revoked" in r.text
    ended = [s for s in filled.store.table_rows(label_sessions) if s["ended_why"] == "revoked"]
    assert len(ended) == 1
    assert snapshot(filled) == before
    # an admin revokes a token on the web page: bob's session ends
    root = issue_token(filled.store, "root", "admin").token
    bob, admin = logged(app, tokens["bob"]), logged(app, root)
    bob_id = next(t.token_id for t in filled.store.label_tokens(active_only=True) if t.annotator == "bob")
    assert bob.post("/admin/revoke", data={"token_id": bob_id, "csrf_token": csrf_of(bob.get("/").text)}).status_code == 403  # not admin
    r = admin.post("/admin/revoke", data={"token_id": bob_id, "csrf_token": csrf_of(admin.get("/admin").text)})
    assert r.status_code == 200 and "revoked" in r.text
    assert bob.get("/", follow_redirects=False).status_code == 303


def test_csrf(app, filled: Filled, tokens) -> None:
    c = logged(app, tokens["alice"])
    csrf = csrf_of(c.get("/").text)
    before = snapshot(filled)
    f0 = filled.frame_ids[0]
    for data, headers in (({"frame_id": f0, "label": "box"}, {}),
                          ({"frame_id": f0, "label": "box", "csrf_token": "0" * 64}, {}),
                          ({"frame_id": f0, "label": "box", "csrf_token": csrf}, {"Origin": "http://evil.example"}),
                          ({"frame_id": f0, "label": "box", "csrf_token": csrf}, {"Origin": "null"}),
                          ({"frame_id": f0, "label": "box", "csrf_token": csrf}, {"Sec-Fetch-Site": "cross-site"})):
        r = c.post("/label", data=data, headers=headers)
        assert r.status_code == 403 and ("CSRF token is missing or wrong" in r.text or "sent from another site" in r.text), (data, headers)
    r = c.post("/logout", data={}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and c.get("/", follow_redirects=False).status_code == 200  # still logged in
    # another session's CSRF token does not work here
    other = csrf_of(logged(app, tokens["bob"]).get("/").text)
    assert c.post("/label", data={"frame_id": f0, "label": "box", "csrf_token": other}).status_code == 403
    # login CSRF: a login POST without the form's nonce (or from another origin) is refused
    t = TestClient(app)
    assert t.post("/login", data={"token": tokens["alice"]}).status_code == 403
    nonce = login_form_nonce(t)
    r = t.post("/login", data={"token": tokens["alice"], "login_csrf": nonce}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and COOKIE not in t.cookies
    assert snapshot(filled) == before
    # the same-origin POST with the right token works
    assert c.post("/label", data={"frame_id": f0, "label": "box", "csrf_token": csrf}, headers={"Origin": "http://testserver"}).status_code == 200


def test_brute_force_login_locks_out(app, filled: Filled, tokens, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline.labeling.auth")
    before = snapshot(filled, (label_sessions,))
    t = TestClient(app)
    for i in range(8):
        assert log_in(t, f"guess-{i:04d}-Aa1!-long-enough").status_code == 401
    r = log_in(t, tokens["alice"])  # the right token, but this client is locked out (8 failures in the window)
    assert r.status_code == 429 and "Too many failed logins from your address" in r.text and int(r.headers["retry-after"]) > 0
    assert snapshot(filled, (label_sessions,)) == before  # no session was opened
    rows = filled.store.table_rows(login_attempts)
    assert sum(r["reason"] == "bad_token" for r in rows) == 8 and rows[-1]["reason"] == "locked_client"
    assert sum("failed login (bad_token) from testclient" in m for m in caplog.messages) == 8
    # per annotator: 3 wrong secrets under bob's token id (from other addresses) lock bob out, whoever asks
    bob_id = tokens["bob"].split("_")[1]
    for i in range(3):
        filled.store.record_login_attempt(time.time(), f"10.0.0.{i}", False, "bad_token", "bob", bob_id)
    other = TestClient(app, client=("10.9.9.9", 5000))
    r = log_in(other, tokens["bob"])
    assert r.status_code == 429 and "for this annotator" in r.text
    assert log_in(other, tokens["carol"]).status_code == 200  # others are not affected


def test_lockout_is_shared_by_server_processes(filled: Filled, tokens) -> None:
    """Two app instances (as two uvicorn workers would be) on one store: failures on one lock the other out."""
    cfg = LabelAuthConfig(max_failures_per_client=4)
    a, b = create_app(filled.url, explain=False, auth=cfg), create_app(filled.url, explain=False, auth=cfg)
    for i in range(4):
        assert log_in(TestClient(a), f"guess-{i:04d}-Aa1!-long-enough").status_code == 401
    assert log_in(TestClient(b), tokens["alice"]).status_code == 429


def test_oversized_and_malformed_bodies(app, filled: Filled, tokens) -> None:
    c = logged(app, tokens["alice"])
    csrf = csrf_of(c.get("/").text)
    before = snapshot(filled)
    r = c.post("/label", content=b"frame_id=x&label=" + b"a" * 70_000, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413 and "request body too large" in r.text

    def chunks():
        for _ in range(80):
            yield b"a" * 1024

    r = c.post("/label", content=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"})  # no Content-Length
    assert r.status_code == 413
    r = c.post("/label", data={"frame_id": "f" * 300, "label": "box", "csrf_token": csrf})
    assert r.status_code == 422  # longer than any frame id
    r = c.post("/label", content=b"\xff\xfe\x00garbage=%%%", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code in (400, 403, 422)
    r = c.post("/label", json={"frame_id": filled.frame_ids[0], "label": "box", "csrf_token": csrf})
    assert r.status_code in (400, 403, 422)  # not a form: no label taken
    assert snapshot(filled) == before


def test_third_vote_and_the_double_label_plan(app, filled: Filled, tokens) -> None:
    f1 = filled.frame_ids[1]  # double_label: two annotators
    alice, bob, carol = (logged(app, tokens[n]) for n in ("alice", "bob", "carol"))
    for c, lab in ((alice, "box"), (bob, "pallet")):
        assert c.post("/label", data={"frame_id": f1, "label": lab, "csrf_token": csrf_of(c.get("/").text)}).status_code == 200
    before = snapshot(filled)
    r = carol.post("/label", data={"frame_id": f1, "label": "pallet", "csrf_token": csrf_of(carol.get("/").text)})
    assert r.status_code == 409 and "already has all the labels it needs" in r.text
    assert snapshot(filled) == before
    # the tie goes to review: a reviewer resolves it with one of the two answers, once
    csrf = csrf_of(carol.get("/review").text)
    assert carol.post("/resolve", data={"frame_id": f1, "label": "empty", "csrf_token": csrf}).status_code == 409
    assert alice.post("/resolve", data={"frame_id": f1, "label": "box", "csrf_token": csrf_of(alice.get("/").text)}).status_code == 403
    assert carol.post("/resolve", data={"frame_id": f1, "label": "pallet", "csrf_token": csrf}).status_code == 200
    assert carol.post("/resolve", data={"frame_id": f1, "label": "box", "csrf_token": csrf}).status_code == 409
    # after the resolution, an annotator cannot undo it by changing their own answer (it would make a new tie)
    resolved = snapshot(filled)
    r = bob.post("/label", data={"frame_id": f1, "label": "box", "csrf_token": csrf_of(bob.get("/").text)})
    assert r.status_code == 409 and "resolved by a reviewer" in r.text
    assert snapshot(filled) == resolved
    audit = [(r["action"], r["annotator"], r["new_label"]) for r in filled.store.table_rows(label_audit, order_by=label_audit.c.id)]
    assert audit == [("create", "alice", "box"), ("create", "bob", "pallet"), ("resolve", "carol", "pallet")]


def test_audit_is_append_only(filled: Filled, tokens) -> None:
    from pipeline.types import Label

    filled.store.add_labels([Label(frame_id=filled.frame_ids[0], label="box", annotator="imp", timestamp=1.0, source="import")])
    with pytest.raises(Exception, match="append-only"):
        with filled.store.engine.begin() as conn:
            conn.execute(label_audit.delete())
    with pytest.raises(Exception, match="append-only"):
        with filled.store.engine.begin() as conn:
            conn.execute(label_audit.update().values(new_label="pallet"))
    assert [(r["action"], r["new_label"]) for r in filled.store.table_rows(label_audit)] == [("create", "box")]


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    import ipaddress

    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_with_real_uvicorn_sets_secure_cookies(app, tokens, tmp_path: Path) -> None:
    import uvicorn

    cert, key = _self_signed(tmp_path)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ssl_certfile=str(cert), ssl_keyfile=str(key)))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, follow_redirects=True) as c:
            r = log_in(c, tokens["alice"])
            cookie = r.history[0].headers["set-cookie"]
            assert r.status_code == 200 and "Secure" in cookie and "HttpOnly" in cookie and COOKIE in cookie
            assert "Secure" in c.get("/login").headers["set-cookie"] and LOGIN_COOKIE in c.get("/login").headers["set-cookie"]
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port is no answer
            httpx.get(f"http://127.0.0.1:{port}/login", timeout=5)
    finally:
        srv.should_exit = True
        th.join(timeout=10)


def test_plain_http_warning() -> None:
    from pipeline.labeling.app import plain_http_warning

    assert plain_http_warning("127.0.0.1", tls=False) is None and plain_http_warning("0.0.0.0", tls=True) is None
    assert "plain HTTP on 0.0.0.0" in plain_http_warning("0.0.0.0", tls=False)
