"""FFMPEG capture options that OpenCV takes from the environment or as open parameters."""

from __future__ import annotations

import os
import threading

import cv2

from pipeline.config import CameraHealthConfig, SourceConfig

_FFMPEG_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_ffmpeg_env_ours: str | None = None  # the value this module put there (None: untouched)
_ffmpeg_env_lock = threading.Lock()


def apply_ffmpeg_capture_options(health: CameraHealthConfig) -> str | None:
    """Set ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` for network cameras (``analyzeduration``), process-wide.

    OpenCV reads that variable on every FFMPEG open; there is no per-capture parameter for it.
    A value the user set is left alone. Called by :func:`~pipeline.sources.open_source` for rtsp/http
    sources, from the thread that opens the sources (before their readers start). Returns the value in force.
    """
    global _ffmpeg_env_ours
    with _ffmpeg_env_lock:
        current = os.environ.get(_FFMPEG_ENV)
        if current is not None and current != _ffmpeg_env_ours:
            return current  # the user's choice
        if health.ffmpeg_analyze_s is None:
            return current
        want = f"analyzeduration;{int(health.ffmpeg_analyze_s * 1_000_000)}"
        if current != want:
            os.environ[_FFMPEG_ENV] = want
            _ffmpeg_env_ours = want
        return want


def decode_thread_params(cfg: SourceConfig) -> list[int]:
    """``CAP_PROP_N_THREADS`` for FFMPEG captures (``decode_threads``; 0 leaves FFMPEG's default)."""
    return [cv2.CAP_PROP_N_THREADS, cfg.decode_threads] if cfg.decode_threads > 0 else []


__all__ = ["apply_ffmpeg_capture_options", "decode_thread_params"]
