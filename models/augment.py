"""Training augmentation presets (albumentations 2.x), applied to uint8 RGB images at model size.

The cameras look straight down on a conveyor, so the presets keep to what such a camera plausibly sees
between two installations: mirror images, small shifts/scales/rotations, mild lighting and colour changes.
They deliberately do NOT simulate the camera shifts the product is meant to detect (night, blur, glare,
new packaging): training on those would hide the train-to-production gap instead of measuring it.

Images are already resized to the model size when they reach these transforms (``models.data``), so the
presets never resize; evaluation uses no transform at all (``"none"``).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

# albumentations asks PyPI for a newer version at import; cameras and CI run offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

PRESETS = ("light", "none")


def build_transform(preset: str = "light", seed: int | None = 0):
    """Return an ``albumentations.Compose`` for ``preset`` (``"light"`` or ``"none"``), seeded for repeatability."""
    import albumentations as A

    if preset == "none":
        return A.Compose([], seed=seed)
    if preset != "light":
        raise ValueError(f"unknown augmentation preset {preset!r}; expected one of {', '.join(PRESETS)}")
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.06, 0.06),
                rotate=(-12, 12),
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.7,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.12, contrast_limit=0.12, p=0.5),
            A.HueSaturationValue(hue_shift_limit=4, sat_shift_limit=12, val_shift_limit=0, p=0.3),
        ],
        seed=seed,
    )


def augment_batch(transform, images: np.ndarray) -> np.ndarray:
    """Apply ``transform`` image by image to a uint8 ``(N, H, W, 3)`` batch; returns a new uint8 array."""
    if transform is None or len(transform.transforms) == 0:
        return images
    out = np.empty_like(images)
    for i in range(images.shape[0]):
        out[i] = transform(image=images[i])["image"]
    return out
