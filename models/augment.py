"""Training augmentation policies (albumentations 2.x), applied to uint8 RGB images at model size.

A policy is a built-in preset or a file in albumentations' own serialization format (``A.save(transform, path)``,
JSON or YAML; read with ``A.load``), so a team writes its policy once and every run records the policy it used
(``augmentation.json`` beside the model and in the MLflow run).

Presets:

* ``conveyor``: for a camera looking straight down on a conveyor, where an item has no "up": mirror images both
  ways, small shifts/scales/rotations (up to 12 degrees), mild lighting and colour changes. Right for the synthetic
  demo; wrong for anything with text, arrows or orientation (a flipped arrow is another class).
* ``generic`` (the default for a user's dataset): no flips, rotations of at most 8 degrees, small shifts/scales, the
  same mild lighting and colour changes.
* ``none``: no augmentation (evaluation always uses none).

``auto`` (the training default) picks ``conveyor`` when the first data source is a set ``shadowcam synth`` wrote
(its manifest carries the generator's ``shift`` column) and ``generic`` otherwise. ``light`` is the old name of
``conveyor``.

The presets deliberately do NOT simulate the camera shifts the product is meant to detect (night, blur, glare, new
packaging): training on those would hide the train-to-production gap instead of measuring it.
Images are already resized to the model size when they reach these transforms (:mod:`models.loader`), so policies
should not resize.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2

from pipeline.types import ConfigError

# albumentations asks PyPI for a newer version at import; cameras and CI run offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

PRESETS = ("conveyor", "generic", "none")
ALIASES = {"light": "conveyor"}
SYNTH_MARKER_COLUMN = "shift"  # `shadowcam synth` manifests: path,label,split,shift,...


def _photometric(A):
    return [
        A.RandomBrightnessContrast(brightness_limit=0.12, contrast_limit=0.12, p=0.5),
        A.HueSaturationValue(hue_shift_limit=4, sat_shift_limit=12, val_shift_limit=0, p=0.3),
    ]


def build_transform(policy: str = "conveyor", seed: int | None = 0):
    """An ``albumentations.Compose`` for a preset name (:data:`PRESETS`, or an alias) or a policy file; seeded."""
    import albumentations as A

    name = ALIASES.get(policy, policy)
    if name == "none":
        return A.Compose([], seed=seed)
    if name == "conveyor":
        return A.Compose([
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-12, 12), interpolation=cv2.INTER_LINEAR,
                     border_mode=cv2.BORDER_REFLECT_101, p=0.7),
            *_photometric(A),
        ], seed=seed)
    if name == "generic":
        return A.Compose([
            A.Affine(scale=(0.92, 1.08), translate_percent=(-0.05, 0.05), rotate=(-8, 8), interpolation=cv2.INTER_LINEAR,
                     border_mode=cv2.BORDER_REFLECT_101, p=0.7),
            *_photometric(A),
        ], seed=seed)
    return load_policy(policy, seed)


def load_policy(path: str | Path, seed: int | None = 0):
    """Read a policy file written by ``A.save`` (``.json``, ``.yaml``/``.yml``); one-line :class:`ConfigError` when
    it is missing or not an albumentations policy."""
    import albumentations as A

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"augment: {path} is neither a preset ({', '.join(PRESETS)}) nor an existing policy file")
    fmt = "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json"
    try:
        t = A.load(str(path), data_format=fmt)
    except Exception as e:  # albumentations raises KeyError/ValueError/yaml errors for foreign files
        raise ConfigError(f"augment: {path} is not an albumentations policy ({type(e).__name__}: {e})") from None
    if not isinstance(t, A.Compose):
        t = A.Compose([t])
    if seed is not None:
        t.set_random_seed(seed)
    return t


def save_policy(transform, path: str | Path) -> Path:
    """Write ``transform`` in albumentations' JSON format (what :func:`load_policy` reads)."""
    import albumentations as A

    path = Path(path)
    A.save(transform, str(path), data_format="json")
    return path


def resolve_policy(policy: str, sources: list[str]) -> str:
    """``auto`` -> ``conveyor`` for a ``shadowcam synth`` set as the first source, else ``generic``; aliases resolved;
    anything else returned as given (a preset or a file path)."""
    if policy != "auto":
        return ALIASES.get(policy, policy)
    return "conveyor" if sources and is_synthetic_source(sources[0]) else "generic"


def is_synthetic_source(source: str | Path) -> bool:
    """A folder or manifest written by ``shadowcam synth`` (its manifest has the generator's ``shift`` column)."""
    p = Path(source)
    manifest = p / "manifest.csv" if p.is_dir() else p
    if not manifest.is_file() or manifest.suffix.lower() != ".csv":
        return False
    with manifest.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    return SYNTH_MARKER_COLUMN in [c.strip() for c in header]
