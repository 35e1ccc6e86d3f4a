"""A short run of scripts/label_load.py: 10 simulated annotators for 10 s (locust) against two uvicorn workers on a
real PostgreSQL store; the script's own checks (no frame over its double-label plan, no annotator twice on a frame,
no 5xx, some submits) must pass. About 30 s on a quiet 2-core machine (PostgreSQL start, store, tokens, workers)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.helpers.postgres import find_pg_bin

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "label_load.py"


@pytest.mark.postgres
@pytest.mark.skipif(find_pg_bin() is None, reason="PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql")
def test_short_load_run_passes_its_checks(capsys) -> None:
    spec = importlib.util.spec_from_file_location("label_load", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--users", "10", "--duration", "10", "--frames", "200", "--no-docs"]) == 0
    out = capsys.readouterr().out
    assert "checks: PASS" in out and '"over_plan": 0' in out and '"five_xx": 0' in out
