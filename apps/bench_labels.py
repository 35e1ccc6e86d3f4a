"""``shadowcam bench labels``: how many labels a +-2-point 95% interval on production accuracy needs, per sampling
strategy and estimator, against uniform sampling + Wilson (issue 11, part 4).

Every number of ``docs/label_efficiency.md`` (and its raw results, ``docs/label_efficiency.json``) comes from
:func:`run_label_bench`; none is typed.

1. **Models**: the incumbent (``model``) and the shadow (``shadow``), or both trained as ``shadowcam bench estimate``
   trains them (:func:`apps.bench_estimate.prepare_models`: training defaults, clean synthetic data, the shadow
   with the next seed).
2. **Pools** (:func:`build_pools`): ``pool_frames`` frames of the demo's camera (:class:`apps.config.DemoConfig`:
   frame size, dwell, scene) rendered by :func:`models.synthetic.write_stream`, once clean and once under the
   demo's stream-2 shift (:data:`apps.demo.SHIFTED`), and scored through the product's runtime
   (:func:`apps.bench_estimate.score_set`: decode, resize with each card's interpolation, predict; image statistics
   on the incumbent-sized frames). The generator knows every frame's class, so the incumbent's accuracy on the
   pool -- **the truth** -- is known exactly.
3. **Simulated labelings** (:func:`simulate_labeling`), per stream x strategy x repetition: a stream of
   ``stream_frames`` frames drawn from the pool with replacement (the same draw for every strategy of a
   repetition: paired comparisons); the real :class:`pipeline.sampling.LabelSampler` gives every frame its
   inclusion probability, ``check_every`` frames at a time (``neyman`` is fed the labels drawn so far between
   chunks: in the simulation labels arrive at once); one Bernoulli draw per frame decides its label (Poisson
   sampling). Every ``check_every`` frames both estimators look at the frames so far:

   * ``classical``: :func:`pipeline.evaluation.stats.accuracy_estimate` (Wilson for equal probabilities,
     Hajek + Wilson at n_eff otherwise);
   * ``model_assisted``: :func:`pipeline.evaluation.ppi.model_assisted_accuracy` with the cross-fitted proxy of
     :func:`~pipeline.evaluation.ppi.crossfit_proxy` (features: :func:`~pipeline.evaluation.ppi.correctness_features`
     of the incumbent's probabilities, the shadow's class and probabilities and the image statistics; folds by stream
     position, so two draws of one pool frame are two frames), once ``proxy_min_labels`` frames are labelled
     (classical before, as the evaluator does).

   **Labels needed** = the labels at the first look whose interval half-width ``(high - low) / 2`` is at most
   ``half_width``; the interval there either covers the truth or not.
4. **Summary** (:func:`summarize`): per stream x strategy x estimator the median labels needed over the
   repetitions (and the 25/75% quantiles), the coverage of the truth at the stopping look, and the ratio of the
   median to that of uniform + Wilson (strategy ``uniform``, estimator ``classical``) on the same stream, beside the
   analytic count :func:`~pipeline.evaluation.ppi.wilson_labels_for_half_width` at the true accuracy. The best
   combination is the one with the lowest ratio on the shifted stream among those at most :data:`MAX_RATIO` on
   both streams whose coverage is not significantly below ``1 - alpha``; the target (issue 11) is
   <= :data:`TARGET_RATIO` on the shifted stream.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, model_validator
from scipy import stats as _st

from apps.bench import machine_info, write_document
from apps.bench_estimate import EstimateBenchConfig, prepare_models, score_set
from apps.config import DemoConfig
from apps.demo import SHIFTED
from models.synthetic import write_stream
from pipeline.config import EvalConfig, SamplingConfig, _Strict
from pipeline.evaluation import ppi
from pipeline.evaluation.stats import accuracy_estimate
from pipeline.runtime import OnnxClassifier, usable_cores
from pipeline.sampling import LabelSampler, neyman_stratum
from pipeline.types import ConfigError, DataError, Frame, FrameBatch, Prediction

STRATEGIES = ("uniform", "stratified", "disagreement", "uncertainty", "neyman")
ESTIMATORS = ("classical", "model_assisted")
STREAMS = ("clean", "shifted")
BASELINE = ("uniform", "classical")  # uniform sampling + Wilson
TARGET_RATIO = 0.5  # issue 11: the best combination needs <= 0.5x the labels of uniform + Wilson on the shifted stream
MAX_RATIO = 1.0  # ... and never more than 1.0x on either stream
UNDERCOVER_P = 0.01  # a coverage below 1 - alpha at this one-sided binomial p-value disqualifies a combination
ESTIMATOR_TITLES = {"classical": "classical (Wilson / Hajek)", "model_assisted": "model-assisted (active PPI++)"}
_ROLES = ("incumbent", "shadow")


# --- config ----------------------------------------------------------------------------------------------------------
def _demo(name: str) -> Any:
    return DemoConfig.default(name)


class LabelBenchConfig(_Strict):
    """What ``shadowcam bench labels`` measures and where it writes. ``quick``: tiny sizes (smoke runs)."""

    out: Path = Path("docs/label_efficiency.md")
    workdir: Path = Path("runs/bench_labels")
    model: str | None = None  # incumbent ONNX file or models:/ URI; None: train one (as `bench estimate` does)
    shadow: str | None = None  # shadow ONNX file or models:/ URI; None: train one (next seed)
    pools: Path | None = None  # the scored pools of an earlier run (its workdir's pools.npz): no models, no rendering
    pool_frames: int = Field(default=3000, ge=20)  # rendered and scored frames per stream (clean, shifted)
    # frames per simulated stream, drawn from the pool with replacement: 6000 labels at the default rate, 2.5x what
    # uniform + Wilson needs for +-2 points at 50% accuracy, so the strategies that need more still get there
    stream_frames: int = Field(default=60000, ge=10)
    rate: float = Field(default=0.1, gt=0, le=1)  # the sampler's rate (share of frames sent for labels)
    uniform_floor: float = Field(default=_demo("uniform_floor"), ge=0, le=1)  # the sampler's uniform share (the demo's)
    check_every: int = Field(default=250, ge=1)  # frames between two looks at the interval
    reps: int = Field(default=40, ge=1)  # simulated labelings per stream x strategy
    strategies: tuple[str, ...] = STRATEGIES
    half_width: float = Field(default=0.02, gt=0, lt=0.5)  # the target: +- this accuracy ...
    alpha: float = Field(default=0.05, gt=0, lt=1)  # ... at 1 - alpha
    proxy_min_labels: int = Field(default=EvalConfig.default("proxy_min_labels"), ge=10)  # the evaluator's
    proxy_folds: int = Field(default=EvalConfig.default("proxy_folds"), ge=2)
    train_images: int = Field(default=3000, ge=60)  # clean training set when a model is trained
    train_epochs: int | None = Field(default=None, ge=1)  # None: the training default
    render_size: int = Field(default=96, ge=16)  # training images (as `bench estimate` renders them)
    batch_size: int = Field(default=128, ge=1)
    workers: int = Field(default_factory=lambda: max(1, min(2, usable_cores())), ge=1)  # simulation processes
    seed: int = 0
    quick: bool = False
    command: str = ""

    QUICK: ClassVar[dict[str, Any]] = {"pool_frames": 40, "stream_frames": 3000, "rate": 0.2, "check_every": 150,
                                       "reps": 3, "half_width": 0.05, "train_images": 300, "train_epochs": 2,
                                       "quick": True}

    @model_validator(mode="after")
    def _check(self) -> "LabelBenchConfig":
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or len(set(self.strategies)) != len(self.strategies) or BASELINE[0] not in self.strategies:
            raise ValueError(f"strategies must be distinct names from {', '.join(STRATEGIES)} including "
                             f"{BASELINE[0]} (the baseline); got {list(self.strategies)}")
        if self.pools is not None and (self.model or self.shadow):
            raise ValueError("give either pools (scored by an earlier run) or model/shadow, not both")
        if self.check_every > self.stream_frames:
            raise ValueError(f"check_every ({self.check_every}) must not exceed stream_frames ({self.stream_frames})")
        return self

    @classmethod
    def quick_config(cls, **kw: Any) -> "LabelBenchConfig":
        """Tiny sizes: a few minutes with training, seconds without (numbers are not meaningful)."""
        return cls(**{**cls.QUICK, **{k: v for k, v in kw.items() if v is not None}})

    def sampling(self, strategy: str, seed: int = 0) -> SamplingConfig:
        return SamplingConfig(strategy=strategy, rate=self.rate, uniform_floor=self.uniform_floor, seed=seed,
                              double_label_share=0.0)


# --- pools -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pool:
    """One stream's scored frames: ``labels`` (P,) class indices, ``probs`` role -> (P, C) softmax (incumbent and
    shadow), ``stats``: image statistics name -> (P,) (the incumbent's frames), the models' ``class_names``."""

    name: str
    labels: np.ndarray
    probs: Mapping[str, np.ndarray]
    stats: Mapping[str, np.ndarray]
    class_names: tuple[str, ...]
    camera: str = "cam0"

    def __post_init__(self) -> None:
        n = np.asarray(self.labels).shape
        if len(n) != 1 or n[0] < 2:
            raise DataError(f"pool {self.name!r}: labels must be (P,) class indices with P >= 2, got shape {n}")
        missing = [r for r in _ROLES if r not in self.probs]
        if missing:
            raise DataError(f"pool {self.name!r}: no probabilities of the {', '.join(missing)}")
        for r in _ROLES:
            if np.shape(self.probs[r]) != (n[0], len(self.class_names)):
                raise DataError(f"pool {self.name!r}: {r} probabilities must be ({n[0]}, {len(self.class_names)}), "
                                f"got {np.shape(self.probs[r])}")
        for k, v in self.stats.items():
            if np.shape(v) != n:
                raise DataError(f"pool {self.name!r}: image statistic {k!r} must be ({n[0]},), got {np.shape(v)}")

    def correct(self, role: str = "incumbent") -> np.ndarray:
        return np.asarray(self.probs[role]).argmax(axis=1) == np.asarray(self.labels)

    @property
    def truth(self) -> float:
        """The incumbent's accuracy on the pool: what every simulated stream's estimate is judged against."""
        return float(self.correct().mean())

    def describe(self) -> dict[str, Any]:
        inc, sh = (np.asarray(self.probs[r]).argmax(axis=1) for r in _ROLES)
        return {"frames": int(len(self.labels)), "accuracy": {r: float(self.correct(r).mean()) for r in _ROLES},
                "disagreement": float((inc != sh).mean()),
                "mean_confidence": float(np.asarray(self.probs["incumbent"]).max(axis=1).mean())}


def save_pools(pools: Mapping[str, Pool], path: Path, models: Mapping[str, Any] | None = None) -> None:
    """The scored pools (and a description of the ``models`` that scored them) as one ``.npz``: the simulations can
    be rerun on them without models or rendering (:func:`load_pools`, ``LabelBenchConfig.pools``)."""
    arrays: dict[str, np.ndarray] = {}
    for name, p in pools.items():
        arrays[f"{name}/labels"] = np.asarray(p.labels)
        for r in _ROLES:
            arrays[f"{name}/probs/{r}"] = np.asarray(p.probs[r])
        for k, v in p.stats.items():
            arrays[f"{name}/stats/{k}"] = np.asarray(v)
    meta = {"pools": {name: {"class_names": list(p.class_names), "camera": p.camera} for name, p in pools.items()},
            "models": dict(models or {})}
    arrays["meta"] = np.array(json.dumps(meta, default=str))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def load_pools(path: Path) -> tuple[dict[str, Pool], dict[str, Any]]:
    """The pools and the models' description written by :func:`save_pools`."""
    try:
        z = np.load(path)
        meta = json.loads(str(z["meta"]))
        meta["pools"], meta["models"]
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a pools file written by save_pools ({type(e).__name__}: {e})") from None
    out = {}
    for name, m in meta["pools"].items():
        probs = {r: z[f"{name}/probs/{r}"] for r in _ROLES}
        stats = {k.split("/", 2)[2]: z[k] for k in z.files if k.startswith(f"{name}/stats/")}
        out[name] = Pool(name, z[f"{name}/labels"], probs, stats, tuple(m["class_names"]), m["camera"])
    return out, meta["models"]


def stream_phases(name: str) -> list[tuple[float, list[str]]]:
    """The generator's phases of a pool: the demo's stream-2 shift for ``shifted``, none for ``clean``."""
    return [(1.0, list(SHIFTED) if name == "shifted" else [])]


def build_pools(cfg: LabelBenchConfig, classifiers: Mapping[str, OnnxClassifier], progress: bool = True,
                say: Callable[[str], None] = lambda m: None) -> dict[str, Pool]:
    """Render ``pool_frames`` frames of each stream at the demo's camera settings and score them through the runtime
    (the rendered frames are removed once scored)."""
    pools = {}
    for k, name in enumerate(STREAMS):
        t0 = time.perf_counter()
        folder = cfg.workdir / "pools" / name
        shutil.rmtree(folder, ignore_errors=True)
        manifest = write_stream(folder, cfg.pool_frames, seed=cfg.seed + 101 * (k + 1), phases=stream_phases(name),
                                size=_demo("frame_size"), fps=_demo("fps"), dwell=_demo("dwell"), fmt="folder",
                                camera=_demo("camera"), progress=progress, scene_seed=cfg.seed + 101)
        labels, probs, stats = score_set(manifest, classifiers, cfg.batch_size)
        shutil.rmtree(folder, ignore_errors=True)
        manifest.unlink(missing_ok=True)
        names = tuple(classifiers["incumbent"].class_names)
        pools[name] = Pool(name, labels, probs, stats["incumbent"], names, _demo("camera"))
        d = pools[name].describe()
        say(f"{name} pool: {d['frames']} frames, incumbent accuracy {d['accuracy']['incumbent']:.1%}, shadow "
            f"{d['accuracy']['shadow']:.1%}, disagreement {d['disagreement']:.1%} ({time.perf_counter() - t0:.0f} s)")
    return pools


# --- one simulated labeling ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stop:
    """Where one estimator stopped in one simulated labeling: ``labels`` and ``frames`` at the first look whose
    half-width met the target (``reached``; else at the end of the stream), the interval there, and ``covered``:
    whether it holds the truth."""

    labels: int
    frames: int
    value: float
    low: float
    high: float
    reached: bool
    covered: bool

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0


class PreparedPool:
    """What every simulation of a pool reuses: per pool frame its predictions (for the sampler), correctness,
    the shadow's class and the ``neyman`` stratum."""

    def __init__(self, pool: Pool, edges: Sequence[float]):
        self.pool = pool
        names = list(pool.class_names)
        self.probs = np.asarray(pool.probs["incumbent"], dtype=np.float64)
        inc = self.probs.argmax(axis=1)
        sh_probs = np.asarray(pool.probs["shadow"], dtype=np.float64)
        self.shadow_probs = sh_probs
        self.shadow_pred = sh_probs.argmax(axis=1)
        self.correct = pool.correct()
        self.stats = {k: np.asarray(v, dtype=np.float64) for k, v in pool.stats.items()}
        cam = pool.camera
        image = np.zeros((1, 1, 3), np.uint8)  # the sampler never looks at the image (offer() is not called)
        self.frames = [Frame(cam, i, 0.0, image) for i in range(len(inc))]
        self.incumbent = [Prediction(f.frame_id, cam, "incumbent", "incumbent", self.probs[i], names[inc[i]])
                          for i, f in enumerate(self.frames)]
        self.shadow = [Prediction(f.frame_id, cam, "shadow", "shadow", sh_probs[i], names[self.shadow_pred[i]])
                       for i, f in enumerate(self.frames)]
        self.strata = [neyman_stratum(cam, self.probs[i], names[self.shadow_pred[i]], names[inc[i]], edges)
                       for i in range(len(inc))]


@lru_cache(maxsize=4)
def _folds(n: int, k: int) -> np.ndarray:
    return ppi.fold_ids(np.arange(n), k)  # a key per stream position: two draws of one pool frame are two frames


def simulate_labeling(prep: PreparedPool, strategy: str, cfg: LabelBenchConfig, stream_seed: Sequence[int],
                      draw_seed: Sequence[int], estimators: Sequence[str] = ESTIMATORS) -> dict[str, Stop]:
    """One simulated stream labelled with ``strategy``: labels needed by each estimator (see the module docstring).

    ``stream_seed`` draws the stream (pool indices with replacement; give every strategy the same one for paired
    comparisons), ``draw_seed`` the labels. Returns estimator -> :class:`Stop`.
    """
    S, step, truth = cfg.stream_frames, cfg.check_every, prep.pool.truth
    idx = np.random.default_rng(list(stream_seed)).integers(0, len(prep.frames), size=S)
    rng = np.random.default_rng(list(draw_seed))
    sampler = LabelSampler(cfg.sampling(strategy, seed=int(rng.integers(2**31))), list(prep.pool.class_names),
                           cfg.workdir / "unused", clock=lambda: 0.0)
    pi = np.empty(S)
    lab = np.zeros(S, dtype=bool)
    feedback: dict[tuple, list[int]] = {}
    folds = _folds(S, cfg.proxy_folds)
    stops: dict[str, Stop] = {}
    last: dict[str, tuple[float, float, float]] = {}
    for start in range(0, S, step):
        end = min(start + step, S)
        chunk = idx[start:end]
        batch = FrameBatch(tuple(prep.frames[i] for i in chunk), np.zeros((len(chunk), 1, 1, 3), np.uint8))
        pi[start:end] = sampler.inclusion_probabilities(batch, [prep.incumbent[i] for i in chunk],
                                                        [prep.shadow[i] for i in chunk])
        lab[start:end] = rng.random(len(chunk)) < pi[start:end]
        if strategy == "neyman":  # labels arrive at once: the sampler knows the strata's accuracy so far
            for i in chunk[lab[start:end]]:
                c = feedback.setdefault(prep.strata[i], [0, 0])
                c[0] += 1
                c[1] += int(prep.correct[i])
            sampler.update_feedback({k: (n, c) for k, (n, c) in feedback.items()})
        for est in estimators:
            if est in stops:
                continue
            v, lo, hi = estimate_at(prep, idx[:end], lab[:end], pi[:end], folds[:end], est, cfg)
            last[est] = (v, lo, hi)
            if (hi - lo) / 2.0 <= cfg.half_width:
                stops[est] = Stop(int(lab[:end].sum()), end, v, lo, hi, True, lo <= truth <= hi)
        if len(stops) == len(estimators):
            break
    for est in estimators:
        if est not in stops:
            v, lo, hi = last[est]
            stops[est] = Stop(int(lab.sum()), S, v, lo, hi, False, lo <= truth <= hi)
    return stops


def estimate_at(prep: PreparedPool, idx: np.ndarray, labelled: np.ndarray, pi: np.ndarray, folds: np.ndarray,
                estimator: str, cfg: LabelBenchConfig) -> tuple[float, float, float]:
    """(value, low, high) of ``estimator`` on the stream frames ``idx`` (pool indices) with their draws ``labelled``,
    inclusion probabilities ``pi`` and proxy folds. Reads a frame's correctness only where it is labelled."""
    y = np.where(labelled, prep.correct[idx], False)
    n = int(labelled.sum())
    if estimator == "classical" or n < cfg.proxy_min_labels:  # the evaluator's rule (EvalConfig.proxy_min_labels)
        e = accuracy_estimate(y[labelled], pi[labelled], cfg.alpha)
        return e.value, e.low, e.high
    X, names = ppi.correctness_features(prep.probs[idx], prep.shadow_pred[idx],
                                        {k: v[idx] for k, v in prep.stats.items()}, other_probs=prep.shadow_probs[idx])
    proxy = ppi.crossfit_proxy(X, y, labelled, folds, names)
    m = ppi.model_assisted_accuracy(y, labelled, pi, proxy.values, cfg.alpha)
    return m.value, m.low, m.high


# --- all simulations -------------------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(pools: Mapping[str, Pool], cfg: LabelBenchConfig) -> None:
    edges = SamplingConfig.default("neyman_edges")
    _WORKER.update(cfg=cfg, order=list(pools), prepared={name: PreparedPool(p, edges) for name, p in pools.items()})


def _one(task: tuple[str, str, int]) -> tuple[tuple[str, str, int], dict[str, Stop]]:
    name, strategy, rep = task
    cfg: LabelBenchConfig = _WORKER["cfg"]
    k = _WORKER["order"].index(name)
    stream_seed = (cfg.seed, k, rep)  # the same stream for every strategy of a repetition
    draw_seed = (cfg.seed, k, rep, 1 + STRATEGIES.index(strategy))
    return task, simulate_labeling(_WORKER["prepared"][name], strategy, cfg, stream_seed, draw_seed)


def run_simulations(pools: Mapping[str, Pool], cfg: LabelBenchConfig, progress: bool = True
                    ) -> dict[tuple[str, str, int], dict[str, Stop]]:
    """Every stream x strategy x repetition (``cfg.workers`` processes; a tqdm bar over the simulations).
    Returns (stream, strategy, rep) -> estimator -> :class:`Stop`."""
    tasks = [(name, s, rep) for name in pools for s in cfg.strategies for rep in range(cfg.reps)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="simulated labelings", unit="sim", file=sys.stderr)
    out: dict[tuple[str, str, int], dict[str, Stop]] = {}
    try:
        if cfg.workers <= 1:
            _init_worker(pools, cfg)
            for t in tasks:
                key, res = _one(t)
                out[key] = res
                if bar is not None:
                    bar.update(1)
        else:
            ctx = multiprocessing.get_context("fork")  # the pools reach the workers without pickling
            with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker, initargs=(pools, cfg)) as ex:
                for fut in as_completed([ex.submit(_one, t) for t in tasks]):
                    key, res = fut.result()
                    out[key] = res
                    if bar is not None:
                        bar.update(1)
    finally:
        _WORKER.clear()
        if bar is not None:
            bar.close()
    return {t: out[t] for t in tasks}


