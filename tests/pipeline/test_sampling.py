"""LabelSampler: realised rates, recorded probabilities equal to the ones used, budget, floor, images."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import SamplingConfig
from pipeline.evaluation.stats import weighted_accuracy
from pipeline.sampling import LabelSampler, margin, safe_name
from pipeline.types import Frame, FrameBatch, Prediction, Role

CLASSES = ["box", "bag", "envelope"]
_YY, _XX = np.mgrid[0:24, 0:32]
IMG = np.dstack([_XX * 8, _YY * 10, 255 - _XX * 4]).astype(np.uint8)  # a smooth BGR gradient (JPEG-friendly)
SMALL = np.zeros((1, 4, 4, 3), dtype=np.uint8)


def _pred(frame_id: str, cam: str, label: str, conf: float, role: Role = Role.INCUMBENT) -> Prediction:
    k = CLASSES.index(label)
    p = np.full(len(CLASSES), (1 - conf) / (len(CLASSES) - 1), dtype=np.float32)
    p[k] = conf
    return Prediction(frame_id=frame_id, camera_id=cam, role=role, model=f"{role.value}:1", probs=p, label=label)


class FakeClock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _batch(cams: list[str], seqs: list[int]) -> FrameBatch:
    frames = tuple(Frame(camera_id=c, seq=s, timestamp=float(s), image=IMG, frame_id=f"run1:{c}:{s}") for c, s in zip(cams, seqs))
    return FrameBatch(frames=frames, images=np.repeat(SMALL, len(frames), axis=0))


def _run(sampler: LabelSampler, rows: list[tuple[str, str, float, str | None, float]], batch_size: int = 32, clock: FakeClock | None = None, dt: float = 0.0):
    """rows: (camera, incumbent label, incumbent conf, shadow label or None, shadow conf). Returns records and all pi."""
    records, pis = [], []
    seq = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        cams, seqs, inc, sh = [], [], [], []
        for cam, lab, conf, slab, sconf in chunk:
            s = seq[cam] = seq.get(cam, -1) + 1
            cams.append(cam)
            seqs.append(s)
            fid = f"run1:{cam}:{s}"
            inc.append(_pred(fid, cam, lab, conf))
            sh.append(None if slab is None else _pred(fid, cam, slab, sconf, Role.SHADOW))
        if clock is not None:
            clock.t += dt * len(chunk)
        records += sampler.offer(_batch(cams, seqs), inc, sh)
        pis.append(sampler.last_probabilities.copy())
    return records, np.concatenate(pis)


def _within(observed: float, pis: np.ndarray, k: float = 4.0) -> bool:
    """Realised count within k sd of the Poisson-sampling expectation."""
    return abs(observed - pis.sum()) <= k * np.sqrt((pis * (1 - pis)).sum()) + 1


def test_uniform_rate_images_and_double_labels(tmp_path: Path):
    cfg = SamplingConfig(strategy="uniform", rate=0.05, double_label_share=0.25, seed=1)
    s = LabelSampler(cfg, CLASSES, tmp_path / "img")
    rows = [("cam-a", "box", 0.9, "box", 0.9)] * 12000
    recs, pis = _run(s, rows)
    assert np.allclose(pis, 0.05)
    assert _within(len(recs), pis)
    assert abs(len(recs) / 12000 - 0.05) < 0.006
    assert all(r.inclusion_prob == 0.05 and r.strategy == "uniform" for r in recs)
    n_double = sum(r.double_label for r in recs)
    assert abs(n_double - 0.25 * len(recs)) <= 4 * np.sqrt(len(recs) * 0.25 * 0.75)
    for r in recs[:20]:
        img = cv2.imread(r.image_path)
        assert img is not None and img.shape == IMG.shape  # full resolution, not the model-sized copy
        assert np.abs(img.astype(int) - IMG.astype(int)).mean() < 6  # the same picture (JPEG loss)
        assert Path(r.image_path).parent == tmp_path / "img" / "cam-a"
    assert len({r.image_path for r in recs}) == len(recs)
    assert s.counts["sampled"] == len(recs) and s.counts["frames"] == 12000


def test_seeded_and_deterministic(tmp_path: Path):
    rows = [("cam-a", "box", 0.9, "bag", 0.6)] * 2000
    ids = []
    for d in ("a", "b"):
        s = LabelSampler(SamplingConfig(strategy="disagreement", seed=7), CLASSES, tmp_path / d)
        ids.append([r.frame_id for r in _run(s, rows)[0]])
    assert ids[0] == ids[1] and ids[0]


def _mixed_rows(rng: np.random.Generator, n: int) -> list[tuple[str, str, float, str | None, float]]:
    rows = []
    for _ in range(n):
        cam = "cam-a" if rng.random() < 0.75 else "cam-b"
        lab = rng.choice(CLASSES, p=[0.8, 0.15, 0.05])
        conf = float(rng.uniform(0.34, 1.0))
        if rng.random() < 0.1:
            slab = None  # shadow shed this frame
        elif rng.random() < 0.12:
            slab = CLASSES[(CLASSES.index(lab) + 1) % 3]
        else:
            slab = lab
        rows.append((cam, lab, conf, slab, float(rng.uniform(0.34, 1.0))))
    return rows


@pytest.fixture(scope="module")
def mixed_rows():
    return _mixed_rows(np.random.default_rng(3), 16000)


@pytest.mark.parametrize("strategy", ["uniform", "stratified", "disagreement", "uncertainty"])
def test_recorded_probabilities_are_the_ones_used(tmp_path: Path, mixed_rows, strategy):
    """Per group of frames (stratum, disagreement, uncertainty bin), the realised number of samples
    matches the sum of the probabilities those frames had; floor and mean rate hold."""
    cfg = SamplingConfig(strategy=strategy, rate=0.05, uniform_floor=0.2, seed=11)
    s = LabelSampler(cfg, CLASSES, tmp_path)
    recs, pis = _run(s, mixed_rows)
    assert pis.min() >= 0.2 * 0.05 - 1e-12  # uniform floor: every frame can be drawn
    assert _within(len(recs), pis)
    assert abs(pis.mean() - 0.05) < 0.006  # the configured rate, on average
    by_id = {f"run1:{c}:{i}": j for j, (c, i) in enumerate(_frame_keys(mixed_rows))}
    idx = np.array([by_id[r.frame_id] for r in recs])
    assert np.allclose([r.inclusion_prob for r in recs], pis[idx])  # recorded == used
    sampled = np.zeros(len(mixed_rows), bool)
    sampled[idx] = True
    cam = np.array([r[0] for r in mixed_rows])
    lab = np.array([r[1] for r in mixed_rows])
    dis = np.array([r[3] is not None and r[3] != r[1] for r in mixed_rows])
    groups = {f"{c}|{k}": (cam == c) & (lab == k) for c in ("cam-a", "cam-b") for k in CLASSES}
    groups |= {"disagree": dis, "agree": ~dis}
    qs = np.quantile(pis, [0, 0.25, 0.5, 0.75, 1.0])
    for j in range(4):
        groups[f"pi_q{j}"] = (pis >= qs[j]) & (pis <= qs[j + 1])
    for name, m in groups.items():
        assert _within(sampled[m].sum(), pis[m]), (strategy, name, sampled[m].sum(), pis[m].sum())
    if strategy == "stratified":
        # equalised effort: the rarest stratum (cam-b envelopes, ~1% of frames) gets far more than 1% of labels
        rare = groups["cam-b|envelope"]
        assert sampled[rare].sum() / sampled.sum() > 5 * rare.mean()
        counts = [sampled[m].sum() for k, m in groups.items() if "|" in k]
        assert max(counts) / min(counts) < 4
    if strategy == "disagreement":
        assert pis[dis].mean() > 5 * pis[~dis].mean()
    if strategy == "uncertainty":
        m = np.array([1 - max(_marg(r[1], r[2]), 0) for r in mixed_rows])
        assert np.corrcoef(m, pis)[0, 1] > 0.5


def _marg(label: str, conf: float) -> float:
    return margin(_pred("x", "c", label, conf).probs)


def _frame_keys(rows):
    seq: dict[str, int] = {}
    for r in rows:
        seq[r[0]] = seq.get(r[0], -1) + 1
        yield r[0], seq[r[0]]


def test_budget_per_camera_per_hour_in_expectation(tmp_path: Path):
    """Two cameras at 10 and 4 fps for two simulated hours, rate 5% (1800 and 720 labels/hour unscaled),
    budget 50 per camera per hour."""
    clock = FakeClock()
    cfg = SamplingConfig(strategy="uniform", rate=0.05, budget_per_camera_per_hour=50, seed=5)
    s = LabelSampler(cfg, CLASSES, tmp_path, clock=clock)
    np.random.default_rng(2)
    recs, pis, cams_all = [], [], []
    t_end = clock.t + 7200
    t_next = {"cam-a": clock.t, "cam-b": clock.t}
    fps = {"cam-a": 10.0, "cam-b": 4.0}
    seq = {"cam-a": 0, "cam-b": 0}
    while clock.t < t_end:
        clock.t += 1.0  # one batch per second with the frames that arrived in it
        cams = []
        for c in ("cam-a", "cam-b"):
            while t_next[c] <= clock.t:
                cams.append(c)
                t_next[c] += 1.0 / fps[c]
        seqs = []
        for c in cams:
            seqs.append(seq[c])
            seq[c] += 1
        inc = [_pred(f"run1:{c}:{q}", c, "box", 0.9) for c, q in zip(cams, seqs)]
        recs += s.offer(_batch(cams, seqs), inc, [None] * len(cams))
        pis.append(s.last_probabilities.copy())
        cams_all += cams
    pis = np.concatenate(pis)
    cams_all = np.array(cams_all)
    for c in ("cam-a", "cam-b"):
        m = cams_all == c
        expected_per_hour = pis[m].sum() / 2
        assert 45 <= expected_per_hour <= 51, (c, expected_per_hour)  # fits the budget in expectation
        n = sum(r.camera_id == c for r in recs)
        assert abs(n - pis[m].sum()) <= 4 * np.sqrt(pis[m].sum()), (c, n)
        # second hour (rate estimate settled): expectation right at the budget
        half = np.flatnonzero(m)[m.sum() // 2 :]
        assert pis[half].sum() == pytest.approx(50, rel=0.03)
    assert s.per_camera()["cam-a"]["budget_scale"] == pytest.approx(50 / 1800, rel=0.05)
    # without a budget nothing is scaled
    s2 = LabelSampler(SamplingConfig(strategy="uniform", rate=0.05), CLASSES, tmp_path, clock=clock)
    s2.offer(_batch(["cam-a"], [0]), [_pred("run1:cam-a:0", "cam-a", "box", 0.9)], [None])
    assert s2.last_probabilities[0] == 0.05


def test_weighted_estimate_from_sampler_is_unbiased(tmp_path: Path):
    """End to end: the sampler's recorded probabilities make the Hajek estimate right where the raw
    share of correct labels is biased (disagreement frames are hard and over-sampled)."""
    rng = np.random.default_rng(9)
    rows = _mixed_rows(rng, 10000)
    dis = np.array([r[3] is not None and r[3] != r[1] for r in rows])
    correct = rng.random(len(rows)) < np.where(dis, 0.4, 0.95)
    ests, naive = [], []
    for seed in range(4):
        s = LabelSampler(SamplingConfig(strategy="disagreement", rate=0.05, seed=seed, double_label_share=0), CLASSES, tmp_path / str(seed))
        recs, _ = _run(s, rows, batch_size=64)
        by_id = {f"run1:{c}:{i}": j for j, (c, i) in enumerate(_frame_keys(rows))}
        idx = np.array([by_id[r.frame_id] for r in recs])
        e = weighted_accuracy(correct[idx], np.array([r.inclusion_prob for r in recs]))
        ests.append(e)
        naive.append(correct[idx].mean())
    truth = correct.mean()
    assert sum(e.contains(truth) for e in ests) >= 3
    assert abs(np.mean([e.value for e in ests]) - truth) < 0.015
    assert truth - np.mean(naive) > 0.1


def test_disabled_mismatch_and_names(tmp_path: Path, caplog):
    s = LabelSampler(SamplingConfig(enabled=False), CLASSES, tmp_path)
    assert s.offer(_batch(["c"], [0]), [_pred("run1:c:0", "c", "box", 0.9)], [None]) == []
    s = LabelSampler(SamplingConfig(), CLASSES, tmp_path)
    with pytest.raises(ValueError, match="1 frames but 2 incumbent"):
        s.offer(_batch(["c"], [0]), [_pred("a", "c", "box", 0.9)] * 2, [None])
    assert safe_name("cam-a") == "cam-a"
    a, b = safe_name("run:cam/1:5"), safe_name("run_cam_1_5")
    assert "/" not in a and ":" not in a and a != b
    with caplog.at_level(logging.WARNING):
        LabelSampler(SamplingConfig(strategy="uncertainty", uniform_floor=0), CLASSES, tmp_path)
    assert "uniform_floor=0" in caplog.text


def test_unwritable_image_dir_skips_sample(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    s = LabelSampler(SamplingConfig(rate=1.0, uniform_floor=1.0), CLASSES, blocker)
    recs = s.offer(_batch(["c"], [0]), [_pred("run1:c:0", "c", "box", 0.9)], [None])
    assert recs == [] and s.counts["write_failures"] == 1


def test_training_sample_leaves_the_evaluation_sample_as_it_was(tmp_path: Path):
    """SamplingConfig.training: the evaluation draw (frames, probabilities) is exactly the one without a training
    sample; the extra frames are drawn only from what it left, favour low-margin frames, are never double-labelled,
    and record the training strategy and their own probability."""
    rng = np.random.default_rng(3)
    rows = [("cam-a", "box", float(c), None, 0.0) for c in rng.choice([0.4, 0.98], size=6000, p=[0.3, 0.7])]
    base = LabelSampler(SamplingConfig(strategy="uniform", rate=0.1, seed=5, double_label_share=0.2), CLASSES, tmp_path / "a")
    with_t = LabelSampler(SamplingConfig(strategy="uniform", rate=0.1, seed=5, double_label_share=0.2,
                                         training={"strategy": "uncertainty", "rate": 0.1}), CLASSES, tmp_path / "b")
    recs0, pis0 = _run(base, rows)
    recs1, pis1 = _run(with_t, rows)
    assert np.array_equal(pis0, pis1)
    ev = [r for r in recs1 if r.strategy == "uniform"]
    tr = [r for r in recs1 if r.strategy == "training:uncertainty"]
    assert len(ev) + len(tr) == len(recs1) and tr
    assert with_t.counts["training"] == len(tr) and with_t.counts["sampled"] == len(ev)
    assert not {r.frame_id for r in ev} & {r.frame_id for r in tr}
    assert not any(r.double_label for r in tr)
    # about rate x the frames the evaluation left (1 - 0.1), mean probability 0.1
    assert abs(len(tr) - 0.1 * 0.9 * 6000) <= 4 * np.sqrt(0.1 * 0.9 * 6000) + 1
    conf_of = {f"run1:cam-a:{i}": c for i, (_, _, c, _, _) in enumerate(rows)}
    low = [conf_of[r.frame_id] < 0.5 for r in tr]
    assert np.mean(low) > 0.6  # 30% of the frames are low-margin; the training sample is mostly those
    assert {round(r.inclusion_prob, 9) for r in tr if conf_of[r.frame_id] < 0.5} != {round(r.inclusion_prob, 9) for r in tr if conf_of[r.frame_id] > 0.5}
    assert all(0 < r.inclusion_prob <= 1 for r in tr)


def test_training_sample_config_is_validated():
    with pytest.raises(Exception, match="TrainingSampleConfig: field .strategy."):
        SamplingConfig(training={"strategy": "random", "rate": 0.1})
    with pytest.raises(Exception, match="rate"):
        SamplingConfig(training={"rate": 0})
