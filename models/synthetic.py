"""Synthetic warehouse data: a top-down camera over a conveyor belt, and the shifts it meets.

The embedded default data source (real users bring their own frames). Everything is drawn with
numpy + OpenCV, deterministically from a ``numpy.random.Generator``, fast enough that a demo's
data costs seconds.

Scene geometry
    The camera sees a ``SCENE_ASPECT`` (4:3) field of view; scene units are fractions of the frame
    height. Any output size maps that same field of view, so a square 96 px training image is the
    4:3 scene squashed exactly as a serving-side ``cv2.resize`` of a 640x480 frame to 96x96 would
    squash it: training images and resized stream frames look alike.

Classes (:data:`CLASS_NAMES`, this order is the label order)
    ``empty_belt``        the belt, with stains and specks, nothing on it
    ``parcel_ok``         a taped parcel with a white shipping label (barcode, text)
    ``parcel_damaged``    crushed corner (cut-back, dark crumpled triangle) and/or a dark ragged tear
    ``parcel_open_flap``  top flaps splayed outward, dark interior and contents visible
    ``label_missing``     a taped parcel with no shipping label (sometimes a red sticker or print)
    ``foreign_object``    no parcel: a glove, a tool (cutter, screwdriver, wrench) or debris
                          (strap, stretch film, paper, wood, bottle)

Packaging
    ``packaging="box"`` (cardboard, the training population) or ``"poly_mailer"`` (soft, shiny,
    coloured plastic bags: the novel subpopulation used by the ``new_packaging`` shift). The class
    semantics stay the same: a mailer with a label is ``parcel_ok``, a torn one ``parcel_damaged``,
    an open adhesive flap ``parcel_open_flap``.

Main entry points
    :func:`render` one image; :func:`generate_dataset` an ImageFolder + ``manifest.csv``;
    :func:`write_stream` a production camera feed (mp4 or JPEG folder) whose conditions change by
    phases, with a manifest keyed by ``source_ref`` (what ingestion puts into ``Frame.source_ref``).
    Shifts: :data:`SHIFTS`, :func:`parse_shift`, :func:`apply_shift` (from :mod:`models.shifts`).
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.shifts import (  # re-exported: the public API lives here
    DEFAULT_SEVERITY,
    RENDER_SHIFTS,
    SEVERITIES,
    SHIFT_ORDER,
    SHIFTS,
    STATIC_SHIFTS,
    Shift,
    apply_shift,
    apply_shifts,
    format_shifts,
    packaging_share,
    parse_shift,
    parse_shifts,
)
from pipeline.types import ConfigError

__all__ = [
    "CLASS_NAMES", "PARCEL_CLASSES", "PACKAGING", "SCENE_ASPECT", "SHIFTS", "SEVERITIES", "DEFAULT_SEVERITY",
    "RENDER_SHIFTS", "STATIC_SHIFTS", "SHIFT_ORDER", "Shift", "parse_shift", "parse_shifts", "format_shifts",
    "apply_shift", "apply_shifts", "packaging_share", "render", "generate_dataset", "write_stream",
    "parse_phases", "Phase", "iter_stream", "StreamFrame", "DATASET_COLUMNS", "STREAM_COLUMNS",
]

CLASS_NAMES: list[str] = [
    "empty_belt",
    "parcel_ok",
    "parcel_damaged",
    "parcel_open_flap",
    "label_missing",
    "foreign_object",
]
#: Classes that show a parcel (and so can be rendered as a poly mailer).
PARCEL_CLASSES = ("parcel_ok", "parcel_damaged", "parcel_open_flap", "label_missing")
PACKAGING = ("box", "poly_mailer")
#: Camera field of view, width / height.
SCENE_ASPECT = 4.0 / 3.0
#: Columns of ``manifest.csv`` written by :func:`generate_dataset` (``packaging`` is extra information).
DATASET_COLUMNS = ("path", "label", "camera", "shift", "severity", "packaging")
#: Columns of the stream manifest written by :func:`write_stream` (``packaging`` is extra information).
STREAM_COLUMNS = ("source_ref", "label", "camera", "shift", "severity", "frame_index", "t", "packaging")

_SS = 1.5  # sprite supersampling relative to output pixels
_SHIFT4 = 16.0  # cv2 fixed-point (shift=4) scale for sub-pixel drawing


# =================================================================================================
# drawing helpers (sprite-local pixel coordinates, float)
# =================================================================================================

def _pts(p: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p, dtype=np.float64) * _SHIFT4).astype(np.int32)


def _poly(img: np.ndarray, pts, color, aa: bool = True) -> None:
    cv2.fillPoly(img, [_pts(pts)], color, lineType=cv2.LINE_AA if aa else cv2.LINE_8, shift=4)


def _line(img: np.ndarray, pts, color, thick: float, closed: bool = False) -> None:
    cv2.polylines(img, [_pts(pts)], closed, color, max(1, int(round(thick))), lineType=cv2.LINE_AA, shift=4)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _ellipse(cx: float, cy: float, ax: float, ay: float, angle: float = 0.0, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = math.cos(angle), math.sin(angle)
    x, y = ax * np.cos(t), ay * np.sin(t)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _capsule(p0, p1, r: float, n: int = 10) -> np.ndarray:
    """Stadium polygon between points p0 and p1 with radius r."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    a = math.atan2(d[1], d[0])
    t0 = np.linspace(a + np.pi / 2, a + 3 * np.pi / 2, n)
    t1 = np.linspace(a - np.pi / 2, a + np.pi / 2, n)
    arc0 = p0 + r * np.stack([np.cos(t0), np.sin(t0)], 1)
    arc1 = p1 + r * np.stack([np.cos(t1), np.sin(t1)], 1)
    return np.concatenate([arc0, arc1])


