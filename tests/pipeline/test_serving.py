"""The incumbent's server on its own (answer, fallback chain, counters) and the call threads it runs models on.

The classifiers are real ONNX Runtime sessions (tiny models written here), wrapped where they must misbehave.
The fallback chain through :class:`ShadowPair` is covered in test_shadow.py; these tests use the server's own API.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pipeline.calls import Caller, CallTimeout, latency_percentiles
from pipeline.runtime import OnnxClassifier
from pipeline.serving import IncumbentAnswer, IncumbentServer
from pipeline.types import UNKNOWN_LABEL, Degraded, Frame, FrameBatch, Role
from tests.helpers.onnx_models import RaisingClassifier, StuckClassifier, make_tiny_classifier

CLASSES = ["box", "bag", "empty"]
SIZE = (16, 16)


@pytest.fixture(scope="module")
def inc_path(tmp_path_factory):
    return make_tiny_classifier(tmp_path_factory.mktemp("serving") / "inc.onnx", CLASSES, input_size=SIZE, seed=1)


def cpu(path, cls=OnnxClassifier, **kw):
    return cls(path, role=Role.INCUMBENT, providers=["cpu"], warmup_runs=1, **kw)


def batch(n: int = 3, cameras=("cam0", "cam1", "cam2"), seed: int = 0) -> FrameBatch:
    imgs = np.random.default_rng(seed).integers(0, 256, (n, *SIZE, 3), dtype=np.uint8)
    return FrameBatch(frames=tuple(Frame(cameras[i % len(cameras)], seed * 10 + i, 1.0, imgs[i]) for i in range(n)),
                      images=imgs)


# --- IncumbentServer ------------------------------------------------------------------------------------------------

def test_healthy_incumbent_is_served_and_counted(inc_path):
    server = IncumbentServer(cpu(inc_path), cpu_twin=False).start()
    b = batch(4)
    ans = server.serve(b)
    server.close()
    assert isinstance(ans, IncumbentAnswer) and ans.failure is None and ans.latency_ms > 0
    assert [p.frame_id for p in ans.predictions] == b.frame_ids
    assert all(p.role is Role.INCUMBENT and p.degraded is None for p in ans.predictions)
    st = server.stats()
    assert (st["batches_served"], st["frames_served"]) == (1, 4) and server.frames_served == 4
    assert st["incumbent"]["failures"] == 0 and st["incumbent"]["latency_ms"]["p50"] is not None
    assert st["fallbacks"] == {"cpu_fallback": 0, "stale": 0, "unknown": 0} and st["last_fallback"] is None


def test_cpu_twin_is_built_at_start_unless_refused(inc_path):
    assert IncumbentServer(cpu(inc_path), cpu_twin=False).start().cpu_twin is None
    twin = IncumbentServer(cpu(inc_path)).start().cpu_twin
    assert twin is not None and twin.providers == ["CPUExecutionProvider"]


def test_failed_twin_falls_to_stale_then_unknown_and_says_why(inc_path):
    server = IncumbentServer(cpu(inc_path, RaisingClassifier, fail_after=1), cpu_twin=cpu(inc_path, RaisingClassifier))
    good = server.serve(batch(2, cameras=("cam0", "cam1")))
    out = server.serve(batch(3, cameras=("cam0", "cam1", "cam9"), seed=5))
    server.close()
    by_cam = {p.camera_id: p for p in out.predictions}
    assert by_cam["cam0"].degraded is Degraded.STALE and by_cam["cam0"].label == good.predictions[0].label
    assert by_cam["cam9"].degraded is Degraded.UNKNOWN and by_cam["cam9"].label == UNKNOWN_LABEL
    assert out.failure.startswith("incumbent RuntimeError") and "; cpu retry RuntimeError" in out.failure
    st = server.stats()
    assert st["fallbacks"] == {"cpu_fallback": 0, "stale": 2, "unknown": 1} and st["incumbent"]["failures"] == 1
    assert st["last_fallback"]["kind"] == "unknown" and st["last_fallback"]["reason"] == out.failure


def test_stuck_incumbent_is_skipped_until_it_returns(inc_path):
    inc = cpu(inc_path, StuckClassifier, timeout_s=0.2)
    server = IncumbentServer(inc, cpu_twin=False)
    a = server.serve(batch())
    assert a.failure == "incumbent timeout (0.2 s)" and server.stuck_calls == 1
    b = server.serve(batch(seed=1))
    assert b.failure == "incumbent has a timed-out call still running" and inc.entered == 1
    assert all(p.degraded is Degraded.UNKNOWN for p in b.predictions)
    inc.release.set()
    deadline = time.monotonic() + 5
    while server.stuck_calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.serve(batch(seed=2)).failure is None
    server.close()
    assert server.stats()["incumbent"]["timeouts"] == 1 and server.stats()["incumbent"]["failures"] == 2


# --- call threads ---------------------------------------------------------------------------------------------------

def _threads(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def test_caller_starts_its_thread_on_the_first_call_and_relays_values_and_errors():
    c = Caller("t-relay")
    assert _threads("t-relay") == []
    assert c.call(lambda: 41 + 1, timeout=5) == 42
    assert _threads("t-relay") == ["t-relay-0"]
    with pytest.raises(ZeroDivisionError):
        c.call(lambda: 1 / 0, timeout=5)
    c.close()


def test_overrunning_call_is_abandoned_with_its_thread():
    c = Caller("t-abandon")
    release, stopped = threading.Event(), []
    with pytest.raises(CallTimeout, match="no answer in 0.05 s"):
        c.call(release.wait, timeout=0.05, on_timeout=lambda: stopped.append(True))
    assert stopped == [True] and c.stuck() == 1
    assert c.call(lambda: "fresh", timeout=5) == "fresh"  # on a new thread, while the old one is still stuck
    assert sorted(_threads("t-abandon")) == ["t-abandon-0", "t-abandon-1"]
    release.set()
    deadline = time.monotonic() + 5
    while c.stuck() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert c.stuck() == 0
    c.close()


def test_latency_percentiles():
    assert latency_percentiles([]) == {"p50": None, "p99": None}
    assert latency_percentiles(range(1, 102)) == {"p50": 51.0, "p99": 100.0}
