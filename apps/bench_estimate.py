"""``shadowcam bench estimate``: every label-free accuracy estimate against the truth, shift by shift.

Between labels the evaluator reports a label-free accuracy estimate. ATC (Garg et al., ICLR 2022), the first
one, is confidently wrong under shift: a model that is sure of itself on dark or blurred frames keeps its
confidence while its accuracy falls. This bench measures every estimator of
:mod:`pipeline.evaluation.estimate` where the truth is known, and writes ``docs/label_free.md`` (plus the raw
results, ``docs/label_free.json``). Every number in the document comes from :func:`run_estimate_bench`.

1. **Models**: the incumbent (``model``, or trained by :func:`models.train.train` with its default settings on a
   clean :func:`models.synthetic.generate_dataset` set) and the shadow (``shadow``, or trained the same way with
   the next seed: an independently trained twin). Their model cards carry what the estimators need: the ATC
   threshold, the validation accuracy and the training reference profile (validation softmax and image
   statistics).
2. **Conditions**: clean, then every shift of :data:`models.shifts.SHIFTS` at every severity; per condition a
   labelled test set of ``n`` images rendered with seed ``seed + 1`` (the same scenes under every condition, none
   of them seen in training).
3. **Through the product's runtime**: each image is decoded with OpenCV and resized to each model's input size
   with its card's interpolation (what the batcher does to a camera frame), then
   :meth:`pipeline.runtime.OnnxClassifier.predict`; the image statistics are those the store writer computes
   (:func:`pipeline.imagestats.image_stats_batch` on the model-sized frame). No label-free estimator sees a label.
4. **Estimates vs the truth** (each model's accuracy on the set) per condition and model; the mean absolute error
   per estimator on the clean set, at severities <= 3, > 3 and over all shifted sets, the best label-free
   estimator and whether it meets the target (:data:`TARGET_MAE` at severities <= 3).

``recalibrated`` is the one estimator that uses labels (``labels`` frames of each set, drawn uniformly, as a
labelling queue would give them): it shows what a few production labels add, and is not a candidate for "best
label-free".
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from pydantic import Field, model_validator

from apps.bench import machine_info, write_document
from models.data import list_source
from models.shifts import SEVERITIES, SHIFTS
from models.synthetic import generate_dataset
from models.train import make_config, train
from pipeline.batching import INTERPOLATIONS, resize_into
from pipeline.config import _Strict
from pipeline.evaluation import estimate as est
from pipeline.evaluation.reference import TrainingReference
from pipeline.imagestats import image_stats_batch
from pipeline.runtime import OnnxClassifier
from pipeline.types import ConfigError, DataError

ROLES = ("incumbent", "shadow")
TARGET_MAE = 0.05  # issue 10: mean absolute error <= 5 points at severities <= 3
CLEAN = "clean"
MILD = (1, 2, 3)  # severities of the target


# --- config ----------------------------------------------------------------------------------------------------------
class EstimateBenchConfig(_Strict):
    """What ``shadowcam bench estimate`` measures and where it writes. ``quick``: tiny sizes (smoke runs)."""

    out: Path = Path("docs/label_free.md")
    workdir: Path = Path("runs/bench_estimate")
    model: str | None = None  # incumbent ONNX file or models:/ URI; None: train one
    shadow: str | None = None  # shadow ONNX file or models:/ URI; None: train one (next seed)
    n: int = Field(default=300, ge=2)  # labelled images per condition (clean, and each shift x severity)
    shifts: tuple[str, ...] = tuple(SHIFTS)
    severities: tuple[int, ...] = SEVERITIES
    labels: int = Field(default=30, ge=2)  # labelled frames per condition for recalibrated ATC
    train_images: int = Field(default=3000, ge=60)  # clean training set when a model is trained (`shadowcam synth`'s default)
    train_epochs: int | None = Field(default=None, ge=1)  # None: the training default
    render_size: int = Field(default=96, ge=16)  # square test images, as `shadowcam synth` renders training images
    batch_size: int = Field(default=128, ge=1)
    tail: float = Field(default=0.01, gt=0, lt=0.5)  # training range: the validation split's tail / 1 - tail quantiles
    seed: int = 0
    quick: bool = False
    command: str = ""

    QUICK: ClassVar[dict[str, Any]] = {"n": 24, "severities": (1, 3, 5), "labels": 8, "train_images": 300,
                                       "train_epochs": 2, "quick": True}

    @model_validator(mode="after")
    def _check(self) -> "EstimateBenchConfig":
        bad = [s for s in self.shifts if s not in SHIFTS]
        if bad or not self.shifts or len(set(self.shifts)) != len(self.shifts):
            raise ValueError(f"shifts must be distinct names from {', '.join(SHIFTS)}; got {list(self.shifts)}")
        if not self.severities or any(s not in SEVERITIES for s in self.severities) \
                or len(set(self.severities)) != len(self.severities):
            raise ValueError(f"severities must be distinct values from {SEVERITIES}; got {list(self.severities)}")
        if self.labels > self.n:
            raise ValueError(f"labels ({self.labels}) must not exceed n ({self.n}), the images per condition")
        return self

    @classmethod
    def quick_config(cls, **kw: Any) -> "EstimateBenchConfig":
        """Tiny sizes: a few minutes with training, seconds without (numbers are not meaningful)."""
        return cls(**{**cls.QUICK, **{k: v for k, v in kw.items() if v is not None}})


# --- the estimators ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimator:
    name: str
    title: str
    how: str
    uses_labels: bool = False
    needs_shadow: bool = False


ESTIMATORS: tuple[Estimator, ...] = (
    Estimator("average_confidence", "average confidence", "mean max probability (the calibrated softmax)"),
    Estimator("atc", "ATC", "share of frames above the card's ATC threshold (Garg et al. 2022): what the evaluator "
                            "reported so far"),
    Estimator("doc", "DoC", "validation accuracy - (validation - production mean confidence) (Guillory et al. 2021)"),
    Estimator("atc_disagreement", "ATC + disagreement",
              "both models' ATC projected onto a + b <= 2 - d, |a - b| <= d (d: share of frames they disagree on)",
              needs_shadow=True),
    Estimator("ensemble", "ensemble confidence",
              "mean two-model ensemble probability of the model's prediction (Lakshminarayanan et al. 2017)",
              needs_shadow=True),
    Estimator("shift_aware", "shift-aware ATC",
              "ATC - 1/2 (excess share beyond the validation image-statistics range) x (ATC there - chance)"),
    Estimator("shift_aware_disagreement", "shift-aware ATC + disagreement",
              "both models' shift-aware ATC projected as for ATC + disagreement", needs_shadow=True),
    Estimator("recalibrated", "recalibrated ATC (uses labels)",
              "ATC threshold refitted on the set's labelled frames (uniform sample), applied to all its frames",
              uses_labels=True),
)
LABEL_FREE = tuple(e.name for e in ESTIMATORS if not e.uses_labels)


@dataclass(frozen=True)
class ModelInfo:
    """What the estimators need from one model's card (read by :func:`model_info`)."""

    role: str
    path: str
    model_id: str
    arch: str
    input_size: tuple[int, int]
    class_names: tuple[str, ...]
    threshold: float
    score: str
    val_accuracy: float
    test_accuracy: float | None
    val_confidence: np.ndarray
    reference_stats: Mapping[str, np.ndarray]
    base_rate: float  # share of validation images beyond their own training range (see est.shift_aware_atc)

    def describe(self) -> dict[str, Any]:
        return {"role": self.role, "path": self.path, "model": self.model_id, "arch": self.arch,
                "input_size": list(self.input_size), "atc_threshold": self.threshold, "atc_score": self.score,
                "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy,
                "val_mean_confidence": float(self.val_confidence.mean()), "reference_images": int(self.val_confidence.size),
                "validation_share_beyond_range": self.base_rate}


