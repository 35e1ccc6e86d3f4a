"""The store writer's stages one by one (joiner, image statistics, sampler, retried commit), then the thread that
composes them on a real SQLite store. Batches and predictions are made here; no models, no cameras."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from pipeline.imagestats import STAT_NAMES, image_stats_batch
from pipeline.shadow import ServedResult, ShadowOutcome, ShadowResult, ShadowStatus
from pipeline.store import FrameRecord, PredictionStore, SampleRecord, frames, predictions, samples
from pipeline.types import ConfigError, Frame, FrameBatch, HealthEvent, HealthKind, Prediction, Role
from pipeline.writer import (
    BatchCommitter,
    ImageStatsStage,
    JoinedBatch,
    Rows,
    SamplingStage,
    ShadowJoiner,
    StoreWriter,
)

CLASSES = ["box", "bag", "empty"]


def make_batch(bid: int, n: int = 3, camera: str = "cam0") -> FrameBatch:
    rng = np.random.default_rng(bid)
    imgs = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    fs = tuple(Frame(camera, bid * 100 + i, 1000.0 + bid + i / 10, imgs[i]) for i in range(n))
    return FrameBatch(frames=fs, images=imgs)


def preds(batch: FrameBatch, role: Role, model: str, label: int = 0) -> list[Prediction]:
    p = np.full(3, 0.1, dtype=np.float32)
    p[label] = 0.8
    return [Prediction(f.frame_id, f.camera_id, role, model, p, CLASSES[label]) for f in batch.frames]


def served(bid: int, status: ShadowStatus = ShadowStatus.QUEUED, n: int = 3) -> ServedResult:
    b = make_batch(bid, n)
    return ServedResult(bid, b, preds(b, Role.INCUMBENT, "inc:1"), 1.0, status)


def shadow_ok(s: ServedResult) -> ShadowResult:
    return ShadowResult(s.batch_id, len(s.batch), ShadowOutcome.OK, preds(s.batch, Role.SHADOW, "sh:1", label=1), 2.0)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# --- ShadowJoiner ---------------------------------------------------------------------------------------------------

def test_joiner_passes_batches_not_queued_for_the_shadow_through():
    j = ShadowJoiner(1.0)
    for status in (ShadowStatus.SKIPPED, ShadowStatus.SHED, ShadowStatus.DISABLED, ShadowStatus.CLOSED):
        s = served(1, status)
        assert j.add_served(s) == JoinedBatch(s, None)
    assert j.parked == 0


def test_joiner_joins_whichever_comes_first():
    j = ShadowJoiner(1.0)
    a, b = served(1), served(2)
    ra, rb = shadow_ok(a), shadow_ok(b)
    assert j.add_served(a) is None and j.parked == 1  # batch first: parked
    assert j.add_shadow(ra) == JoinedBatch(a, ra) and j.parked == 0
    assert j.add_shadow(rb) is None and j.parked == 0  # result first: kept until its batch comes
    joined = j.add_served(b)
    assert joined == JoinedBatch(b, rb)
    assert [p.model for p in joined.shadow_predictions] == ["sh:1"] * 3


def test_joiner_expires_overdue_batches_and_drops_their_late_results():
    clock = Clock()
    j = ShadowJoiner(2.0, clock=clock)
    a, b = served(1), served(2)
    j.add_served(a)
    clock.t = 1.0
    j.add_served(b)
    clock.t = 2.5  # a is overdue, b is not
    assert j.expire() == [JoinedBatch(a, None)]
    assert j.timeouts == 1 and j.parked == 1
    assert j.add_shadow(shadow_ok(a)) is None  # too late: dropped
    clock.t = 3.0
    assert [x.served.batch_id for x in j.expire()] == [2] and j.timeouts == 2
    assert j.expire() == [] and j.parked == 0


def test_joiner_rejects_a_negative_timeout():
    with pytest.raises(ConfigError, match="join timeout must be >= 0 s, got -1"):
        ShadowJoiner(-1)


@pytest.mark.parametrize("outcome", [ShadowOutcome.ERROR, ShadowOutcome.TIMEOUT, ShadowOutcome.GARBAGE])
def test_failed_shadow_results_bring_no_predictions(outcome):
    s = served(1)
    assert JoinedBatch(s, ShadowResult(1, 3, outcome, detail="x")).shadow_predictions is None


# --- image statistics ----------------------------------------------------------------------------------------------

def test_image_stats_per_frame_and_skipped_when_busy():
    b = make_batch(4, n=5)
    stage = ImageStatsStage(enabled=True)
    got = stage.compute(b)
    ref = image_stats_batch(b.images)
    assert len(got) == 5 and all(set(d) == set(STAT_NAMES) for d in got)
    assert [d["brightness"] for d in got] == pytest.approx(ref["brightness"].tolist())
    assert stage.compute(b, busy=True) == [None] * 5 and stage.skipped == 5
    off = ImageStatsStage(enabled=False)
    assert off.compute(b, busy=True) == [None] * 5 and off.skipped == 0  # disabled: nothing skipped


# --- sampling ------------------------------------------------------------------------------------------------------

class RecordingSampler:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple] = []

    def offer(self, batch, incumbent, shadow):
        self.calls.append((batch, incumbent, shadow))
        if self.fail:
            raise RuntimeError("disk full")
        f = batch.frames[0]
        return [SampleRecord(f.frame_id, f.camera_id, "uniform", 0.5, f"/tmp/{f.seq}.jpg", 1.0)]


def test_sampling_stage_passes_shadow_predictions_or_none_per_frame():
    sampler = RecordingSampler()
    stage = SamplingStage(sampler)
    a = served(1)
    ra = shadow_ok(a)
    assert [r.frame_id for r in stage.offer(JoinedBatch(a, ra))] == [a.batch.frames[0].frame_id]
    stage.offer(JoinedBatch(a, None))
    (b1, inc1, sh1), (_, _, sh2) = sampler.calls
    assert b1 is a.batch and inc1 == a.predictions and sh1 == ra.predictions
    assert sh2 == [None, None, None]
    assert SamplingStage(None).offer(JoinedBatch(a, ra)) == []


def test_a_failing_sampler_is_counted_not_raised():
    stage = SamplingStage(RecordingSampler(fail=True))
    assert stage.offer(JoinedBatch(served(1), None)) == [] and stage.errors == 1


# --- the retried commit --------------------------------------------------------------------------------------------

class FlakyStore:
    """``write_batch`` raises the given errors in turn, then succeeds."""

    def __init__(self, errors=()):
        self.errors = list(errors)
        self.calls = 0
        self.written: list[tuple] = []

    def write_batch(self, frame_records, preds, events, sample_records):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.written.append((list(frame_records), list(preds), list(events), list(sample_records)))


def transient() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))


def rows_of(s: ServedResult, shadow: ShadowResult | None = None) -> Rows:
    ps = list(s.predictions) + (list(shadow.predictions) if shadow else [])
    return Rows(frames=[FrameRecord.from_frame(f, "run1") for f in s.batch.frames], predictions=ps)


def test_transient_errors_are_retried_with_exponential_backoff():
    store, sleeps = FlakyStore([transient(), transient()]), []
    c = BatchCommitter(store, sleep=sleeps.append)
    s = served(1)
    assert c.write(rows_of(s, shadow_ok(s))) is True
    assert store.calls == 3 and sleeps == pytest.approx([0.1, 0.2])
    counts = c.counts()
    assert counts["transactions"] == 1 and counts["frames_committed"] == 3 and counts["predictions_committed"] == 6
    assert counts["write_errors"] == 0 and counts["rows_lost"] == 0
    assert c.predictions_by_model() == {"incumbent inc:1": 3, "shadow sh:1": 3}


def test_rows_are_lost_only_after_the_last_attempt():
    store, sleeps = FlakyStore([transient()] * 10), []
    c = BatchCommitter(store, sleep=sleeps.append)
    assert c.write(rows_of(served(1))) is False
    assert store.calls == 6 and sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    counts = c.counts()
    assert counts["write_errors"] == 1 and counts["rows_lost"] == 3 and counts["transactions"] == 0
    # the backoff is capped
    sleeps.clear()
    BatchCommitter(FlakyStore([transient()] * 10), attempts=9, sleep=sleeps.append).write(rows_of(served(2)))
    assert sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


def test_permanent_errors_are_not_retried():
    store, sleeps = FlakyStore([sa.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))]), []
    c = BatchCommitter(store, sleep=sleeps.append)
    assert c.write(rows_of(served(1))) is False
    assert store.calls == 1 and sleeps == [] and c.counts()["rows_lost"] == 3


def test_committer_rejects_zero_attempts():
    with pytest.raises(ConfigError, match="write attempts must be >= 1, got 0"):
        BatchCommitter(FlakyStore(), attempts=0)


# --- the writer thread on a real store ------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    st = PredictionStore(str(tmp_path / "w.db"))
    st.begin_run("run1", "inc:1", "sh:1", CLASSES, {})
    yield st
    st.close()


def test_writer_joins_samples_and_commits_everything_on_close(store):
    sampler = RecordingSampler()
    w = StoreWriter(store, "run1", sampler, flush_every=1000, flush_interval_s=60.0, join_timeout_s=5.0).start()
    a, b, c = served(1), served(2, ShadowStatus.SHED), served(3)
    w.submit_shadow(shadow_ok(c))  # a result that comes before its batch
    for s in (a, b, c):
        w.submit_served(s)
    w.submit_events([HealthEvent("cam0", HealthKind.CONNECTED, 1000.0)])
    w.submit_shadow(shadow_ok(a))
    w.close(timeout=10)
    st = w.stats()
    assert st["frames_committed"] == 9 and st["predictions_committed"] == 9 + 6 and st["events_committed"] == 1
    assert st["samples_committed"] == 3 and st["transactions"] == 1  # one flush: at close
    assert st["join_timeouts"] == 0 and st["parked"] == 0 and st["write_errors"] == 0
    assert st["predictions_by_model"] == {"incumbent inc:1": 9, "shadow sh:1": 6}
    assert store.count(frames) == 9 and store.count(predictions, predictions.c.role == "shadow") == 6
    assert store.count(samples) == 3
    rows = store.table_rows(frames)
    assert all(r["brightness"] is not None for r in rows)


def test_writer_writes_a_batch_without_its_shadow_result_after_the_join_timeout(store):
    w = StoreWriter(store, "run1", flush_every=1, join_timeout_s=0.05, compute_stats=False).start()
    s = served(1)
    w.submit_served(s)  # queued for the shadow, whose result never comes
    w.close(timeout=10)
    st = w.stats()
    assert st["join_timeouts"] == 1 and st["frames_committed"] == 3 and st["predictions_committed"] == 3
    assert all(r["brightness"] is None for r in store.table_rows(frames))  # statistics off


def test_writer_flushes_by_row_count(store):
    w = StoreWriter(store, "run1", flush_every=3, flush_interval_s=60.0).start()
    for bid in range(4):
        w.submit_served(served(bid, ShadowStatus.SKIPPED))
    w.close(timeout=10)
    assert w.stats()["transactions"] == 4 and store.count(frames) == 12


def test_closing_a_writer_never_started_is_harmless(store):
    StoreWriter(store, "run1").close(timeout=1)
