"""ShadowPair: the shadow never changes or breaks what is served; the incumbent's fallback chain is flagged.

Batches are fed directly (no cameras); the classifiers are real ONNX Runtime sessions, wrapped where they must
misbehave (raise, sleep, NaN, hang). No timed assertions beyond generous sanity bounds.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.config import ShadowConfig
from pipeline.runtime import OnnxClassifier
from pipeline.shadow import MAX_ABANDONED, ShadowOutcome, ShadowPair, ShadowStatus
from pipeline.types import UNKNOWN_LABEL, Degraded, Frame, FrameBatch, ModelCardError, Role
from tests.helpers.onnx_models import (
    GarbageClassifier,
    RaisingClassifier,
    SleepyClassifier,
    StuckClassifier,
    make_tiny_classifier,
)

CLASSES = ["box", "bag", "empty"]
SIZE = (16, 16)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("shadow_models")
    return {
        "inc": make_tiny_classifier(d / "inc.onnx", CLASSES, input_size=SIZE, seed=1),
        "sh": make_tiny_classifier(d / "sh.onnx", CLASSES, input_size=SIZE, seed=2),
        "other": make_tiny_classifier(d / "other.onnx", ["box", "pallet", "empty"], input_size=SIZE, seed=3),
        "reordered": make_tiny_classifier(d / "reord.onnx", ["bag", "box", "empty"], input_size=SIZE, seed=3),
        "raise": make_tiny_classifier(d / "raise.onnx", CLASSES, input_size=SIZE, mode="raise"),
    }


def cpu(path, cls=OnnxClassifier, role=Role.INCUMBENT, **kw):
    return cls(path, role=role, providers=["cpu"], warmup_runs=kw.pop("warmup_runs", 1), **kw)


def make_batches(n_batches: int, bs: int = 4, cameras=("cam0", "cam1", "cam2"), seed: int = 0) -> list[FrameBatch]:
    rng = np.random.default_rng(seed)
    out, seq = [], {c: 0 for c in cameras}
    for b in range(n_batches):
        imgs = rng.integers(0, 256, (bs, *SIZE, 3), dtype=np.uint8)
        frames = []
        for i in range(bs):
            cam = cameras[(b * bs + i) % len(cameras)]
            frames.append(Frame(cam, seq[cam], 1000.0 + b, imgs[i]))
            seq[cam] += 1
        out.append(FrameBatch(frames=tuple(frames), images=imgs))
    return out


def serve_all(pair: ShadowPair, batches):
    served = [pair.infer(b) for b in batches]
    return served, np.concatenate([np.stack([p.probs for p in s.predictions]) for s in served])


@pytest.fixture(scope="module")
def baseline(paths):
    """Served probabilities of a run without a shadow."""
    batches = make_batches(12)
    with ShadowPair(cpu(paths["inc"]), None, ShadowConfig(), cpu_twin=False) as pair:
        served, probs = serve_all(pair, batches)
    assert all(s.shadow is ShadowStatus.DISABLED for s in served)
    assert pair.coverage() == 0.0
    return batches, probs


def test_healthy_shadow_covers_every_frame(paths, baseline):
    batches, base = baseline
    sh = cpu(paths["sh"], role=Role.SHADOW)
    pair = ShadowPair(cpu(paths["inc"]), sh, ShadowConfig(max_pending_batches=len(batches)), cpu_twin=False).start()
    served, probs = serve_all(pair, batches)
    pair.close()
    np.testing.assert_array_equal(probs, base)
    results = pair.poll_shadow()
    assert sorted(r.batch_id for r in results) == [s.batch_id for s in served]
    assert all(r.outcome is ShadowOutcome.OK for r in results)
    by_id = {s.batch_id: s for s in served}
    for r in results:
        assert [p.frame_id for p in r.predictions] == by_id[r.batch_id].batch.frame_ids
        assert all(p.role is Role.SHADOW and p.model == sh.model_id for p in r.predictions)
    assert pair.coverage() == 1.0
    st = pair.stats()
    assert st["frames_served"] == 48 and st["shadow"]["frames_predicted"] == 48
    assert st["shadow"]["coverage"] == 1.0 and st["fallbacks"] == {"cpu_fallback": 0, "stale": 0, "unknown": 0}


@pytest.mark.parametrize("kind", ["raise", "sleep", "garbage", "graph_raise"])
def test_misbehaving_shadow_never_changes_served_output(paths, baseline, kind):
    batches, base = baseline
    if kind == "raise":
        sh = cpu(paths["sh"], RaisingClassifier, role=Role.SHADOW)
        cfg = ShadowConfig(max_pending_batches=2)
    elif kind == "sleep":
        sh = cpu(paths["sh"], SleepyClassifier, role=Role.SHADOW, sleep_s=1.0)
        cfg = ShadowConfig(max_pending_batches=1, timeout_s=0.3)
    elif kind == "garbage":
        sh = cpu(paths["sh"], GarbageClassifier, role=Role.SHADOW)
        cfg = ShadowConfig(max_pending_batches=2)
    else:  # ONNX Runtime itself fails on every run
        sh = cpu(paths["raise"], role=Role.SHADOW, warmup_runs=0)
        cfg = ShadowConfig(max_pending_batches=2)
    pair = ShadowPair(cpu(paths["inc"]), sh, cfg, cpu_twin=False).start()
    t0 = time.perf_counter()
    served, probs = serve_all(pair, batches)
    serve_s = time.perf_counter() - t0
    pair.close()
    np.testing.assert_array_equal(probs, base)  # identical, bit for bit
    assert all(p.degraded is None and p.role is Role.INCUMBENT for s in served for p in s.predictions)
    st = pair.stats()
    assert pair.coverage() < 1.0 and st["shadow"]["coverage"] == pair.coverage()
    assert st["frames_served"] == 48 and st["incumbent"]["failures"] == 0
    outcomes = {r.outcome for r in pair.poll_shadow()}
    if kind == "sleep":
        # 12 batches against a 1 s/batch shadow: served long before the shadow could answer once per batch
        assert serve_s < 6.0, f"serving took {serve_s:.1f}s: the shadow held it up"
        assert outcomes <= {ShadowOutcome.TIMEOUT, ShadowOutcome.STALLED}
        assert st["shadow"]["timeouts"] >= 1 and st["shadow"]["frames_shed"] > 0
        assert pair.coverage() == 0.0
    elif kind == "garbage":
        assert outcomes == {ShadowOutcome.GARBAGE} and st["shadow"]["garbage"] >= 1
    else:
        assert outcomes == {ShadowOutcome.ERROR} and st["shadow"]["errors"] >= 1
    queued = sum(s.shadow is ShadowStatus.QUEUED for s in served)
    shed = sum(s.shadow in (ShadowStatus.SHED, ShadowStatus.STALLED) for s in served)
    assert queued + shed == len(batches)


def test_slow_shadow_is_shed_first(paths, baseline):
    batches, base = baseline
    sh = cpu(paths["sh"], SleepyClassifier, role=Role.SHADOW, sleep_s=0.2)
    pair = ShadowPair(cpu(paths["inc"]), sh, ShadowConfig(max_pending_batches=1, timeout_s=5.0), cpu_twin=False).start()
    served, probs = serve_all(pair, batches)
    pair.close()  # drains: what was queued completes
    np.testing.assert_array_equal(probs, base)
    statuses = [s.shadow for s in served]
    assert statuses.count(ShadowStatus.SHED) >= 1
    results = pair.poll_shadow()
    assert len(results) == statuses.count(ShadowStatus.QUEUED)
    assert all(r.outcome is ShadowOutcome.OK for r in results)
    st = pair.stats()["shadow"]
    assert st["frames_predicted"] == 4 * len(results)
    assert st["frames_shed"] == 4 * statuses.count(ShadowStatus.SHED)
    assert pair.coverage() == pytest.approx(len(results) / len(batches))


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_shadow_rate(paths, rate):
    batches = make_batches(40, bs=2)
    sh = cpu(paths["sh"], role=Role.SHADOW)
    pair = ShadowPair(cpu(paths["inc"]), sh, ShadowConfig(rate=rate, max_pending_batches=40), cpu_twin=False, seed=7).start()
    served = [pair.infer(b) for b in batches]
    pair.close()
    skipped = sum(s.shadow is ShadowStatus.SKIPPED for s in served)
    if rate == 0.0:
        assert skipped == 40 and pair.coverage() == 0.0
    else:
        assert 8 <= skipped <= 32
        assert pair.coverage() == pytest.approx((40 - skipped) / 40)
    assert pair.stats()["shadow"]["frames_skipped"] == 2 * skipped


def test_hung_shadow_is_abandoned_and_recovers(paths):
    sh = cpu(paths["sh"], StuckClassifier, role=Role.SHADOW)
    pair = ShadowPair(cpu(paths["inc"]), sh, ShadowConfig(max_pending_batches=1, timeout_s=0.1), cpu_twin=False).start()
    got = []
    for b in make_batches(MAX_ABANDONED, bs=2):
        pair.infer(b)
        got += pair.poll_shadow(timeout=2.0)  # each queued batch is abandoned after 0.1 s
    assert [r.outcome for r in got] == [ShadowOutcome.TIMEOUT] * MAX_ABANDONED
    assert sh.entered == MAX_ABANDONED  # a fresh thread per abandoned call, then no more calls pile up
    s = pair.infer(make_batches(1, bs=2, seed=9)[0])
    assert s.shadow is ShadowStatus.STALLED
    sh.release.set()  # the device comes back
    deadline = time.monotonic() + 5
    while pair.stats()["shadow"]["stuck_calls"] and time.monotonic() < deadline:
        time.sleep(0.01)
    s = pair.infer(make_batches(1, bs=2, seed=10)[0])
    assert s.shadow is ShadowStatus.QUEUED
    assert [r.outcome for r in pair.poll_shadow(timeout=2.0)][-1] is ShadowOutcome.OK
    pair.close()


def test_mismatched_class_lists_refuse_to_pair(paths):
    with pytest.raises(ModelCardError, match="different class lists.*only in incumbent"):
        ShadowPair(cpu(paths["inc"]), cpu(paths["other"], role=Role.SHADOW), ShadowConfig())
    with pytest.raises(ModelCardError, match="different order"):
        ShadowPair(cpu(paths["inc"]), cpu(paths["reordered"], role=Role.SHADOW), ShadowConfig())


# --- the incumbent's fallback chain -------------------------------------------------------------------------


def test_failing_incumbent_retries_on_cpu(paths, baseline):
    batches, base = baseline
    inc = cpu(paths["inc"], RaisingClassifier)  # its cpu_fallback() is a healthy CPU twin of the same file
    pair = ShadowPair(inc, None, ShadowConfig()).start()
    served, probs = serve_all(pair, batches)
    pair.close()
    np.testing.assert_allclose(probs, base, atol=1e-6)  # same weights, answered by the twin
    preds = [p for s in served for p in s.predictions]
    assert len(preds) == 48 and all(p.degraded is Degraded.CPU_FALLBACK and p.role is Role.INCUMBENT for p in preds)
    assert all(s.failure and "simulated device failure" in s.failure for s in served)
    st = pair.stats()
    assert st["fallbacks"] == {"cpu_fallback": 48, "stale": 0, "unknown": 0}
    assert st["incumbent"]["failures"] == 12 and st["last_fallback"]["kind"] == "cpu_fallback"


def test_fallback_chain_stale_then_unknown(paths):
    inc = cpu(paths["inc"], RaisingClassifier, fail_after=1)
    twin = cpu(paths["inc"], RaisingClassifier)  # the CPU retry fails too
    pair = ShadowPair(inc, None, ShadowConfig(), cpu_twin=twin).start()
    first = pair.infer(make_batches(1, bs=2, cameras=("cam0", "cam1"))[0])  # good: cam0 and cam1 get a last good
    assert all(p.degraded is None for p in first.predictions)
    last = {p.camera_id: p for p in first.predictions}
    later = make_batches(1, bs=3, cameras=("cam0", "cam1", "cam9"), seed=5)[0]
    out = pair.infer(later)
    pair.close()
    assert [p.frame_id for p in out.predictions] == later.frame_ids  # one prediction per frame, in order
    by_cam = {p.camera_id: p for p in out.predictions}
    for cam in ("cam0", "cam1"):
        p = by_cam[cam]
        assert p.degraded is Degraded.STALE and p.label == last[cam].label
        np.testing.assert_array_equal(p.probs, last[cam].probs)
    u = by_cam["cam9"]
    assert u.degraded is Degraded.UNKNOWN and u.label == UNKNOWN_LABEL
    np.testing.assert_allclose(u.probs, np.full(3, 1 / 3), atol=1e-6)
    assert "cpu retry" in out.failure
    st = pair.stats()
    assert st["fallbacks"] == {"cpu_fallback": 0, "stale": 2, "unknown": 1}


def test_stale_predictions_expire(paths):
    inc = cpu(paths["inc"], RaisingClassifier, fail_after=1)
    pair = ShadowPair(inc, None, ShadowConfig(), cpu_twin=False, stale_max_age_s=0.0).start()
    pair.infer(make_batches(1, bs=1, cameras=("cam0",))[0])
    time.sleep(0.01)
    out = pair.infer(make_batches(1, bs=1, cameras=("cam0",), seed=3)[0])
    pair.close()
    assert out.predictions[0].degraded is Degraded.UNKNOWN


def test_real_onnxruntime_failure_falls_through_to_unknown(paths):
    """The incumbent's graph fails inside ONNX Runtime, and so does its CPU twin (same file)."""
    inc = cpu(paths["raise"], warmup_runs=0)
    pair = ShadowPair(inc, None, ShadowConfig(), cpu_twin=cpu(paths["raise"], warmup_runs=0)).start()
    out = pair.infer(make_batches(1, bs=3)[0])
    pair.close()
    assert [p.degraded for p in out.predictions] == [Degraded.UNKNOWN] * 3
    assert "Gather" in out.failure or "INVALID_ARGUMENT" in out.failure


