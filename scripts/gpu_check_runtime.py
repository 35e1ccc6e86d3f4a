#!/usr/bin/env python
"""GPU check of pipeline.runtime: providers in use, IO binding, GPU-vs-CPU agreement, throughput.

Exports a randomly initialised torchvision ResNet-18 following the graph contract (uint8 NHWC RGB in, in-graph
normalisation, "logits"/"probs" out, model card), then on the machine's GPU:

1. ``OnnxClassifier`` with the default provider order: which providers ONNX Runtime really uses;
2. the CUDA IO-binding path vs plain ``session.run`` on the same session, and vs the CPU twin (max |diff| of probs);
3. throughput (img/s) of ``predict`` with and without IO binding, with and without ``prefer_nhwc``, and through
   ``ShadowPair.infer`` (incumbent only), at ``--batch-size``.

Needs torch + torchvision (for the export) and onnxruntime-gpu. Prints everything; exits non-zero if the GPU
provider is not in use or the answers disagree beyond ``--tol``.

    .venv/bin/python scripts/gpu_check_runtime.py --batch-size 64 --seconds 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def export_resnet18(path: Path, classes: list[str], size: int, seed: int) -> Path:
    import onnx
    import torch
    import torchvision

    from pipeline.modelcard import ModelCard, write_card

    torch.manual_seed(seed)
    backbone = torchvision.models.resnet18(weights=None, num_classes=len(classes))

    class Contract(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net
            mean = torch.tensor([0.485, 0.456, 0.406])
            std = torch.tensor([0.229, 0.224, 0.225])
            self.register_buffer("scale", 1.0 / (255.0 * std))
            self.register_buffer("shift", mean / std)

        def forward(self, image):
            x = (image.to(torch.float32) * self.scale - self.shift).permute(0, 3, 1, 2)
            logits = self.net(x)
            return logits, torch.softmax(logits, dim=1)

    model = Contract(backbone).eval()
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(2, size, size, 3, dtype=torch.uint8),), str(tmp), opset_version=17,
                          input_names=["image"], output_names=["logits", "probs"], dynamo=False,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "probs": {0: "batch"}})
    proto = onnx.load(str(tmp))
    tmp.unlink()
    write_card(proto, ModelCard(class_names=classes, input_size=[size, size], arch="resnet18", created_at="2024-01-01T00:00:00Z",
                                data_fingerprint=f"random-seed{seed}"))
    onnx.save(proto, str(path))
    return path


def throughput(fn, x, seconds: float) -> float:
    fn(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(x)
        n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--tol", type=float, default=5e-3, help="max |diff| of probs GPU vs CPU (TF32 convs on Ampere+)")
    p.add_argument("--out", default=None, help="keep the exported models in this folder")
    args = p.parse_args()

    import logging

    import onnxruntime as ort

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if hasattr(ort, "preload_dlls"):
        try:  # CUDA/cuDNN from the nvidia-* wheels (as torch ships them)
            ort.preload_dlls()
        except Exception as e:  # noqa: BLE001
            print("preload_dlls:", e)
    print(f"onnxruntime {ort.__version__} from {ort.__file__}; available: {ort.get_available_providers()}")

    from pipeline.config import ShadowConfig
    from pipeline.runtime import CPU, CUDA, GPU_PROVIDERS, OnnxClassifier
    from pipeline.shadow import ShadowPair
    from pipeline.types import Frame, FrameBatch

    d = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    d.mkdir(parents=True, exist_ok=True)
    classes = [f"c{i}" for i in range(10)]
    t0 = time.perf_counter()
    path = export_resnet18(d / "resnet18.onnx", classes, args.size, seed=0)
    print(f"exported {path} in {time.perf_counter() - t0:.1f}s")

    ok = True
    t0 = time.perf_counter()
    clf = OnnxClassifier(path, warmup_batch_size=args.batch_size, warmup_runs=3)
    print(f"load+warmup {time.perf_counter() - t0:.1f}s; requested {clf.providers_requested}; IN USE {clf.providers}; "
          f"device {clf.device}; io_binding {clf.use_io_binding}")
    if clf.providers[0] not in GPU_PROVIDERS:
        print("FAIL: no GPU provider in use")
        ok = False
    cuda_only = OnnxClassifier(path, providers=["cuda"], warmup_batch_size=args.batch_size, warmup_runs=3)
    print(f"providers=['cuda'] -> in use {cuda_only.providers}, io_binding {cuda_only.use_io_binding}")
    cpu = clf.cpu_fallback()
    print(f"cpu twin in use {cpu.providers}")

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.batch_size, args.size, args.size, 3), dtype=np.uint8)
    p_bind = cuda_only.predict(x)
    cuda_only.use_io_binding = False
    p_plain = cuda_only.predict(x)
    cuda_only.use_io_binding = True
    p_cpu = cpu.predict(x[:8])
    d_bind = float(np.abs(p_bind - p_plain).max())
    d_cpu = float(np.abs(p_bind[:8] - p_cpu).max())
    agree = float((p_bind[:8].argmax(1) == p_cpu.argmax(1)).mean())
    print(f"max |probs diff| io_binding vs session.run: {d_bind:.2e}; GPU vs CPU: {d_cpu:.2e} (argmax agreement {agree:.2f})")
    if d_bind > 1e-5 or d_cpu > args.tol:
        print("FAIL: answers disagree")
        ok = False
    # concurrency: two threads on one session with IO binding (the shadow pair does this)
    import threading

    errs = []

    def hammer():
        try:
            for _ in range(20):
                q = cuda_only.predict(x)
                if float(np.abs(q - p_bind).max()) > 1e-5:
                    errs.append("mismatch")
        except Exception as e:  # noqa: BLE001
            errs.append(repr(e))

    ts = [threading.Thread(target=hammer) for _ in range(3)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    print(f"3 threads x 20 io-binding calls on one session: {'ok' if not errs else errs[:3]}")
    ok &= not errs

    print(f"\nthroughput at batch {args.batch_size}, {args.size}x{args.size} (img/s):")
    res = {}
    res["predict io_binding"] = throughput(cuda_only.predict, x, args.seconds)
    cuda_only.use_io_binding = False
    res["predict session.run"] = throughput(cuda_only.predict, x, args.seconds)
    cuda_only.use_io_binding = True
    sess = cuda_only.session
    xr = np.ascontiguousarray(x[..., ::-1])
    res["raw session.run (no preprocessing)"] = throughput(lambda a: sess.run(["probs"], {"image": a}), xr, args.seconds)
    import onnxruntime as ort2

    so = ort2.SessionOptions()
    so.graph_optimization_level = ort2.GraphOptimizationLevel.ORT_ENABLE_ALL
    s_nchw = ort2.InferenceSession(str(path), so, providers=[CUDA, CPU], provider_options=[{"cudnn_conv_algo_search": "EXHAUSTIVE"}, {}])
    s_nchw.run(["probs"], {"image": xr})
    res["raw session.run, prefer_nhwc off"] = throughput(lambda a: s_nchw.run(["probs"], {"image": a}), xr, args.seconds)
    frames = tuple(Frame(f"cam{i % 4}", i, 0.0, x[i]) for i in range(len(x)))
    batch = FrameBatch(frames=frames, images=x)
    pair = ShadowPair(cuda_only, None, ShadowConfig(), cpu_twin=False).start()
    res["ShadowPair.infer (incumbent only, with Prediction objects)"] = throughput(lambda b: pair.infer(b).predictions, batch, args.seconds)
    pair.close()
    res["cpu twin predict"] = throughput(cpu.predict, x[:16], min(args.seconds, 2.0))
    for k, v in res.items():
        print(f"  {k:<58} {v:10.0f}")
    print("\nRESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
