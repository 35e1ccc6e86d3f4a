"""Schemathesis over the labeling page's OpenAPI schema (FastAPI's /openapi.json), through the real ASGI app on a real
SQLite store, logged in as an admin (every route reachable): no 5xx, and no response that breaks the schema (status
codes, content types, JSON bodies and headers as documented). POSTs carry the session's real CSRF token, so the
handlers behind it are fuzzed too (except /logout, which would end the session the other cases use).

Bounded: at most ``MAX_EXAMPLES`` generated cases per operation, each under ``DEADLINE_MS``; the whole file takes
about 30-60 s on the 2-core CI machine. ``test_examples_were_run`` checks (and prints) how many cases ran."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from pipeline.labeling.app import COOKIE, create_app
from pipeline.store import label_audit, labels

from .conftest import fill_store, issue_tokens, log_in

MAX_EXAMPLES = 25
DEADLINE_MS = 20000  # the first /status evaluates the deployment (seconds on a busy machine)
RAN: Counter[str] = Counter()
STATE: dict = {}
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]


def _build_schema():
    """The app on a fresh store in a temporary folder, logged in as an admin (built when the module is collected:
    schemathesis parametrizes from the schema; the folder is removed by ``cleanup`` below)."""
    import tempfile

    from fastapi.testclient import TestClient

    root = Path(tempfile.mkdtemp(prefix="shadowcam-fuzz-"))
    filled = fill_store(root / "w", n=8, double=(1, 3))
    token = issue_tokens(filled.store, {"root": "admin"})["root"]
    app = create_app(filled.url, explain=False)
    c = TestClient(app)
    assert log_in(c, token).status_code == 200
    STATE.update(root=root, filled=filled, openapi=app.openapi(), secret=c.cookies[COOKIE], csrf=app.state.auth.session(c.cookies[COOKIE]).csrf)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = _build_schema()


@pytest.fixture(scope="module", autouse=True)
def cleanup():
    yield
    import shutil

    STATE["filled"].store.close()
    shutil.rmtree(STATE["root"], ignore_errors=True)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=DEADLINE_MS, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_schema(case) -> None:
    if case.method == "POST" and isinstance(case.body, dict) and case.path != "/logout":
        case.body = {**case.body, "csrf_token": STATE["csrf"]}
    RAN[f"{case.method} {case.path}"] += 1
    case.call_and_validate(headers={"Cookie": f"{COOKIE}={STATE['secret']}"}, checks=CHECKS)


def test_examples_were_run(capsys) -> None:
    """Runs after the fuzzing (file order): every operation got cases, and the store is still consistent."""
    total = sum(RAN.values())
    with capsys.disabled():
        print(f"\nschemathesis: {total} cases (documented operations and method probes): {dict(sorted(RAN.items()))}")
    documented = {f"{m.upper()} {path}" for path, ops in STATE["openapi"]["paths"].items() for m in ops}
    assert len(documented) == 15 and all(RAN[op] >= 3 for op in documented), {op: RAN[op] for op in documented}
    assert total >= 200, RAN
    store = STATE["filled"].store
    # every label the fuzzer got in went through the audit, and no frame holds more labels than it needs
    assert store.count(label_audit) >= store.count(labels)
    per_frame = Counter(r["frame_id"] for r in store.table_rows(labels))
    assert all(n <= (2 if fid in (STATE["filled"].frame_ids[1], STATE["filled"].frame_ids[3]) else 1)
               for fid, n in per_frame.items()), per_frame
