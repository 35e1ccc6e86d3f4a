"""From a configured ``uri`` to a :class:`SourceSpec`: its kind, camera id and what to open (pure, no I/O but
``stat``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pipeline.config import SourceConfig
from pipeline.types import CameraUnavailableError, ConfigError

SourceKind = Literal["folder", "file", "rtsp", "http", "usb"]
LIVE_KINDS: frozenset[str] = frozenset({"rtsp", "http", "usb"})
_CAMERA_ID_RE = re.compile(r"^[A-Za-z0-9._\-/@+=]+$")


def redact_uri(uri: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://user:***@host/x`` (for logs, events, source_ref)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def classify_uri(uri: str) -> SourceKind:
    """The source kind of ``uri`` (see :mod:`pipeline.sources`). Raises CameraUnavailableError."""
    u = uri.strip()
    low = u.lower()
    if low.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if low.startswith(("http://", "https://")):
        return "http"
    if u.isdigit():
        return "usb"
    p = Path(u).expanduser()
    if p.is_dir():
        return "folder"
    if p.is_file():
        return "file"
    raise CameraUnavailableError(
        f"source {uri!r}: no such file or folder (expected a video file, an image folder, "
        f"rtsp://, http(s):// or a USB index such as 0)"
    )


def derive_camera_id(uri: str, kind: SourceKind) -> str:
    """A readable default camera id: file stem, folder name, ``host_port_path`` or ``usb<N>``."""
    if kind == "usb":
        return f"usb{int(uri)}"
    if kind in ("rtsp", "http"):
        parts = urlsplit(uri)
        host = parts.hostname or "stream"
        if parts.port is not None:
            host = f"{host}_{parts.port}"
        raw = f"{host}{parts.path}"
    else:
        p = Path(uri).expanduser().resolve()
        raw = p.name if kind == "folder" else p.stem
    cid = re.sub(r"[^A-Za-z0-9._\-]+", "_", raw).strip("_")
    return cid or kind


@dataclass(frozen=True)
class SourceSpec:
    """A resolved source: its kind, camera id and what to open."""

    uri: str
    kind: SourceKind
    camera_id: str
    display_uri: str  # the uri with any password redacted
    path: Path | None = None  # files and folders: the absolute path

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS


def resolve_source(cfg: SourceConfig) -> SourceSpec:
    """Classify ``cfg.uri`` and settle the camera id. Raises CameraUnavailableError / ConfigError."""
    kind = classify_uri(cfg.uri)
    cid = cfg.id if cfg.id is not None else derive_camera_id(cfg.uri, kind)
    if not cid or not _CAMERA_ID_RE.match(cid):
        raise ConfigError(
            f"source {redact_uri(cfg.uri)!r}: camera id {cid!r} must be non-empty and use only letters, digits "
            f"and . _ - / @ + = (no ':' or spaces: ids become part of frame ids)"
        )
    path = Path(cfg.uri).expanduser().resolve() if kind in ("file", "folder") else None
    return SourceSpec(uri=cfg.uri, kind=kind, camera_id=cid, display_uri=redact_uri(cfg.uri), path=path)


__all__ = ["LIVE_KINDS", "SourceKind", "SourceSpec", "classify_uri", "derive_camera_id", "redact_uri", "resolve_source"]
