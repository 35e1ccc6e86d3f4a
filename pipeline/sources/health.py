"""Picture checks every reader applies: normalisation to uint8 BGR, blank and frozen feeds."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from pipeline.config import CameraHealthConfig
from pipeline.types import HealthKind


def as_bgr(img: np.ndarray | None) -> np.ndarray | None:
    """OpenCV output normalised to uint8 (H, W, 3) BGR; None when it is not a usable picture."""
    if img is None or not isinstance(img, np.ndarray) or img.size == 0:
        return None
    if img.dtype != np.uint8:
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        else:
            return None
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return None


class HealthGate:
    """Blank and frozen detection on a cheap signature (grey image of every 4th pixel).

    ``check`` returns ``"ok"``, ``"blank"`` or ``"frozen"`` and calls ``emit(kind, detail)`` once
    at the start of each blank/frozen episode and once (``recovered``) when a normal frame returns.
    Durations use the frames' timestamps, i.e. the stream's own clock.
    """

    def __init__(self, health: CameraHealthConfig, emit: Callable[[HealthKind, str], None]) -> None:
        self.blank_std = health.blank_std_threshold
        self.frozen_after = health.frozen_after_s
        self.max_diff = health.frozen_max_diff
        self.emit = emit
        self._ref: np.ndarray | None = None  # first picture of the current run of identical frames
        self._ref_ts = 0.0
        self._run_len = 0
        self._frozen = False
        self._blank = False
        self._episode_start = 0.0
        self._episode_count = 0

    @staticmethod
    def signature(img: np.ndarray) -> np.ndarray:
        sub = np.ascontiguousarray(img[::4, ::4])
        return cv2.cvtColor(sub, cv2.COLOR_BGR2GRAY)

    def reset(self) -> None:
        """Forget the reference picture (after a reconnect or a new loop pass)."""
        self._ref = None
        self._run_len = 0

    def check(self, img: np.ndarray, ts: float) -> str:
        sig = self.signature(img)
        std = float(cv2.meanStdDev(sig)[1][0, 0])
        if std < self.blank_std:
            if not self._blank:
                self._blank = True
                self._episode_start, self._episode_count = ts, 0
                self.emit(HealthKind.BLANK, f"blank frame (grey std {std:.2f} < {self.blank_std:g})")
            self._episode_count += 1
            self._ref = None  # a frozen run does not continue through black frames
            self._run_len = 0
            return "blank"
        same = (
            self._ref is not None
            and self._ref.shape == sig.shape
            and cv2.norm(sig, self._ref, cv2.NORM_L1) / sig.size <= self.max_diff
        )
        if same:
            self._run_len += 1
            if ts - self._ref_ts >= self.frozen_after - 1e-9:
                if not self._frozen:
                    self._frozen = True
                    self._episode_start, self._episode_count = self._ref_ts, self._run_len
                    self.emit(
                        HealthKind.FROZEN,
                        f"identical frames for {ts - self._ref_ts:.2f}s (>= {self.frozen_after:g}s)",
                    )
                self._episode_count += 1
                return "frozen"
            return "ok"
        if self._blank or self._frozen:
            what = " and ".join(w for w, on in (("blank", self._blank), ("frozen", self._frozen)) if on)
            self.emit(
                HealthKind.RECOVERED,
                f"{what} ended after {max(0.0, ts - self._episode_start):.2f}s",
            )
            self._blank = self._frozen = False
        self._ref, self._ref_ts, self._run_len = sig, ts, 0
        return "ok"


__all__ = ["HealthGate", "as_bgr"]
