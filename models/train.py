"""Training: data sources -> torchvision classifier -> calibrated, verified ONNX with its model card -> MLflow.

``train(TrainConfig(data=["synth/"]))`` does, in order:

1. list, check and split the data (:func:`models.data.index_dataset`): one or more ImageFolder dirs / manifests,
   concatenated; a manifest's ``split`` is kept, rows with a ``group`` are split by whole groups, the rest
   stratified (seeded); ``shadowcam data check`` runs on it and is logged with the run (``data_check``);
2. train the :class:`models.export.ImageClassifier` (uint8 NHWC in, preprocessing inside) with AdamW,
   one-cycle LR, label smoothing and the augmentation policy (:mod:`models.augment`), images streamed from disk
   by :mod:`models.loader` (or cached in memory when small); optional class balancing; initial weights from
   ``--weights`` or the local torch cache; best epoch by validation accuracy (ties: lower validation loss);
   optional early stopping; ``last.pt`` after every epoch for ``--resume``;
3. fit the softmax temperature and the ATC threshold on the validation set (:mod:`models.calibration`);
4. test accuracy, per-class accuracy and confusion matrix on the test split;
5. export to ONNX (+ optional fp16), verified against torch, with the model card in the metadata;
6. log everything to an MLflow run (params, per-epoch metrics, final metrics, ONNX, card, confusion-matrix
   plot, resolved config) and optionally register the ONNX under an alias.

The defaults are sized for a CPU: ``mobilenet_v3_small`` at 64 px, 24 epochs, trains on the default synthetic
set (3000 images) in about two minutes on 2 cores (see ``DEFAULTS_NOTE``); CUDA is used automatically when present.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipeline.config import ARCHS, TRAINING_EXPERIMENT, TrainConfig  # noqa: F401 (re-exported for callers)
from pipeline import tracking
from pipeline.evaluation.reference import build_reference
from pipeline.imagestats import image_stats_batch
from pipeline.modelcard import ModelCard
from pipeline.tracking import TrackedRun
from pipeline.types import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULTS_NOTE = """How the defaults were chosen (see also the report in the commit history).

