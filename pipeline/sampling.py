"""Label sampling: choose frames for human labels, and record the probability each frame had.

Design (why the evaluator's estimates stay unbiased)
----------------------------------------------------
Every frame offered gets an inclusion probability ``pi`` computed from the frame's own features
(predictions, camera) and from running statistics of *earlier and current* frames -- never from the
random draw itself. Then one independent Bernoulli(``pi``) draw decides (Poisson sampling, seeded
RNG) and a sampled frame records exactly that ``pi``. Since ``E[1{sampled}/pi] = 1`` for every frame
whatever its label, the evaluator's inverse-probability (Horvitz-Thompson / Hajek) estimates are
unbiased for any strategy, as long as ``pi > 0`` for every frame -- which the uniform floor guarantees.

Strategies (``SamplingConfig.strategy``), with ``r = rate`` and ``f = uniform_floor``; every frame gets
``pi = s * (f * r + (1 - f) * q)``, where ``q`` is the strategy's share and ``s <= 1`` the budget factor:

* ``uniform``: ``q = r``.
* ``stratified``: strata are camera x incumbent-predicted class. ``q = r / (S * share_h)`` with
  ``share_h`` the running share of frames in the stratum and ``S`` the number of strata seen, so each
  stratum gets the same expected number of labels (rare classes and quiet cameras are not starved).
* ``disagreement``: frames where incumbent and shadow predict different classes get
  ``disagreement_boost`` times the probability of the others, normalised by the running disagreement
  rate so the mean of ``q`` stays ``r``. Frames without a shadow prediction get ``q = r``.
* ``uncertainty``: ``q = r * u / mean(u)`` with ``u = 1 - margin`` (top-1 minus top-2 probability; the
  larger of the incumbent's and the shadow's), so low-margin / high-entropy frames are favoured.
* ``neyman``: strata of *predicted correctness* (:func:`neyman_stratum`: camera x the incumbent's calibrated
  confidence cut at ``neyman_edges`` x agreement with the shadow). Neyman allocation: ``q_h = r * sd_h /
  sum_g(share_g * sd_g)``, so a stratum gets labels in proportion to its share of frames times the standard
  deviation of "the incumbent is right" in it -- the allocation that minimises the variance of a stratified
  accuracy estimate for a given number of labels. ``sd_h = sqrt(p_h (1 - p_h))`` with ``p_h`` the stratum's
  labelled accuracy once it has ``neyman_min_labels`` labels (:meth:`LabelSampler.update_feedback`; the runner
  feeds it from the store), before that its mean confidence; ``sd_h`` is floored at :data:`NEYMAN_SD_FLOOR` so
  a stratum the model is sure of is still looked at (a confident model under shift is exactly the one that is
  wrong without knowing it).

``q`` is capped at 1 (a capped probability is still the true one; the realised rate is then a little
below ``r``).

Rate factors (:meth:`LabelSampler.set_rate_factor`): a label target (``SamplingConfig.target``) multiplies a
camera's probabilities by a factor -- lower once the target is met, higher while drift is detected. The factor is
set from what the store held *before* the draw, so the recorded ``pi`` is still the probability the frame had.

Budget (``budget_per_camera_per_hour``): per camera we estimate, over a trailing 10-minute window of
the sampler's clock, the expected number of samples per hour at the unscaled probabilities, and scale
every probability of that camera's next frames by ``s = min(1, budget / expected_per_hour)``. The
expected count then fits the budget; the realised count is random (Poisson-like, sd ~ sqrt(budget))
and can exceed it a little in a given hour. We deliberately do **not** add a hard cap ("stop after
N"): a frame arriving after the cap would have probability 0 and one before it a probability that
depends on draws of other frames, so the recorded ``pi`` would no longer be the real one and the
weighted estimates would be biased. At start-up the frame rate is over-estimated (the span is
floored at 1 s), so the sampler errs on the side of sampling less.

Images: a sampled frame's full-resolution image (``Frame.image``, BGR) is written as JPEG to
``image_dir/<camera>/<frame id>.jpg`` (characters outside ``[A-Za-z0-9._-]`` replaced, plus a short
hash when anything was replaced). A failed write is logged and the frame is not sampled (the
labelling queue would have nothing to show); failures unrelated to the frame's label only scale all
probabilities by the same factor, which the Hajek estimator is immune to.

Training sample (``SamplingConfig.training``): retraining learns most from the frames the model finds hard,
which the evaluation design above (uniform, by default) rarely picks. Of the frames the evaluation draw left, each
is drawn again, independently, with an active-learning probability (uncertainty or disagreement, mean
``training.rate``) and recorded with strategy ``training:<strategy>`` (:data:`TRAINING_PREFIX`). The evaluator
leaves those frames' labels out, so the evaluation sample and its probabilities are exactly what they would be
without a training sample; retraining uses every label.

``double_label_share`` of the samples (independent draws) are flagged ``double_label`` to measure
annotator agreement.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from pipeline.config import SamplingConfig
from pipeline.store import TRAINING_PREFIX, SampleRecord
from pipeline.types import FrameBatch, Prediction

log = logging.getLogger(__name__)

RATE_WINDOW_S = 600.0  # trailing window for the per-camera frame-rate estimate (budget)
MIN_SPAN_S = 1.0  # the span of that window is floored at this (conservative at start-up)
_PRIOR_DISAGREE = (0.1, 10.0)  # prior disagreement rate and its weight in frames
_PRIOR_UNCERTAINTY = (0.5, 10.0)  # prior mean of u = 1 - margin and its weight
NEYMAN_SD_FLOOR = 0.1  # neyman: no stratum's sd of correctness is taken below this
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text``; a short hash is appended when characters were replaced."""
    safe = _SAFE.sub("_", text)
    if safe != text or not safe or safe in (".", ".."):
        safe = f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return safe