def test_garbage_incumbent_output_is_a_failure(paths, baseline):
    batches, base = baseline
    pair = ShadowPair(cpu(paths["inc"], GarbageClassifier), None, ShadowConfig()).start()
    out = pair.infer(batches[0])
    pair.close()
    assert all(p.degraded is Degraded.CPU_FALLBACK for p in out.predictions)
    np.testing.assert_allclose(np.stack([p.probs for p in out.predictions]), base[:4], atol=1e-6)
    assert "NaN" in out.failure


def test_hung_incumbent_times_out_and_is_not_called_again_while_stuck(paths, baseline):
    batches, base = baseline
    inc = cpu(paths["inc"], StuckClassifier, timeout_s=0.2)
    pair = ShadowPair(inc, None, ShadowConfig()).start()
    t0 = time.perf_counter()
    a = pair.infer(batches[0])
    b = pair.infer(batches[1])
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0  # one timeout (0.2 s) plus CPU work; never the hang itself
    assert "timeout" in a.failure and all(p.degraded is Degraded.CPU_FALLBACK for p in a.predictions + b.predictions)
    assert inc.entered == 1  # the second batch went straight to the CPU twin
    np.testing.assert_allclose(np.stack([p.probs for p in a.predictions + b.predictions]), base[:8], atol=1e-6)
    inc.release.set()
    deadline = time.monotonic() + 5
    while pair.server.stuck_calls and time.monotonic() < deadline:
        time.sleep(0.01)
    c = pair.infer(batches[2])
    pair.close()
    assert c.failure is None and all(p.degraded is None for p in c.predictions)
    assert pair.stats()["incumbent"]["timeouts"] == 1


