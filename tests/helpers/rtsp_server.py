#!/usr/bin/python3
"""A real RTSP server for tests, built on Debian's GStreamer RTSP server (``gir1.2-gst-rtsp-server-1.0``).

Two ways to use it:

* as a script, run with Debian's ``/usr/bin/python3`` (the venv has no ``gi``)::

      /usr/bin/python3 tests/helpers/rtsp_server.py --port 8554 --path /cam

  It prints ``READY rtsp://127.0.0.1:<port><path>`` on stdout once it is listening, and serves a
  moving-ball test pattern (H.264, x264enc, falling back to openh264enc) until SIGTERM/SIGINT;

* from the test process (any Python) via :class:`RtspServer`, a context manager that starts the
  script as a child process, waits for ``READY``, and can :meth:`~RtspServer.kill` and
  :meth:`~RtspServer.start` it again *on the same port* (to simulate a camera that drops out).

This module must stay importable by the venv's Python without ``gi``: the GStreamer imports live in
:func:`_serve` only.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
_HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------- server side (system python)
def _pick_encoder(Gst) -> str:  # noqa: N803 - Gst is a module
    if Gst.ElementFactory.find("x264enc") is not None:
        return "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate=300"
    if Gst.ElementFactory.find("openh264enc") is not None:
        return "openh264enc gop-size={gop}"
    raise SystemExit("no H.264 encoder (x264enc or openh264enc) is installed")


def _serve(args: argparse.Namespace) -> int:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    enc = _pick_encoder(Gst).format(gop=max(1, int(args.fps)))
    launch = (
        f"( videotestsrc pattern={args.pattern} is-live=true "
        f"! video/x-raw,width={args.width},height={args.height},framerate={int(args.fps)}/1 "
        f"! videoconvert ! {enc} ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"FAILED cannot listen on {args.host}:{args.port}", flush=True)
        return 1
    port = server.get_bound_port()
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY rtsp://{args.host}:{port}{args.path}", flush=True)
    loop.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Serve a test pattern over RTSP (GStreamer RTSP server).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default 0)")
    p.add_argument("--path", default="/cam", help="mount path (default /cam)")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--fps", type=float, default=15)
    p.add_argument("--pattern", default="ball", help="videotestsrc pattern (default ball: moving, never frozen)")
    args = p.parse_args(argv)
    if not args.path.startswith("/"):
        p.error("--path must start with /")
    return _serve(args)


# ----------------------------------------------------------------------------- client side (any python)
@functools.lru_cache(maxsize=1)
def system_gst_available() -> tuple[bool, str]:
    """Whether ``/usr/bin/python3`` can import GstRtspServer; the reason when not."""
    if not os.path.exists(SYSTEM_PYTHON):
        return False, f"{SYSTEM_PYTHON} not found"
    code = (
        "import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0'); "
        "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
        "import sys; sys.exit(0 if (Gst.ElementFactory.find('x264enc') or Gst.ElementFactory.find('openh264enc')) else 3)"
    )
    try:
        r = subprocess.run([SYSTEM_PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{SYSTEM_PYTHON} failed: {e}"
    if r.returncode == 3:
        return False, "GStreamer has no H.264 encoder (x264enc/openh264enc)"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"{SYSTEM_PYTHON} lacks gi/GstRtspServer: {last}"
    return True, ""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RtspServer:
    """The RTSP test server as a child process. ``with RtspServer() as srv: srv.url ...``.

    ``kill()`` stops it abruptly (SIGKILL: the camera vanishes, no RTSP TEARDOWN); ``start()`` brings
    it back on the same port and path, so a client can reconnect to the same URL.
    """

    def __init__(self, port: int | None = None, path: str = "/cam", width: int = 160, height: int = 120,
                 fps: float = 15, pattern: str = "ball", host: str = "127.0.0.1", ready_timeout_s: float = 30.0):
        self.host = host
        self.port = port or free_port(host)
        self.path = path
        self.width, self.height, self.fps, self.pattern = width, height, fps, pattern
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self.url = f"rtsp://{host}:{self.port}{path}"

    def start(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            return self.url
        cmd = [SYSTEM_PYTHON, str(_HERE), "--host", self.host, "--port", str(self.port), "--path", self.path,
               "--width", str(self.width), "--height", str(self.height), "--fps", str(self.fps),
               "--pattern", self.pattern]
        deadline = time.monotonic() + self.ready_timeout_s
        while True:  # the port may still be in TIME_WAIT right after a kill: retry briefly
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         env={**os.environ, "GST_DEBUG": "0"})
            line = self.proc.stdout.readline().strip()  # blocks until READY/FAILED or exit
            if line.startswith("READY "):
                self.url = line.split(" ", 1)[1]
                return self.url
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self._reap()
            if time.monotonic() > deadline:
                raise RuntimeError(f"RTSP server did not start on port {self.port}: {line!r} {err.strip()[-500:]}")
            time.sleep(0.3)

    def kill(self) -> None:
        """SIGKILL the server (an abrupt camera loss) and wait for it to be gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self._reap()

    def _reap(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - kill cannot be ignored
            pass
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        self.proc = None

    def stop(self) -> None:
        """Terminate gracefully (SIGTERM), then kill if needed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "RtspServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ----------------------------------------------------------------------------- pytest fixture
try:  # the system python that runs the server has no pytest: the fixture exists only under pytest
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:

    @pytest.fixture
    def rtsp_server():
        """A started :class:`RtspServer` (yields the object: ``.url``, ``.kill()``, ``.start()``).

        Use it from a test module with ``from tests.helpers.rtsp_server import rtsp_server``.
        Skips the test when ``/usr/bin/python3`` lacks gi/GstRtspServer or an H.264 encoder.
        """
        ok, why = system_gst_available()
        if not ok:
            pytest.skip(f"RTSP server unavailable: {why}")
        srv = RtspServer()
        srv.start()
        try:
            yield srv
        finally:
            srv.stop()


if __name__ == "__main__":
    sys.exit(main())
