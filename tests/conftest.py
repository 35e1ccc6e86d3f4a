"""Session-wide fixtures shared across test packages.

``demo_workdir``: ONE run of ``shadowcam demo`` (the default demo, as users run it: about 12 minutes on a quiet
2-core CPU) per test session, reused by tests/apps/test_demo.py and tests/test_notebook.py. Not ``--fast``: at the
fast preset's 64 px input the retrained challenger sits on the "half the champion's gap" line (estimated ratio
0.41-0.58 over eight runs), so a suite on it would pass or fail by chance; the default demo's 96 px model clears it
(0.19-0.25). The demo runs in a subprocess: MLflow's
``set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into ``os.environ``, so running it in-process would point
every later test at the demo's store. The subprocess gets the environment without ``MLFLOW_TRACKING_URI`` (the
demo then tracks into ``<workdir>/mlflow.db``); this process's environment is never touched.

To iterate on those tests without re-running the demo each time, point ``SHADOWCAM_TEST_DEMO_WORKDIR`` at the
work dir of a finished ``shadowcam demo --workdir DIR`` (one that holds demo_summary.json); the tests only
read it.

``SHADOWCAM_REQUIRE_SYSTEM_TESTS=1`` (set by ``.ci/run``): a test that needs a system part (the RTSP server,
PostgreSQL, Chromium: marker ``rtsp``/``postgres``/``browser`` or fixture ``rtsp_server``/``postgres_server``) and
is skipped *fails* instead, so CI cannot go green by skipping them. Locally, skips stay allowed and pytest's
``-ra`` summary shows their reasons.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REUSE_ENV = "SHADOWCAM_TEST_DEMO_WORKDIR"
# about 12 minutes on a quiet 2-core machine, but far more on one shared with several heavy jobs; the tests that use
# the fixture raise pytest-timeout's limit to DEMO_TEST_TIMEOUT_S (the first of them pays for the demo)
DEMO_TIMEOUT_S = 2700
DEMO_TEST_TIMEOUT_S = DEMO_TIMEOUT_S + 300


REQUIRE_ENV = "SHADOWCAM_REQUIRE_SYSTEM_TESTS"
SYSTEM_MARKERS = ("rtsp", "postgres", "browser")
SYSTEM_FIXTURES = ("rtsp_server", "postgres_server")


def needs_system_part(item: pytest.Item) -> str | None:
    """The system part a test needs (marker or fixture name), or None."""
    for m in SYSTEM_MARKERS:
        if item.get_closest_marker(m) is not None:
            return m
    for f in SYSTEM_FIXTURES:
        if f in getattr(item, "fixturenames", ()):
            return f
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and os.environ.get(REQUIRE_ENV) == "1":
        part = needs_system_part(item)
        if part is not None:
            reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
            reason = reason.removeprefix("Skipped: ")
            rep.outcome = "failed"
            rep.longrepr = f"{REQUIRE_ENV}=1: a test that needs {part!r} was skipped ({reason})"


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory) -> Path:
    """Work dir of one finished ``shadowcam demo`` (mlflow.db, shadowcam.db, reports/, demo_summary.json).

    The demo's console output is kept in ``<workdir>/demo.log``; a failed run fails the test with its tail.
    """
    reuse = os.environ.get(REUSE_ENV)
    if reuse:
        workdir = Path(reuse).resolve()
        if not (workdir / "demo_summary.json").is_file():
            pytest.fail(f"{REUSE_ENV}={reuse}: no demo_summary.json there; expected the work dir of a finished "
                        f"`shadowcam demo --workdir DIR`")
        return workdir

    workdir = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    cmd = [sys.executable, "-m", "pipeline.cli", "demo", "--workdir", str(workdir), "--no-progress"]
    log = workdir / "demo.log"
    with log.open("w") as out:
        try:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=DEMO_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"shadowcam demo did not finish in {DEMO_TIMEOUT_S} s; log tail:\n"
                        f"{log.read_text()[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"shadowcam demo exited with {proc.returncode}; log tail:\n{log.read_text()[-4000:]}")
    return workdir
