"""Camera shifts that real warehouse cameras see, at severities 1-5.

A *shift* is a named change of conditions between training and production. Pixel shifts act on a
rendered frame (:func:`apply_shift`) and are built on albumentations transforms; the one
*render-time* shift, ``new_packaging``, changes what is on the belt (a share of the parcels are
poly mailers, a parcel type absent from training) and is handled by the renderer in
:mod:`models.synthetic`; :func:`apply_shift` leaves pixels alone for it.

Severity is monotone in strength for every shift: each table below is increasing in severity.
Strengths that depend on image size (blur kernels, glare radius, dirt blob size) are fractions of
the frame, so a 640x480 stream frame resized to 96 px looks like a 96 px training image with the
same shift.

albumentations is imported lazily (inside functions) so importing this module stays cheap, and its
online version check is switched off (the machines this runs on may have no internet).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.types import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_SEVERITY = 3

#: Shift names and what each simulates (iteration order is the CLI's listing order).
SHIFTS: dict[str, str] = {
    "night": "low light: gain falls and sensor noise rises (RandomBrightnessContrast + GaussNoise)",
    "motion_blur": "blur along the belt from speed or vibration (MotionBlur)",
    "defocus": "the lens is out of focus (Defocus)",
    "glare": "a lamp reflecting into the lens: bright wash and flare (RandomSunFlare)",
    "lens_dirt": "mud and dust on the lens (Spatter, mud mode)",
    "jpeg": "heavy JPEG compression on a starved network link (ImageCompression)",
    "camera_tilt": "the camera knocked out of its top-down pose (Perspective)",
    "new_packaging": "poly mailers, a parcel type absent from training, replace a share of the boxes (render-time)",
}

#: Shifts that change the scene, not the pixels; :func:`apply_shift` is the identity for them.
RENDER_SHIFTS = frozenset({"new_packaging"})

#: Shifts whose random parameters belong to the camera, not to the frame (where the dirt sits,
#: where the lamp is, how the camera is tilted). In a stream they stay fixed within a phase.
STATIC_SHIFTS = frozenset({"glare", "lens_dirt", "camera_tilt"})

#: The order shifts are applied in when several are active: the order of image formation
#: (scene, geometry, light, lens, motion, sensor, encoder).
SHIFT_ORDER = ("new_packaging", "camera_tilt", "glare", "lens_dirt", "defocus", "motion_blur", "night", "jpeg")

# ---- severity tables (index = severity - 1); every row is increasing in strength -----------------
NIGHT_GAIN = (0.7, 0.55, 0.42, 0.3, 0.2)  # multiplicative exposure
NIGHT_NOISE_STD = (0.03, 0.045, 0.06, 0.08, 0.1)  # Gaussian sensor noise, fraction of 255
#: Night noise is drawn at (at most) this width and upsampled: blotchy, like a camera's noise after its
#: own noise reduction, and, above all, equally strong once a large frame is resized to the model's
#: input (white per-pixel noise on a 640 px frame would average away in a 96 px thumbnail).
NIGHT_NOISE_REF_WIDTH = 96
#: Bilinear upsampling of white noise lowers its std to about 2/3 (measured); compensated.
_UPSAMPLED_NOISE_STD = 0.67
MOTION_BLUR_FRAC = (0.03, 0.05, 0.08, 0.12, 0.17)  # kernel length, fraction of frame width
DEFOCUS_FRAC = (0.008, 0.014, 0.022, 0.032, 0.045)  # disc radius, fraction of frame width
GLARE_RADIUS_FRAC = (0.07, 0.09, 0.11, 0.135, 0.16)  # hot spot radius (Gaussian sigma), fraction of frame width
GLARE_STRENGTH = (0.45, 0.6, 0.75, 0.88, 1.0)  # peak of the hot spot (screen blend towards white)
GLARE_VEIL = (0.02, 0.04, 0.07, 0.1, 0.14)  # veiling glare: contrast lost over the whole frame
GLARE_CIRCLES = (2, 4, 6, 8, 10)  # flare ghosts (RandomSunFlare)
LENS_DIRT_COVERAGE = (0.05, 0.1, 0.16, 0.24, 0.33)  # share of the lens under dirt before blurring
LENS_DIRT_INTENSITY = (0.5, 0.6, 0.7, 0.8, 0.9)
LENS_DIRT_SIGMA_FRAC = 0.025  # dirt blob scale, fraction of frame width
JPEG_QUALITY = (40, 25, 15, 9, 5)
TILT_SCALE = (0.03, 0.05, 0.075, 0.10, 0.13)  # corner displacement sigma, fraction of frame
#: Share of parcel-class items rendered as poly mailers under ``new_packaging``.
NEW_PACKAGING_SHARE = (0.2, 0.35, 0.5, 0.75, 1.0)


@dataclass(frozen=True, order=True)
class Shift:
    """One named shift at a severity from 1 (mild) to 5 (severe)."""

    name: str
    severity: int = DEFAULT_SEVERITY

    def __post_init__(self) -> None:
        if self.name not in SHIFTS:
            raise ConfigError(f"unknown shift {self.name!r}; expected one of: {', '.join(SHIFTS)}")
        if isinstance(self.severity, bool) or not isinstance(self.severity, (int, np.integer)) \
                or not 1 <= int(self.severity) <= 5:
            raise ConfigError(f"shift {self.name!r}: severity must be an integer 1-5, got {self.severity!r}")
        object.__setattr__(self, "severity", int(self.severity))

    def __str__(self) -> str:
        return f"{self.name}:{self.severity}"

    @property
    def is_pixel(self) -> bool:
        """True for shifts that act on pixels (everything except ``new_packaging``)."""
        return self.name not in RENDER_SHIFTS


def parse_shift(spec: str | Shift) -> Shift:
    """Parse ``"NAME"`` or ``"NAME:SEVERITY"`` (e.g. ``"night:3"``); severity defaults to 3.

    Raises :class:`~pipeline.types.ConfigError` with a one-line message for an unknown name or a
    severity that is not an integer 1-5.
    """
    if isinstance(spec, Shift):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"shift must be a string NAME[:SEVERITY], got {type(spec).__name__} {spec!r}")
    text = spec.strip().lower()
    if not text:
        raise ConfigError(f"empty shift; expected NAME[:SEVERITY] with NAME one of: {', '.join(SHIFTS)}")
    name, sep, sev_text = text.partition(":")
    name = name.strip()
    if name not in SHIFTS:
        raise ConfigError(f"unknown shift {name!r} in {spec!r}; expected one of: {', '.join(SHIFTS)}")
    if not sep:
        return Shift(name, DEFAULT_SEVERITY)
    sev_text = sev_text.strip()
    if not sev_text.isdigit() or not 1 <= int(sev_text) <= 5:
        raise ConfigError(f"shift {spec!r}: severity must be an integer 1-5, got {sev_text!r}")
    return Shift(name, int(sev_text))


def parse_shifts(specs: str | Shift | Iterable[str | Shift] | None) -> list[Shift]:
    """Parse a list of specs, or one ``"+"``-joined string (``"night:3+motion_blur:3"``).

    ``None``, ``""`` and ``"none"`` mean no shift. The result is in :data:`SHIFT_ORDER`; naming the
    same shift twice is an error.
    """
    if specs is None:
        return []
    if isinstance(specs, Shift):
        specs = [specs]
    elif isinstance(specs, str):
        text = specs.strip().lower()
        specs = [] if text in ("", "none", "clean") else [p for p in text.split("+")]
    shifts = [parse_shift(s) for s in specs]
    names = [s.name for s in shifts]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"shift {dup[0]!r} given more than once in {[str(s) for s in shifts]}")
    return sorted(shifts, key=lambda s: SHIFT_ORDER.index(s.name))


def format_shifts(shifts: Sequence[Shift]) -> str:
    """Canonical text of a shift list for manifests: ``"night:3+motion_blur:3"``, or ``"none"``."""
    return "+".join(str(s) for s in sorted(shifts, key=lambda s: SHIFT_ORDER.index(s.name))) or "none"


def packaging_share(shifts: Sequence[Shift]) -> float:
    """Share of parcel items rendered as poly mailers under these shifts (0 without ``new_packaging``)."""
    for s in shifts:
        if s.name == "new_packaging":
            return NEW_PACKAGING_SHARE[s.severity - 1]
    return 0.0


def _albumentations():
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A


def _odd(x: float, lo: int = 3) -> int:
    k = max(lo, int(round(x)))
    return k if k % 2 else k + 1


@functools.lru_cache(maxsize=256)
def _transform(name: str, severity: int, height: int, width: int):
    """The albumentations transform for one shift at one severity and frame size (cached)."""
    A = _albumentations()
    i = severity - 1
    if name == "night":
        gain = NIGHT_GAIN[i]
        scale = min(1.0, NIGHT_NOISE_REF_WIDTH / width)
        std = NIGHT_NOISE_STD[i] / (_UPSAMPLED_NOISE_STD if scale < 1.0 else 1.0)
        return A.Compose([
            # contrast alpha multiplies the image: a pure exposure gain with brightness 0
            A.RandomBrightnessContrast(brightness_limit=(0.0, 0.0), contrast_limit=(gain - 1.0, gain - 1.0), p=1.0),
            A.GaussNoise(std_range=(std, std), mean_range=(0.0, 0.0), per_channel=True, noise_scale_factor=scale,
                         p=1.0),
        ], p=1.0)
    if name == "motion_blur":
        k = max(_odd(MOTION_BLUR_FRAC[i] * width), 2 * severity + 1)  # strictly growing even at small sizes
        # the belt runs along the image x axis: blur mostly horizontal (180 deg +- 12; the kernel is symmetric)
        return A.MotionBlur(blur_limit=(k, k), allow_shifted=False, angle_range=(168, 192),
                            direction_range=(0.0, 0.0), p=1.0)
    if name == "defocus":
        r = max(severity, int(round(DEFOCUS_FRAC[i] * width)))  # strictly growing even at small sizes
        return A.Defocus(radius=(r, r), alias_blur=(0.1, 0.1), p=1.0)
    if name == "glare":  # the flare ghosts; the hot spot and veil are added in _glare
        n = GLARE_CIRCLES[i]
        return A.RandomSunFlare(flare_roi=(0.0, 0.0, 1.0, 1.0), src_radius=max(10, int(0.1 * width)),
                                src_color=(255, 255, 255), angle_range=(0.0, 1.0),
                                num_flare_circles_range=(n, n), method="overlay", p=1.0)
    if name == "lens_dirt":
        # Spatter thresholds a blurred Gaussian field. Blurring white noise with sigma s divides its
        # std by 2*sqrt(pi)*s, so put the threshold at the quantile of the *blurred* field that
        # covers the wanted share of the lens: the coverage is then the same at any frame size.
        from statistics import NormalDist

        sigma = max(1.0, LENS_DIRT_SIGMA_FRAC * width)
        blurred_std = 1.0 / (2.0 * math.sqrt(math.pi) * sigma)
        thr = 0.5 + blurred_std * NormalDist().inv_cdf(1.0 - LENS_DIRT_COVERAGE[i])
        inten = LENS_DIRT_INTENSITY[i]
        return A.Spatter(mean=(0.5, 0.5), std=(1.0, 1.0), gauss_sigma=(sigma, sigma),
                         cutout_threshold=(thr, thr), intensity=(inten, inten), mode="mud", p=1.0)
    if name == "jpeg":  # per-pixel 8x8 blocks: milder on a large frame once it is resized for the model
        q = JPEG_QUALITY[i]
        return A.ImageCompression(compression_type="jpeg", quality_range=(q, q), p=1.0)
    if name == "camera_tilt":
        s = TILT_SCALE[i]
        import cv2

        return A.Perspective(scale=(s, s), keep_size=True, fit_output=False, border_mode=cv2.BORDER_REPLICATE, p=1.0)
    raise ConfigError(f"shift {name!r} has no pixel transform")


def apply_shift(img: np.ndarray, shift: str | Shift, rng: np.random.Generator,
                scene_seed: int | None = None) -> np.ndarray:
    """Apply one pixel shift to a BGR uint8 frame; returns a new uint8 array of the same shape.

    ``rng`` draws the transform's random parameters, so the result is deterministic per rng state.
    ``scene_seed``, when given, fixes the parameters that belong to the camera (dirt pattern, lamp
    position, tilt; see :data:`STATIC_SHIFTS`) so they stay put across the frames of a stream.
    ``new_packaging`` is a render-time shift: the image is returned unchanged (a copy).
    """
    shift = parse_shift(shift)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"apply_shift needs a uint8 (H, W, 3) image, got {img.dtype} {img.shape}")
    if not shift.is_pixel:
        return img.copy()
    h, w = img.shape[:2]
    seed = int(rng.integers(2**31 - 1))
    if scene_seed is not None and shift.name in STATIC_SHIFTS:
        seed = int(scene_seed) % (2**31 - 1)
    if shift.name == "glare":
        img = _glare(img, shift.severity, np.random.default_rng(seed))
    t = _transform(shift.name, shift.severity, h, w)
    t.set_random_seed(seed)
    out = t(image=np.ascontiguousarray(img))["image"]
    return np.ascontiguousarray(out, dtype=np.uint8)


def _glare(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A lamp's reflection: a soft hot spot (screen blend towards white) plus veiling glare.

    albumentations' RandomSunFlare only adds the flare ghosts on top (its own source is faint at
    small sizes), so the hot spot is drawn here.
    """
    import cv2

    h, w = img.shape[:2]
    i = severity - 1
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    sig = GLARE_RADIUS_FRAC[i] * w
    ys = (np.arange(h, dtype=np.float32) - cy) ** 2
    xs = (np.arange(w, dtype=np.float32) - cx) ** 2
    gy = np.exp(-ys / (2 * sig * sig))
    gx = np.exp(-xs / (2 * sig * sig) * 0.6)  # a lamp tube: wider along x
    spot = GLARE_STRENGTH[i] * np.outer(gy, gx)
    a = np.clip(spot + GLARE_VEIL[i], 0.0, 1.0).astype(np.float32)[..., None]
    f = img.astype(np.float32)
    f += (255.0 - f) * a
    return cv2.convertScaleAbs(f)


def apply_shifts(img: np.ndarray, shifts: Sequence[str | Shift], rng: np.random.Generator,
                 scene_seed: int | None = None) -> np.ndarray:
    """Apply several shifts in :data:`SHIFT_ORDER` (render-time ones are skipped)."""
    out = img
    for s in parse_shifts(list(shifts)):
        if s.is_pixel:
            out = apply_shift(out, s, rng, scene_seed=scene_seed)
    return out