def _jagged(p0, p1, rng: np.random.Generator, n: int, amp: float) -> np.ndarray:
    """Points from p0 to p1 with perpendicular jitter (a torn or crumpled edge)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    t = np.linspace(0, 1, n)[:, None]
    pts = p0 + t * (p1 - p0)
    d = p1 - p0
    nrm = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9)
    j = rng.uniform(-amp, amp, n)
    j[0] = j[-1] = 0
    return pts + j[:, None] * nrm


def _tone(color, f: float) -> tuple[float, float, float]:
    return tuple(min(255.0, max(0.0, float(c) * f)) for c in color)


def _to_u8(f: np.ndarray) -> np.ndarray:
    """Saturating float -> uint8 (clips in place)."""
    np.clip(f, 0, 255, out=f)
    return f.astype(np.uint8)


_BANK_SIZE = 1024


@functools.lru_cache(maxsize=1)
def _bank() -> np.ndarray:
    """A fixed field of standard normal noise; crops at random offsets stand in for fresh noise."""
    return np.random.default_rng(20240611).standard_normal((_BANK_SIZE, _BANK_SIZE), dtype=np.float32)


def _noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """(h, w) float32 Gaussian noise with std ``sigma`` (a random crop of the bank when it fits)."""
    if h <= _BANK_SIZE and w <= _BANK_SIZE:
        oy = int(rng.integers(0, _BANK_SIZE - h + 1))
        ox = int(rng.integers(0, _BANK_SIZE - w + 1))
        return _bank()[oy:oy + h, ox:ox + w] * np.float32(sigma)
    return rng.standard_normal((h, w), dtype=np.float32) * np.float32(sigma)


def _mix(a, b, t: float) -> tuple[float, float, float]:
    return tuple(float(x * (1 - t) + y * t) for x, y in zip(a, b))


class _Sprite:
    """An object drawn axis-aligned in its own canvas: BGR uint8 + alpha uint8, ``ppu`` px per scene unit."""

    def __init__(self, w_units: float, h_units: float, ppu: float):
        self.ppu = ppu
        self.w = max(4, int(math.ceil(w_units * ppu)))
        self.h = max(4, int(math.ceil(h_units * ppu)))
        self.bgr = np.zeros((self.h, self.w, 3), np.uint8)
        self.alpha = np.zeros((self.h, self.w), np.uint8)

    def u(self, x: float) -> float:
        """Scene units to sprite px."""
        return x * self.ppu

    @property
    def center(self) -> tuple[float, float]:
        return self.w / 2.0, self.h / 2.0

    def fill(self, pts, color, alpha: int = 255) -> None:
        _poly(self.bgr, pts, color)
        _poly(self.alpha, pts, alpha)

    def cut(self, pts) -> None:
        """Make a region transparent (the belt shows through)."""
        _poly(self.alpha, pts, 0)

    def texture(self, rng: np.random.Generator, sigma: float, grain: float = 0.0) -> None:
        """Add fibre/plastic noise where alpha > 0 (optionally streaky along x with ``grain``)."""
        n = _noise(rng, self.h, self.w, sigma)
        if grain > 0:
            g = _noise(rng, self.h, max(2, self.w // 8), sigma * grain)
            n += cv2.resize(g, (self.w, self.h), interpolation=cv2.INTER_LINEAR)
        f = self.bgr.astype(np.float32)
        f += n[..., None]
        self.bgr = _to_u8(f)

    def shade(self, rng: np.random.Generator, strength: float) -> None:
        """Directional light ramp over the sprite (multiplicative, 1 +- strength)."""
        a = rng.uniform(0, 2 * np.pi)
        xs = (np.arange(self.w, dtype=np.float32) / self.w - 0.5) * math.cos(a)
        ys = (np.arange(self.h, dtype=np.float32) / self.h - 0.5) * math.sin(a)
        ramp = 1.0 + 2 * strength * (ys[:, None] + xs[None, :])
        f = self.bgr.astype(np.float32)
        f *= ramp[..., None]
        self.bgr = _to_u8(f)


def _paste(dst: _Sprite, src: _Sprite, cx: float, cy: float, angle: float, opacity: float = 1.0) -> None:
    """Composite ``src`` onto ``dst`` (inside dst's own alpha) centred at (cx, cy) dst px, rotated by
    ``angle`` rad; both at the same px per unit."""
    c, s = math.cos(angle), math.sin(angle)
    sx, sy = src.center
    M = np.array([[c, -s, cx - (c * sx - s * sy)], [s, c, cy - (s * sx + c * sy)]], np.float64)
    col = cv2.warpAffine(src.bgr, M, (dst.w, dst.h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    a = cv2.warpAffine(src.alpha, M, (dst.w, dst.h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    af = a.astype(np.float32)[..., None] * (opacity / 255.0)
    af *= dst.alpha.astype(np.float32)[..., None] / 255.0
    dst.bgr = (dst.bgr.astype(np.float32) * (1 - af) + col.astype(np.float32) * af).astype(np.uint8)


# =================================================================================================
# shipping label, stickers
# =================================================================================================

def _label_sprite(rng: np.random.Generator, w_units: float, h_units: float, ppu: float) -> _Sprite:
    """A white shipping label: carrier bar, address text lines, a 1-D barcode, sometimes a 2-D code."""
    lab = _Sprite(w_units, h_units, ppu)
    w, h = lab.w, lab.h
    white = (float(rng.uniform(228, 250)),) * 3
    white = (white[0] - rng.uniform(0, 8), white[1] - rng.uniform(0, 4), white[2])
    lab.fill(_rect(0, 0, w, h), white)
    ink = (25, 25, 28)
    m = 0.07 * min(w, h)
    y = m
    if rng.random() < 0.4:  # carrier header bar
        hb = 0.09 * h
        _poly(lab.bgr, _rect(m, y, w - m, y + hb), (60, 60, 64))
        y += hb + 0.05 * h
    for _ in range(int(rng.integers(2, 5))):  # address lines
        lh = max(1.0, 0.045 * h)
        _poly(lab.bgr, _rect(m, y, m + rng.uniform(0.3, 0.85) * (w - 2 * m), y + lh), (70, 70, 75))
        y += lh * 2.2
    # 1-D barcode in the lower part
    bx0, bx1 = m, w - m
    if rng.random() < 0.25:  # 2-D code on the right
        q = 0.28 * h
        cx0 = w - m - q
        grid = rng.random((7, 7)) < 0.5
        cell = q / 7
        for (i, j) in zip(*np.nonzero(grid)):
            _poly(lab.bgr, _rect(cx0 + j * cell, h - m - q + i * cell, cx0 + (j + 1) * cell,
                                 h - m - q + (i + 1) * cell), ink, aa=False)
        bx1 = cx0 - m
    by0, by1 = max(y, h - m - 0.38 * h), h - m
    x = bx0
    unit = max(0.6, (bx1 - bx0) / 60.0)
    while x < bx1 - unit:
        bw = unit * rng.integers(1, 4)
        if rng.random() < 0.55:
            _poly(lab.bgr, _rect(x, by0, min(x + bw, bx1), by1), ink, aa=False)
        x += bw
    return lab


def _sticker_sprite(rng: np.random.Generator, ppu: float, size: float) -> _Sprite:
    """A small coloured 'FRAGILE' / handling sticker (not a shipping label)."""
    st = _Sprite(size, size * rng.uniform(0.5, 0.8), ppu)
    col = [(40, 40, 200), (30, 120, 235), (40, 170, 60)][int(rng.integers(0, 3))]
    st.fill(_rect(0, 0, st.w, st.h), col)
    for k in range(2):
        y = st.h * (0.3 + 0.3 * k)
        _poly(st.bgr, _rect(st.w * 0.15, y, st.w * rng.uniform(0.5, 0.85), y + max(1, st.h * 0.1)), (235, 235, 235))
    return st


def _add_label(rng: np.random.Generator, sp: _Sprite, x0: float, y0: float, x1: float, y1: float) -> None:
    """Put a shipping label somewhere inside the rectangle (sprite px) of the parcel's top."""
    fw, fh = (x1 - x0), (y1 - y0)
    if rng.random() < 0.5:
        lw, lh = fw * rng.uniform(0.38, 0.5), fh * rng.uniform(0.45, 0.62)
        ang = rng.normal(0, 0.06)
    else:  # label turned by 90 degrees
        lw, lh = fh * rng.uniform(0.45, 0.6), fw * rng.uniform(0.3, 0.4)
        ang = np.pi / 2 + rng.normal(0, 0.06)
    lab = _label_sprite(rng, lw / sp.ppu, lh / sp.ppu, sp.ppu)
    ew = abs(math.cos(ang)) * lab.w + abs(math.sin(ang)) * lab.h
    eh = abs(math.sin(ang)) * lab.w + abs(math.cos(ang)) * lab.h
    cx = rng.uniform(x0 + ew / 2, max(x0 + ew / 2, x1 - ew / 2))
    cy = rng.uniform(y0 + eh / 2, max(y0 + eh / 2, y1 - eh / 2))
    _paste(sp, lab, cx, cy, ang)


def _maybe_markings(rng: np.random.Generator, sp: _Sprite, x0, y0, x1, y1, base) -> None:
    """Printed marks and handling stickers that any box may carry (they are not shipping labels)."""
    fw, fh = x1 - x0, y1 - y0
    if rng.random() < 0.15:  # printed ink logo / arrows (faint: they must not read as damage)
        ink = _tone(base, rng.uniform(0.6, 0.75))
        cx, cy = rng.uniform(x0 + 0.15 * fw, x1 - 0.15 * fw), rng.uniform(y0 + 0.15 * fh, y1 - 0.15 * fh)
        r = 0.1 * min(fw, fh)
        if rng.random() < 0.5:
            _line(sp.bgr, _ellipse(cx, cy, r, r, n=16), ink, max(1, r * 0.25), closed=True)
        else:
            for k in (-1, 1):
                _poly(sp.bgr, np.array([[cx + k * r, cy + r], [cx + k * r - 0.6 * r, cy], [cx + k * r + 0.6 * r, cy]]), ink)
    if rng.random() < 0.2:
        st = _sticker_sprite(rng, sp.ppu, 0.22 * min(fw, fh) / sp.ppu * 2)
        _paste(sp, st, rng.uniform(x0 + st.w, max(x0 + st.w, x1 - st.w)),
               rng.uniform(y0 + st.h, max(y0 + st.h, y1 - st.h)), rng.uniform(0, np.pi))


# =================================================================================================
# parcels: cardboard boxes
# =================================================================================================

def _cardboard(rng: np.random.Generator) -> tuple[float, float, float]:
    r = rng.uniform(150, 210)
    g = rng.uniform(0.68, 0.8)
    return (r * (g - 0.2 + rng.uniform(-0.04, 0.04)), r * g, r)


def _tape_color(rng: np.random.Generator, base) -> tuple[float, float, float]:
    k = rng.random()
    if k < 0.5:  # brown packing tape: more saturated, a bit darker
        return (base[0] * 0.55, base[1] * 0.8, min(255, base[2] * 0.95))
    if k < 0.85:  # clear tape: shiny version of the board
        return _tone(base, 1.12)
    if k < 0.92:
        return (215.0, 215.0, 218.0)  # white tape
    return (60.0, 60.0, 200.0) if rng.random() < 0.5 else (170.0, 110.0, 40.0)  # branded red/blue tape


def _box_sprite(cls: str, rng: np.random.Generator, ppu: float) -> _Sprite:
    L = rng.uniform(0.38, 0.6)
    S = L * rng.uniform(0.55, 0.85)
    open_flap = cls == "parcel_open_flap"
    ext_long = S * 0.5 * rng.uniform(0.55, 1.0) if open_flap else 0.0  # projected length of opened long flaps
    ext_short = S * 0.5 * rng.uniform(0.5, 1.0) if open_flap else 0.0
    which = rng.random()
    open_long = (True, True) if which < 0.6 else ((True, False) if which < 0.8 else (False, True))
    open_short = open_flap and rng.random() < 0.35
    pad = 0.01
    W = L + 2 * (ext_short if open_short else 0.0) + 2 * pad
    H = S + 2 * ext_long + 2 * pad
    sp = _Sprite(W, H, ppu)
    cx, cy = sp.center
    x0, x1 = cx - sp.u(L) / 2, cx + sp.u(L) / 2
    y0, y1 = cy - sp.u(S) / 2, cy + sp.u(S) / 2
    base = _cardboard(rng)
    edge = _tone(base, 0.72)
    thick = max(1.0, 0.006 * ppu)

    if open_flap:
        inner = _mix(base, (230, 230, 230), 0.12)  # flap inner side: paler
        el, es = sp.u(ext_long), sp.u(ext_short)
        flaps = []
        if open_long[0]:
            flaps.append(np.array([[x0, y0], [x1, y0], [x1 - 0.03 * (x1 - x0), y0 - el], [x0 + 0.03 * (x1 - x0), y0 - el]]))
        if open_long[1]:
            flaps.append(np.array([[x0, y1], [x1, y1], [x1 - 0.03 * (x1 - x0), y1 + el], [x0 + 0.03 * (x1 - x0), y1 + el]]))
        if open_short:
            flaps.append(np.array([[x0, y0], [x0, y1], [x0 - es, y1 - 0.1 * (y1 - y0)], [x0 - es, y0 + 0.1 * (y1 - y0)]]))
            flaps.append(np.array([[x1, y0], [x1, y1], [x1 + es, y1 - 0.1 * (y1 - y0)], [x1 + es, y0 + 0.1 * (y1 - y0)]]))
        for f in flaps:
            sp.fill(f, _tone(inner, rng.uniform(0.9, 1.08)))
            _line(sp.bgr, f, edge, thick, closed=True)
        # box rim and dark interior
        sp.fill(_rect(x0, y0, x1, y1), base)
        wall = max(1.5, 0.035 * sp.u(S))
        ix0, iy0, ix1, iy1 = x0 + wall, y0 + wall, x1 - wall, y1 - wall
        dark = _tone(base, rng.uniform(0.28, 0.42))
        _poly(sp.bgr, _rect(ix0, iy0, ix1, iy1), dark)
        # shadow of the walls falling inside
        sh = _tone(dark, 0.6)
        _poly(sp.bgr, _rect(ix0, iy0, ix1, iy0 + (iy1 - iy0) * rng.uniform(0.15, 0.3)), sh)
        r = rng.random()
        if r < 0.4:  # crumpled packing paper
            for _ in range(int(rng.integers(2, 5))):
                pc = (rng.uniform(ix0, ix1), rng.uniform(iy0, iy1))
                rad = rng.uniform(0.12, 0.25) * (iy1 - iy0)
                pts = _ellipse(pc[0], pc[1], rad, rad * rng.uniform(0.6, 1), rng.uniform(0, 3), n=10)
                pts += rng.uniform(-0.25, 0.25, pts.shape) * rad
                pts[:, 0] = np.clip(pts[:, 0], ix0, ix1)
                pts[:, 1] = np.clip(pts[:, 1], iy0, iy1)
                col = _tone((200, 205, 210) if rng.random() < 0.6 else base, rng.uniform(0.6, 0.85))
                _poly(sp.bgr, pts, col)
        elif r < 0.7:  # a product inside
            pw, ph = (ix1 - ix0) * rng.uniform(0.35, 0.7), (iy1 - iy0) * rng.uniform(0.35, 0.7)
            px, py = rng.uniform(ix0, ix1 - pw), rng.uniform(iy0, iy1 - ph)
            col = tuple(float(c) for c in rng.uniform(30, 160, 3))
            _poly(sp.bgr, _rect(px, py, px + pw, py + ph), col)
        _line(sp.bgr, _rect(x0, y0, x1, y1), edge, thick, closed=True)
        _line(sp.bgr, _rect(ix0, iy0, ix1, iy1), _tone(base, 0.55), thick, closed=True)
        # cut tape remnants on the long flaps
        if rng.random() < 0.7:
            tw = sp.u(S) * rng.uniform(0.12, 0.2)
            tc = _tape_color(rng, base)
            for k, sgn in ((0, -1), (1, 1)):
                if open_long[k]:
                    yb = y0 if sgn < 0 else y1
                    _poly(sp.bgr, _rect(x0, yb + sgn * el * 0.75, x0 + tw * 0.8, yb + sgn * el), tc)
                    _poly(sp.bgr, _rect(x1 - tw * 0.8, yb + sgn * el * 0.75, x1, yb + sgn * el), tc)
        if rng.random() < 0.5 and open_long[0] and el > 0.35 * sp.u(S) * 0.5:  # label on an opened flap
            _add_label(rng, sp, x0 + 0.05 * (x1 - x0), y0 - el * 0.95, x1 - 0.05 * (x1 - x0), y0 - el * 0.05)
        sp.texture(rng, 4.0)
        sp.shade(rng, 0.06)
        return sp

    # ---- closed box: top face, seam, tape -------------------------------------------------------
    sp.fill(_rect(x0, y0, x1, y1), base)
    sp.texture(rng, 3.5, grain=0.8)
    sp.shade(rng, rng.uniform(0.02, 0.08))
    _line(sp.bgr, np.array([[x0, cy], [x1, cy]]), _tone(base, 0.6), thick)  # flap seam
    tw = sp.u(S) * rng.uniform(0.14, 0.24)
    tc = _tape_color(rng, base)
    _poly(sp.bgr, _rect(x0, cy - tw / 2, x1, cy + tw / 2), tc)
    _line(sp.bgr, np.array([[x0, cy - tw * 0.15], [x1, cy - tw * 0.15]]), _tone(tc, 1.15), thick)  # tape shine
    if rng.random() < 0.35:  # H-taping over the ends
        for xe in (x0, x1 - tw * 0.9):
            _poly(sp.bgr, _rect(xe, y0, xe + tw * 0.9, y1), tc)
    _line(sp.bgr, _rect(x0, y0, x1, y1), edge, thick, closed=True)
    _maybe_markings(rng, sp, x0, y0, x1, y1, base)

    has_label = cls == "parcel_ok" or (cls == "parcel_damaged" and rng.random() < 0.85)
    if has_label:
        _add_label(rng, sp, x0 + 0.04 * (x1 - x0), y0 + 0.06 * (y1 - y0), x1 - 0.04 * (x1 - x0), y1 - 0.06 * (y1 - y0))

    if cls == "parcel_damaged":
        _creases(rng, sp, (x0, y0, x1, y1), base, thick)
        r = rng.random()  # 25% crushed corner, 25% tear, 50% both
        if r < 0.75:
            _crushed_corner(rng, sp, (x0, y0, x1, y1), base, thick)
        if r >= 0.25:
            _tear(rng, sp, (x0, y0, x1, y1), dark=_tone(base, 0.15), lip=_mix(base, (240, 240, 240), 0.7),
                  thick=thick)
    return sp


def _crushed_corner(rng, sp: _Sprite, box, base, thick) -> None:
    """A crushed corner: a dark crumpled triangle with creases, the corner itself pushed in (cut back)."""
    x0, y0, x1, y1 = box
    S = min(x1 - x0, y1 - y0)
    d1, d2 = S * rng.uniform(0.6, 0.85), S * rng.uniform(0.6, 0.85)
    k = int(rng.integers(0, 4))
    corner = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)][k], float)
    ex = np.array([1.0 if k in (0, 3) else -1.0, 0.0])
    ey = np.array([0.0, 1.0 if k in (0, 1) else -1.0])
    a, b = corner + d1 * ex, corner + d2 * ey
    # crushed triangle: darker, crumpled
    tri = np.array([corner, a, b])
    _poly(sp.bgr, tri, _tone(base, rng.uniform(0.35, 0.5)))
    hyp = _jagged(a, b, rng, 7, 0.08 * S)
    _line(sp.bgr, hyp, _tone(base, 0.2), max(thick, 0.06 * S))
    for _ in range(int(rng.integers(3, 6))):  # creases towards the corner
        t = rng.uniform(0.1, 0.9)
        p = a + t * (b - a)
        q = corner + rng.uniform(0.2, 0.6) * (p - corner)
        _line(sp.bgr, np.array([p, q]), _tone(base, rng.choice([0.2, 1.3])), max(thick, 0.025 * S))
    # the corner itself is pushed in: cut it back with a jagged edge
    f = rng.uniform(0.5, 0.75)
    ca, cb = corner + f * d1 * ex, corner + f * d2 * ey
    cutpoly = np.concatenate([[corner], _jagged(ca, cb, rng, 6, 0.05 * S)])
    sp.cut(cutpoly)
    _line(sp.bgr, _jagged(ca, cb, rng, 6, 0.05 * S), _tone(base, 0.35), thick)


