"""Cheap per-frame image statistics, computed on the model-sized frame for every frame served.

They feed the per-camera drift signals (night shift: brightness falls, noise rises; blur: sharpness falls).
"""

from __future__ import annotations

import cv2
import numpy as np

STAT_NAMES = ("brightness", "contrast", "sharpness", "noise")


def image_stats_batch(images: np.ndarray) -> dict[str, np.ndarray]:
    """``images``: (N, H, W, 3) uint8 (any colour order). Returns float32 arrays of length N.

    brightness: mean grey level (0-255); contrast: grey-level std; sharpness: variance of the
    Laplacian; noise: median absolute deviation of the grey image minus its 3x3 median (robust noise sigma).
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    n = images.shape[0]
    out = {k: np.empty(n, dtype=np.float32) for k in STAT_NAMES}
    for i in range(n):
        grey = cv2.cvtColor(images[i], cv2.COLOR_BGR2GRAY)
        g = grey.astype(np.float32)
        out["brightness"][i] = g.mean()
        out["contrast"][i] = g.std()
        out["sharpness"][i] = cv2.Laplacian(grey, cv2.CV_32F).var()
        resid = g - cv2.medianBlur(grey, 3).astype(np.float32)
        out["noise"][i] = 1.4826 * np.median(np.abs(resid - np.median(resid)))
    return out
