"""Reading a SQLite store into columns while the same process writes to it (pipeline.columnar).

The ADBC SQLite driver carries its own copy of SQLite. Opened in the process that also holds the store through
Python's ``sqlite3``, it truncated the WAL index the other copy had memory-mapped, and the process died of SIGBUS:
CI died so in the labeling page's background refresh. These tests run the evaluator's read next to a writer thread
in a child Python (so that a crash is a failed assertion, not a dead test run), on the in-process path and on the
child-process ADBC path, and check that both paths return the same columns.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline import columnar
from tests.helpers.evaluation_data import CLASSES, RUN_ID, StoreSpec, build_store

REPO = Path(__file__).resolve().parents[2]

_STRESS = textwrap.dedent("""
    import sys, threading, time
    from pipeline import columnar
    from pipeline.imagestats import STAT_NAMES
    from pipeline.store import FrameRecord, PredictionStore
    from pipeline.types import Prediction
    from tests.helpers.evaluation_data import CLASSES, RUN_ID, StoreSpec, build_store

    db, child_min, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    columnar.SQLITE_CHILD_MIN_ROWS = child_min
    store = build_store(db, StoreSpec(n=300))
    stop = time.monotonic() + seconds
    written, reading = [], threading.Event()
    reading.set()

    def writer():  # writes as the runner makes them, each through a store opened for it (a new sqlite3 connection,
        i = 10_000  # as a second store in the process, the labeling page, MLflow's or a growing pool would open)
        while reading.is_set():  # for as long as the reads go on
            fid = f"{RUN_ID}:camA:{i}"
            w = PredictionStore(db)
            w.write_batch([FrameRecord(fid, RUN_ID, "camA", i, 1e9 + i, "src", 32, 32, 100.0, 20.0, 50.0, 2.0)],
                          [Prediction(fid, "camA", "incumbent", "inc:1", [0.8, 0.1, 0.1], CLASSES[0], 1.0)], (), ())
            w.close()
            written.append(i)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    sizes = []
    while time.monotonic() < stop or len(sizes) < 5:  # the evaluator's read, over and over, on its own connections
        sizes.append(store.evaluation_columns([RUN_ID], CLASSES, STAT_NAMES).n)
    reading.clear()
    t.join()
    assert sizes == sorted(sizes) and sizes[-1] >= 300, sizes[-5:]
    print(f"reads={len(sizes)} writes={len(written)} last={sizes[-1]}")
""")


@pytest.mark.parametrize("child_min", [10**12, 0], ids=["sqlite3-in-process", "adbc-in-a-child"])
def test_reading_while_the_process_writes_does_not_crash_it(tmp_path, child_min):
    seconds = 6.0 if child_min else 8.0  # the old in-process ADBC read died in under a second of this
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _STRESS, str(tmp_path / "s.db"), str(child_min), str(seconds)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    reads, writes = (int(w.split("=")[1]) for w in proc.stdout.split()[:2])
    assert reads >= 5 and writes >= 10, proc.stdout


def test_the_child_read_and_the_in_process_read_give_the_same_columns(tmp_path, monkeypatch, caplog):
    from pipeline.imagestats import STAT_NAMES

    store = build_store(str(tmp_path / "s.db"), StoreSpec(n=400, shift_after=200, extra_label=True))
    calls = []
    real = columnar.read_sqlite_in_child
    monkeypatch.setattr(columnar, "read_sqlite_in_child", lambda *a, **k: calls.append(1) or real(*a, **k))
    here = store.evaluation_columns([RUN_ID], CLASSES, STAT_NAMES)
    assert calls == []  # a small read stays in this process
    monkeypatch.setattr(columnar, "SQLITE_CHILD_MIN_ROWS", 0)
    child = store.evaluation_columns([RUN_ID], CLASSES, STAT_NAMES)
    assert calls == [1] and not [r for r in caplog.records if r.name == "pipeline.columnar"]  # no fallback
    assert child.n == here.n == 400
    assert child.frame_ids.to_pylist() == here.frame_ids.to_pylist()
    np.testing.assert_array_equal(child.ts, here.ts)
    for k in STAT_NAMES:
        np.testing.assert_array_equal(child.image_stats[k], here.image_stats[k])
    for role in ("incumbent", "shadow"):
        a, b = child.roles[role], here.roles[role]
        for k in ("has", "pred", "probs", "degraded"):
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=f"{role}.{k}")
        assert a.models == b.models
    np.testing.assert_array_equal(child.incl, here.incl)
    assert child.label_values == here.label_values and child.label_annotators == here.label_annotators
    store.close()


def test_a_failing_child_read_falls_back_to_this_process(tmp_path, monkeypatch, caplog):
    from pipeline.imagestats import STAT_NAMES

    store = build_store(str(tmp_path / "s.db"), StoreSpec(n=100))
    expected = store.evaluation_columns([RUN_ID], CLASSES, STAT_NAMES)
    monkeypatch.setattr(columnar, "SQLITE_CHILD_MIN_ROWS", 0)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))  # the child cannot start
    got = store.evaluation_columns([RUN_ID], CLASSES, STAT_NAMES)
    assert got.frame_ids.to_pylist() == expected.frame_ids.to_pylist()
    warned = [r.getMessage() for r in caplog.records if r.name == "pipeline.columnar"]
    assert len(warned) == 1 and "child process failed" in warned[0] and "no-such-python" in warned[0]
    store.close()


def test_a_child_that_exits_with_an_error_says_why(tmp_path):
    missing = tmp_path / "missing.db"
    with pytest.raises(columnar.ChildReadError, match=r"exit status 1: .*"):
        columnar.read_sqlite_in_child(missing, [("SELECT 1", {"x": columnar.I64})])


def test_a_child_that_answers_garbage_is_an_error_not_a_table(tmp_path, monkeypatch):
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho 'not an arrow stream'\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    with pytest.raises(columnar.ChildReadError, match=r"^exit status 0: ArrowInvalid"):
        columnar.read_sqlite_in_child(tmp_path / "s.db", [("SELECT 1", {"x": columnar.I64})])
