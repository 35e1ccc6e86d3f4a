"""Issue 14, deliverable 2: a replay gives the shadow every frame, a live run keeps shedding.

A replay (every source a file or folder read at full speed) applies *backpressure*: the serve loop waits for room in
the shadow's queue instead of shedding, so the batcher and the file reader wait too (``ShadowConfig.backpressure``,
``pipeline/shadow.py``). A run with a live camera keeps shedding, so the incumbent is never delayed.

The acceptance run of the issue replays OpenCV's ``vtest.avi`` (768x576, 795 frames, 10 fps: people walking in
front of a static background) on a busy machine. That file is not on this machine and cannot be downloaded, so
:func:`write_vtest_standin` writes a stand-in with cv2.VideoWriter: same size, length and frame rate, XVID like the
original (MJPG where this OpenCV has no XVID encoder), eight person-like blobs (a body and a head each) walking
over a static, textured background with a floor. The "busy machine" is two Python busy loops
(:func:`burners`, child processes killed at the end of each test).

Models are real ONNX Runtime sessions: the incumbent is the tiny mean-linear classifier of
``tests/helpers/onnx_models.py``; the shadow is the same contract with a heavier branch added
(:func:`make_slower_classifier`: a per-pixel MLP, ``SHADOW_LAYERS`` 64x64 layers), several times slower than the
incumbent, as a bigger challenger is. That is what makes a replay shed without backpressure; the burners then slow
both models down further.

Coverage is counted in the store: shadow predictions / incumbent predictions of the run.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import ShadowConfig, SourceConfig, load_config
from pipeline.modelcard import LOGITS_NAME
from pipeline.runner import Runner, uses_backpressure
from pipeline.runtime import OnnxClassifier
from pipeline.shadow import MAX_ABANDONED, ShadowOutcome, ShadowPair, ShadowStatus, shadow_result_within_s
from pipeline.store import PredictionStore, predictions
from pipeline.types import Frame, FrameBatch, Role
from tests.helpers.media import MjpegHttpServer, write_video
from tests.helpers.onnx_models import SleepyClassifier, StuckClassifier, make_tiny_classifier

CLASSES = ["person", "group", "empty"]
INPUT = (48, 64)  # (height, width) of both models
VTEST_SIZE, VTEST_FRAMES, VTEST_FPS = (768, 576), 795, 10.0
SHADOW_LAYERS = 4  # the shadow's extra 64x64 layers per pixel: several times slower than the incumbent
N_BURNERS = 2


# --- media, models and the busy machine --------------------------------------------------------------------------

def write_vtest_standin(path: Path, n: int = VTEST_FRAMES, size: tuple[int, int] = VTEST_SIZE, fps: float = VTEST_FPS,
                        seed: int = 0) -> Path:
    """A stand-in for OpenCV's ``vtest.avi`` (see the module docstring): ``n`` frames of ``size`` (width, height)."""
    w, h = size
    rng = np.random.default_rng(seed)
    bg = cv2.resize(rng.integers(60, 180, (h // 16, w // 16, 3)).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    bg = cv2.GaussianBlur(bg, (9, 9), 0)
    floor = int(h * 0.55)
    cv2.rectangle(bg, (0, floor), (w, h), (120, 120, 110), -1)
    for k in range(6):
        cv2.line(bg, (0, floor + 40 * k), (w, floor + 40 * k), (90, 90, 85), 2)
    people = [(rng.uniform(0, w), rng.uniform(0.45 * h, 0.85 * h), rng.uniform(-6, 6), rng.uniform(-1.5, 1.5),
               tuple(int(c) for c in rng.integers(20, 230, 3))) for _ in range(8)]
    for codec in ("XVID", "MJPG"):
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
        if writer.isOpened():
            break
    else:
        raise RuntimeError(f"cv2.VideoWriter can write neither XVID nor MJPG to {path}")
    for i in range(n):
        img = bg.copy()
        for x0, y0, vx, vy, colour in people:
            x = int((x0 + vx * i) % w)
            y = int(np.clip(y0 + (vy * i) % 60, 0.4 * h, 0.9 * h))
            cv2.ellipse(img, (x, y), (14, 38), 0, 0, 360, colour, -1)  # body
            cv2.circle(img, (x, y - 50), 11, (160, 170, 200), -1)  # head
        writer.write(img)
    writer.release()
    return path


def make_slower_classifier(path: Path, class_names: list[str], input_size: tuple[int, int], seed: int = 2,
                           layers: int = SHADOW_LAYERS, width: int = 64) -> Path:
    """The tiny classifier of ``tests/helpers/onnx_models.py`` with a heavier branch: every pixel goes through a
    ``layers``-deep tanh MLP of ``width`` units, pooled and added to the logits with a weight of 1e-6 (so the
    answers stay the tiny model's, but the compute is real and ONNX Runtime cannot fold it away)."""
    import onnx
    from onnx import helper, numpy_helper

    make_tiny_classifier(path, class_names, input_size=input_size, seed=seed)
    model = onnx.load(str(path))
    g = model.graph
    rng = np.random.default_rng(seed + 1000)
    h, w = input_size
    final = next(n for n in g.node if LOGITS_NAME in n.output)
    final.output[0] = "x_linear"
    inits = [
        numpy_helper.from_array(np.array([0, h * w, 3], dtype=np.int64), "hv_shape"),
        numpy_helper.from_array(rng.normal(0, 0.5, (3, width)).astype(np.float32), "hv_w0"),
        numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(width), (width, len(class_names))).astype(np.float32), "hv_out"),
        numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "hv_eps"),
    ]
    nodes = [
        helper.make_node("Div", ["x_f", "scale"], ["hv_img"]),  # x_f: the cast image; scale: 255 (the tiny graph's)
        helper.make_node("Reshape", ["hv_img", "hv_shape"], ["hv_px"]),
        helper.make_node("MatMul", ["hv_px", "hv_w0"], ["hv_a0"]),
    ]
    prev = "hv_a0"
    for k in range(1, layers + 1):
        inits.append(numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(width), (width, width)).astype(np.float32), f"hv_w{k}"))
        nodes += [helper.make_node("MatMul", [prev, f"hv_w{k}"], [f"hv_m{k}"]),
                  helper.make_node("Tanh", [f"hv_m{k}"], [f"hv_a{k}"])]
        prev = f"hv_a{k}"
    nodes += [
        helper.make_node("ReduceMean", [prev], ["hv_pool"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["hv_pool", "hv_out"], ["hv_logits"]),
        helper.make_node("Mul", ["hv_logits", "hv_eps"], ["hv_small"]),
        helper.make_node("Add", ["x_linear", "hv_small"], [LOGITS_NAME]),
    ]
    at = list(g.node).index(final) + 1
    for i, node in enumerate(nodes):
        g.node.insert(at + i, node)
    g.initializer.extend(inits)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("replay_backpressure")
    return {
        "dock": write_video(d / "dock.avi", 300, size=(320, 240), seed=1),
        "small": write_video(d / "small.avi", 120, seed=2),
        "inc": make_tiny_classifier(d / "inc.onnx", CLASSES, input_size=INPUT, seed=1),
        "sh": make_slower_classifier(d / "sh.onnx", CLASSES, INPUT),
        "tiny_sh": make_tiny_classifier(d / "tiny_sh.onnx", CLASSES, input_size=INPUT, seed=2),
    }


@pytest.fixture(scope="module")
def vtest(tmp_path_factory) -> Path:
    """The stand-in for OpenCV's vtest.avi (:func:`write_vtest_standin`)."""
    return write_vtest_standin(tmp_path_factory.mktemp("vtest") / "vtest.avi")


@pytest.fixture
def burners():
    """``N_BURNERS`` CPU burners (Python busy loops in child processes) for the length of the test."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(N_BURNERS)]
    try:
        time.sleep(0.2)
        assert all(p.poll() is None for p in procs), "a CPU burner did not start"
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)


def run_config(media, tmp_path, sources, **over):
    base = {
        "sources": sources,
        "incumbent": {"uri": str(media["inc"]), "providers": ["cpu"]},
        "shadow": {"uri": str(media["sh"]), "providers": ["cpu"]},
        "sampling.enabled": False,
        "store.url": "store.db",
        "workdir": str(tmp_path / "work"),
    }
    base.update(over)
    return load_config(None, base)


def store_counts(tmp_path: Path, run_id: str) -> tuple[int, int]:
    """(incumbent, shadow) predictions of the run in its store."""
    st = PredictionStore(str(tmp_path / "work" / "store.db"))
    try:
        n_inc = st.count(predictions, (predictions.c.role == "incumbent") & predictions.c.frame_id.like(f"{run_id}%"))
        n_sh = st.count(predictions, (predictions.c.role == "shadow") & predictions.c.frame_id.like(f"{run_id}%"))
    finally:
        st.close()
    return n_inc, n_sh


def coverage(n_inc: int, n_sh: int) -> float:
    return n_sh / n_inc if n_inc else float("nan")


def replay(media, vtest, tmp_path, mode: str):
    cfg = run_config(media, tmp_path / mode, [str(vtest)], **{"shadow_mode.backpressure": mode})
    runner = Runner(cfg, install_signal_handlers=False, image_stats=False)
    t0 = time.perf_counter()
    summary = runner.run()
    wall = time.perf_counter() - t0
    n_inc, n_sh = store_counts(tmp_path / mode, runner.run_id)
    return summary, n_inc, n_sh, wall


# --- the acceptance run ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_replay_on_a_busy_machine_gives_the_shadow_every_frame(media, vtest, tmp_path, burners):
    summary, n_inc, n_sh, wall = replay(media, vtest, tmp_path, "auto")
    bp = summary.shadow["backpressure"]
    print(f"\nbackpressure auto, {N_BURNERS} burners: coverage {coverage(n_inc, n_sh):.4f} ({n_sh}/{n_inc}) in {wall:.1f} s; "
          f"{bp['frames_waited']} frames waited {bp['wait_s']:.1f} s in all")
    assert summary.stop_reason == "sources finished"
    assert n_inc == summary.frames_served == VTEST_FRAMES  # every frame of the replay served and stored once
    assert n_sh / n_inc >= 0.995, (n_sh, n_inc)
    assert summary.shadow["coverage"] >= 0.995
    assert summary.shadow["frames_shed"] == 0 and summary.shadow["timeouts"] == 0
    assert bp["mode"] == "auto" and bp["enabled"] is True and bp["frames_gave_up"] == 0
    # the shadow is the slower model: the replay waited for it (that is where the frames would have been shed)
    assert bp["batches_waited"] > 0 and bp["frames_waited"] > 0 and bp["wait_s"] > 0
    assert "backpressure (auto)" in summary.format_table()


@pytest.mark.slow
def test_the_same_replay_without_backpressure_sheds(media, vtest, tmp_path, burners):
    summary, n_inc, n_sh, wall = replay(media, vtest, tmp_path, "never")
    bp = summary.shadow["backpressure"]
    print(f"\nbackpressure never, {N_BURNERS} burners: coverage {coverage(n_inc, n_sh):.4f} ({n_sh}/{n_inc}) in {wall:.1f} s; "
          f"frames shed {summary.shadow['frames_shed']}")
    assert n_inc == summary.frames_served == VTEST_FRAMES
    assert n_sh / n_inc < 0.95, (n_sh, n_inc)  # clearly lower: the slower shadow is shed
    assert summary.shadow["frames_shed"] > 0
    assert bp["enabled"] is False and bp["frames_waited"] == 0 and bp["wait_s"] == 0


@pytest.mark.slow
def test_a_run_with_a_live_camera_keeps_shedding(media, tmp_path, burners):
    """A live MJPEG camera beside a file: ``auto`` keeps shedding, the serve loop never waits for the shadow."""
    with MjpegHttpServer(fps=20, size=(320, 240)) as cam:
        # a short shadow timeout: at the lowest priority beside the burners the shadow's calls may time out, and the
        # run's end drains its queue within the timeouts
        cfg = run_config(media, tmp_path, [{"uri": str(media["dock"]), "id": "dock"}, {"uri": cam.url, "id": "gate"}],
                         **{"shadow_mode.timeout_s": 1.0})
        runner = Runner(cfg, install_signal_handlers=False, image_stats=False)
        out: dict = {}
        t = threading.Thread(target=lambda: out.setdefault("summary", runner.run()), daemon=True)
        t.start()
        deadline = time.time() + 60
        while time.time() < deadline and not (runner.readers and all(r.finished for r in runner.readers if r.camera_id == "dock")):
            time.sleep(0.2)
        time.sleep(0.5)
        runner.stop("test done")
        t.join(timeout=60)
    assert not t.is_alive(), "runner did not stop"
    summary = out["summary"]
    sh, bp = summary.shadow, summary.shadow["backpressure"]
    n_inc, n_sh = store_counts(tmp_path, runner.run_id)
    print(f"\nlive + file, auto, {N_BURNERS} burners: coverage {coverage(n_inc, n_sh):.4f} ({n_sh}/{n_inc}); frames shed "
          f"{sh['frames_shed']}; live frames served {summary.cameras['gate']['frames_served']}")
    assert bp["mode"] == "auto" and bp["enabled"] is False
    assert bp["batches_waited"] == 0 and bp["wait_s"] == 0  # the incumbent never waited for the shadow
    assert sh["frames_shed"] > 0 and n_sh < n_inc
    assert summary.cameras["dock"]["frames_served"] == summary.cameras["dock"]["frames_read"] == 300
    assert summary.cameras["gate"]["frames_served"] > 0


def test_a_dead_shadow_still_ends_a_replay_with_a_clear_count(media, tmp_path):
    """Backpressure is bounded: a shadow that never answers costs two abandoned calls, then it is shed as stalled."""
    stuck = StuckClassifier(media["tiny_sh"], role=Role.SHADOW, providers=["cpu"])
    try:
        cfg = run_config(media, tmp_path, [str(media["small"])], **{
            "batching.batch_size": 8, "shadow_mode.timeout_s": 0.1, "shadow_mode.backpressure_max_wait_s": 0.5})
        t0 = time.perf_counter()
        summary = Runner(cfg, shadow=stuck, install_signal_handlers=False, image_stats=False).run()
        wall = time.perf_counter() - t0
    finally:
        stuck.release.set()
    sh = summary.shadow
    assert summary.stop_reason == "sources finished" and summary.frames_served == 120
    assert wall < 30, wall
    assert sh["frames_predicted"] == 0 and sh["coverage"] == 0.0
    assert sh["timeouts"] == MAX_ABANDONED  # each abandoned after backpressure_max_wait_s, then ...
    assert sh["frames_shed"] >= 120 - MAX_ABANDONED * 8  # ... every other batch shed as stalled, none waited for
    assert sh["backpressure"]["enabled"] is True


# --- the scheduler on its own ----------------------------------------------------------------------------------------

def batches(n: int, bs: int = 4) -> list[FrameBatch]:
    rng = np.random.default_rng(0)
    out = []
    for b in range(n):
        imgs = rng.integers(0, 256, (bs, *INPUT, 3), dtype=np.uint8)
        out.append(FrameBatch(frames=tuple(Frame("cam0", b * bs + i, 1000.0 + b * bs + i, imgs[i]) for i in range(bs)),
                              images=imgs))
    return out


def pair_with(media, shadow, backpressure: bool, **cfg) -> ShadowPair:
    inc = OnnxClassifier(media["inc"], role=Role.INCUMBENT, providers=["cpu"], warmup_runs=1)
    return ShadowPair(inc, shadow, ShadowConfig(**cfg), cpu_twin=False, backpressure=backpressure)


@pytest.mark.parametrize("backpressure", [True, False])
def test_offer_waits_for_room_instead_of_shedding(media, backpressure):
    sleepy = SleepyClassifier(media["tiny_sh"], role=Role.SHADOW, providers=["cpu"], warmup_runs=1, sleep_s=0.05)
    pair = pair_with(media, sleepy, backpressure, max_pending_batches=1)
    with pair:
        statuses = [pair.infer(b).shadow for b in batches(12)]
    st = pair.stats()["shadow"]
    if backpressure:
        assert statuses == [ShadowStatus.QUEUED] * 12
        assert pair.coverage() == 1.0 and st["frames_shed"] == 0
        assert st["backpressure"]["batches_waited"] > 0 and st["backpressure"]["wait_s"] > 0.02
    else:
        assert ShadowStatus.SHED in statuses and pair.coverage() < 1.0
        assert st["backpressure"]["batches_waited"] == 0


def test_offer_gives_up_after_the_longest_wait(media):
    sleepy = SleepyClassifier(media["tiny_sh"], role=Role.SHADOW, providers=["cpu"], warmup_runs=1, sleep_s=0.8)
    pair = pair_with(media, sleepy, True, max_pending_batches=1, backpressure_max_wait_s=0.2)
    with pair:
        t0 = time.perf_counter()
        statuses = [pair.infer(b).shadow for b in batches(3)]
        waited = time.perf_counter() - t0
    bp = pair.stats()["shadow"]["backpressure"]
    assert statuses[:2] == [ShadowStatus.QUEUED] * 2 and statuses[2] is ShadowStatus.SHED
    assert bp["batches_gave_up"] == 1 and bp["frames_gave_up"] == 4
    assert 0.2 <= waited < 0.8 and bp["longest_wait_s"] >= 0.2


@pytest.mark.parametrize("backpressure,outcome", [(True, ShadowOutcome.OK), (False, ShadowOutcome.TIMEOUT)])
def test_a_slow_shadow_call_is_not_a_timeout_under_backpressure(media, backpressure, outcome):
    """A busy machine slows a replay's shadow call past ``timeout_s``: with backpressure it is waited for."""
    sleepy = SleepyClassifier(media["tiny_sh"], role=Role.SHADOW, providers=["cpu"], warmup_runs=1, sleep_s=0.5)
    pair = pair_with(media, sleepy, backpressure, timeout_s=0.1, backpressure_max_wait_s=5.0)
    with pair:
        assert pair.infer(batches(1)[0]).shadow is ShadowStatus.QUEUED
        results = pair.poll_shadow(timeout=3.0)
    assert [r.outcome for r in results] == [outcome]


def test_when_backpressure_applies():
    file, folder = SourceConfig(uri="/data/a.mp4"), SourceConfig(uri="/data/shelf")
    paced, live = SourceConfig(uri="/data/a.mp4", max_fps=10), SourceConfig(uri="rtsp://127.0.0.1:8554/cam")
    assert uses_backpressure("auto", [file, folder]) is True
    assert uses_backpressure("auto", [file, live]) is False
    assert uses_backpressure("auto", [paced]) is False  # a file paced with max_fps stands for a camera
    assert uses_backpressure("always", [live]) is True and uses_backpressure("never", [file]) is False
    cfg = ShadowConfig(timeout_s=5.0, backpressure_max_wait_s=60.0, max_pending_batches=2)
    assert shadow_result_within_s(cfg, False) == 4 * 5.0 + 1 and shadow_result_within_s(cfg, True) == 4 * 60.0 + 1
