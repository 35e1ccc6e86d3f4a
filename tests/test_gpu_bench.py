"""scripts/gpu_bench.py (issue 14, the GPU server path), run here on the CPU: 1 and 2 small H.264 streams, ~3 s each.

One real run of the script in a subprocess (real camera worker processes, real ONNX Runtime sessions, real torch
eager models) is shared by the tests that read its JSON and document; the pure parts (the document's generated
block, batch buckets, argument checks) are tested in-process. About 25 s on a quiet 2-core machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.onnx_models import make_tiny_classifier

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_bench.py"
FPS = 30.0
SECONDS = 2.5


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_bench_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


gb = _load_script()


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("gpu_bench")
    doc = tmp / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nMeasured by shadowcam bench.\n")
    (tmp / "benchmarks.json").write_text(json.dumps({"raw": {"fps_both": 281.0}}))
    cmd = [sys.executable, str(SCRIPT), "--cpu", "--cameras", "1,2", "--seconds", str(SECONDS), "--warmup", "0.5",
           "--width", "320", "--height", "180", "--clip-seconds", "1", "--arch", "tiny", "--img-size", "32",
           "--batch-size", "8", "--ceiling-seconds", "1", "--model-seconds", "0.5", "--workdir", str(tmp / "work"),
           "--streams-dir", str(tmp / "streams"),
           "--json", str(tmp / "results.json"), "--doc", str(doc)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp / "results.json").read_text()), doc


def test_cameras_are_paced_and_counted_end_to_end(cpu_run):
    r, _ = cpu_run
    points = {p["cameras"]: p for p in r["points"]}
    assert sorted(points) == [1, 2]
    for n, p in points.items():
        # paced at 30 fps: never more than the cameras deliver in the window (one frame of slack per camera)
        assert 0 < p["fps_total"] <= n * (FPS + 1 / SECONDS) + 1e-6
        assert p["fps_target_total"] == n * FPS
        assert p["fps_per_camera_min"] <= p["fps_per_camera_median"]
        assert 0 < p["latency_p50_ms"] <= p["latency_p99_ms"]
        assert 0 <= p["drop_share"] <= 1 and p["frames_decoded"] >= p["fps_total"] * SECONDS
        assert 1 <= p["mean_batch"] <= 8 and p["infer_ms_per_frame"] > 0
        assert p["sustained"] == (p["cameras_sustained"] == n)
        assert p["own_cpu_share"] > 0
    # one 320x180 camera and a tiny model: far below what even a busy 2-core machine can do
    assert points[1]["fps_total"] >= FPS / 2
    sustained = [n for n, p in points.items() if p["sustained"]]
    assert r["streams_sustained"] == (max(sustained) if sustained else 0)
    assert r["max_fps_total"] == max(p["fps_total"] for p in r["points"])


def test_decode_ceiling_is_per_core_rate_times_cores(cpu_run):
    r, _ = cpu_run
    d = r["decode_ceiling"]
    assert d["cores"] == len(os.sched_getaffinity(0))
    assert d["decode_only_fps_per_core"] > FPS and d["worker_path_fps_per_core"] > 0
    assert d["decode_only_ceiling_fps"] == pytest.approx(d["decode_only_fps_per_core"] * d["cores"], abs=0.2)
    assert d["decode_only_ceiling_streams"] == pytest.approx(d["decode_only_ceiling_fps"] / FPS, abs=0.1)
    assert d["worker_path_ceiling_streams"] == pytest.approx(d["worker_path_ceiling_fps"] / FPS, abs=0.1)


def test_streams_models_and_model_time(cpu_run):
    r, _ = cpu_run
    s = r["streams"]
    assert (s["width"], s["height"], s["fps"], s["clips"]) == (320, 180, FPS, 2)
    try:
        import av  # noqa: F401

        assert s["h264"] and s["codec"] == "H.264" and "libx264" in s["encoder"]
    except ImportError:  # no H.264 encoder without PyAV: the fallback is reported, not hidden
        assert s["h264"] or s["fallback_reason"]
    assert s["mbit_per_s"] > 0
    m = r["models"]
    assert r["mode"] == "cpu" and m["providers"] == ["CPUExecutionProvider"] and m["precision"] == "fp32"
    assert m["io_binding"] is False and m["tensorrt"]["used"] is False
    ms = r["model_ms"]
    assert ms["batch"] == 8 and ms["ort"]["ms_per_frame"] > 0 and ms["ort"]["calls"] >= 5
    assert ms["torch_eager"]["ms_per_frame"] > 0  # torch is installed here
    assert ms["torch_over_ort"] == pytest.approx(ms["torch_eager"]["ms_per_frame"] / ms["ort"]["ms_per_frame"], rel=0.02)


def test_document_gets_one_block_and_keeps_the_rest(cpu_run):
    r, doc = cpu_run
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nMeasured by shadowcam bench.\n")
    assert text.count(gb.BLOCK_BEGIN) == 1 and text.count(gb.BLOCK_END) == 1
    assert "No GPU figures yet" in text and "### CPU only; " in text and r["machine"]["cpu"] in text
    data = json.loads(doc.with_suffix(".json").read_text())
    assert data["raw"] == {"fps_both": 281.0} and data["gpu_bench"]["cpu"]["points"] == r["points"]
    assert gb.main(["--render-only", "--doc", str(doc)]) == 0  # re-rendering replaces the block, never adds one
    assert doc.read_text() == text


def test_replace_block_appends_then_replaces():
    block1 = gb.BLOCK_BEGIN + "\none\n" + gb.BLOCK_END + "\n"
    block2 = gb.BLOCK_BEGIN + "\ntwo\n" + gb.BLOCK_END + "\n"
    once = gb.replace_block("# B\n\ntext\n", block1)
    assert once == "# B\n\ntext\n\n" + block1
    twice = gb.replace_block(once + "\nafter\n", block2)
    assert twice == "# B\n\ntext\n\n" + block2 + "after\n"
    assert gb.replace_block("", block1) == block1


def test_gpu_sessions_keep_the_runtime_cuda_options():
    from pipeline.runtime import CUDA_PROVIDER_OPTIONS

    assert CUDA_PROVIDER_OPTIONS.items() <= gb.CUDA_OPTIONS.items()


def test_io_binding_path_pads_to_buckets_and_matches_plain_runs(tmp_path):
    """The GPU's code path (shared input buffer, bound outputs, batches padded to a bucket) with CPU buffers."""
    names = [f"c{i}" for i in range(gb.CLASSES)]
    paths = tuple(make_tiny_classifier(tmp_path / f"tiny{seed}.onnx", names, (32, 32), seed=seed) for seed in (1, 2))
    plain = gb.Engine(paths, "cpu", 8, tmp_path, trt=False, size=32)
    bound = gb.Engine(paths, "cpu", 8, tmp_path, trt=False, size=32, io_binding=True)
    assert plain.buckets == [] and bound.buckets == [1, 2, 4, 8] and bound.bucket(5) == 8
    buf = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    want = plain.infer(buf[:5])
    got = bound.infer(buf[:bound.bucket(5)])  # padded with the rest of the buffer
    for w, g in zip(want, got):
        assert g.shape == (8, gb.CLASSES)
        np.testing.assert_allclose(g[:5], w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g.sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(want[0], want[1])  # incumbent and shadow have different weights
    for e in (plain, bound):
        e.close()


def test_fast_resize_stays_close_to_one_area_pass():
    import cv2

    rng = np.random.default_rng(0)  # a 1080p frame of blurred noise: detail at every scale the halvings touch
    img = cv2.GaussianBlur(rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8), (0, 0), 2)
    for size in (64, 224):
        fast, area, nearest = (np.empty((size, size, 3), np.uint8) for _ in range(3))
        gb.resize_into(img, fast, "fast")
        gb.resize_into(img, area, "area")
        cv2.resize(img, (size, size), dst=nearest, interpolation=cv2.INTER_NEAREST)
        diff = np.abs(fast.astype(int) - area.astype(int))
        assert diff.mean() < 2.0 and diff.max() <= 12  # measured: mean 0.6 / 1.2, max 3 / 8
        assert np.abs(nearest.astype(int) - area.astype(int)).mean() > 4 * diff.mean()  # it is an average, not a pick


def test_batch_buckets():
    assert gb.batch_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert gb.batch_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
    assert gb.batch_buckets(1) == [1]


@pytest.mark.parametrize("argv, field", [
    (["--cpu", "--cameras", "0,2"], "--cameras"),
    (["--cpu", "--cameras", "one"], "--cameras"),
    (["--cpu", "--seconds", "0"], "--seconds"),
    (["--cpu", "--width", "1919"], "--width"),
])
def test_bad_arguments_give_one_line_errors(argv, field, capsys):
    assert gb.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gpu_bench: error: {field} ") and "\n" not in err