def model_info(clf: OnnxClassifier, role: str, tail: float = 0.01) -> ModelInfo:
    """Read and check what the estimators need from ``clf``'s model card (ConfigError names what is missing)."""
    card = clf.card
    missing = [k for k in ("atc_threshold", "val_accuracy", "training_reference") if getattr(card, k) is None]
    if missing:
        raise ConfigError(f"{clf.path}: the model card has no {', '.join(missing)}; the label-free estimators need "
                          "them: export the model with this version's `shadowcam train`")
    ref = TrainingReference.from_dict(card.training_reference, where=f"{clf.path}: training_reference")
    if not ref.image_stats:
        raise ConfigError(f"{clf.path}: the training reference has no image statistics; retrain the model with this "
                          "version's `shadowcam train`")
    return ModelInfo(role=role, path=str(clf.path), model_id=clf.model_id, arch=card.arch, input_size=clf.input_size,
                     class_names=tuple(clf.class_names), threshold=float(card.atc_threshold), score=card.atc_score,
                     val_accuracy=float(card.val_accuracy), test_accuracy=card.test_accuracy,
                     val_confidence=ref.confidence, reference_stats=dict(ref.image_stats),
                     base_rate=float(est.beyond_training_range(ref.image_stats, ref.image_stats, tail).mean()))


