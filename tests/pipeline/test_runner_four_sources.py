"""Issue 3's acceptance run: ``Runner`` on four sources — two video files, an image folder and a real RTSP
stream (GStreamer server in its own process) — with the RTSP server killed for 5 s mid-run.

Checks: exactly one incumbent prediction per frame read from the files and the folder; a shadow prediction
for >= 99% of frames; the RTSP outage costs only that camera's frames for about the outage, while the
other cameras keep flowing; afterwards the run continues on all four.
"""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from pipeline.config import load_config
from pipeline.runner import Runner
from pipeline.store import PredictionStore, frames, predictions
from tests.helpers.media import make_image_folder, write_video
from tests.helpers.onnx_models import make_tiny_classifier
from tests.helpers.rtsp_server import rtsp_server  # noqa: F401 (fixture)

CLASSES = ["box", "bag", "empty"]
FPS = 20.0  # files and folder are paced, so they are still flowing while the RTSP camera is down
N_VIDEO, N_FOLDER = 300, 260
OUTAGE_S = 5.0


@pytest.mark.rtsp
@pytest.mark.slow
def test_four_sources_rtsp_outage(rtsp_server, tmp_path):  # noqa: F811
    write_video(tmp_path / "dock1.avi", N_VIDEO, seed=1)
    write_video(tmp_path / "dock2.avi", N_VIDEO, seed=2)
    make_image_folder(tmp_path / "shelf", N_FOLDER, seed=3)
    inc = make_tiny_classifier(tmp_path / "inc.onnx", CLASSES, input_size=(24, 32), seed=1)
    sh = make_tiny_classifier(tmp_path / "sh.onnx", CLASSES, input_size=(24, 32), seed=2)
    cfg = load_config(None, {
        "sources": [
            {"uri": str(tmp_path / "dock1.avi"), "id": "dock1", "max_fps": FPS},
            {"uri": str(tmp_path / "dock2.avi"), "id": "dock2", "max_fps": FPS},
            {"uri": str(tmp_path / "shelf"), "id": "shelf", "max_fps": FPS},
            {"uri": rtsp_server.url, "id": "gate"},
        ],
        "incumbent": {"uri": str(inc), "providers": ["cpu"]},
        "shadow": {"uri": str(sh), "providers": ["cpu"]},
        "batching.batch_size": 8,
        "batching.max_wait_ms": 20,
        "shadow_mode.max_pending_batches": 64,
        # reconnect quickly: the retry delay is capped at 1 s, so a 5 s outage costs about 5-6 s
        "camera_health.reconnect_initial_s": 0.25,
        "camera_health.reconnect_max_s": 1.0,
        "sampling.enabled": False,
        "store.url": "store.db",
        "workdir": str(tmp_path / "work"),
    })
    runner = Runner(cfg, install_signal_handlers=False)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("summary", runner.run()), daemon=True)
    t.start()

    # wait until the RTSP camera delivers, then cut it for OUTAGE_S seconds
    time.sleep(3.0)
    kill_at = time.time()
    rtsp_server.kill()
    time.sleep(OUTAGE_S)
    rtsp_server.start()
    back_at = time.time()
    # the files take N/FPS = 15 s; let the RTSP camera come back and run a few seconds beside them
    deadline = time.time() + 60
    while time.time() < deadline and not all(r.finished for r in runner.readers if r.camera_id != "gate"):
        time.sleep(0.5)
    time.sleep(3.0)
    runner.stop("test done")
    t.join(timeout=60)
    assert not t.is_alive(), "runner did not stop"
    summary = out["summary"]

    store = PredictionStore(str(tmp_path / "work" / "store.db"))
    with store.engine.connect() as conn:
        inc_rows = conn.execute(
            sa.select(frames.c.camera_id, frames.c.frame_id, predictions.c.ts)
            .join(predictions, predictions.c.frame_id == frames.c.frame_id)
            .where(predictions.c.role == "incumbent")
        ).all()
        n_shadow = conn.execute(sa.select(sa.func.count()).select_from(predictions).where(predictions.c.role == "shadow")).scalar_one()
    store.close()

    by_cam: dict[str, list] = {}
    for cam, fid, ts in inc_rows:
        by_cam.setdefault(cam, []).append((fid, ts))
    # exactly one incumbent prediction per frame read from the files and the folder
    assert len(by_cam["dock1"]) == N_VIDEO and len(by_cam["dock2"]) == N_VIDEO and len(by_cam["shelf"]) == N_FOLDER
    for cam in ("dock1", "dock2", "shelf"):
        assert len({fid for fid, _ in by_cam[cam]}) == len(by_cam[cam])
        assert summary.cameras[cam]["frames_read"] == len(by_cam[cam])
    # shadow coverage (not overloaded)
    assert n_shadow >= 0.99 * len(inc_rows), (n_shadow, len(inc_rows))
    assert summary.shadow["coverage"] >= 0.99

    # the RTSP camera: frames before the kill and after the restart, a gap of about the outage
    gate = sorted(ts for _, ts in by_cam["gate"])
    before = [x for x in gate if x < kill_at + 0.5]
    after = [x for x in gate if x > back_at]
    assert before and len(after) >= 10, (len(before), len(after))
    gaps = [b - a for a, b in zip(gate, gate[1:])]
    longest = max(gaps)
    assert OUTAGE_S - 0.5 <= longest <= OUTAGE_S + 4.0, f"longest gap of the RTSP camera {longest:.2f}s"
    assert summary.cameras["gate"]["reconnects"] >= 1
    # the other cameras kept flowing during the outage (paced at FPS: about FPS * OUTAGE_S frames each)
    for cam in ("dock1", "dock2", "shelf"):
        during = [ts for _, ts in by_cam[cam] if kill_at + 0.5 <= ts <= kill_at + OUTAGE_S - 0.5]
        assert len(during) >= 0.5 * FPS * (OUTAGE_S - 1.0), (cam, len(during))
    print(f"\nRTSP outage {OUTAGE_S}s -> camera gap {longest:.2f}s; frames after restart {len(after)}; "
          f"file cameras during outage: {[len([1 for _, ts in by_cam[c] if kill_at + 0.5 <= ts <= kill_at + OUTAGE_S - 0.5]) for c in ('dock1', 'dock2', 'shelf')]}")