def test_on_shadow_callback_gets_every_queued_batch(paths):
    got = []
    sh = cpu(paths["sh"], role=Role.SHADOW)
    pair = ShadowPair(cpu(paths["inc"]), sh, ShadowConfig(max_pending_batches=50), on_shadow=got.append, cpu_twin=False).start()
    served = [pair.infer(b) for b in make_batches(10, bs=2)]
    pair.close()
    assert sorted(r.batch_id for r in got) == [s.batch_id for s in served if s.shadow is ShadowStatus.QUEUED]
    assert pair.poll_shadow() == []


class _PolicyRecorder(SleepyClassifier):
    """Records the scheduling policy of the thread each shadow call runs on."""

    def predict(self, batch, run_options=None):
        import os

        self.policies = getattr(self, "policies", []) + [os.sched_getscheduler(0)]
        return super().predict(batch, run_options=run_options)


@pytest.mark.skipif(not hasattr(__import__("os"), "SCHED_IDLE"), reason="Linux scheduling policies")
def test_cpu_shadow_runs_in_the_background_and_catches_up_when_behind(paths, baseline):
    import os

    batches, base = baseline
    # keeping up: one batch at a time, each answered before the next -> all on the background lane (SCHED_IDLE)
    sh = cpu(paths["sh"], _PolicyRecorder, role=Role.SHADOW, sleep_s=0.0)
    pair = ShadowPair(cpu(paths["inc"]), sh, ShadowConfig(max_pending_batches=2), cpu_twin=False).start()
    for b in batches[:4]:
        pair.infer(b)
        assert len(pair.poll_shadow(timeout=5.0)) == 1
    st = pair.stats()["shadow"]
    assert (st["batches_background"], st["batches_catch_up"]) == (4, 0)
    assert sh.policies[-4:] == [os.SCHED_IDLE] * 4
    pair.close()

    # behind: a slow shadow is still busy when the next batch comes -> that one runs on the catch-up lane at
    # normal priority; every queued batch still gets exactly one result and the served output is unchanged
    sh = cpu(paths["sh"], _PolicyRecorder, role=Role.SHADOW, sleep_s=0.3)
    pair = ShadowPair(cpu(paths["inc"]), sh, ShadowConfig(max_pending_batches=2, timeout_s=5.0), cpu_twin=False).start()
    served, probs = serve_all(pair, batches[:3])
    pair.close()  # drains, including the call in flight on the background lane
    np.testing.assert_array_equal(probs, base[: 3 * 4])
    results = pair.poll_shadow()
    assert sorted(r.batch_id for r in results) == sorted(s.batch_id for s in served if s.shadow is ShadowStatus.QUEUED)
    assert all(r.outcome is ShadowOutcome.OK for r in results)
    st = pair.stats()["shadow"]
    assert st["batches_background"] >= 1 and st["batches_catch_up"] >= 1
    assert os.SCHED_IDLE in sh.policies[-len(results):] and os.SCHED_OTHER in sh.policies[-len(results):]

    # real-time sources (catch_up=False): a batch that comes while the background lane is busy waits for it and is
    # shed when the queue is full; nothing ever runs at normal priority
    sh = cpu(paths["sh"], _PolicyRecorder, role=Role.SHADOW, sleep_s=0.3)
    pair = ShadowPair(cpu(paths["inc"]), sh, ShadowConfig(max_pending_batches=1, timeout_s=5.0), cpu_twin=False,
                      catch_up=False).start()
    served, probs = serve_all(pair, batches[:4])
    pair.close()
    np.testing.assert_array_equal(probs, base[: 4 * 4])
    st = pair.stats()["shadow"]
    assert st["catch_up"] is False and st["batches_catch_up"] == 0
    assert st["batches_background"] == sum(s.shadow is ShadowStatus.QUEUED for s in served) >= 1
    assert st["frames_shed"] >= 4  # at most 1 running + 1 queued of the 4 batches
    assert set(sh.policies[-st["batches_background"]:]) == {os.SCHED_IDLE}