Speed, 2-core CPU, batch 64, channels_last, training images/s: mobilenet_v3_small 64 px ~1000, 96 px ~500;
resnet18 64 px ~190; efficientnet_b0 64 px ~230; mobilenet_v3_large 64 px ~420. One epoch of the default
synthetic set (2100 training images) at 64 px, with augmentation, BN re-estimation and validation: ~4 s.
Accuracy on `shadowcam synth` defaults (3000 images, seed 0), test split: mobilenet_v3_small 64 px 14 epochs
95.3%, 24 epochs 97.3%, 24 epochs lr 6e-3 + label smoothing 0.1 98.2%; 80 px 20 epochs 98.0%; 96 px 20 epochs
99.1%; resnet18 64 px 12 epochs 98.2%; mobilenet_v3_large 64 px 14 epochs 94.7%.
Measured end to end on the 2-core development VM: `shadowcam synth --out d && shadowcam train --data d` with the
defaults took 2 min 03 s wall (training 115 s incl. MLflow and export) for 97.8% test accuracy; the same model
scored 35.7% on `--shift night:3 --shift motion_blur:3 --shift new_packaging` (600 images, seed 1).
"""


def make_config(**kwargs) -> TrainConfig:
    """Build a :class:`TrainConfig`, turning validation errors into a one-line :class:`ConfigError`."""
    cfg = TrainConfig(**{k: v for k, v in kwargs.items() if v is not None})  # ConfigError names the field
    if cfg.alias and not cfg.register_name:
        raise ConfigError("--alias needs --register NAME (the registered model the alias belongs to)")
    return cfg


@dataclass
class TrainResult:
    out_dir: Path
    onnx_path: Path
    checkpoint_path: Path
    card: ModelCard
    test_accuracy: float
    val_accuracy: float
    per_class_accuracy: dict[str, float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class (card.class_names order)
    history: list[dict] = field(default_factory=list)
    run_id: str = ""
    registered_version: str | None = None
    onnx_fp16_path: Path | None = None
    best_epoch: int = 0
    wall_s: float = 0.0

    def summary(self) -> str:
        lines = [
            f"test accuracy {self.test_accuracy:.2%} (n={self.card.test_size}), val accuracy {self.val_accuracy:.2%}, "
            f"best epoch {self.best_epoch}, {self.wall_s:.0f}s",
            "per-class recall: " + ", ".join(f"{c} {a:.0%}" for c, a in self.per_class_accuracy.items()),
            f"temperature {self.card.temperature:.3f}, ATC threshold {self.card.atc_threshold:.4f}, "
            f"export max|diff| {self.card.export_max_abs_diff:.2g}",
            f"ONNX: {self.onnx_path}" + (f"  (fp16: {self.onnx_fp16_path})" if self.onnx_fp16_path else ""),
        ]
        if self.run_id:
            lines.append(f"MLflow run: {self.run_id}")
        if self.registered_version:
            lines.append(f"registered: {self.card.name} version {self.registered_version}")
        return "\n".join(lines)


# --- pieces --------------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def recompute_bn_stats_batches(model, batches, device) -> int:
    """Recompute every BatchNorm layer's running statistics over ``batches`` of un-augmented uint8 NHWC images
    (tensors or arrays; batches of fewer than 2 images are skipped).

    "Precise BN": reset the running mean/var and average them over forward passes in training mode
    (``momentum=None`` = cumulative average). In runs of a few hundred steps the exponential running averages
    lag the fast-moving weights so far (torchvision's MobileNetV3/EfficientNet use momentum 0.01) that
    evaluation-mode accuracy can sit at chance while training accuracy climbs; recomputing them before each
    evaluation makes validation accuracy, checkpoint choice and the exported model reflect the weights.
    Returns the number of BatchNorm layers updated.
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    with torch.no_grad():
        for xb in batches:
            xb = torch.as_tensor(xb)
            if len(xb) >= 2:
                model.logits(xb.to(device, non_blocking=True))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)
    return len(bns)


