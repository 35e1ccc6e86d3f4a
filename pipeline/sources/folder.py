"""Image folders: every image, sorted by name, optionally looped; ``source_ref`` is the image's absolute path.

Folders have no clock of their own: a picture's timestamp is the wall time it was read. Each pass lists the
folder again (images added since the last pass are picked up); files that are not images are reported as
:class:`~pipeline.sources.base.NonImage` (the reader counts them: ``CameraStats.skipped_non_image``, in the run
summary), named in the source's ``connected`` health event, and logged once per source; undecodable images are
:class:`~pipeline.sources.base.Corrupt`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import cv2

from pipeline.config import SourceConfig
from pipeline.sources.base import Corrupt, EndOfStream, NonImage, Picture, Restart, SourceItem, Status
from pipeline.sources.uri import SourceSpec
from pipeline.types import CameraUnavailableError, HealthKind

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".jp2"}
)


@dataclass(frozen=True)
class FolderListing:
    """The files of a folder (not recursive), each list sorted by name."""

    images: list[Path]  # files with an image extension (IMAGE_EXTENSIONS, any case)
    others: list[Path]  # every other file (sub-folders are not files and are in neither list)


def list_folder(folder: Path) -> FolderListing:
    """Split the files of ``folder`` (not recursive) into images and other files, each sorted by name."""
    files = sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.name)
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    others = [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    return FolderListing(images=images, others=others)


def list_images(folder: Path) -> list[Path]:
    """Image files in ``folder`` (not recursive), sorted by name; other files are ignored."""
    return list_folder(folder).images


def describe_others(others: list[Path], shown: int = 3) -> str:
    """``"2 non-image file(s) skipped: notes.txt, Thumbs.db"`` (the first ``shown`` names), or "" when none."""
    if not others:
        return ""
    names = ", ".join(p.name if p.name.isprintable() else repr(p.name) for p in others[:shown]) + (", ..." if len(others) > shown else "")
    return f"{len(others)} non-image file(s) skipped: {names}"


class FolderFrames:
    """The images of one folder. Lists it on construction: a folder without images is a CameraUnavailableError."""

    def __init__(self, spec: SourceSpec, cfg: SourceConfig) -> None:
        if spec.path is None:
            raise ValueError(f"source {spec.uri!r}: a folder source needs spec.path, got None")
        self.spec = spec
        self.loop = cfg.loop
        self._listing = list_folder(spec.path)
        if not self._listing.images:
            raise CameraUnavailableError(
                f"source {cfg.uri!r}: folder has no images (expected files ending in "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}" + (f"; {describe_others(self._listing.others)}" if self._listing.others else "")
                + ")"
            )
        if self._listing.others:  # once per source; the reader counts them on every pass
            log.warning("source %r: %s (expected files ending in %s)", cfg.uri, describe_others(self._listing.others),
                        ", ".join(sorted(IMAGE_EXTENSIONS)))

    def frames(self, stop: threading.Event) -> Generator[SourceItem, None, None]:
        folder = self.spec.path
        assert folder is not None  # checked in __init__
        listing = self._listing
        others = f", {describe_others(listing.others)}" if listing.others else ""
        yield Status("reading", HealthKind.CONNECTED, f"folder {folder} ({len(listing.images)} images{others})")
        while not stop.is_set():
            for p in listing.others:
                yield NonImage(str(p))
            good = 0
            for p in listing.images:
                if stop.is_set():
                    return
                img = cv2.imread(str(p), cv2.IMREAD_COLOR)
                if img is None:
                    yield Corrupt(f"cannot decode image {p}")
                    continue
                good += 1
                yield Picture(img, time.time(), str(p))
            if stop.is_set():
                return
            if not self.loop or good == 0:
                why = "" if good else " (no readable images in the last pass)"
                raise EndOfStream(f"folder {folder} done{why}")
            yield Restart()
            listing = list_folder(folder)  # pick up images added since the last pass

    def close(self) -> None:
        """Nothing to release (images are read one at a time)."""


__all__ = ["IMAGE_EXTENSIONS", "FolderFrames", "FolderListing", "describe_others", "list_folder", "list_images"]
