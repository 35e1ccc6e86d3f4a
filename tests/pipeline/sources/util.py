"""Shared by the camera-source tests: consume a reader, wait for a condition, event kinds."""

from __future__ import annotations

import time

from pipeline.config import CameraHealthConfig
from pipeline.sources import CameraReader
from pipeline.types import Frame

HEALTH = CameraHealthConfig()
T0 = 1_700_000_000.0


def read_all(reader: CameraReader, timeout_s: float = 30.0) -> list[Frame]:
    """Consume a reader until it finishes (files/folders)."""
    out: list[Frame] = []
    deadline = time.monotonic() + timeout_s
    while not reader.finished:
        assert time.monotonic() < deadline, f"reader {reader} did not finish"
        f = reader.get(timeout=0.5)
        if f is not None:
            out.append(f)
    return out


def wait_until(pred, timeout_s: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(step)


def kinds(events) -> list[str]:
    return [e.kind.value for e in events]