def margin(probs: np.ndarray) -> float:
    """Top-1 minus top-2 probability (1 for a one-class model)."""
    if probs.shape[0] < 2:
        return 1.0
    top = np.partition(probs, -2)[-2:]
    return float(top[1] - top[0])


def _uncertainties(incumbent: Sequence[Prediction], shadow: Sequence[Prediction | None]) -> np.ndarray:
    """``u = 1 - margin`` per frame, the larger of the incumbent's and the shadow's."""
    return np.array([max(1.0 - margin(p.probs), 0.0 if s is None else 1.0 - margin(s.probs))
                     for p, s in zip(incumbent, shadow)], dtype=np.float64)


def _uncertainty_share(rate: float, u: np.ndarray, u_sum: float, u_n: int) -> np.ndarray:
    """``rate * u / mean(u)``, the mean running over every frame so far (``u_sum``/``u_n``) with a prior."""
    m0, w0 = _PRIOR_UNCERTAINTY
    mean_u = (u_sum + m0 * w0) / (u_n + w0)
    return rate * u / mean_u if mean_u > 0 else np.full(u.shape[0], rate)


def _disagreements(incumbent: Sequence[Prediction], shadow: Sequence[Prediction | None]) -> tuple[np.ndarray, np.ndarray]:
    """(frame has a shadow prediction, the shadow's class differs from the incumbent's) per frame."""
    has = np.array([s is not None for s in shadow], dtype=bool)
    dis = np.array([s is not None and s.label != p.label for s, p in zip(shadow, incumbent)], dtype=bool)
    return has, dis


def _disagreement_share(rate: float, has: np.ndarray, dis: np.ndarray, n_disagree: int, n_with_shadow: int,
                        boost: float) -> np.ndarray:
    """Disagreement frames ``boost`` times the others, normalised by the running disagreement rate (with a prior)
    so the mean stays ``rate``; frames without a shadow prediction get ``rate``."""
    d0, w0 = _PRIOR_DISAGREE
    d = (n_disagree + d0 * w0) / (n_with_shadow + w0)
    q_agree = rate / (d * boost + 1.0 - d)
    return np.where(dis, boost * q_agree, np.where(has, q_agree, rate))