def estimate_condition(labels: np.ndarray, probs: Mapping[str, np.ndarray], stats: Mapping[str, Mapping[str, np.ndarray]],
                       infos: Mapping[str, ModelInfo], n_labels: int, rng: np.random.Generator,
                       tail: float = 0.01) -> dict[str, Any]:
    """Every estimator of every model on one labelled set, and the truth. Pure: arrays in, numbers out.

    ``labels``: (n,) class indices; ``probs``: role -> (n, C) softmax; ``stats``: role -> image statistics of the
    frames at that model's input size; ``infos``: role -> :class:`ModelInfo`. Only ``recalibrated`` looks at
    ``labels`` (``n_labels`` frames drawn uniformly by ``rng``, the same frames for every model). Returns
    ``{"disagreement": d or None, "models": {role: {"truth", "beyond_range", "estimates": {name: value or None}}}}``.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    roles = [r for r in ROLES if r in probs]
    pair = len(roles) == 2
    d = est.disagreement_rate(probs[roles[0]], probs[roles[1]]) if pair else None
    atc, aware, out = {}, {}, {}
    for r in roles:
        i = infos[r]
        atc[r] = est.atc_estimate(probs[r], i.threshold, i.score)
        beyond = est.beyond_training_range(stats[r], i.reference_stats, tail)
        out[r] = float(beyond.mean())
        aware[r] = est.shift_aware_atc(probs[r], i.threshold, beyond, i.base_rate, i.score)
    atc_pair = dict(zip(roles, est.disagreement_bounded(atc[roles[0]], atc[roles[1]], d))) if pair else {}
    aware_pair = dict(zip(roles, est.disagreement_bounded(aware[roles[0]], aware[roles[1]], d))) if pair else {}
    k = min(n_labels, n)
    picked = np.sort(rng.choice(n, size=k, replace=False))
    weights = np.full(k, n / k)  # inverse inclusion probability of a uniform sample of k of n
    models = {}
    for r in roles:
        i, p = infos[r], probs[r]
        other = probs[roles[1 - roles.index(r)]] if pair else None
        correct = p.argmax(axis=1) == labels
        scores = est.confidence_score(p, i.score)
        values = {
            "average_confidence": est.average_confidence(p),
            "atc": atc[r],
            "doc": est.doc_estimate(p, i.val_accuracy, i.val_confidence),
            "atc_disagreement": atc_pair.get(r),
            "ensemble": est.ensemble_confidence(p, other) if pair else None,
            "shift_aware": aware[r],
            "shift_aware_disagreement": aware_pair.get(r),
            "recalibrated": est.recalibrated_atc(scores[picked], correct[picked], weights, scores),
        }
        models[r] = {"truth": float(correct.mean()), "beyond_range": out[r], "estimates": values}
    return {"disagreement": d, "models": models}


# --- rendering and scoring ---------------------------------------------------------------------------------------------
def conditions(shifts: Sequence[str], severities: Sequence[int]) -> list[tuple[str, int]]:
    """``(CLEAN, 0)`` then every shift at every severity, in the order given."""
    return [(CLEAN, 0)] + [(s, v) for s in shifts for v in severities]


def render_condition(workdir: Path, shift: str, severity: int, n: int, seed: int, size: int) -> Path:
    """A labelled test set of ``n`` images of one condition (a fresh folder); returns its manifest."""
    folder = Path(workdir) / "sets" / (CLEAN if shift == CLEAN else f"{shift}_{severity}")
    shutil.rmtree(folder, ignore_errors=True)
    return generate_dataset(folder, n, seed=seed, img_size=size, shifts=[] if shift == CLEAN else [f"{shift}:{severity}"],
                            progress=False)


def score_set(manifest: Path, classifiers: Mapping[str, OnnxClassifier], batch_size: int = 128
              ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Run a labelled set through the runtime as serving would: decode, resize to each model's input size with its
    card's interpolation, predict; image statistics on the model-sized frames. Returns the labels (class indices),
    role -> (n, C) probabilities and role -> image statistics."""
    listing = list_source(manifest)
    samples = listing.samples
    names = next(iter(classifiers.values())).class_names
    index = {c: i for i, c in enumerate(names)}
    unknown = sorted({s.label for s in samples} - set(index))
    if unknown:
        raise DataError(f"{listing.source}: labels {unknown} are not classes of the models ({', '.join(names)})")
    labels = np.array([index[s.label] for s in samples], dtype=np.int64)
    probs: dict[str, list[np.ndarray]] = {r: [] for r in classifiers}
    stats: dict[str, list[dict[str, np.ndarray]]] = {r: [] for r in classifiers}
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        images = []
        for s in chunk:
            im = cv2.imread(str(s.path), cv2.IMREAD_COLOR)
            if im is None:
                raise DataError(f"{listing.source}: cannot read {s.path}")
            images.append(im)
        for role, clf in classifiers.items():
            h, w = clf.input_size
            interp = INTERPOLATIONS[clf.card.resize_interpolation.lower()]
            batch = np.empty((len(chunk), h, w, 3), np.uint8)
            for j, im in enumerate(images):
                resize_into(im, batch[j], interp)
            probs[role].append(clf.predict(batch))
            stats[role].append(image_stats_batch(batch))
    out_stats = {r: {k: np.concatenate([b[k] for b in v]) for k in v[0]} for r, v in stats.items()}
    return labels, {r: np.concatenate(v) for r, v in probs.items()}, out_stats