# --- the summary -------------------------------------------------------------------------------------------------------
def _quantiles(labels: np.ndarray, reached: np.ndarray, qs: Sequence[float]) -> list[float]:
    """Quantiles of the labels needed; a labeling that never met the target counts as needing more than any that
    did (infinity), so a quantile that falls on one is infinite."""
    big = np.where(reached, labels.astype(np.float64), np.inf)
    srt = np.sort(big)
    out = []
    for q in qs:
        pos = q * (len(srt) - 1)
        lo, hi = int(math.floor(pos)), int(math.ceil(pos))
        a, b = srt[lo], srt[hi]
        out.append(float(a + (b - a) * (pos - lo)) if math.isfinite(b) else math.inf)
    return out


def _undercovers(covered: int, n: int, level: float) -> bool:
    return n > 0 and float(_st.binomtest(covered, n, level, alternative="less").pvalue) < UNDERCOVER_P


def summarize(sims: Mapping[tuple[str, str, int], Mapping[str, Stop]], truths: Mapping[str, float],
              cfg: LabelBenchConfig) -> dict[str, Any]:
    """Per stream x strategy x estimator: labels needed (median, 25/75% quantiles, per repetition), coverage of the
    truth at the stopping look, ratio of the median to uniform + Wilson's on the same stream; the analytic Wilson
    count at the true accuracy; the best combination and the target's verdict (module docstring)."""
    streams = list(dict.fromkeys(k[0] for k in sims))
    level = 1.0 - cfg.alpha
    rows: list[dict[str, Any]] = []
    for name in streams:
        for s in cfg.strategies:
            for e in ESTIMATORS:
                stops = [sims[(name, s, r)][e] for r in range(cfg.reps) if (name, s, r) in sims]
                labels = np.array([x.labels for x in stops])
                reached = np.array([x.reached for x in stops])
                med, q25, q75 = _quantiles(labels, reached, (0.5, 0.25, 0.75))
                cov = [x.covered for x in stops if x.reached]
                rows.append({"stream": name, "strategy": s, "estimator": e, "reps": len(stops),
                             "reached": int(reached.sum()), "median": med, "q25": q25, "q75": q75,
                             "labels": [x.labels if x.reached else None for x in stops],
                             "frames": [x.frames for x in stops],
                             "mean_half_width": float(np.mean([x.half_width for x in stops])),
                             "covered": int(sum(cov)), "coverage": float(np.mean(cov)) if cov else None,
                             "undercovers": _undercovers(int(sum(cov)), len(cov), level)})
    base = {r["stream"]: r["median"] for r in rows if (r["strategy"], r["estimator"]) == BASELINE}
    for r in rows:
        b = base[r["stream"]]
        r["ratio"] = r["median"] / b if math.isfinite(r["median"]) and math.isfinite(b) and b > 0 else None
    wilson = {n: ppi.wilson_labels_for_half_width(truths[n], cfg.half_width, cfg.alpha) for n in streams}
    by = {(r["stream"], r["strategy"], r["estimator"]): r for r in rows}
    combos = [(s, e) for s in cfg.strategies for e in ESTIMATORS]

    def ok(combo: tuple[str, str]) -> bool:
        rs = [by[(n, *combo)] for n in streams]
        return all(r["ratio"] is not None and r["ratio"] <= MAX_RATIO + 1e-9 and not r["undercovers"] for r in rs)

    ranked_on = "shifted" if "shifted" in streams else streams[-1]
    key = lambda c: by[(ranked_on, *c)]["ratio"] if by[(ranked_on, *c)]["ratio"] is not None else math.inf  # noqa: E731
    eligible = sorted((c for c in combos if ok(c)), key=key)
    best = eligible[0] if eligible else None
    ratio = key(best) if best else None
    met = best is not None and ratio is not None and ratio <= TARGET_RATIO + 1e-9
    if best is None:
        verdict = "MISSED: no combination stays within 1.0x on every stream with valid coverage"
    elif met:
        verdict = f"met ({ratio:.2f}x)"
    else:
        verdict = f"MISSED: {ratio:.2f}x"
    return {"rows": rows, "wilson_analytic": wilson, "truth": dict(truths), "ranked_on": ranked_on,
            "best": {"strategy": best[0], "estimator": best[1],
                     "ratios": {n: by[(n, *best)]["ratio"] for n in streams},
                     "medians": {n: by[(n, *best)]["median"] for n in streams}} if best else None,
            "ranking": [{"strategy": s, "estimator": e, "ratio": key((s, e))} for s, e in eligible],
            "target_ratio": TARGET_RATIO, "max_ratio": MAX_RATIO, "met": met, "verdict": verdict}