def _creases(rng, sp: _Sprite, box, base, thick) -> None:
    """Dents across a crushed top: long dark folds with a lit edge."""
    x0, y0, x1, y1 = box
    S = min(x1 - x0, y1 - y0)
    for _ in range(int(rng.integers(2, 4))):
        p0 = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
        ang = rng.uniform(0, np.pi)
        d = np.array([math.cos(ang), math.sin(ang)]) * S * rng.uniform(0.35, 0.6)
        pts = _jagged(p0 - d, p0 + d, rng, 5, 0.06 * S)
        pts = np.clip(pts, [x0, y0], [x1, y1])
        w = max(thick, 0.045 * S)
        _line(sp.bgr, pts, _tone(base, 0.3), w)
        _line(sp.bgr, pts + w, _tone(base, 1.3), max(1.0, w * 0.6))


def _tear(rng, sp: _Sprite, box, dark, lip, thick, scale: float = 1.0) -> None:
    """A ragged open tear: dark inside, pale torn lips. ``scale`` enlarges it (soft bags gape wider)."""
    x0, y0, x1, y1 = box
    W, H = x1 - x0, y1 - y0
    length = max(W, H) * rng.uniform(0.5, 0.75) * min(scale, 1.2)  # at most 0.9 of the parcel
    width = min(W, H) * rng.uniform(0.2, 0.32) * scale
    ang = rng.uniform(0, np.pi)
    c = np.array([rng.uniform(x0 + 0.3 * W, x1 - 0.3 * W), rng.uniform(y0 + 0.3 * H, y1 - 0.3 * H)])
    d = np.array([math.cos(ang), math.sin(ang)])
    nrm = np.array([-d[1], d[0]])
    n = 9
    t = np.linspace(-0.5, 0.5, n)
    prof = np.sin(np.linspace(0, np.pi, n)) * width / 2
    centre = c + (t * length)[:, None] * d
    up = centre + ((prof + rng.uniform(0, 0.25, n) * width) * (prof > 0))[:, None] * nrm
    lo = centre - ((prof + rng.uniform(0, 0.25, n) * width) * (prof > 0))[:, None] * nrm
    poly = np.concatenate([up, lo[::-1]])
    poly[:, 0] = np.clip(poly[:, 0], x0 + 1, x1 - 1)
    poly[:, 1] = np.clip(poly[:, 1], y0 + 1, y1 - 1)
    _poly(sp.bgr, poly, dark)
    _line(sp.bgr, np.clip(up, [x0, y0], [x1, y1]), lip, max(thick, 0.035 * min(W, H)))
    _line(sp.bgr, np.clip(lo, [x0, y0], [x1, y1]), lip, max(thick, 0.035 * min(W, H)))
    if rng.random() < 0.5:  # a torn-back flap of board
        p = centre[n // 2]
        tri = np.array([p + nrm * width * 0.5, p + nrm * width * 1.4 + d * length * 0.15, p + d * length * 0.3])
        _poly(sp.bgr, tri, lip)


# =================================================================================================
# parcels: poly mailers (the novel subpopulation)
# =================================================================================================

_MAILER_COLOURS = (
    (150, 150, 152), (228, 228, 230), (48, 46, 46), (185, 130, 238), (150, 70, 115),
    (205, 135, 45), (160, 150, 45), (90, 165, 85), (70, 200, 235), (60, 60, 190),
)


def _mailer_sprite(cls: str, rng: np.random.Generator, ppu: float) -> _Sprite:
    L = rng.uniform(0.38, 0.6)
    S = L * rng.uniform(0.6, 0.85)
    open_flap = cls == "parcel_open_flap"
    flap_len = L * rng.uniform(0.18, 0.3) if open_flap else 0.0
    pad = 0.02
    sp = _Sprite(L + flap_len + 2 * pad, S + 2 * pad, ppu)
    cx, cy = sp.center
    x0 = cx - sp.u(L + flap_len) / 2
    x1 = x0 + sp.u(L)
    y0, y1 = cy - sp.u(S) / 2, cy + sp.u(S) / 2
    base = _MAILER_COLOURS[int(rng.integers(0, len(_MAILER_COLOURS)))]
    base = _tone(base, rng.uniform(0.9, 1.08))
    thick = max(1.0, 0.006 * ppu)
    # soft, slightly wavy outline with rounded corners
    rad = 0.12 * sp.u(S)
    outline = []
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        outline.append(_jagged((ax, ay), (bx, by), rng, 8, 0.012 * sp.u(S)))
    outline = np.concatenate(outline)
    # round the corners by pulling the corner points inwards
    for corner in ((x0, y0), (x1, y0), (x1, y1), (x0, y1)):
        dd = np.hypot(outline[:, 0] - corner[0], outline[:, 1] - corner[1])
        m = dd < rad
        outline[m] += (np.array([cx, cy]) - outline[m]) * 0.06
    sp.fill(outline, base)
    # pillow shading: bright middle, darker rim
    yy, xx = np.mgrid[0:sp.h, 0:sp.w].astype(np.float32)
    nx = (xx - (x0 + x1) / 2) / max(1.0, (x1 - x0) / 2)
    ny = (yy - cy) / max(1.0, (y1 - y0) / 2)
    pillow = 1.08 - 0.3 * np.clip(nx * nx * 0.6 + ny * ny, 0, 1.5)
    f = sp.bgr.astype(np.float32) * pillow[..., None]
    # specular highlights: the shine that cardboard never has
    spec = np.zeros((sp.h, sp.w), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        hc = (rng.uniform(x0 + 0.15 * (x1 - x0), x1 - 0.15 * (x1 - x0)), rng.uniform(y0 + 0.15 * (y1 - y0), y1 - 0.15 * (y1 - y0)))
        _poly(spec, _ellipse(hc[0], hc[1], sp.u(S) * rng.uniform(0.12, 0.3), sp.u(S) * rng.uniform(0.02, 0.06),
                             rng.uniform(0, np.pi)), float(rng.uniform(0.5, 0.9)), aa=False)
    k = max(3, int(0.05 * sp.u(S)) | 1)
    spec = cv2.GaussianBlur(spec, (k, k), 0)
    f = f + spec[..., None] * (255.0 - f) * 0.9
    sp.bgr = _to_u8(f)
    # wrinkles
    for _ in range(int(rng.integers(3, 8))):
        p0 = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
        p1 = p0 + rng.normal(0, 0.25, 2) * sp.u(S)
        w = _jagged(p0, p1, rng, 5, 0.04 * sp.u(S))
        _line(sp.bgr, w, _tone(base, 0.7), thick)
        _line(sp.bgr, w + 1.2 * thick, _tone(_mix(base, (255, 255, 255), 0.5), 1.0), thick)
    # heat seal at the closed end
    _poly(sp.bgr, _rect(x0 + 0.01 * sp.u(L), y0 + 0.05 * sp.u(S), x0 + 0.05 * sp.u(L), y1 - 0.05 * sp.u(S)),
          _tone(base, 0.85))
    sp.bgr = np.where(sp.alpha[..., None] > 0, sp.bgr, 0).astype(np.uint8)

    if open_flap:
        inner = (200.0, 200.0, 200.0) if rng.random() < 0.6 else _tone(base, 1.2)
        fl = sp.u(flap_len)
        flap = np.array([[x1, y0 + 0.04 * sp.u(S)], [x1 + fl, y0 + 0.1 * sp.u(S)],
                         [x1 + fl, y1 - 0.1 * sp.u(S)], [x1, y1 - 0.04 * sp.u(S)]])
        sp.fill(flap, inner)
        # adhesive strip / release liner on the flap
        liner = (235.0, 235.0, 240.0) if rng.random() < 0.5 else (220.0, 170.0, 90.0)
        _poly(sp.bgr, _rect(x1 + 0.45 * fl, y0 + 0.14 * sp.u(S), x1 + 0.8 * fl, y1 - 0.14 * sp.u(S)), liner)
        # dark gaping mouth of the bag
        _poly(sp.bgr, _rect(x1 - 0.08 * sp.u(L), y0 + 0.1 * sp.u(S), x1 - 0.005 * sp.u(L), y1 - 0.1 * sp.u(S)),
              _tone(base, 0.25))

    if cls == "parcel_ok":
        has_label = True
    elif cls == "parcel_damaged":
        has_label = rng.random() < 0.85
    elif cls == "parcel_open_flap":
        has_label = rng.random() < 0.6
    else:
        has_label = False
    if has_label:
        _add_label(rng, sp, x0 + 0.1 * sp.u(L), y0 + 0.1 * sp.u(S), x1 - 0.12 * sp.u(L), y1 - 0.1 * sp.u(S))
    if cls == "parcel_damaged":
        # a soft bag does not crush like a box: damage is a gaping tear (sometimes with a crumpled corner)
        box = (x0 + 0.03 * sp.u(L), y0 + 0.03 * sp.u(S), x1 - 0.03 * sp.u(L), y1 - 0.03 * sp.u(S))
        if rng.random() < 0.3:
            _crushed_corner(rng, sp, box, base, thick)
        contents = _cardboard(rng) if rng.random() < 0.5 else tuple(float(c) for c in rng.uniform(20, 90, 3))
        _tear(rng, sp, box, dark=_tone(contents, 0.5), lip=_mix(base, (255, 255, 255), 0.6), thick=thick, scale=1.3)
    return sp


# =================================================================================================
# foreign objects
# =================================================================================================

def _glove_sprite(rng: np.random.Generator, ppu: float) -> _Sprite:
    s = rng.uniform(0.3, 0.42)  # length of the glove, scene units
    sp = _Sprite(s * 1.1, s * 1.0, ppu)
    cx, cy = sp.center
    U = sp.u(s)
    col = [(215, 140, 40), (40, 40, 45), (220, 222, 218), (40, 200, 235), (30, 130, 240),
           (140, 140, 140), (200, 90, 140)][int(rng.integers(0, 7))]
    col = _tone(col, rng.uniform(0.85, 1.1))
    palm = np.array([cx - 0.05 * U, cy])
    parts = [_ellipse(palm[0], palm[1], 0.2 * U, 0.17 * U, 0.0, n=20),
             _rect(palm[0] - 0.45 * U, palm[1] - 0.13 * U, palm[0] - 0.12 * U, palm[1] + 0.13 * U)]  # cuff
    spread = rng.uniform(0.05, 0.22)
    for i in range(4):
        a = (i - 1.5) * spread
        ln = U * (0.24 + (0.04 if i in (1, 2) else 0.0)) * rng.uniform(0.85, 1.1)
        base = palm + np.array([0.16 * U, (i - 1.5) * 0.085 * U])
        tip = base + ln * np.array([math.cos(a), math.sin(a)])
        parts.append(_capsule(base, tip, 0.042 * U))
    ta = rng.uniform(0.7, 1.2) * (1 if rng.random() < 0.5 else -1)
    tb = palm + np.array([0.02 * U, np.sign(ta) * 0.15 * U])
    parts.append(_capsule(tb, tb + 0.2 * U * np.array([math.cos(ta), math.sin(ta)]), 0.045 * U))
    for p in parts:
        sp.fill(p, col)
    sp.texture(rng, 5.0)
    sp.shade(rng, 0.12)
    for p in parts[2:]:
        _line(sp.bgr, p, _tone(col, 0.6), max(1, 0.004 * ppu), closed=True)
    if rng.random() < 0.4:  # dipped palm / rib texture
        _line(sp.bgr, parts[1], _tone(col, 0.7), max(1, 0.006 * ppu), closed=True)
    return sp


def _tool_sprite(rng: np.random.Generator, ppu: float) -> _Sprite:
    kind = rng.integers(0, 3)
    metal = (float(rng.uniform(170, 200)),) * 3
    if kind == 0:  # box cutter
        Lh = rng.uniform(0.24, 0.32)
        sp = _Sprite(Lh * 1.35, Lh * 0.4, ppu)
        cx, cy = sp.center
        U = sp.u(Lh)
        col = [(30, 200, 240), (30, 120, 235), (200, 120, 30), (40, 40, 200)][int(rng.integers(0, 4))]
        sp.fill(_capsule((cx - 0.5 * U, cy), (cx + 0.35 * U, cy), 0.12 * U), col)
        sp.fill(np.array([[cx + 0.42 * U, cy - 0.08 * U], [cx + 0.62 * U, cy - 0.02 * U],
                          [cx + 0.55 * U, cy + 0.07 * U], [cx + 0.42 * U, cy + 0.07 * U]]), metal)
        for k in range(4):
            x = cx - 0.35 * U + k * 0.12 * U
            _line(sp.bgr, np.array([[x, cy - 0.08 * U], [x, cy + 0.08 * U]]), _tone(col, 0.6), max(1, 0.004 * ppu))
    elif kind == 1:  # screwdriver
        Lt = rng.uniform(0.34, 0.45)
        sp = _Sprite(Lt * 1.1, Lt * 0.25, ppu)
        cx, cy = sp.center
        U = sp.u(Lt)
        col = [(40, 40, 210), (30, 200, 240), (40, 40, 40), (60, 160, 60)][int(rng.integers(0, 4))]
        sp.fill(_capsule((cx - 0.45 * U, cy), (cx - 0.08 * U, cy), 0.065 * U), col)
        sp.fill(_rect(cx - 0.08 * U, cy - 0.018 * U, cx + 0.48 * U, cy + 0.018 * U), metal)
        _line(sp.bgr, np.array([[cx - 0.4 * U, cy - 0.03 * U], [cx - 0.12 * U, cy - 0.03 * U]]), _tone(col, 1.4),
              max(1, 0.004 * ppu))
    else:  # wrench
        Lw = rng.uniform(0.3, 0.42)
        sp = _Sprite(Lw * 1.3, Lw * 0.45, ppu)
        cx, cy = sp.center
        U = sp.u(Lw)
        sp.fill(_rect(cx - 0.45 * U, cy - 0.04 * U, cx + 0.45 * U, cy + 0.04 * U), metal)
        for sgn in (-1, 1):
            sp.fill(_ellipse(cx + sgn * 0.5 * U, cy, 0.12 * U, 0.12 * U), metal)
            sp.cut(_ellipse(cx + sgn * 0.53 * U, cy, 0.05 * U, 0.05 * U, n=12))
        sp.cut(_rect(cx + 0.55 * U, cy - 0.045 * U, cx + 0.7 * U, cy + 0.045 * U))
        _line(sp.bgr, np.array([[cx - 0.4 * U, cy - 0.015 * U], [cx + 0.4 * U, cy - 0.015 * U]]), (235, 235, 235),
              max(1, 0.004 * ppu))
    sp.texture(rng, 3.0)
    return sp


def _debris_sprite(rng: np.random.Generator, ppu: float) -> _Sprite:
    kind = rng.integers(0, 5)
    if kind == 0:  # plastic strapping band, curled
        n = 12
        Ls = rng.uniform(0.35, 0.55)
        sp = _Sprite(Ls * 0.9, Ls * 0.9, ppu)
        t = np.linspace(0, rng.uniform(1.5, 3.5), n)
        r = sp.u(Ls) * np.linspace(0.38, 0.15, n)
        a0 = rng.uniform(0, 6)
        pts = np.stack([sp.center[0] + r * np.cos(a0 + t), sp.center[1] + r * np.sin(a0 + t)], 1)
        col = [(30, 210, 240), (240, 240, 240), (30, 30, 30), (190, 120, 30), (40, 60, 200)][int(rng.integers(0, 5))]
        w = max(2, 0.03 * ppu)
        _line(sp.bgr, pts, col, w)
        _line(sp.alpha, pts, 255, w)
    elif kind == 1:  # stretch film: translucent whitish crumple
        Rf = rng.uniform(0.12, 0.18)
        sp = _Sprite(Rf * 2.6, Rf * 2.6, ppu)
        pts = _ellipse(*sp.center, sp.u(Rf), sp.u(Rf) * rng.uniform(0.5, 0.9), rng.uniform(0, 3), n=14)
        pts += rng.uniform(-0.3, 0.3, pts.shape) * sp.u(Rf)
        sp.fill(pts, (235, 235, 230), alpha=int(rng.uniform(150, 210)))
        for _ in range(6):
            p0 = np.array(sp.center) + rng.normal(0, 0.5, 2) * sp.u(Rf)
            _line(sp.bgr, _jagged(p0, p0 + rng.normal(0, 0.6, 2) * sp.u(Rf), rng, 4, 0.1 * sp.u(Rf)), (255, 255, 255),
                  max(1, 0.006 * ppu))
    elif kind == 2:  # crumpled paper
        Rp = rng.uniform(0.09, 0.14)
        sp = _Sprite(Rp * 2.8, Rp * 2.8, ppu)
        pts = _ellipse(*sp.center, sp.u(Rp), sp.u(Rp), 0, n=11)
        pts += rng.uniform(-0.35, 0.35, pts.shape) * sp.u(Rp)
        col = (235.0, 238.0, 240.0) if rng.random() < 0.6 else (120.0, 165.0, 205.0)
        sp.fill(pts, col)
        for _ in range(5):
            p0 = np.array(sp.center) + rng.normal(0, 0.4, 2) * sp.u(Rp)
            _line(sp.bgr, np.array([p0, p0 + rng.normal(0, 0.6, 2) * sp.u(Rp)]), _tone(col, 0.6), max(1, 0.005 * ppu))
        sp.shade(rng, 0.15)
    elif kind == 3:  # pallet wood fragment
        Lw, Ww = rng.uniform(0.3, 0.42), rng.uniform(0.04, 0.06)
        sp = _Sprite(Lw * 1.1, Ww * 2.5, ppu)
        cx, cy = sp.center
        col = (95.0, 150.0, 195.0) * np.array([rng.uniform(0.8, 1.1)] * 3)
        pts = np.concatenate([_jagged((cx - sp.u(Lw) / 2, cy - sp.u(Ww) / 2), (cx + sp.u(Lw) / 2, cy - sp.u(Ww) / 2), rng, 6, 0.2 * sp.u(Ww)),
                              _jagged((cx + sp.u(Lw) / 2, cy + sp.u(Ww) / 2), (cx - sp.u(Lw) / 2, cy + sp.u(Ww) / 2), rng, 6, 0.2 * sp.u(Ww))])
        sp.fill(pts, tuple(col))
        sp.texture(rng, 6.0, grain=2.0)
        for k in range(3):
            y = cy + (k - 1) * sp.u(Ww) * 0.3
            _line(sp.bgr, np.array([[cx - sp.u(Lw) * 0.45, y], [cx + sp.u(Lw) * 0.45, y]]), _tone(col, 0.7), 1)
    else:  # plastic bottle
        Lb = rng.uniform(0.24, 0.32)
        sp = _Sprite(Lb * 1.2, Lb * 0.5, ppu)
        cx, cy = sp.center
        U = sp.u(Lb)
        col = [(230, 200, 170), (220, 220, 220), (60, 140, 60), (200, 120, 40)][int(rng.integers(0, 4))]
        sp.fill(_capsule((cx - 0.35 * U, cy), (cx + 0.25 * U, cy), 0.14 * U), col, alpha=int(rng.uniform(190, 240)))
        sp.fill(_rect(cx + 0.3 * U, cy - 0.06 * U, cx + 0.48 * U, cy + 0.06 * U), (40, 40, 200) if rng.random() < 0.5 else (200, 80, 30))
        _line(sp.bgr, np.array([[cx - 0.35 * U, cy - 0.06 * U], [cx + 0.2 * U, cy - 0.06 * U]]), (255, 255, 255),
              max(1, 0.008 * ppu))
    return sp


def _foreign_sprites(rng: np.random.Generator, ppu: float) -> list[_Sprite]:
    out = []
    for _ in range(2 if rng.random() < 0.2 else 1):
        k = rng.random()
        out.append(_glove_sprite(rng, ppu) if k < 0.3 else _tool_sprite(rng, ppu) if k < 0.65 else _debris_sprite(rng, ppu))
    return out


def _object_sprites(cls: str, rng: np.random.Generator, ppu: float, packaging: str) -> list[_Sprite]:
    if cls == "empty_belt":
        return []
    if cls == "foreign_object":
        return _foreign_sprites(rng, ppu)
    if packaging == "poly_mailer":
        return [_mailer_sprite(cls, rng, ppu)]
    return [_box_sprite(cls, rng, ppu)]


# =================================================================================================
# belt and camera
# =================================================================================================

_BELT_COLOURS = ((58, 58, 58), (44, 44, 46), (62, 72, 56), (72, 64, 56), (52, 56, 62))


@dataclass
class _BeltStyle:
    colour: tuple[float, float, float]
    rail_top: float  # scene units from the top of the frame
    rail_bottom: float
    rollers: bool
    roller_period: float
    noise: float
    streak: float
    light_gain: float
    tint: tuple[float, float, float]
    vignette: float
    grad_angle: float
    grad: float

    @staticmethod
    def sample(rng: np.random.Generator) -> "_BeltStyle":
        c = np.array(_BELT_COLOURS[int(rng.integers(0, len(_BELT_COLOURS)))], float) * rng.uniform(0.85, 1.2)
        return _BeltStyle(
            colour=tuple(c), rail_top=rng.uniform(0.02, 0.1), rail_bottom=rng.uniform(0.02, 0.1),
            rollers=bool(rng.random() < 0.25), roller_period=rng.uniform(0.07, 0.12),
            noise=rng.uniform(3, 7), streak=rng.uniform(2, 6), light_gain=rng.uniform(0.85, 1.15),
            tint=tuple(rng.uniform(0.95, 1.05, 3)), vignette=rng.uniform(0.0, 0.3),
            grad_angle=rng.uniform(0, 2 * np.pi), grad=rng.uniform(0.0, 0.12),
        )


def _belt_texture(style: _BeltStyle, rng: np.random.Generator, h: int, w: int, ppu_y: float, ppu_x: float,
                  x_offset_units: float = 0.0) -> np.ndarray:
    """The belt surface (without rails/lighting) as float32 (h, w, 3)."""
    base = np.array(style.colour, np.float32)
    n = _noise(rng, h, w, style.noise)
    sw = max(2, w // 10)
    streak = _noise(rng, h, sw, style.streak)
    n += cv2.resize(streak, (w, h), interpolation=cv2.INTER_LINEAR)
    if style.rollers:  # roller conveyor: periodic metal cylinders across the belt
        xs = (np.arange(w, dtype=np.float32) / ppu_x + x_offset_units) / style.roller_period
        ph = xs - np.floor(xs)
        prof = 0.6 + 0.6 * np.sin(np.pi * ph) - 0.45 * (ph > 0.92)
        metal = np.full(3, base.mean() * 1.6, np.float32)
        img = (metal[None, None, :] * prof[None, :, None].astype(np.float32) + n[..., None]).astype(np.float32)
    else:
        img = base[None, None, :] + n[..., None]
    # occasional stains
    for _ in range(int(rng.integers(0, 3))):
        r = rng.uniform(0.02, 0.06) * ppu_y
        c = (rng.uniform(0, w), rng.uniform(0, h))
        cv2.ellipse(img, (int(c[0]), int(c[1])), (max(1, int(r * rng.uniform(0.8, 2.0))), max(1, int(r))),
                    float(rng.uniform(0, 180)), 0, 360, tuple(float(v) for v in base * rng.uniform(0.8, 0.92)), -1)
    return img


@functools.lru_cache(maxsize=64)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    return ys, xs


def _light_map(style: _BeltStyle, h: int, w: int) -> np.ndarray:
    ys, xs = _grid(h, w)
    r2 = ys[:, None] ** 2 + xs[None, :] ** 2
    m = 1.0 - style.vignette * r2 * 2.0
    m = m + style.grad * (math.cos(style.grad_angle) * xs[None, :] + math.sin(style.grad_angle) * ys[:, None]) * 2
    return (m * style.light_gain).astype(np.float32)


def _rails(img: np.ndarray, style: _BeltStyle, ppu_y: float) -> None:
    """Metal side rails at the top and bottom of the frame (in place)."""
    h = img.shape[0]
    top = int(round(style.rail_top * ppu_y))
    bot = int(round(style.rail_bottom * ppu_y))
    metal = np.array([150, 150, 155], np.float32)
    if top > 0:
        prof = np.linspace(0.7, 1.15, top, dtype=np.float32)[:, None, None]
        img[:top] = metal * prof
    if bot > 0:
        prof = np.linspace(1.15, 0.7, bot, dtype=np.float32)[:, None, None]
        img[h - bot:] = metal * prof


def _placement(sp: _Sprite, cx_u: float, cy_u: float, angle: float, ppu_x: float, ppu_y: float) -> np.ndarray:
    """Affine map sprite px -> frame px: rotate, scale to scene units, then to (anisotropic) frame px."""
    c, s = math.cos(angle), math.sin(angle)
    R = np.array([[c, -s], [s, c]]) / sp.ppu
    D = np.diag([ppu_x, ppu_y])
    A = D @ R
    scx, scy = sp.center
    t = np.array([cx_u * ppu_x, cy_u * ppu_y]) - A @ np.array([scx, scy])
    return np.hstack([A, t[:, None]])


def _composite(img: np.ndarray, sp: _Sprite, M: np.ndarray, shadow: tuple[float, float, float]) -> None:
    """Alpha-composite a sprite (with a soft drop shadow) into float32 ``img`` in place, within its bbox."""
    H, W = img.shape[:2]
    corners = np.array([[0, 0, 1], [sp.w, 0, 1], [sp.w, sp.h, 1], [0, sp.h, 1]], float) @ M.T
    pad = int(math.ceil(abs(shadow[0]) + abs(shadow[1]) + 3 * shadow[2])) + 2
    x0 = max(0, int(math.floor(corners[:, 0].min())) - pad)
    y0 = max(0, int(math.floor(corners[:, 1].min())) - pad)
    x1 = min(W, int(math.ceil(corners[:, 0].max())) + pad + 1)
    y1 = min(H, int(math.ceil(corners[:, 1].max())) + pad + 1)
    if x1 <= x0 or y1 <= y0:
        return
    Mr = M.copy()
    Mr[0, 2] -= x0
    Mr[1, 2] -= y0
    size = (x1 - x0, y1 - y0)
    col = cv2.warpAffine(sp.bgr, Mr, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    a8 = cv2.warpAffine(sp.alpha, Mr, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    # drop shadow: the alpha, shifted and blurred, darkens the belt by up to 45%
    dx, dy, blur = shadow
    Ms = Mr.copy()
    Ms[0, 2] += dx
    Ms[1, 2] += dy
    sh = cv2.warpAffine(sp.alpha, Ms, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    k = max(3, int(blur * 2) | 1)
    sh = cv2.GaussianBlur(sh, (k, k), 0)
    a = a8.astype(np.float32)
    a *= 1.0 / 255.0
    w_belt = sh.astype(np.float32)
    w_belt *= -0.45 / 255.0
    w_belt += 1.0
    w_belt *= 1.0 - a
    roi = img[y0:y1, x0:x1]
    roi[...] = cv2.blendLinear(roi, col.astype(img.dtype), w_belt, a)


def _check_class(cls: str) -> None:
    if cls not in CLASS_NAMES:
        raise ConfigError(f"unknown class {cls!r}; expected one of: {', '.join(CLASS_NAMES)}")


def _check_packaging(packaging: str) -> None:
    if packaging not in PACKAGING:
        raise ConfigError(f"unknown packaging {packaging!r}; expected one of: {', '.join(PACKAGING)}")


def _check_size(size) -> tuple[int, int]:
    try:
        h, w = (int(size[0]), int(size[1]))
    except (TypeError, ValueError, IndexError):
        raise ConfigError(f"size must be (height, width), got {size!r}") from None
    if h < 16 or w < 16:
        raise ConfigError(f"size must be at least 16x16 pixels, got {h}x{w}")
    return h, w


def render(cls: str, rng: np.random.Generator, size: tuple[int, int] = (96, 96), packaging: str = "box") -> np.ndarray:
    """Render one top-down conveyor image of class ``cls`` as BGR uint8 ``(H, W, 3)``.

    ``size`` is ``(height, width)``; the 4:3 field of view is mapped onto it. ``packaging`` applies
    to the parcel classes (``empty_belt`` and ``foreign_object`` ignore it). Deterministic in the
    generator's state.
    """
    _check_class(cls)
    _check_packaging(packaging)
    h, w = _check_size(size)
    ppu_y, ppu_x = float(h), w / SCENE_ASPECT
    ppu = max(ppu_x, ppu_y) * _SS
    style = _BeltStyle.sample(rng)
    img = _belt_texture(style, rng, h, w, ppu_y, ppu_x, x_offset_units=rng.uniform(0, 1))
    _rails(img, style, ppu_y)
    shadow = (rng.uniform(0.01, 0.025) * ppu_x, rng.uniform(0.01, 0.025) * ppu_y, 0.012 * ppu_y)
    sprites = _object_sprites(cls, rng, ppu, packaging)
    for i, sp in enumerate(sprites):
        if len(sprites) > 1:
            cx = SCENE_ASPECT / 2 + (i - 0.5) * 0.35 + rng.uniform(-0.08, 0.08)
        else:
            cx = SCENE_ASPECT / 2 + rng.uniform(-0.2, 0.2)
        cy = 0.5 + rng.uniform(-0.1, 0.1)
        M = _placement(sp, cx, cy, rng.uniform(0, 2 * np.pi), ppu_x, ppu_y)
        _composite(img, sp, M, shadow)
    if cls == "empty_belt" and rng.random() < 0.4:  # specks of dust: too small to be foreign objects
        for _ in range(int(rng.integers(1, 5))):
            cv2.circle(img, (int(rng.uniform(0, w)), int(rng.uniform(0.15 * h, 0.85 * h))),
                       max(1, int(0.006 * ppu_y)), (150.0, 150.0, 150.0), -1)
    light = _light_map(style, h, w)
    light += _noise(rng, h, w, 1.5 / 100.0)  # sensor noise, ~1.5 grey levels at mid grey
    img *= light[..., None]
    img *= np.array(style.tint, np.float32)
    return _to_u8(img)


# =================================================================================================
# datasets
# =================================================================================================

def _item_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent streams per item: scene, shift, packaging. The same seed renders the same scenes
    whatever the shifts, so a shifted set is the clean set under new conditions (paired)."""
    return (np.random.default_rng([seed, index, 0]), np.random.default_rng([seed, index, 1]),
            np.random.default_rng([seed, index, 2]))


def _resolve_classes(classes: Sequence[str]) -> list[str]:
    classes = list(classes)
    if not classes:
        raise ConfigError("classes must name at least one class")
    for c in classes:
        _check_class(c)
    if len(set(classes)) != len(classes):
        raise ConfigError(f"classes has duplicates: {classes}")
    return classes


def _choose_packaging(cls: str, share: float, prng: np.random.Generator) -> str:
    draw = prng.random()  # drawn for every item so the stream does not depend on the class
    return "poly_mailer" if cls in PARCEL_CLASSES and draw < share else "box"


def generate_dataset(out_dir: str | Path, n: int, seed: int, img_size: int | tuple[int, int] = 96,
                     shifts: Sequence[str | Shift] = (), classes: Sequence[str] = CLASS_NAMES,
                     progress: bool = True, camera: str = "synthetic", jpeg_quality: int = 95) -> Path:
    """Write ``n`` images as an ImageFolder ``out_dir/<class>/<index>.jpg`` and ``out_dir/manifest.csv``.

    Classes are balanced (counts differ by at most one) and interleaved. ``shifts`` (specs like
    ``"night:3"``) apply to every image; ``new_packaging`` renders its share of the parcel images as
    poly mailers. Image ``i`` depends only on ``(seed, i)``. Manifest columns: :data:`DATASET_COLUMNS`
    (``path`` relative to ``out_dir``; ``shift`` like ``"motion_blur:3+night:3"`` (canonical order,
    see ``SHIFT_ORDER``) or ``"none"``; ``severity`` the largest severity, 0 when clean; ``packaging``
    box / poly_mailer, or none for classes without a parcel). Returns the manifest path.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    classes = _resolve_classes(classes)
    size = (img_size, img_size) if isinstance(img_size, (int, np.integer)) else tuple(img_size)
    size = _check_size(size)
    shift_list = parse_shifts(list(shifts))
    share = packaging_share(shift_list)
    shift_text = format_shifts(shift_list)
    severity = max((s.severity for s in shift_list), default=0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for c in classes:
        (out / c).mkdir(exist_ok=True)
    rows = []
    it = range(int(n))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"synth {out.name}", unit="img", leave=False)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    for i in it:
        cls = classes[i % len(classes)]
        srng, frng, prng = _item_rngs(seed, i)
        pack = _choose_packaging(cls, share, prng)
        img = render(cls, srng, size, packaging=pack)
        img = apply_shifts(img, shift_list, frng)
        rows.append((_write_image(out, cls, i, img, params), cls, camera, shift_text, severity,
                     pack if cls in PARCEL_CLASSES else "none"))
    return _write_manifest(out / "manifest.csv", DATASET_COLUMNS, rows)


def _write_image(out: Path, cls: str, i: int, img: np.ndarray, params: list[int]) -> str:
    """Write image ``i`` of class ``cls`` as ``out/<cls>/<i>.jpg``; returns its path relative to ``out``."""
    rel = f"{cls}/{i:06d}.jpg"
    if not cv2.imwrite(str(out / rel), img, params):
        raise OSError(f"cannot write {out / rel}")
    return rel


def _write_manifest(path: Path, columns: Sequence[str], rows: list[tuple]) -> Path:
    with path.open("w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(columns)
        wr.writerows(rows)
    return path


ORIENTATION_CLASSES = ("arrow_left", "arrow_right")
ORIENTATION_COLUMNS = ("path", "label")


def draw_arrow_label(img: np.ndarray, rng: np.random.Generator, pointing: str) -> np.ndarray:
    """Stick a "this way" label on ``img`` (BGR uint8, in place): a white rectangle with a dark arrow pointing
    ``left`` or ``right``, at a random place, size and tilt (at most 15 degrees). Only the arrow's direction tells
    the two apart: a horizontal flip turns one class into the other."""
    if pointing not in ("left", "right"):
        raise ConfigError(f"pointing must be 'left' or 'right', got {pointing!r}")
    h, w = img.shape[:2]
    lw, lh = rng.uniform(0.5, 0.62) * w, rng.uniform(0.3, 0.38) * h
    cx, cy = rng.uniform(0.38, 0.62) * w, rng.uniform(0.36, 0.64) * h
    # the arrow in label units (-1..1 along x, pointing right), then mirrored for "left"
    arrow = np.array([[-0.8, -0.22], [0.05, -0.22], [0.05, -0.7], [0.85, 0.0], [0.05, 0.7], [0.05, 0.22], [-0.8, 0.22]])
    if pointing == "left":
        arrow[:, 0] = -arrow[:, 0]
    box = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    ang = np.deg2rad(rng.uniform(-15, 15))
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])

    def place(pts: np.ndarray) -> np.ndarray:
        xy = (pts * [lw / 2, lh / 2]) @ rot.T + [cx, cy]
        return np.round(xy * 16).astype(np.int32)  # 4 fractional bits: anti-aliased sub-pixel edges

    paper = tuple(float(v) for v in rng.uniform(215, 250, 3))
    ink = tuple(float(v) for v in rng.uniform(10, 60, 3))
    cv2.fillPoly(img, [place(box)], paper, lineType=cv2.LINE_AA, shift=4)
    cv2.fillPoly(img, [place(arrow)], ink, lineType=cv2.LINE_AA, shift=4)
    return img


def generate_orientation_dataset(out_dir: str | Path, n: int, seed: int, img_size: int = 64,
                                 progress: bool = True, jpeg_quality: int = 95) -> Path:
    """A dataset where orientation decides the class: parcels on the belt whose label arrow points left
    (``arrow_left``) or right (``arrow_right``), balanced, ``out_dir/<class>/<index>.jpg`` + ``manifest.csv``
    (``path,label`` only, like a team's own dataset). A policy that flips images turns a label into the other one;
    this is the set that tells the ``generic`` augmentation preset from the ``conveyor`` one. Returns the manifest."""
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ConfigError(f"n must be an integer >= 2, got {n!r}")
    size = _check_size((img_size, img_size))
    out = Path(out_dir)
    for c in ORIENTATION_CLASSES:
        (out / c).mkdir(parents=True, exist_ok=True)
    it = range(int(n))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"synth {out.name}", unit="img", leave=False)
    rows = []
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    for i in it:
        cls = ORIENTATION_CLASSES[i % 2]
        srng, arng, _ = _item_rngs(seed, i)
        img = render("parcel_ok", srng, size)
        draw_arrow_label(img, arng, cls.split("_")[1])
        rows.append((_write_image(out, cls, i, img, params), cls))
    return _write_manifest(out / "manifest.csv", ORIENTATION_COLUMNS, rows)


# =================================================================================================
# streams
# =================================================================================================

@dataclass(frozen=True)
class Phase:
    """A stretch of simulated time: ``n_frames`` frames under ``shifts``."""

    n_frames: int
    shifts: tuple[Shift, ...]

    def __str__(self) -> str:
        return f"{self.n_frames}={format_shifts(self.shifts)}"


def parse_phases(phases, n_frames: int) -> list[Phase]:
    """Resolve phase specs into frame counts that sum to ``n_frames``.

    Each phase is ``(length, shifts)`` or a string ``"LENGTH=SHIFTS"`` (``"0.5=night:3+motion_blur:3"``,
    ``"200=none"``). ``length`` is a frame count (int) or a fraction of ``n_frames`` (float in (0, 1]);
    ``shifts`` a list of specs or a ``"+"``-joined string. The last phase absorbs any remainder;
    lengths adding up to more than ``n_frames`` are an error. ``None``/``[]`` means one clean phase.
    """
    if n_frames < 1:
        raise ConfigError(f"n_frames must be a positive integer, got {n_frames!r}")
    if not phases:
        return [Phase(n_frames, ())]
    raw = []
    for p in phases:
        if isinstance(p, Phase):
            raw.append((p.n_frames, list(p.shifts)))
            continue
        if isinstance(p, str):
            length, sep, spec = p.partition("=")
            if not sep:
                raise ConfigError(f"phase {p!r}: expected LENGTH=SHIFTS, e.g. '0.5=night:3+motion_blur:3' or '200=none'")
            length = length.strip()
            try:
                val = int(length) if length.isdigit() else float(length)
            except ValueError:
                raise ConfigError(f"phase {p!r}: length {length!r} is not a frame count or a fraction") from None
            raw.append((val, spec))
            continue
        try:
            length, spec = p
        except (TypeError, ValueError):
            raise ConfigError(f"phase {p!r}: expected (length, shifts)") from None
        raw.append((length, spec))
    counts, specs = [], []
    for length, spec in raw:
        if isinstance(length, bool) or not isinstance(length, (int, float, np.integer, np.floating)) or length <= 0:
            raise ConfigError(f"phase length must be a positive frame count or a fraction in (0, 1], got {length!r}")
        if isinstance(length, (float, np.floating)):
            if length > 1:
                raise ConfigError(f"phase fraction must be in (0, 1], got {length!r} (give frame counts as integers)")
            c = int(round(length * n_frames))
        else:
            c = int(length)
        counts.append(c)
        specs.append(parse_shifts(spec))
    total = sum(counts)
    if total > n_frames + len(counts):  # allow rounding slack from fractions
        raise ConfigError(f"phases add up to {total} frames, more than n_frames={n_frames}")
    # absorb rounding / remainder in the last phase
    counts[-1] += n_frames - sum(counts)
    if counts[-1] < 0:
        raise ConfigError(f"phases add up to {total} frames, more than n_frames={n_frames}")
    return [Phase(c, tuple(s)) for c, s in zip(counts, specs) if c > 0]


class _StreamScene:
    """A belt that moves at constant speed under a fixed camera; items ride it through the view.

    Works in uint8 end to end (the belt strip, rails and the light maps are precomputed once), so a
    640x480 frame costs a crop, the item composites and one saturating multiply.
    """

    def __init__(self, rng: np.random.Generator, h: int, w: int):
        self.h, self.w = h, w
        self.ppu_y, self.ppu_x = float(h), w / SCENE_ASPECT
        self.ppu = max(self.ppu_x, self.ppu_y) * _SS
        self.style = _BeltStyle.sample(rng)
        # a periodic belt strip twice the frame width; a splice line marks the period
        self.period = 2 * w
        tex = _belt_texture(self.style, rng, h, self.period, self.ppu_y, self.ppu_x)
        cv2.line(tex, (0, 0), (0, h), tuple(float(v) * 0.7 for v in self.style.colour), max(1, int(0.004 * h)))
        tex = _to_u8(tex)
        self.strip = np.ascontiguousarray(np.concatenate([tex, tex[:, :w]], axis=1))
        rails = np.zeros((h, w, 3), np.float32)
        _rails(rails, self.style, self.ppu_y)
        self.rail_rows = np.zeros(h, bool)
        self.rail_rows[: int(round(self.style.rail_top * self.ppu_y))] = True
        self.rail_rows[h - int(round(self.style.rail_bottom * self.ppu_y)):] = True
        self.rail_img = _to_u8(rails)
        # light x tint x (1 + sensor noise), as uint8 gains with 128 = 1.0; a few noise variants
        light = _light_map(self.style, h, w)
        tint = np.array(self.style.tint, np.float32)
        self.gains = []
        for _ in range(4):
            g = (light + rng.standard_normal((h, w), dtype=np.float32) * np.float32(0.015))[..., None] * tint * 128.0
            self.gains.append(_to_u8(g + 0.5))
        self.shadow = (0.018 * self.ppu_x, 0.018 * self.ppu_y, 0.012 * self.ppu_y)

    def frame(self, belt_px: float, items, k_noise: int) -> np.ndarray:
        # rollers turn in place (the pattern stays); a belt surface moves with the items
        off = 0 if self.style.rollers else int(belt_px) % self.period
        img = self.strip[:, self.period - off: self.period - off + self.w] if off else self.strip[:, :self.w]
        img = img.copy()
        img[self.rail_rows] = self.rail_img[self.rail_rows]
        for sp, cx, cy, ang in items:
            _composite(img, sp, _placement(sp, cx, cy, ang, self.ppu_x, self.ppu_y), self.shadow)
        return cv2.multiply(img, self.gains[k_noise % len(self.gains)], scale=1.0 / 128.0)


@dataclass(frozen=True)
class StreamFrame:
    """One frame of a simulated stream and its ground truth."""

    image: np.ndarray  # (H, W, 3) BGR uint8
    frame_index: int
    label: str
    shift: str  # canonical shift text, "none" when clean
    severity: int  # largest active severity, 0 when clean
    packaging: str  # "box", "poly_mailer", or "none" for items that are not parcels
    slot: int  # which item (consecutive frames of one item share it)


def _stream_items(rng: np.random.Generator, n_frames: int, dwell: tuple[int, int], classes: list[str],
                  class_weights: np.ndarray):
    """Yield (start_frame, length, class) slots covering n_frames."""
    f = 0
    while f < n_frames:
        d = int(rng.integers(dwell[0], dwell[1] + 1))
        cls = classes[int(rng.choice(len(classes), p=class_weights))]
        yield f, min(d, n_frames - f), cls
        f += d


def _check_dwell(dwell) -> tuple[int, int]:
    try:
        dmin, dmax = (int(dwell), int(dwell)) if isinstance(dwell, (int, np.integer)) else (int(dwell[0]), int(dwell[1]))
    except (TypeError, ValueError, IndexError):
        raise ConfigError(f"dwell must be frames per item (int) or (min, max), got {dwell!r}") from None
    if not 1 <= dmin <= dmax:
        raise ConfigError(f"dwell must satisfy 1 <= min <= max, got {dwell!r}")
    return dmin, dmax


def iter_stream(n_frames: int, seed: int, phases=None, size: tuple[int, int] = (480, 640),
                dwell: int | tuple[int, int] = (8, 16), classes: Sequence[str] = CLASS_NAMES,
                class_weights: Sequence[float] | None = None, scene_seed: int | None = None):
    """Return an iterator of :class:`StreamFrame` s of a simulated production feed (see :func:`write_stream`).

    Arguments are validated now (:class:`~pipeline.types.ConfigError`); frames are rendered lazily.
    Deterministic per ``seed``. Items ride the belt for ``dwell`` consecutive frames each.
    ``scene_seed`` (default ``seed``) draws the camera's scene (belt, rails, lighting): two streams with
    the same ``scene_seed`` and different ``seed`` are the same camera at two times, with other items.
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ConfigError(f"n_frames must be a positive integer, got {n_frames!r}")
    h, w = _check_size(size)
    dmin, dmax = _check_dwell(dwell)
    classes = _resolve_classes(classes)
    if class_weights is None:
        cw = np.full(len(classes), 1.0 / len(classes))
    else:
        cw = np.asarray(class_weights, float)
        if cw.shape != (len(classes),) or (cw < 0).any() or cw.sum() <= 0:
            raise ConfigError(f"class_weights must be {len(classes)} non-negative numbers, got {list(class_weights)}")
        cw = cw / cw.sum()
    plan = parse_phases(phases, int(n_frames))
    return _stream_frames(int(n_frames), seed, plan, h, w, (dmin, dmax), classes, cw,
                          seed if scene_seed is None else int(scene_seed))


def _stream_frames(n_frames: int, seed: int, plan: list[Phase], h: int, w: int, dwell: tuple[int, int],
                   classes: list[str], cw: np.ndarray, scene_seed: int):
    scene = _StreamScene(np.random.default_rng([scene_seed, 1]), h, w)
    phase_of = np.concatenate([np.full(p.n_frames, i) for i, p in enumerate(plan)])
    phase_seeds = [int(x) for x in np.random.default_rng([seed, 2]).integers(0, 2**31 - 1, len(plan))]
    texts = [format_shifts(p.shifts) for p in plan]
    sevs = [max((s.severity for s in p.shifts), default=0) for p in plan]
    # belt speed: the longest dwell carries an item across 40% of the view
    speed_u = 0.4 * SCENE_ASPECT / dwell[1]  # scene units per frame
    for slot, (start, length, cls) in enumerate(_stream_items(np.random.default_rng([seed, 7]), n_frames,
                                                               dwell, classes, cw)):
        srng = np.random.default_rng([seed, 3, slot])
        prng = np.random.default_rng([seed, 4, slot])
        pack = _choose_packaging(cls, packaging_share(plan[phase_of[start]].shifts), prng)
        sprites = _object_sprites(cls, srng, scene.ppu, pack)
        travel = speed_u * length
        placed = []
        for i, sp in enumerate(sprites):
            x0 = SCENE_ASPECT / 2 - travel / 2 + srng.uniform(-0.05, 0.05)
            if len(sprites) > 1:
                x0 += (i - 0.5) * 0.35
            placed.append((sp, x0, 0.5 + srng.uniform(-0.1, 0.1), srng.uniform(0, 2 * np.pi)))
        for k in range(length):
            fi = start + k
            p = int(phase_of[fi])
            img = scene.frame(fi * speed_u * scene.ppu_x, [(sp, x0 + k * speed_u, cy, a) for sp, x0, cy, a in placed], fi)
            if plan[p].shifts:
                img = apply_shifts(img, plan[p].shifts, np.random.default_rng([seed, 5, fi]), scene_seed=phase_seeds[p])
            yield StreamFrame(img, fi, cls, texts[p], sevs[p], pack if cls in PARCEL_CLASSES else "none", slot)


def write_stream(out_path: str | Path, n_frames: int, seed: int, phases=None, size: tuple[int, int] = (480, 640),
                 fps: float = 10.0, dwell: int | tuple[int, int] = (8, 16), fmt: str = "video", camera: str = "cam0",
                 classes: Sequence[str] = CLASS_NAMES, class_weights: Sequence[float] | None = None,
                 progress: bool = True, jpeg_quality: int = 92, scene_seed: int | None = None) -> Path:
    """Write a simulated production camera feed and its ground-truth manifest; returns the manifest path.

    Items (one class each, drawn with ``class_weights``, uniform by default) ride the belt through
    the view for ``dwell`` = (min, max) consecutive frames each, so consecutive frames are
    correlated like real video. ``phases`` (see :func:`parse_phases`) change the conditions over
    simulated time, e.g. ``[(0.4, []), (0.3, ["night:3"]), (0.3, ["night:3", "motion_blur:3", "new_packaging"])]``.
    Camera-bound shift parameters (dirt, lamp, tilt) stay fixed within a phase. ``scene_seed`` (default
    ``seed``) draws the camera's scene: give two streams the same one for one camera at two times.

    ``fmt="video"``: ``out_path`` is an ``.mp4`` (mp4v), the manifest is ``out_path`` with ``.csv``;
    ``source_ref`` = ``<absolute, symlink-resolved video path>#<0-based frame index>``.
    ``fmt="folder"``: ``out_path`` is a folder of ``frame_000000.jpg`` ..., the manifest is
    ``<out_path>.csv`` beside it; ``source_ref`` = the absolute, symlink-resolved image path.
    Manifest columns: :data:`STREAM_COLUMNS` (``t`` = seconds since the stream start = index / fps;
    ``packaging`` is "none" for items that are not parcels).
    """
    if fmt not in ("video", "folder"):
        raise ConfigError(f"fmt must be 'video' or 'folder', got {fmt!r}")
    if not fps or fps <= 0:
        raise ConfigError(f"fps must be positive, got {fps!r}")
    h, w = _check_size(size)
    frames = iter_stream(n_frames, seed, phases, (h, w), dwell, classes, class_weights, scene_seed)  # validates now
    out_path = Path(out_path).expanduser().resolve()  # as the ingestion sources resolve it
    if fmt == "video":
        if out_path.suffix.lower() != ".mp4":
            raise ConfigError(f"video output must end in .mp4, got {out_path}")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        manifest = out_path.with_suffix(".csv")
        writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
        if not writer.isOpened():
            raise OSError(f"cv2.VideoWriter cannot open {out_path} (mp4v codec unavailable?)")
    else:
        out_path.mkdir(parents=True, exist_ok=True)
        manifest = out_path.parent / (out_path.name + ".csv")
        writer = None
    rows = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(n_frames), desc=f"stream {out_path.name}", unit="frame", leave=False)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    try:
        for fr in frames:
            if writer is not None:
                writer.write(fr.image)
                ref = f"{out_path}#{fr.frame_index}"
            else:
                p = out_path / f"frame_{fr.frame_index:06d}.jpg"
                if not cv2.imwrite(str(p), fr.image, params):
                    raise OSError(f"cannot write {p}")
                ref = str(p)
            rows.append((ref, fr.label, camera, fr.shift, fr.severity, fr.frame_index,
                         round(fr.frame_index / fps, 6), fr.packaging))
            if bar is not None:
                bar.update(1)
    finally:
        if writer is not None:
            writer.release()
        if bar is not None:
            bar.close()
    with manifest.open("w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(STREAM_COLUMNS)
        wr.writerows(rows)
    return manifest