def run_conditions(cfg: EstimateBenchConfig, classifiers: Mapping[str, OnnxClassifier],
                   say: Callable[[str], None] = lambda m: None) -> tuple[dict[str, ModelInfo], list[dict[str, Any]]]:
    """The core loop: render, score and estimate every condition of ``cfg``; returns the models' card values and one
    row per condition (``shift``, ``severity``, ``n`` and :func:`estimate_condition`'s result)."""
    infos = {r: model_info(c, r, cfg.tail) for r, c in classifiers.items()}
    names = {i.class_names for i in infos.values()}
    if len(names) != 1:
        raise ConfigError(f"the models must have the same classes in the same order; got {sorted(names)}")
    rows = []
    todo = conditions(cfg.shifts, cfg.severities)
    for k, (shift, severity) in enumerate(todo):
        t0 = time.perf_counter()
        manifest = render_condition(cfg.workdir, shift, severity, cfg.n, cfg.seed + 1, cfg.render_size)
        labels, probs, stats = score_set(manifest, classifiers, cfg.batch_size)
        shutil.rmtree(manifest.parent, ignore_errors=True)  # deterministic: rerendered by the next run
        res = estimate_condition(labels, probs, stats, infos, cfg.labels, np.random.default_rng([cfg.seed, k]), cfg.tail)
        rows.append({"shift": shift, "severity": severity, "n": len(labels), **res})
        inc = res["models"][next(iter(res["models"]))]
        say(f"[{k + 1}/{len(todo)}] {shift}{'' if shift == CLEAN else f':{severity}'}: truth {inc['truth']:.1%}, "
            f"ATC {inc['estimates']['atc']:.1%} ({time.perf_counter() - t0:.1f} s)")
    return infos, rows


