"""Tokens (strength, hashing, one active token per annotator, the `label tokens` command, files and the environment),
session expiry, and leases/answers shared by two server processes on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.config import LabelAuthConfig
from pipeline.labeling.auth import (
    Authenticator,
    check_token_strength,
    issue_token,
    parse_token_entries,
    register_tokens,
    session_key,
    tokens_from_env,
)
from pipeline.store import PredictionStore, label_sessions, label_tokens, labels
from pipeline.types import ConfigError
from tests.helpers.postgres import postgres_server  # noqa: F401  (session fixture)

from .conftest import Filled, fill_store


@pytest.mark.parametrize("token, message", [
    ("short-Aa1", "too weak: 9 characters, at least 16 needed"),
    ("aaaaaaaaaaaaaaaaaaaa", "only 1 different characters"),
    ("abcdefghijklmnopq", "about 80 bits"),  # 17 lower-case letters: 79.9 bits
    ("has space Abcdefgh123", "spaces or control characters"),
    ("colon:Abcdefgh12345", "may not contain ':'"),
])
def test_weak_tokens_get_one_line_errors(token: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        check_token_strength(token, "--token-env X")
    assert "\n" not in str(e.value) and token not in str(e.value)  # never echoes the token
    check_token_strength("abcdefghijklmnopqr")  # 18 lower-case letters: 84.6 bits


def test_tokens_are_hashed_unique_per_annotator_and_rotated(filled: Filled) -> None:
    store = filled.store
    a = issue_token(store, "alice", "annotator")
    assert a.token.startswith(f"scl_{a.token_id}_") and len(a.token) >= 40
    row = store.table_rows(label_tokens)[0]
    assert row["token_hash"].startswith("$argon2id$") and a.token not in repr(row)
    with pytest.raises(ConfigError, match="alice' already has an active token"):
        issue_token(store, "alice", "reviewer")
    with pytest.raises(ConfigError, match="role must be one of annotator, reviewer, admin"):
        issue_token(store, "dave", "boss")
    with pytest.raises(ConfigError, match="annotator name"):
        issue_token(store, "bad name", "annotator")
    auth = Authenticator(store)
    first = auth.login(a.token, "127.0.0.1")
    assert first.ok and auth.session(first.session_secret).annotator == "alice"
    b = issue_token(store, "alice", "reviewer", rotate=True)  # rotation: the old token and its session end
    assert b.revoked == (a.token_id,)
    assert auth.session(first.session_secret) is None and not auth.login(a.token, "127.0.0.1").ok
    s = auth.session(auth.login(b.token, "127.0.0.1").session_secret)
    assert (s.annotator, s.role) == ("alice", "reviewer")
    active = store.label_tokens(active_only=True)
    assert [(t.annotator, t.role) for t in active] == [("alice", "reviewer")]


def test_token_files_and_environment(filled: Filled, tmp_path: Path) -> None:
    good = "Bob-s3cret-token-2026"
    assert parse_token_entries(f"# team\n{good}:bob\n\nCarol-s3cret-token-2026:carol:reviewer\n", "t.txt") == {
        good: ("bob", "annotator"), "Carol-s3cret-token-2026": ("carol", "reviewer")}
    with pytest.raises(ConfigError, match=r"t.txt:2 \(annotator 'carol'\): too weak: 4 characters"):
        parse_token_entries(f"{good}:bob\nweak:carol\n", "t.txt")
    with pytest.raises(ConfigError, match="annotator 'bob' given twice"):
        parse_token_entries(f"{good}:bob,Other-s3cret-token-2026:bob", "$SHADOWCAM_LABEL_TOKENS")
    with pytest.raises(ConfigError, match="role must be one of"):
        parse_token_entries(f"{good}:bob:root", "t.txt")
    env = {"SHADOWCAM_LABEL_TOKENS": f"{good}:bob, Carol-s3cret-token-2026:carol:reviewer"}
    entries = tokens_from_env(env)
    assert register_tokens(filled.store, entries) == ["bob: added", "carol: added"]
    assert register_tokens(filled.store, entries) == ["bob: kept", "carol: kept"]  # a restart changes nothing
    assert register_tokens(filled.store, {"Bob-n3w-token-2026-xyz": ("bob", "annotator")}) == ["bob: rotated"]
    assert Authenticator(filled.store).login("Bob-n3w-token-2026-xyz", "c").ok and not Authenticator(filled.store).login(good, "c").ok


def test_label_tokens_command(filled: Filled, tmp_path: Path, capsys, monkeypatch) -> None:
    from pipeline import cli

    db = filled.url
    assert cli.main(["label", "tokens", "add", "alice", "--db", db]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith("scl_") and "shown this once" in out.err
    out_file = tmp_path / "carol.token"
    assert cli.main(["label", "tokens", "add", "carol", "--role", "reviewer", "--out", str(out_file), "--db", db]) == 0
    assert out_file.stat().st_mode & 0o777 == 0o600 and out_file.read_text().startswith("scl_")
    assert out_file.read_text().strip() not in capsys.readouterr().out
    monkeypatch.setenv("BOB_TOKEN", "short")
    assert cli.main(["label", "tokens", "add", "bob", "--token-env", "BOB_TOKEN", "--db", db]) == 2
    err = capsys.readouterr().err
    assert "--token-env BOB_TOKEN: too weak: 5 characters, at least 16 needed" in err and err.count("\n") == 1
    assert cli.main(["label", "tokens", "add", "alice", "--db", db]) == 2
    assert "already has an active token" in capsys.readouterr().err
    assert cli.main(["label", "tokens", "list", "--db", db]) == 0
    listing = capsys.readouterr().out
    assert "alice" in listing and "reviewer" in listing and token not in listing
    assert cli.main(["label", "tokens", "revoke", "alice", "--db", db]) == 0
    assert "revoked token(s)" in capsys.readouterr().out
    assert cli.main(["label", "tokens", "revoke", "alice", "--db", db]) == 2
    assert not Authenticator(filled.store).login(token, "c").ok


def test_sessions_expire_idle_and_absolute(filled: Filled) -> None:
    tok = issue_token(filled.store, "alice").token
    auth = Authenticator(filled.store, LabelAuthConfig(session_idle_s=60, session_max_s=3600, touch_every_s=0))

    def aged(secret: str, idle: float, age: float) -> None:
        now = time.time()
        with filled.store.engine.begin() as conn:
            conn.execute(label_sessions.update().where(label_sessions.c.session_id == session_key(secret))
                         .values(last_seen_at=now - idle, created_at=now - age))

    for idle, age, alive, why in ((30, 1000, True, None), (61, 100, False, "idle"), (10, 3601, False, "expired")):
        secret = auth.login(tok, "c").session_secret
        aged(secret, idle, age)
        assert (auth.session(secret) is not None) is alive
        if why:
            row = filled.store.table_rows(label_sessions, label_sessions.c.session_id == session_key(secret))[0]
            assert row["ended_why"] == why
    with pytest.raises(ConfigError, match="session_idle_s .* must not exceed session_max_s"):
        LabelAuthConfig(session_idle_s=7200, session_max_s=3600)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_processes_never_over_hand_or_over_label(backend: str, tmp_path: Path, request) -> None:
    """Two PredictionStore objects (two server processes) and 12 annotators in threads, racing for 10 frames (4 of
    them double-label): every frame ends with exactly the labels it needs, never more, never one annotator twice."""
    url = request.getfixturevalue("postgres_server").new_database() if backend == "postgresql" else None
    filled = fill_store(tmp_path / "w", n=10, double=(0, 3, 6, 9), url=url)
    stores = [filled.store, PredictionStore(filled.url)]
    refused = Counter()

    def annotator(i: int) -> None:
        store = stores[i % 2]
        while True:
            frame = store.lease_next_frame(f"a{i}", lease_s=30)
            if frame is None:
                return
            out = store.submit_label(frame.frame_id, f"a{i}", "box", session_id=f"s{i}")
            if out.status != "created":
                refused[out.status] += 1

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(annotator, range(12)))
    per_frame = Counter(r["frame_id"] for r in filled.store.table_rows(labels))
    need = {fid: 2 if k in (0, 3, 6, 9) else 1 for k, fid in enumerate(filled.frame_ids)}
    assert per_frame == need and not refused, (per_frame, refused)
    # a late third vote is refused and writes nothing
    assert stores[1].submit_label(filled.frame_ids[0], "late", "pallet").status == "complete"
    assert filled.store.count(labels) == 14
    stores[1].close()
    filled.store.close()
