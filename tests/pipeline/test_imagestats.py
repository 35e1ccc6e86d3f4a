"""image_stats_batch: the whole-batch computation gives exactly the per-frame definition's numbers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.imagestats import STAT_NAMES, image_stats_batch, median3x3


def per_frame(images: np.ndarray) -> dict[str, np.ndarray]:
    """The definition, one frame at a time (what the module computed before it was vectorised)."""
    out = {k: np.empty(len(images), dtype=np.float32) for k in STAT_NAMES}
    for i, img in enumerate(images):
        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        g = grey.astype(np.float32)
        out["brightness"][i] = g.mean()
        out["contrast"][i] = g.std()
        out["sharpness"][i] = cv2.Laplacian(grey, cv2.CV_32F).var()
        resid = g - cv2.medianBlur(grey, 3).astype(np.float32)
        out["noise"][i] = 1.4826 * np.median(np.abs(resid - np.median(resid)))
    return out


@pytest.mark.parametrize("shape", [(32, 64, 64), (7, 33, 20), (1, 96, 96), (2, 2, 5), (2, 1, 5), (3, 5, 1)])
def test_batch_stats_equal_the_per_frame_definition(shape):
    rng = np.random.default_rng(sum(shape))
    images = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    images[0, : shape[1] // 2] = 40  # a flat region: medians and MAD of zero
    got, want = image_stats_batch(images), per_frame(images)
    for k in STAT_NAMES:
        assert got[k].dtype == np.float32 and got[k].shape == (shape[0],)
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_median3x3_is_opencvs_median_blur():
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (4, 17, 9), dtype=np.uint8)
    np.testing.assert_array_equal(median3x3(grey), np.stack([cv2.medianBlur(g, 3) for g in grey]))


def test_known_values_and_bad_input():
    flat = np.full((2, 8, 8, 3), 100, np.uint8)
    s = image_stats_batch(flat)
    assert s["brightness"].tolist() == [100.0, 100.0] and s["contrast"].tolist() == [0.0, 0.0]
    assert s["sharpness"].tolist() == [0.0, 0.0] and s["noise"].tolist() == [0.0, 0.0]
    assert all(v.shape == (0,) for v in image_stats_batch(np.zeros((0, 8, 8, 3), np.uint8)).values())
    with pytest.raises(ValueError, match="uint8"):
        image_stats_batch(np.zeros((2, 8, 8), np.uint8))