# --- the whole bench -------------------------------------------------------------------------------------------------
def run_label_bench(cfg: LabelBenchConfig, progress: bool = True, pools: Mapping[str, Pool] | None = None
                    ) -> dict[str, Any]:
    """Everything in the module docstring; writes ``cfg.out`` and its ``.json`` beside it; returns the results.

    ``pools``: scored pools to simulate on (any names; ``shifted`` ranks the best combination); None: those of
    ``cfg.pools``, else take or train the models and render the demo's clean and shifted streams.
    """
    say = (lambda m: print(f"[bench labels] {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)  # noqa: E731
    t_start = time.perf_counter()
    seconds: dict[str, Any] = {"training": {}}
    models: dict[str, Any] = {}
    if pools is None and cfg.pools is not None:
        pools, models = load_pools(cfg.pools)
        say(f"the scored pools of {cfg.pools}: " + ", ".join(f"{n} ({len(p.labels)} frames)" for n, p in pools.items()))
    elif pools is None:
        cfg.workdir.mkdir(parents=True, exist_ok=True)
        ecfg = EstimateBenchConfig(workdir=cfg.workdir, model=cfg.model, shadow=cfg.shadow, train_images=cfg.train_images,
                                   train_epochs=cfg.train_epochs, render_size=cfg.render_size, seed=cfg.seed)
        paths, seconds["training"] = prepare_models(ecfg, progress, say)
        classifiers = {r: OnnxClassifier(p, role=r, warmup_runs=0) for r, p in paths.items()}
        names = {tuple(c.class_names) for c in classifiers.values()}
        if len(names) != 1:
            raise ConfigError(f"the models must have the same classes in the same order; got {sorted(names)}")
        models = {r: {"path": str(c.path), "model": c.model_id, "arch": c.card.arch, "input_size": list(c.input_size),
                      "test_accuracy": c.card.test_accuracy, "trained_here_s": seconds["training"].get(r)}
                  for r, c in classifiers.items()}
        t0 = time.perf_counter()
        say(f"rendering and scoring {cfg.pool_frames} frames of each stream ({', '.join(STREAMS)})")
        pools = build_pools(cfg, classifiers, progress, say)
        del classifiers
        save_pools(pools, cfg.workdir / "pools.npz", models)
        seconds["pools"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    say(f"{len(pools)} streams x {len(cfg.strategies)} strategies x {cfg.reps} labelings of {cfg.stream_frames} frames "
        f"({cfg.workers} process{'es' if cfg.workers > 1 else ''})")
    sims = run_simulations(pools, cfg, progress)
    seconds["simulations"] = round(time.perf_counter() - t0, 1)
    summary = summarize(sims, {n: p.truth for n, p in pools.items()}, cfg)
    seconds["total"] = round(time.perf_counter() - t_start, 1)
    results = {
        "config": cfg.model_dump(mode="json"),
        "machine": machine_info(),
        "models": models,
        "streams": {n: {**p.describe(), "phases": [[w, list(s)] for w, s in stream_phases(n)],
                        "frame_size": list(_demo("frame_size")), "dwell": list(_demo("dwell"))}
                    for n, p in pools.items()},
        "summary": summary,
        "seconds": seconds,
    }
    write_results(results, cfg.out)
    say(f"wrote {cfg.out} and {cfg.out.with_suffix('.json')} in {seconds['total']:.0f} s")
    return results


def write_results(results: Mapping[str, Any], out: Path) -> None:
    """``out`` (the markdown document) and ``out`` with .json (the raw results)."""
    write_document(results, out, render_markdown)


# --- the document ------------------------------------------------------------------------------------------------------
def _n(v: float | None) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return "not reached"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    cell = lambda t: str(t).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(map(cell, r)) + " |" for r in rows), ""]


def _combo(strategy: str, estimator: str) -> str:
    return f"{strategy} + {ESTIMATOR_TITLES.get(estimator, estimator)}"


def render_markdown(r: Mapping[str, Any]) -> str:
    """The document: every number from ``r`` (the results of :func:`run_label_bench`)."""
    c, s, m = r["config"], r["summary"], r["machine"]
    hw, level = c["half_width"] * 100, (1 - c["alpha"]) * 100
    best = s["best"]
    lines = [
        "# Label efficiency: labels for a +-{:g}-point {:g}% interval on production accuracy".format(hw, level),
        "",
        f"_generated by `shadowcam bench labels` on {m.get('date', '?')}; do not edit: rerun the command at the end_",
        "",
        f"How many human labels does each sampling strategy x estimator need before the incumbent's production accuracy "
        f"is known to +-{hw:g} points at {level:g}%? Each of {c['reps']} simulated labelings per stream draws a stream "
        f"of {c['stream_frames']} frames from a pool of scored frames (with replacement), gives every frame its inclusion "
        f"probability from the product's `LabelSampler` (rate {c['rate']:g}, uniform floor {c['uniform_floor']:g}), "
        f"draws the labels (Poisson sampling) and looks at the interval every {c['check_every']} frames; the labels "
        "needed are those at the first look whose half-width meets the target. The generator knows every frame's "
        "class, so the truth (the incumbent's accuracy on the pool) is known and every stopping interval is checked "
        "against it (coverage).",
        "",
        "## Summary",
        "",
    ]
    if best:
        ratios = " and ".join(f"{_x(v)} on the {n} stream" for n, v in best["ratios"].items())
        lines += [f"- best combination (lowest ratio on the {s['ranked_on']} stream among those within "
                  f"{s['max_ratio']:.1f}x of uniform + Wilson on every stream, with coverage not significantly below "
                  f"{level:g}%): **{_combo(best['strategy'], best['estimator'])}**: {ratios} (median labels needed, "
                  "relative to uniform + Wilson's)"]
    lines += [f"- target (issue 11): <= {s['target_ratio']:g}x the labels of uniform + Wilson on the shifted stream "
              f"and never more than {s['max_ratio']:.1f}x on either stream: **{s['verdict']}**"]
    rows_by = {(x["stream"], x["strategy"], x["estimator"]): x for x in s["rows"]}
    for n in r["streams"]:
        b = rows_by.get((n, *BASELINE))
        if b:
            lines.append(f"- {n} stream: true accuracy {_pct(s['truth'][n])}%; uniform + Wilson needed {_n(b['median'])} "
                         f"labels (median; analytic Wilson count at the true accuracy: {s['wilson_analytic'][n]})")
    lines += [""]
    lines += ["## Estimators", "",
              f"- **{ESTIMATOR_TITLES['classical']}**: `pipeline.evaluation.stats.accuracy_estimate`: the Wilson interval "
              "when every labelled frame had the same probability (uniform), else the Hajek estimate with a Wilson "
              "interval at its effective number of labels.",
              f"- **{ESTIMATOR_TITLES['model_assisted']}**: `pipeline.evaluation.ppi.model_assisted_accuracy`: active "
              "inference with power tuning, the control variate a proxy of \"the incumbent is right\" (ridge logistic "
              "regression on `pipeline.evaluation.ppi.correctness_features`: the incumbent's confidence, margin, "
              "confidence bin and log-probabilities, its predicted class alone and times its confidence, agreement "
              "with the shadow and the shadow's probability of the incumbent's class, the image statistics alone, "
              "squared and times the confidence), "
              f"cross-fitted over {c['proxy_folds']} folds of the stream's frames; used once {c['proxy_min_labels']} "
              "frames are labelled (classical before, as the evaluator does).", ""]
    head = ["strategy", "estimator", "labels needed: median [25%-75%]", "ratio to uniform + Wilson",
            f"coverage of the truth (target {level:g}%)", "reached the target"]
    for n, st in r["streams"].items():
        phases = "; ".join(", ".join(p) or "no shift" for _, p in st["phases"])
        lines += [f"## {n.capitalize()} stream", "",
                  f"Pool: {st['frames']} frames of the demo's camera ({st['frame_size'][1]}x{st['frame_size'][0]}, "
                  f"conditions: {phases}); incumbent accuracy **{_pct(st['accuracy']['incumbent'])}%** (the truth), "
                  f"shadow {_pct(st['accuracy']['shadow'])}%, the two disagree on {_pct(st['disagreement'])}% of "
                  f"frames, incumbent mean confidence {_pct(st['mean_confidence'])}%. Analytic uniform + Wilson count "
                  f"at the true accuracy: {s['wilson_analytic'][n]} labels.", ""]
        body = []
        for x in (x for x in s["rows"] if x["stream"] == n):
            star = " *" if best and (x["strategy"], x["estimator"]) == (best["strategy"], best["estimator"]) else ""
            cov = "-" if x["coverage"] is None else f"{_pct(x['coverage'])}% ({x['covered']}/{x['reached']})"
            if x["undercovers"]:
                cov += " (too low)"
            body.append([x["strategy"] + star, ESTIMATOR_TITLES[x["estimator"]],
                         f"{_n(x['median'])} [{_n(x['q25'])}-{_n(x['q75'])}]", _x(x["ratio"]), cov,
                         f"{x['reached']}/{x['reps']}"])
        lines += _table(head, body)
    lines += ["`*`: the best combination. Coverage: share of the labelings that reached the target whose stopping "
              f"interval holds the truth; \"too low\" when it is below {level:g}% at a one-sided binomial p < "
              f"{UNDERCOVER_P:g} (such a combination cannot be the best). A labeling that never reached the target "
              "counts as needing more labels than any that did.", ""]
    if r.get("models") or c.get("pools"):
        lines += ["## Models", ""]
        if c.get("pools"):
            lines += [f"The pools were scored by an earlier run (`{c['pools']}`), with these models:", ""]
        lines += _table(["role", "model", "arch", "input", "test accuracy (clean)", "trained here (s)"],
                        [[k, f"`{i['model']}`", i["arch"], "x".join(map(str, i["input_size"])), _pct(i["test_accuracy"]),
                          "-" if i.get("trained_here_s") is None else f"{i['trained_here_s']:.0f}"]
                         for k, i in r["models"].items()])
    sec = r["seconds"]
    took = f"Took {sec['total']:.0f} s ({sec['simulations']:.0f} s simulating"
    if "pools" in sec:
        took += f", {sec['pools']:.0f} s rendering and scoring the pools"
    took += "".join(f", {v:.0f} s training the {k}" for k, v in sec.get("training", {}).items()) + ")."
    lines += ["## Machine", "",
              f"{m.get('cpu')}, {m.get('cores_usable')} usable cores, {m.get('ram_gib')} GiB RAM, {m.get('os')}; Python "
              f"{m.get('python')}, onnxruntime {m.get('onnxruntime')}, numpy {m.get('numpy')}; git {m.get('git_commit')}. "
              f"{took} {c['workers']} simulation process(es).", "",
              "## How to reproduce", "", "```", c.get("command") or "shadowcam bench labels", "```", ""]
    return "\n".join(lines)