# --- the summary -------------------------------------------------------------------------------------------------------
def _mae(errors: list[float]) -> float | None:
    return float(np.mean(np.abs(errors))) if errors else None


def summarize(rows: Sequence[Mapping[str, Any]], target: float = TARGET_MAE) -> dict[str, Any]:
    """Mean absolute error (and mean signed error, ``bias``) of every estimator, per model and pooled over both,
    on the clean set, at severities <= 3 (``mild``), > 3 (``severe``) and over every shifted set (``shifted``); the
    best label-free estimator (lowest pooled MAE at severities <= 3, ties by all shifted) and the target's verdict."""
    buckets = {"clean": lambda s: s == 0, "mild": lambda s: s in MILD, "severe": lambda s: s > max(MILD),
               "shifted": lambda s: s > 0}
    roles = sorted({r for row in rows for r in row["models"]}, key=ROLES.index)
    per: dict[str, Any] = {}
    for e in ESTIMATORS:
        scopes: dict[str, Any] = {}
        for scope in (*roles, "pooled"):
            errs: dict[str, list[float]] = {b: [] for b in buckets}
            for row in rows:
                for r, m in row["models"].items():
                    v = m["estimates"].get(e.name)
                    if v is None or (scope != "pooled" and r != scope):
                        continue
                    for b, inside in buckets.items():
                        if inside(row["severity"]):
                            errs[b].append(v - m["truth"])
            scopes[scope] = {**{b: _mae(x) for b, x in errs.items()},
                             "bias_shifted": float(np.mean(errs["shifted"])) if errs["shifted"] else None,
                             "n_shifted": len(errs["shifted"])}
        per[e.name] = scopes
    ranked = sorted((n for n in LABEL_FREE if per[n]["pooled"]["mild"] is not None),
                    key=lambda n: (per[n]["pooled"]["mild"], per[n]["pooled"]["shifted"] or 0.0))
    best = ranked[0] if ranked else None
    mild = per[best]["pooled"]["mild"] if best else None
    met = mild is not None and mild <= target + 1e-9  # errors are means of floats: 5.0 points is 5.0 points
    verdict = ("met" if met else f"MISSED: {mild * 100:.1f} points") if mild is not None else \
        "not measured (no severity <= 3 in this run)"
    return {"mae": per, "best": best, "ranking": ranked, "target_mae": target, "best_mild_mae": mild, "met": met,
            "verdict": verdict}


# --- the whole bench -------------------------------------------------------------------------------------------------
def prepare_models(cfg: EstimateBenchConfig, progress: bool = True, say: Callable[[str], None] = lambda m: None
                   ) -> tuple[dict[str, str], dict[str, float]]:
    """The incumbent's and shadow's model files: given, or trained (default settings, clean synthetic data; the
    shadow with the next seed). Returns role -> path and role -> training seconds."""
    given = {"incumbent": cfg.model, "shadow": cfg.shadow}
    paths = {r: str(p) for r, p in given.items() if p}
    seconds: dict[str, float] = {}
    todo = [r for r in ROLES if r not in paths]
    if todo:
        data = cfg.workdir / "train_data"
        say(f"rendering the clean training set ({cfg.train_images} images, seed {cfg.seed})")
        shutil.rmtree(data, ignore_errors=True)
        generate_dataset(data, cfg.train_images, seed=cfg.seed, img_size=cfg.render_size, progress=progress)
        for r in todo:
            seed = cfg.seed + ROLES.index(r)
            say(f"training the {r} (models.train defaults{'' if cfg.train_epochs is None else f', {cfg.train_epochs} epochs'}, "
                f"seed {seed})")
            t0 = time.perf_counter()
            res = train(make_config(data=[str(data)], seed=seed, out=str(cfg.workdir / r), workdir=str(cfg.workdir),
                                    track=False, progress=progress, epochs=cfg.train_epochs))
            seconds[r] = round(time.perf_counter() - t0, 1)
            paths[r] = str(res.onnx_path)
            say(f"  {r}: test accuracy {res.test_accuracy:.1%}, val accuracy {res.val_accuracy:.1%} ({seconds[r]:.0f} s)")
    return {r: paths[r] for r in ROLES}, seconds