def neyman_stratum(camera: str, incumbent_probs: np.ndarray, shadow_label: str | None, incumbent_label: str,
                   edges: Sequence[float]) -> tuple[str, int, int]:
    """The ``neyman`` stratum of a frame: (camera, confidence bin of the incumbent, agreement).

    The bin is the number of ``edges`` at or below the incumbent's top probability (0 .. len(edges)); agreement
    is 1 when the shadow predicts the incumbent's class, 0 when it does not, -1 without a shadow prediction.
    """
    conf = float(np.max(incumbent_probs)) if incumbent_probs.size else 0.0
    b = int(np.searchsorted(np.asarray(edges, dtype=np.float64), conf, side="right"))
    agree = -1 if shadow_label is None else int(shadow_label == incumbent_label)
    return (camera, b, agree)


@dataclass
class _Stratum:
    frames: int = 0
    conf_sum: float = 0.0
    labelled: int = 0
    correct: int = 0

    def sd(self, min_labels: int) -> float:
        if self.labelled >= min_labels:
            p = (self.correct + 0.5) / (self.labelled + 1.0)  # shrunk a little: a stratum with no errors yet keeps an sd
        else:
            p = self.conf_sum / self.frames if self.frames else 0.5
        return max(math.sqrt(max(p * (1.0 - p), 0.0)), NEYMAN_SD_FLOOR)


@dataclass
class _CameraState:
    window: deque = field(default_factory=deque)  # (time, frames, sum of unscaled pi)
    frames: int = 0
    sampled: int = 0
    expected: float = 0.0  # sum of recorded (scaled) probabilities
    scale: float = 1.0


