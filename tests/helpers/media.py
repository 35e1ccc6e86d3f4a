"""Tiny test media written by the tests themselves: videos (cv2.VideoWriter), image folders, corrupt files.

Every "distinct" frame is different from its neighbours (a moving block plus the frame number
drawn in), so a reader never mistakes them for a frozen feed, and never blank (grey std well above
the default threshold of 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np


def distinct_frame(i: int, width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """A BGR uint8 frame unique to ``i``: a seeded background, a moving white block, the number."""
    rng = np.random.default_rng(seed * 100_003 + i)
    img = (rng.integers(40, 200, size=(height, width, 3))).astype(np.uint8)
    img = cv2.GaussianBlur(img, (5, 5), 0)  # compressible but not uniform
    x = (i * 5) % max(1, width - 12)
    cv2.rectangle(img, (x, 4), (x + 10, 14), (255, 255, 255), -1)
    cv2.putText(img, str(i % 1000), (2, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    return img


def write_video(path: Path | str, frames: Sequence[np.ndarray] | int, fps: float = 10.0,
                codec: str = "MJPG", size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """Write ``frames`` (or that many :func:`distinct_frame` s) to ``path`` with cv2.VideoWriter.

    ``size`` is (width, height). MJPG in .avi is the default: intra-only, so identical input frames
    decode to identical pictures (needed by the frozen-feed tests) and frame counts are exact.
    """
    path = Path(path)
    if isinstance(frames, int):
        frames = [distinct_frame(i, size[0], size[1], seed) for i in range(frames)]
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {path} with codec {codec}")
    for f in frames:
        if f.shape[:2] != (h, w):
            f = cv2.resize(f, (w, h))
        writer.write(f)
    writer.release()
    return path


def corrupt_avi_frames(path: Path | str, indices: Sequence[int], n_bytes: int = 400) -> Path:
    """Zero ``n_bytes`` after the JPEG start marker of the given frames of an MJPG .avi, in place.

    FFMPEG then fails to decode those frames ("No JPEG data found"); OpenCV's read() returns False
    for each of them and goes on with the next frame.
    """
    path = Path(path)
    data = bytearray(path.read_bytes())
    soi = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    for k in indices:
        s = soi[k]
        data[s + 2 : s + 2 + n_bytes] = bytes(n_bytes)
    path.write_bytes(bytes(data))
    return path


def make_image_folder(folder: Path | str, n: int, corrupt: Sequence[str] = (), extra: Sequence[str] = (),
                      size: tuple[int, int] = (64, 48), ext: str = ".png", seed: int = 0) -> list[Path]:
    """``n`` images ``img_000.png`` ...; ``corrupt`` names get garbage bytes with an image extension;
    ``extra`` names get non-image text (they must be ignored). Returns the good image paths, sorted.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = []
    for i in range(n):
        p = folder / f"img_{i:03d}{ext}"
        cv2.imwrite(str(p), distinct_frame(i, size[0], size[1], seed))
        good.append(p)
    for name in corrupt:
        (folder / name).write_bytes(b"this is not an image\x00\xff\xd8garbage" * 4)
    for name in extra:
        (folder / name).write_text("not an image, wrong extension\n")
    return sorted(good)


class MjpegHttpServer:
    """A tiny threaded HTTP server streaming ``multipart/x-mixed-replace`` JPEGs (an "IP camera").

    ``with MjpegHttpServer(fps=20) as srv: srv.url`` -> ``http://127.0.0.1:<port>/video.mjpg``.
    Every client gets its own endless sequence of :func:`distinct_frame` s.
    """

    def __init__(self, fps: float = 20.0, size: tuple[int, int] = (64, 48)) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        period = 1.0 / fps
        w, h = size

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                import time

                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while not server_stop.is_set():
                        ok, jpg = cv2.imencode(".jpg", distinct_frame(i, w, h))
                        b = jpg.tobytes()
                        head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(b)}\r\n\r\n"
                        self.wfile.write(head.encode() + b + b"\r\n")
                        self.wfile.flush()
                        i += 1
                        time.sleep(period)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        server_stop = threading.Event()
        self._stop = server_stop
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="mjpeg-server", daemon=True)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/video.mjpg"

    def __enter__(self) -> "MjpegHttpServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