def run_estimate_bench(cfg: EstimateBenchConfig, progress: bool = True) -> dict[str, Any]:
    """Everything in the module docstring; writes ``cfg.out`` and its ``.json`` beside it; returns the results."""
    say = (lambda m: print(f"[bench estimate] {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)  # noqa: E731
    t_start = time.perf_counter()
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    paths, train_s = prepare_models(cfg, progress, say)
    classifiers = {r: OnnxClassifier(p, role=r, warmup_runs=0) for r, p in paths.items()}
    say(f"{len(conditions(cfg.shifts, cfg.severities))} conditions x {cfg.n} images through the runtime")
    t_loop = time.perf_counter()
    infos, rows = run_conditions(cfg, classifiers, say)
    results = {
        "config": cfg.model_dump(mode="json"),
        "machine": machine_info(),
        "models": {r: {**i.describe(), "trained_here_s": train_s.get(r)} for r, i in infos.items()},
        "estimators": [{"name": e.name, "title": e.title, "how": e.how, "uses_labels": e.uses_labels} for e in ESTIMATORS],
        "shifts": {s: SHIFTS[s] for s in cfg.shifts},
        "rows": rows,
        "summary": summarize(rows),
        "seconds": {"training": train_s, "conditions": round(time.perf_counter() - t_loop, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
    }
    write_results(results, cfg.out)
    say(f"wrote {cfg.out} and {cfg.out.with_suffix('.json')} in {results['seconds']['total']:.0f} s")
    return results


def write_results(results: Mapping[str, Any], out: Path) -> None:
    """``out`` (the markdown document) and ``out`` with .json (the raw results)."""
    write_document(results, out, render_markdown)


# --- the document ------------------------------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    cell = lambda t: str(t).replace("|", "\\|")  # noqa: E731 (a "|" inside a cell would split it)
    return ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(map(cell, r)) + " |" for r in rows), ""]


def _condition(row: Mapping[str, Any]) -> str:
    return CLEAN if row["shift"] == CLEAN else f"{row['shift']}:{row['severity']}"


def render_markdown(r: Mapping[str, Any]) -> str:
    """The document: every number from ``r`` (the results of :func:`run_estimate_bench`)."""
    c, s, m = r["config"], r["summary"], r["machine"]
    titles = {e["name"]: e["title"] for e in r["estimators"]}
    mae = s["mae"]
    best = s["best"]
    target = s["target_mae"] * 100
    lines = [
        "# Label-free accuracy estimates against the truth",
        "",
        f"_generated by `shadowcam bench estimate` on {m.get('date', '?')}; do not edit: rerun the command at the end_",
        "",
        "Each estimator predicts a model's accuracy on a set of frames without their labels. Here the truth is known: "
        f"labelled synthetic test sets ({c['n']} images each) of the clean scene and of every camera shift at "
        f"severities {', '.join(map(str, c['severities']))}, run through the product's runtime. Errors are in "
        "accuracy points (estimate - truth); MAE: mean absolute error over the sets, both models pooled.",
        "",
        "## Summary",
        "",
    ]
    if best:
        b = mae[best]["pooled"]
        lines += [f"- best label-free estimator: **{titles[best]}**, MAE {_pct(b['mild'])} points at severities <= 3, "
                  f"{_pct(b['severe'])} at > 3, {_pct(b['shifted'])} over all shifted sets, {_pct(b['clean'])} on the "
                  "clean set (chosen on these same sets: an optimistic figure for it)"]
    a = mae["atc"]["pooled"]
    lines += [f"- ATC (what the evaluator reported so far): MAE {_pct(a['mild'])} points at severities <= 3, "
              f"{_pct(a['severe'])} at > 3 (mean error {_pct(a['bias_shifted'])} over the shifted sets)",
              f"- target (issue 10), MAE <= {target:.0f} points at severities <= 3 for the best label-free estimator: "
              f"**{s['verdict']}**", ""]
    lines += ["## Estimators", ""]
    head = ["estimator", "how", "clean", "severity <= 3", "severity > 3", "all shifted", "mean error (shifted)"]
    lines += _table(head, [[titles[e["name"]] + (" *" if e["name"] == best else ""), e["how"],
                            *(_pct(mae[e["name"]]["pooled"][k]) for k in ("clean", "mild", "severe", "shifted", "bias_shifted"))]
                           for e in r["estimators"]])
    roles = [x for x in ROLES if x in r["models"]]
    if len(roles) > 1:
        lines += ["MAE per model (severity <= 3 / > 3):", ""]
        lines += _table(["estimator", *roles], [[titles[e["name"]], *(f"{_pct(mae[e['name']][x]['mild'])} / "
                                                                       f"{_pct(mae[e['name']][x]['severe'])}" for x in roles)]
                                                 for e in r["estimators"]])
    lines += ["## Models", ""]
    lines += _table(["role", "model", "arch", "input", "val accuracy", "test accuracy", "ATC threshold",
                     "validation images beyond range", "trained here (s)"],
                    [[x, f"`{i['model']}`", i["arch"], "x".join(map(str, i["input_size"])), _pct(i["val_accuracy"]),
                      _pct(i["test_accuracy"]), f"{i['atc_threshold']:.4f}", _pct(i["validation_share_beyond_range"]) + "%",
                      "-" if i.get("trained_here_s") is None else f"{i['trained_here_s']:.0f}"] for x, i in r["models"].items()])
    lines += ["Shifts (`models/shifts.py`, severities 1-5):", ""]
    lines += [f"- `{k}`: {v}" for k, v in r["shifts"].items()] + [""]
    for role in roles:
        lines += [f"## Estimate vs truth: {role}", "", "Accuracy in percent; `d`: share of frames on which the two "
                  "models disagree; `beyond`: share of frames beyond the validation image-statistics range.", ""]
        head = ["condition", "truth", *(titles[e["name"]] for e in r["estimators"]), "d", "beyond"]
        body = []
        for row in r["rows"]:
            mm = row["models"][role]
            body.append([_condition(row), f"**{_pct(mm['truth'])}**", *(_pct(mm["estimates"].get(e["name"])) for e in r["estimators"]),
                         _pct(row["disagreement"]), _pct(mm["beyond_range"])])
        lines += _table(head, body)
    sec = r["seconds"]
    lines += ["## Machine", "",
              f"{m.get('cpu')}, {m.get('cores_usable')} usable cores, {m.get('ram_gib')} GiB RAM, {m.get('os')}; Python "
              f"{m.get('python')}, onnxruntime {m.get('onnxruntime')}, torch {m.get('torch')}, opencv {m.get('opencv')}; "
              f"git {m.get('git_commit')}. Took {sec['total']:.0f} s ({sec['conditions']:.0f} s rendering and scoring the "
              "sets" + "".join(f", {v:.0f} s training the {k}" for k, v in sec["training"].items()) + ").", "",
              "## How to reproduce", "", "```", c.get("command") or "shadowcam bench estimate", "```", ""]
    return "\n".join(lines)