class LabelSampler:
    """Pick frames for labels with recorded inclusion probabilities (see the module docstring).

    ``offer()`` is called once per served batch (by the run's store writer) and returns the
    :class:`SampleRecord` of the frames drawn. ``last_probabilities`` holds the probability every
    frame of the last batch had (sampled or not); ``counts`` and ``per_camera()`` summarise the run.
    """

    def __init__(self, cfg: SamplingConfig, class_names: list[str], image_dir: Path, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.class_names = list(class_names)
        self.image_dir = Path(image_dir)
        self.clock = clock
        self.rng = np.random.default_rng(cfg.seed)
        self.strategy = cfg.strategy
        self._strata: dict[tuple[str, str], int] = {}
        self._n_frames = 0
        self._n_with_shadow = 0
        self._n_disagree = 0
        self._u_sum = 0.0
        self._u_n = 0
        self._cams: dict[str, _CameraState] = {}
        self._neyman: dict[tuple[str, int, int], _Stratum] = {}
        self._factor_default = 1.0
        self._factor: dict[str, float] = {}
        # update_feedback / set_rate_factor come from the run's label-feedback thread, offer from the store writer
        self._lock = threading.Lock()
        self.last_probabilities = np.zeros(0)
        self._t_u_sum = 0.0  # training sample: running mean of its score
        self._t_u_n = 0
        self._t_dis = 0
        self._t_has = 0
        self.counts = {"frames": 0, "sampled": 0, "expected": 0.0, "double_label": 0, "write_failures": 0,
                       "training": 0}
        if cfg.uniform_floor == 0 and cfg.strategy != "uniform":
            log.warning(
                "sampling uniform_floor=0 with strategy %s: frames the strategy scores 0 can never be labeled, "
                "so accuracy estimates cannot cover them; a floor > 0 (default 0.2) avoids that",
                cfg.strategy,
            )

    # --- probabilities -----------------------------------------------------------------------------
    def inclusion_probabilities(self, batch: FrameBatch, incumbent: Sequence[Prediction], shadow: Sequence[Prediction | None]) -> np.ndarray:
        """The probability each frame of ``batch`` is drawn with. Updates the running statistics,
        so call it once per batch (``offer`` does)."""
        with self._lock:
            return self._inclusion_probabilities(batch, incumbent, shadow)

    def _inclusion_probabilities(self, batch: FrameBatch, incumbent: Sequence[Prediction], shadow: Sequence[Prediction | None]) -> np.ndarray:
        n = len(batch)
        if len(incumbent) != n or len(shadow) != n:
            raise ValueError(f"offer: batch has {n} frames but {len(incumbent)} incumbent and {len(shadow)} shadow predictions")
        cfg = self.cfg
        r, f = cfg.rate, cfg.uniform_floor
        cams = [fr.camera_id for fr in batch.frames]
        self._n_frames += n
        strat = cfg.strategy
        if strat == "uniform":
            q = np.full(n, r)
        elif strat == "stratified":
            keys = [(c, p.label) for c, p in zip(cams, incumbent)]
            for k in keys:
                self._strata[k] = self._strata.get(k, 0) + 1
            n_strata = len(self._strata)
            share = np.array([self._strata[k] for k in keys], dtype=np.float64) / self._n_frames
            q = r / (n_strata * share)
        elif strat == "disagreement":
            has, dis = _disagreements(incumbent, shadow)
            self._n_with_shadow += int(has.sum())
            self._n_disagree += int(dis.sum())
            q = _disagreement_share(r, has, dis, self._n_disagree, self._n_with_shadow, cfg.disagreement_boost)
        elif strat == "uncertainty":
            u = _uncertainties(incumbent, shadow)
            self._u_sum += float(u.sum())
            self._u_n += n
            q = _uncertainty_share(r, u, self._u_sum, self._u_n)
        elif strat == "neyman":
            keys = [neyman_stratum(c, p.probs, None if s is None else s.label, p.label, cfg.neyman_edges)
                    for c, p, s in zip(cams, incumbent, shadow)]
            for k, p in zip(keys, incumbent):
                st = self._neyman.setdefault(k, _Stratum())
                st.frames += 1
                st.conf_sum += float(np.max(p.probs)) if p.probs.size else 0.0
            m = cfg.neyman_min_labels
            total = sum(st.frames for st in self._neyman.values())
            mean_sd = sum(st.frames * st.sd(m) for st in self._neyman.values()) / total
            q = np.array([r * self._neyman[k].sd(m) / mean_sd for k in keys])
        else:  # pragma: no cover - config validation rejects other names
            raise ValueError(f"unknown sampling strategy {strat!r}")
        if strat == "uniform":
            pi = q  # exactly r (the floor mix would only add rounding)
        else:
            pi = np.minimum(f * r + (1.0 - f) * np.minimum(q, 1.0), 1.0)
        pi = pi * self._budget_scale(cams, pi)
        factor = np.array([self._factor.get(c, self._factor_default) for c in cams])
        return np.minimum(pi * factor, 1.0)

    def training_probabilities(self, incumbent: Sequence[Prediction], shadow: Sequence[Prediction | None]) -> np.ndarray:
        """The probability each frame of a batch is drawn for the training sample (given the evaluation sample
        left it): ``training.rate`` times the frame's score over the running mean score, capped at 1. Updates the
        running statistics, so call it once per batch (``offer`` does)."""
        t = self.cfg.training
        n = len(incumbent)
        if t is None:
            return np.zeros(n)
        with self._lock:  # the strategies' own shares at the training rate, with running statistics of their own
            if t.strategy == "uncertainty":
                u = _uncertainties(incumbent, shadow)
                self._t_u_sum += float(u.sum())
                self._t_u_n += n
                q = _uncertainty_share(t.rate, u, self._t_u_sum, self._t_u_n)
            else:
                has, dis = _disagreements(incumbent, shadow)
                self._t_has += int(has.sum())
                self._t_dis += int(dis.sum())
                q = _disagreement_share(t.rate, has, dis, self._t_dis, self._t_has, self.cfg.disagreement_boost)
        return np.minimum(q, 1.0)

    # --- inputs from outside the stream ------------------------------------------------------------
    def update_feedback(self, labelled: Mapping[tuple[str, int, int], tuple[int, int]]) -> None:
        """Labels so far per ``neyman`` stratum: ``{stratum: (labelled frames, incumbent correct)}`` (totals, not
        increments). Strata with ``neyman_min_labels`` labels then use their labelled accuracy for Neyman."""
        for k, (n, c) in labelled.items():
            if n < 0 or c < 0 or c > n:
                raise ValueError(f"update_feedback: stratum {k} needs 0 <= correct <= labelled, got {c} of {n}")
        with self._lock:
            for k, (n, c) in labelled.items():
                st = self._neyman.setdefault(tuple(k), _Stratum())
                st.labelled, st.correct = int(n), int(c)

    def set_rate_factor(self, factor: float, camera: str | None = None) -> None:
        """Multiply the probabilities of ``camera``'s next frames (every camera's when None) by ``factor``
        (a label target met: < 1; drift detected: > 1). Probabilities are capped at 1."""
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"rate factor must be a finite number > 0 (a frame with probability 0 could never be "
                             f"labelled and estimates would be biased), got {factor!r}")
        with self._lock:
            if camera is None:
                self._factor_default = float(factor)
                self._factor.clear()
            else:
                self._factor[camera] = float(factor)

    def _budget_scale(self, cams: list[str], pi: np.ndarray) -> np.ndarray:
        now = float(self.clock())
        scale = np.ones(len(cams))
        budget = self.cfg.budget_per_camera_per_hour
        by_cam: dict[str, list[int]] = {}
        for i, c in enumerate(cams):
            by_cam.setdefault(c, []).append(i)
        for c, idx in by_cam.items():
            st = self._cams.setdefault(c, _CameraState())
            st.window.append((now, len(idx), float(pi[idx].sum())))
            while st.window and st.window[0][0] < now - RATE_WINDOW_S:
                st.window.popleft()
            if budget is None:
                continue
            span = max(now - st.window[0][0], MIN_SPAN_S)
            expected_per_hour = sum(e[2] for e in st.window) / span * 3600.0
            st.scale = min(1.0, budget / expected_per_hour) if expected_per_hour > 0 else 1.0
            scale[idx] = st.scale
        return scale

    # --- the verb ------------------------------------------------------------------------------------
    def offer(self, batch: FrameBatch, incumbent: list[Prediction], shadow: list[Prediction | None]) -> list[SampleRecord]:
        """Draw frames of ``batch`` for labels; save their images; return their sample records."""
        if not self.cfg.enabled or len(batch) == 0:
            self.last_probabilities = np.zeros(len(batch))
            return []
        pi = self.inclusion_probabilities(batch, incumbent, shadow)
        self.last_probabilities = pi
        draws = self.rng.random(len(batch)) < pi
        # the training sample draws from what the evaluation sample left, with its own random numbers
        q_train = self.training_probabilities(incumbent, shadow)
        train_draws = (~draws & (self.rng.random(len(batch)) < q_train)) if self.cfg.training is not None else np.zeros(len(batch), bool)
        now = float(self.clock())
        out: list[SampleRecord] = []
        self.counts["frames"] += len(batch)
        self.counts["expected"] += float(pi.sum())
        for i, fr in enumerate(batch.frames):
            st = self._cams[fr.camera_id]
            st.frames += 1
            st.expected += float(pi[i])
            if not (draws[i] or train_draws[i]):
                continue
            for_training = bool(train_draws[i])
            double = bool(self.rng.random() < self.cfg.double_label_share) and not for_training
            path = self._save(fr.camera_id, fr.frame_id, fr.image)
            if path is None:
                continue
            if for_training:
                self.counts["training"] += 1
            else:
                st.sampled += 1
                self.counts["sampled"] += 1
                self.counts["double_label"] += int(double)
            out.append(
                SampleRecord(
                    frame_id=fr.frame_id,
                    camera_id=fr.camera_id,
                    strategy=f"{TRAINING_PREFIX}{self.cfg.training.strategy}" if for_training else self.strategy,
                    inclusion_prob=float(q_train[i] if for_training else pi[i]),
                    image_path=str(path),
                    sampled_at=now,
                    double_label=double,
                )
            )
        return out

    def _save(self, camera_id: str, frame_id: str, image: np.ndarray) -> Path | None:
        import cv2

        folder = self.image_dir / safe_name(camera_id)
        path = folder / f"{safe_name(frame_id)}.jpg"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ok = cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, int(self.cfg.jpeg_quality)])
        except (OSError, cv2.error) as e:
            ok = False
            log.error("sample_image_write_failed frame=%s path=%s error=%s", frame_id, path, e)
        if not ok:
            self.counts["write_failures"] += 1
            log.error("sample_image_write_failed frame=%s path=%s (frame not sampled)", frame_id, path)
            return None
        return path

    # --- reporting -------------------------------------------------------------------------------------
    def per_camera(self) -> dict[str, dict[str, float]]:
        """Frames seen, samples drawn, expected samples (sum of probabilities) and current budget scale per camera."""
        return {c: {"frames": s.frames, "sampled": s.sampled, "expected": s.expected, "budget_scale": s.scale} for c, s in self._cams.items()}