def pick_device(pref: str):
    import torch

    if pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but CUDA is not available")
    if pref == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def load_weights(backbone, path: str | Path) -> tuple[int, int]:
    """Load a local state dict into ``backbone``: torchvision weights or a shadowcam checkpoint (``best.pt``).

    Tensors whose shape does not fit (e.g. a classifier head for another number of classes) are skipped.
    Returns ``(loaded, total)``; :class:`ConfigError` when the file is missing or nothing fits.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors come in many types
        raise ConfigError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {(k[len("backbone."):] if k.startswith("backbone.") else k): v for k, v in state.items()}
    own = backbone.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and hasattr(v, "shape") and v.shape == own[k].shape}
    if not fitting:
        raise ConfigError(f"{path}: none of its {len(state)} tensors fit this architecture")
    backbone.load_state_dict(fitting, strict=False)
    skipped = sorted(set(own) - set(fitting))
    if skipped:
        log.info("weights %s: %d of %d tensors loaded; kept random init for %s", path, len(fitting), len(own),
                 ", ".join(skipped[:6]) + (" ..." if len(skipped) > 6 else ""))
    return len(fitting), len(own)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def per_class_accuracy(cm: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """Recall per class (diagonal / row sum); NaN-free: classes absent from the split are left out."""
    out = {}
    for i, c in enumerate(class_names):
        n = cm[i].sum()
        if n:
            out[c] = float(cm[i, i] / n)
    return out


def plot_confusion(cm: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.1 * n + 2.5, 1.0 * n + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=40, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    hi = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color="white" if cm[i, j] > hi / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def default_out_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(cfg.workdir) / "training" / f"{stamp}-{cfg.arch}"


# --- the run -------------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> TrainResult:
    """Train, calibrate, evaluate, export, log and (optionally) register; see the module docstring.

    ``cfg.threads`` sets torch's intra-op threads for the run only (restored afterwards).
    """
    import torch

    if cfg.alias and not cfg.register_name:
        raise ConfigError("alias needs register_name (the registered model the alias belongs to)")
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads_before)


def cached_torchvision_weights(arch: str) -> Path | None:
    """torchvision's default (ImageNet) weights file for ``arch`` when it is in the local torch cache, else None.
    Nothing is downloaded."""
    from urllib.parse import urlparse

    import torch
    import torchvision

    try:
        url = torchvision.models.get_model_weights(arch).DEFAULT.url
    except (ValueError, AttributeError):
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    return path if path.is_file() else None


def initial_weights(cfg: TrainConfig) -> tuple[str | None, str]:
    """The weights file to start from and, in words, where it came from (logged and recorded as a param)."""
    if cfg.weights:
        return cfg.weights, f"--weights {cfg.weights}"
    if cfg.pretrained:
        found = cached_torchvision_weights(cfg.arch)
        if found:
            return str(found), f"torchvision ImageNet weights from the local torch cache ({found})"
        import torch

        return None, (f"from scratch: no --weights, and torchvision's ImageNet weights for {cfg.arch} are not in the "
                      f"local torch cache ({Path(torch.hub.get_dir()) / 'checkpoints'}); training never downloads")
    return None, "from scratch (pretrained=False, no --weights)"


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class weights n / (C * n_c) (a class absent from training gets 0): the balanced weighting."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0)


def _resume_key(cfg: TrainConfig, classes: list[str], fingerprint: str) -> dict:
    """What must not change between an interrupted run and its resumption."""
    keep = ("arch", "img_size", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "augment",
            "class_balance", "seed", "val_fraction", "test_fraction")
    return {**{k: getattr(cfg, k) for k in keep}, "classes": list(classes), "data_fingerprint": fingerprint}


def find_resume_checkpoint(path: str | Path) -> Path:
    p = Path(path)
    p = p / LAST_CHECKPOINT if p.is_dir() else p
    if not p.is_file():
        raise ConfigError(f"--resume {path}: no {LAST_CHECKPOINT} there (training writes it after every epoch)")
    return p


LAST_CHECKPOINT = "last.pt"


def _train(cfg: TrainConfig) -> TrainResult:
    import torch
    from tqdm.auto import tqdm

    from models.augment import build_transform, resolve_policy, save_policy
    from models.calibration import atc_threshold, fit_temperature, softmax
    from models.data import RESIZE_INTERPOLATION, SPLITS, check_unreadable, index_dataset
    from models.export import ImageClassifier, build_backbone, export_onnx, save_checkpoint
    from models.loader import EpochOrder, ImageSet, choose_cache, decode_all, default_workers, make_loader

    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    idx = index_dataset(cfg.data, class_names=cfg.class_names, val_fraction=cfg.val_fraction,
                        test_fraction=cfg.test_fraction, seed=cfg.seed)
    for split in ("val", "test"):
        if idx.size(split) == 0:
            raise DataError(f"the {split} split of {', '.join(idx.sources)} is empty; give more images per class "
                            f"or a non-zero {split}_fraction")
    out_dir = Path(cfg.out) if cfg.out else default_out_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = idx.class_names
    n_classes = len(classes)
    resume_state = None
    if cfg.resume:
        ckpt_path = find_resume_checkpoint(cfg.resume)
        resume_state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        want = _resume_key(cfg, classes, idx.fingerprint)
        diff = sorted(k for k in want if resume_state["key"].get(k) != want[k])
        if diff:
            raise ConfigError(f"--resume {ckpt_path}: the run differs from the interrupted one in {', '.join(diff)} "
                              "(resume with the same data and settings)")

    # --- data: streamed from disk, or decoded once into memory when it fits ------------------------------------
    n_all = sum(idx.size(s) for s in SPLITS)
    cached = choose_cache(cfg.cache, n_all, cfg.img_size, cfg.cache_max_gb * 1e9)
    workers = cfg.workers if cfg.workers is not None else default_workers(cached)
    policy = resolve_policy(cfg.augment, list(cfg.data))
    transform = build_transform(policy, seed=cfg.seed)
    caches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    unreadable: set[str] = set()
    if cached:
        for split in SPLITS:
            caches[split] = decode_all(idx.paths[split], cfg.img_size, progress=cfg.progress)
            unreadable |= {p for p, ok in zip(idx.paths[split], caches[split][1]) if not ok}
        check_unreadable(sorted(unreadable), n_all, cfg.max_bad_fraction)
    sets = {s: ImageSet(idx.paths[s], idx.labels[s], cfg.img_size, transform if s == "train" else None, seed=cfg.seed,
                        cache=caches.get(s)) for s in SPLITS}
    log.info("data: %d classes, train=%d, val=%d, test=%d, %s, %d decoding worker(s), augmentation %s",
             n_classes, idx.size("train"), idx.size("val"), idx.size("test"),
             "cached in memory" if cached else "streamed from disk", workers, policy)

    def evaluate(split: str, stats: bool = False, keep: int = 0) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
        """``(logits, labels, image stats, first images)`` over the readable rows of ``split`` (un-augmented):
        image stats (:func:`pipeline.imagestats.image_stats_batch` on BGR, as the runtime computes them) when
        ``stats``; the first ``keep`` images (export verification)."""
        logits, labels, st, kept = [], [], [], []
        model.eval()
        with torch.inference_mode():
            for xb, yb, ib, ok in make_loader(sets[split], 256, workers):
                unreadable.update(sets[split].paths[i] for i in ib[~ok])
                if not ok.any():
                    continue
                xb, yb = xb[torch.from_numpy(ok)], yb[torch.from_numpy(ok)]
                logits.append(model.logits(xb.to(device, non_blocking=True)).float().cpu().numpy())
                labels.append(yb.numpy())
                if stats:
                    st.append(image_stats_batch(np.ascontiguousarray(xb.numpy()[..., ::-1])))
                if sum(len(k) for k in kept) < keep:
                    kept.append(xb.numpy()[:keep])
        if not logits:
            raise DataError(f"no readable images in the {split} split")
        st_all = {k: np.concatenate([b[k] for b in st]) for k in st[0]} if st else {}
        first = np.concatenate(kept)[:keep] if kept else np.zeros((0, cfg.img_size, cfg.img_size, 3), np.uint8)
        return np.concatenate(logits), np.concatenate(labels), st_all, first

    def bn_batches(epoch: int):
        """Un-augmented training images (up to 1024, seeded) for :func:`recompute_bn_stats_batches`."""
        n = idx.size("train")
        pick = np.sort(np.random.default_rng(cfg.seed + epoch).permutation(n)[:1024])
        sub = ImageSet([idx.paths["train"][i] for i in pick], idx.labels["train"][pick], cfg.img_size, None,
                       cache=(caches["train"][0][pick], caches["train"][1][pick]) if cached else None)
        for xb, _, _, ok in make_loader(sub, cfg.batch_size, workers):
            if ok.sum() >= 2:
                yield xb[torch.from_numpy(ok)]

    weights_path, weights_from = initial_weights(cfg)
    log.info("initial weights: %s", weights_from)
    backbone = build_backbone(cfg.arch, n_classes)
    if weights_path:
        load_weights(backbone, weights_path)
    model = ImageClassifier(backbone).to(device)
    model = model.to(memory_format=torch.channels_last)

    y_train = idx.labels["train"]
    n_train = len(y_train)
    drop_last = n_train > cfg.batch_size
    steps_per_epoch = n_train // cfg.batch_size if drop_last else 1
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * steps_per_epoch
    if total_steps >= 8:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps,
                                                    pct_start=0.25, div_factor=10.0, final_div_factor=100.0)
    else:  # OneCycleLR cannot split fewer steps into its two phases: plain cosine decay for such toy runs
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total_steps)))
    cw = class_weights(y_train, n_classes)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing,
                                        weight=torch.tensor(cw, dtype=torch.float32, device=device)
                                        if cfg.class_balance == "loss" else None)
    order = EpochOrder(n_train, cfg.seed, weights=cw[y_train] if cfg.class_balance == "sampler" else None)
    train_loader = make_loader(sets["train"], cfg.batch_size if drop_last else n_train, workers, sampler=order,
                               drop_last=drop_last)
    save_policy(transform, out_dir / "augmentation.json")

    history: list[dict] = []
    best = {"acc": -1.0, "loss": math.inf, "epoch": 0, "state": None, "acc_epoch": 0}
    first_epoch = 1
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        opt.load_state_dict(resume_state["opt"])
        sched.load_state_dict(resume_state["sched"])
        best, history = resume_state["best"], resume_state["history"]
        first_epoch = resume_state["epoch"] + 1
        log.info("resuming %s after epoch %d of %d", resume_state.get("run_id") or out_dir, first_epoch - 1, cfg.epochs)
    stopped_early = None
    with TrackedRun(cfg.experiment, f"{cfg.arch}-{cfg.img_size}px", cfg.workdir, enabled=cfg.track,
                    run_id=(resume_state or {}).get("run_id") or None) as run:
        run_id = run.run_id
        if resume_state is None:
            run.log_params({k: v for k, v in cfg.model_dump().items() if k not in ("progress", "resume")})
            run.log_params({"n_train": n_train, "n_val": idx.size("val"), "n_test": idx.size("test"),
                            "n_classes": n_classes, "data_fingerprint": idx.fingerprint, "device_used": str(device),
                            "torch_threads": torch.get_num_threads(), "augment_policy": policy,
                            "initial_weights": weights_from[:500], "data_cached": cached, "workers_used": workers})
            run.log_artifact(out_dir / "augmentation.json")
            if cfg.data_check:
                _log_data_check(cfg, run, out_dir)

        epochs = tqdm(range(first_epoch, cfg.epochs + 1), desc=f"training {cfg.arch}", unit="epoch",
                      disable=not cfg.progress, initial=first_epoch - 1, total=cfg.epochs)
        for epoch in epochs:
            t_ep = time.perf_counter()
            torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout: the same whether resumed or not
            model.train()
            sets["train"].set_epoch(epoch)
            order.set_epoch(epoch)
            total, seen, correct = 0.0, 0, 0
            for xb, yb, ib, ok in tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
                                       disable=not cfg.progress, total=steps_per_epoch):
                if not ok.all():
                    unreadable.update(sets["train"].paths[i] for i in ib[~ok])
                    keep = torch.from_numpy(ok)
                    xb, yb = xb[keep], yb[keep]
                    if len(yb) < 2:
                        continue
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                logits = model.logits(xb)
                loss = loss_fn(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.item()) * len(yb)
                seen += len(yb)
                correct += int((logits.argmax(1) == yb).sum().item())
            if not cached and epoch == first_epoch:
                check_unreadable(sorted(unreadable), n_all, cfg.max_bad_fraction, warn=False)  # fail early
            recompute_bn_stats_batches(model, bn_batches(epoch), device)
            val_logits, y_val, _, _ = evaluate("val")
            val_acc = float((val_logits.argmax(1) == y_val).mean())
            val_loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(y_val)))
            row = {"epoch": epoch, "train_loss": total / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                   "val_accuracy": val_acc, "val_loss": val_loss, "lr": float(sched.get_last_lr()[0]),
                   "epoch_seconds": time.perf_counter() - t_ep, "images_per_second": seen / max(time.perf_counter() - t_ep, 1e-9)}
            history.append(row)
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            if val_acc > best["acc"]:
                best["acc_epoch"] = epoch  # early stopping counts from the last better accuracy (not loss tie-breaks)
            if (val_acc, -val_loss) > (best["acc"], -best["loss"]):
                best = {**best, "acc": val_acc, "loss": val_loss, "epoch": epoch,
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
            epochs.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{val_acc:.3f}", best=best["epoch"])
            log.debug("epoch %d: %s", epoch, row)
            torch.save({"epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "best": best, "history": history, "run_id": run_id,
                        "key": _resume_key(cfg, classes, idx.fingerprint)}, out_dir / LAST_CHECKPOINT)
            if cfg.patience and epoch - best["acc_epoch"] >= cfg.patience and epoch < cfg.epochs:
                stopped_early = epoch
                log.info("early stopping after epoch %d: no better validation accuracy for %d epochs (best: epoch %d)",
                         epoch, cfg.patience, best["epoch"])
                break
        if stopped_early:
            run.set_tags({"shadowcam.stopped_early_at_epoch": str(stopped_early)})

        # --- best checkpoint, calibration, test ------------------------------------------------------------
        model.load_state_dict(best["state"])
        model = model.to("cpu").eval()
        device = torch.device("cpu")
        val_logits, y_val, val_stats, _ = evaluate("val", stats=True)
        val_acc = float((val_logits.argmax(1) == y_val).mean())
        temperature = fit_temperature(val_logits, y_val)
        model.temperature.fill_(temperature)
        val_probs = softmax(val_logits, temperature)
        atc_t = atc_threshold(val_probs.max(axis=1), val_acc)
        # what production is compared with (drift against training): the validation images' calibrated softmax and
        # image statistics, computed as the runtime computes them (model-sized BGR frames)
        reference = build_reference(val_probs, val_stats, classes, seed=cfg.seed)

        test_logits, y_test, _, verify = evaluate("test", keep=8)
        test_pred = test_logits.argmax(1)
        test_acc = float((test_pred == y_test).mean())
        cm = confusion_matrix(y_test, test_pred, n_classes)
        pca = per_class_accuracy(cm, classes)
        check_unreadable(sorted(unreadable), n_all, cfg.max_bad_fraction)

        card = ModelCard(
            class_names=list(classes), input_size=[cfg.img_size, cfg.img_size], arch=cfg.arch, input_color="RGB",
            resize_interpolation=RESIZE_INTERPOLATION, temperature=temperature, atc_threshold=atc_t,
            test_accuracy=test_acc, val_accuracy=val_acc, per_class_accuracy=pca, test_size=int(len(y_test)),
            data_fingerprint=idx.fingerprint, training_run_id=run_id, name=cfg.register_name or "",
            training_reference=reference.to_dict(),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            extra={"val_size": int(len(y_val)), "train_size": int(n_train), "best_epoch": best["epoch"],
                   "epochs": cfg.epochs, "data_sources": idx.sources, "seed": cfg.seed, "augment": policy,
                   "class_balance": cfg.class_balance, "stopped_early_at_epoch": stopped_early,
                   # training images per class: the evaluator's majority-class baseline predicts the most common
                   "class_counts": {c: int((y_train == k).sum()) for k, c in enumerate(classes)}},
        )
        ckpt = save_checkpoint(out_dir / "best.pt", model, card)
        report = export_onnx(model, card, out_dir / "model.onnx", opset=cfg.opset, tolerance=cfg.export_tolerance,
                             verify_images=verify, seed=cfg.seed)
        card = report.card
        fp16_path = None
        if cfg.fp16:
            fp16_path = export_onnx(model, card, out_dir / "model_fp16.onnx", precision="fp16", opset=cfg.opset,
                                    verify_images=verify, seed=cfg.seed).path

        card_doc = json.loads(card.to_json())
        # the reference profile (thousands of numbers) is kept compact in a file of its own; the card in the ONNX
        # metadata carries it whole
        (out_dir / "training_reference.json").write_text(json.dumps(card_doc.pop("training_reference")))
        (out_dir / "card.json").write_text(json.dumps(card_doc, indent=2))
        plot_confusion(cm, classes, out_dir / "confusion_matrix.png", f"{cfg.arch} test set (acc {test_acc:.1%})")
        _write_config(cfg, out_dir / "config.yaml")
        # val_accuracy is the per-epoch series; the chosen checkpoint's value is best_val_accuracy
        final = {"test_accuracy": test_acc, "best_val_accuracy": val_acc, "best_epoch": best["epoch"],
                 "temperature": temperature, "atc_threshold": atc_t,
                 "val_nll_uncalibrated": float(torch.nn.functional.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(y_val))),
                 "export_max_abs_diff": card.export_max_abs_diff,
                 "export_max_abs_diff_probs": report.max_abs_diff_probs,
                 "export_max_abs_diff_logits": report.max_abs_diff_logits,
                 "train_seconds": time.perf_counter() - t_start, "unreadable_images": len(unreadable)}
        final.update({f"test_accuracy_{_metric_key(c)}": a for c, a in pca.items()})
        (out_dir / "metrics.json").write_text(json.dumps({"final": final, "history": history,
                                                          "confusion": cm.tolist(), "class_names": classes}, indent=2))

        version = None
        run.log_metrics(final)
        run.log_artifact(out_dir / "model.onnx", tracking.model_artifact_dir("model.onnx"))
        if fp16_path:  # its own folder, so it can be registered as a version of its own
            run.log_artifact(fp16_path, tracking.model_artifact_dir(fp16_path))
        for name in ("card.json", "training_reference.json", "confusion_matrix.png", "config.yaml", "metrics.json"):
            run.log_artifact(out_dir / name)
        run.set_tags({"shadowcam.arch": cfg.arch, "shadowcam.data_fingerprint": idx.fingerprint,
                      "shadowcam.classes": ",".join(classes)})
        if cfg.register_name and cfg.track:
            version = tracking.register_onnx(out_dir / "model.onnx", cfg.register_name, alias=cfg.alias,
                                             run_id=run_id, workdir=cfg.workdir)
            run.set_tags({"shadowcam.registered_model": cfg.register_name, "shadowcam.registered_version": version})

    result = TrainResult(out_dir=out_dir, onnx_path=out_dir / "model.onnx", checkpoint_path=ckpt, card=card,
                         test_accuracy=test_acc, val_accuracy=val_acc, per_class_accuracy=pca, confusion=cm.tolist(),
                         history=history, run_id=run_id, registered_version=version, onnx_fp16_path=fp16_path,
                         best_epoch=best["epoch"], wall_s=time.perf_counter() - t_start)
    log.info("training done in %.0fs: test accuracy %.4f", result.wall_s, test_acc)
    return result


def _log_data_check(cfg: TrainConfig, run: TrackedRun, out_dir: Path) -> None:
    """``shadowcam data check`` of the training data (the split this run makes), logged with the run and written
    beside the model; the cross-split near-duplicates (the leak that flatters test accuracy) are also warned about."""
    from models.datacheck import DataCheckConfig, check_data, log_data_check

    report = check_data(DataCheckConfig(data=list(cfg.data), class_names=cfg.class_names, img_size=cfg.img_size,
                                        val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed,
                                        progress=cfg.progress))
    log_data_check(report, run, out_dir)
    n_cross = sum(report.duplicates.cross_split_pairs.values()) if report.duplicates is not None else 0
    run.log_params({"cross_split_duplicates": n_cross})
    if n_cross:
        log.warning("data check: %d near-duplicate pair(s) straddle train/val/test: the test accuracy is flattered "
                    "(give the manifest a group column: camera, video or time block); see %s", n_cross,
                    out_dir / "data_check.html")


def _metric_key(name: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . /`` and spaces."""
    import re

    return re.sub(r"[^\w\-./ ]", "_", name)


def _write_config(cfg: TrainConfig, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return path


def result_dict(result: TrainResult) -> dict:
    """JSON-friendly view of a :class:`TrainResult` (what ``shadowcam train --json`` prints)."""
    d = asdict(result)
    d["card"] = json.loads(result.card.to_json())
    ref = d["card"].get("training_reference")
    if ref:  # summarised: the whole profile is in the ONNX file and training_reference.json
        d["card"]["training_reference"] = {"source": ref.get("source"), "n_total": ref.get("n_total")}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items() if k != "history"}
