"""The store at scale: fill a store with a realistic synthetic stream in bulk, and measure what a big store costs.

``shadowcam bench store`` (:mod:`pipeline.commands.bench`) calls :func:`run_store_bench`: for each size it fills a
fresh store (:func:`fill_store`), runs ``shadowcam evaluate`` on it as a subprocess (wall time and the child's peak
resident memory), measures the bytes per prediction and, where :mod:`pipeline.retention` offers it, the sustained
write rate; then :func:`render_markdown` writes ``docs/scale.md`` (generated: machine, date and command included).

What a filled store holds (:class:`FillSpec`), so the figures mean something:

* ``n_predictions / 2`` frames, round-robin over ``cameras`` cameras (frame ids ``<run>:<camera>:<seq>`` as the
  runner makes them), ``fps`` frames per second per camera, with the four image statistics (per-camera levels plus
  noise);
* every frame has an incumbent prediction (``inc:1``) and, on ``shadow_coverage`` of them, a shadow prediction
  (``sh:2``), over five classes; the models are right with probability ``incumbent_accuracy`` /
  ``shadow_accuracy``, confidences drawn higher when right; ``degraded_share`` of the incumbent's answers are stale;
* ``label_share`` of the *predictions* get a label (1% of 10M predictions = 100k labels): that many frames of each
  chunk are drawn at random without replacement (``samples`` rows with inclusion probability = the sampled share of
  frames) and labelled with the truth by one annotator.

The fill writes the store's own tables with its probability codec (:func:`pipeline.store.encode_probs`, vectorised),
by plain DB-API ``executemany`` in one transaction per chunk, with SQLite's synchronous writes off for the fill only:
minutes for 10M predictions, not hours.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import sqlalchemy as sa
from tqdm import tqdm

from pipeline import store as store_mod
from pipeline.config import RunConfig
from pipeline.store import PredictionStore
from pipeline.types import ConfigError

CLASSES: tuple[str, ...] = ("parcel", "parcel_damaged", "label_missing", "foreign_object", "empty_belt")
CLASS_MIX: tuple[float, ...] = (0.55, 0.1, 0.1, 0.05, 0.2)
RUN_ID = "scale"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
MODELS = {"incumbent": ("inc", "1"), "shadow": ("sh", "2")}


@dataclass(frozen=True)
class FillSpec:
    """What :func:`fill_store` writes (see the module docstring)."""

    n_predictions: int
    cameras: int = 50
    fps: float = 1.0
    label_share: float = 0.01
    shadow_coverage: float = 0.995
    degraded_share: float = 0.001
    incumbent_accuracy: float = 0.92
    shadow_accuracy: float = 0.94
    seed: int = 0
    chunk: int = 50_000  # frames per transaction

    def __post_init__(self) -> None:
        if self.n_predictions < 2:
            raise ConfigError(f"n_predictions must be >= 2, got {self.n_predictions}")
        if self.cameras < 1:
            raise ConfigError(f"cameras must be >= 1, got {self.cameras}")
        if not 0 < self.label_share <= 0.5:
            raise ConfigError(f"label_share must be in (0, 0.5], got {self.label_share}")

    @property
    def n_frames(self) -> int:
        return self.n_predictions // 2

    @property
    def sample_rate(self) -> float:
        """Share of frames sampled (and labelled): labels = ``label_share`` x predictions."""
        return min(1.0, self.label_share * self.n_predictions / self.n_frames)


@dataclass
class FillStats:
    frames: int = 0
    predictions: int = 0
    samples: int = 0
    labels: int = 0
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.predictions / self.seconds if self.seconds > 0 else float("nan")


def _probs_encoder() -> Callable[[np.ndarray], list]:
    """The store's probability codec (:func:`pipeline.store.encode_probs`) over an (n, C) float32 matrix -> n stored
    values, vectorised: one ``astype`` to the codec's dtype and a slice of bytes per row (checked against the codec)."""
    def encode(m: np.ndarray) -> list:
        if m.shape[0] == 0:
            return []
        blob = np.ascontiguousarray(m.astype(store_mod.PROBS_DTYPE)).tobytes()
        step = len(blob) // m.shape[0]
        out = [blob[i:i + step] for i in range(0, len(blob), step)]
        if out[0] != store_mod.encode_probs(m[0]):
            raise RuntimeError("pipeline.scale: the vectorised probability encoding differs from pipeline.store.encode_probs")
        return out

    return encode


FRAME_COLS = ("frame_id", "run_id", "camera_id", "seq", "ts", "source_ref", "width", "height", "brightness", "contrast", "sharpness", "noise")
PRED_COLS = ("frame_id", "camera_id", "role", "model_name", "model_version", "probs", "label", "confidence", "latency_ms", "degraded", "ts")
SAMPLE_COLS = ("frame_id", "camera_id", "strategy", "inclusion_prob", "image_path", "sampled_at", "double_label", "status")
LABEL_COLS = ("frame_id", "label", "annotator", "source", "ts")


def _chunk_rows(spec: FillSpec, start: int, stop: int, rng: np.random.Generator, encode: Callable[[np.ndarray], list]) -> dict[str, list]:
    """The rows of frames ``start .. stop-1`` as tuples in the column orders above: frames, predictions, samples, labels."""
    C = len(CLASSES)
    idx = np.arange(start, stop)
    n = idx.size
    cam = idx % spec.cameras
    seq = (idx // spec.cameras).tolist()
    ts = T0 + idx // spec.cameras / spec.fps + cam * (1.0 / spec.fps / spec.cameras)
    truth = rng.choice(C, size=n, p=CLASS_MIX)
    bright = 100 + (cam % 7) * 6.0 + rng.normal(0, 5, n)
    contrast = 40 + (cam % 5) + rng.normal(0, 2, n)
    sharp = 200 + rng.normal(0, 20, n)
    noise = 2 + rng.gamma(2.0, 0.3, n)
    cams = [f"cam{c:03d}" for c in cam.tolist()]
    fids = [f"{RUN_ID}:{c}:{s}" for c, s in zip(cams, seq)]
    tsl = ts.tolist()
    frames = list(zip(fids, [RUN_ID] * n, cams, seq, tsl, [f"rtsp://{c}#{s}" for c, s in zip(cams, seq)], [1920] * n, [1080] * n,
                      bright.tolist(), contrast.tolist(), sharp.tolist(), noise.tolist()))
    preds: list[tuple] = []
    rows = np.arange(n)
    for role, acc in (("incumbent", spec.incumbent_accuracy), ("shadow", spec.shadow_accuracy)):
        right = rng.random(n) < acc
        pred = np.where(right, truth, (truth + rng.integers(1, C, n)) % C)
        conf = np.where(right, rng.beta(8, 1.5, n), rng.beta(3, 2, n)) * (1 - 1 / C) + 1 / C
        rest = rng.dirichlet(np.ones(C - 1), n) * (1 - conf)[:, None]
        probs = np.empty((n, C), np.float32)
        probs[rows, pred] = conf
        for j in range(C - 1):  # the other classes share the rest of the mass
            probs[rows, (pred + 1 + j) % C] = rest[:, j]
        keep = np.ones(n, bool) if role == "incumbent" else rng.random(n) < spec.shadow_coverage
        degraded = (rng.random(n) < spec.degraded_share) if role == "incumbent" else np.zeros(n, bool)
        name, version = MODELS[role]
        k = np.flatnonzero(keep)
        enc = encode(probs[k])
        conf_k = probs[k, pred[k]].astype(np.float64).tolist()
        preds += [(fids[i], cams[i], role, name, version, e, CLASSES[p], c, 4.0, "stale" if d else None, tsl[i] + 0.05)
                  for i, e, p, c, d in zip(k.tolist(), enc, pred[k].tolist(), conf_k, degraded[k].tolist())]
    # a simple random sample of the chunk's frames (inclusion probability = the rate; labels = label_share x predictions)
    sampled = np.sort(rng.choice(n, size=min(n, int(round(n * spec.sample_rate))), replace=False)).tolist()
    samples = [(fids[i], cams[i], "uniform", spec.sample_rate, f"samples/{fids[i].replace(':', '_')}.jpg", tsl[i], False, "labeled")
               for i in sampled]
    labels = [(fids[i], CLASSES[truth[i]], "ann1", "simulated", tsl[i] + 3600.0) for i in sampled]
    return {"frames": frames, "predictions": preds, "samples": samples, "labels": labels}


def _insert_sql(conn: sa.Connection, table: str, cols: Sequence[str]) -> str:
    style = conn.dialect.paramstyle
    marks = ", ".join("?" if style == "qmark" else "%s" for _ in cols)
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})"


def fill_store(url: str, spec: FillSpec, progress: bool = True) -> FillStats:
    """Write ``spec`` into the (new, empty) store at ``url``; returns what was written and how long it took."""
    store = PredictionStore(url)
    try:
        if store.count(store_mod.frames) or store.count(store_mod.predictions):
            raise ConfigError(f"store {store.url} is not empty: `bench store` fills a fresh store (remove it or pass another --db)")
        cfg = RunConfig().model_dump(mode="json")
        cfg["sampling"].update(strategy="uniform", rate=spec.sample_rate)
        inc, sh = (f"{n}:{v}" for n, v in MODELS.values())
        store.begin_run(RUN_ID, inc, sh, list(CLASSES), cfg)
        rng = np.random.default_rng(spec.seed)
        encode = _probs_encoder()
        stats = FillStats()
        t0 = time.perf_counter()
        sqlite = store.url.startswith("sqlite")
        tables = {"frames": FRAME_COLS, "predictions": PRED_COLS, "samples": SAMPLE_COLS, "labels": LABEL_COLS}
        with store.engine.connect() as conn:
            sqls = {t: _insert_sql(conn, t, cols) for t, cols in tables.items()}
        with tqdm(total=spec.n_frames * 2, unit="pred", unit_scale=True, desc="filling store", disable=not progress) as bar:
            with store.engine.connect() as conn:
                if sqlite:
                    conn.exec_driver_sql("PRAGMA synchronous=OFF")
                    conn.commit()
                for start in range(0, spec.n_frames, spec.chunk):
                    stop = min(spec.n_frames, start + spec.chunk)
                    rows = _chunk_rows(spec, start, stop, rng, encode)
                    with conn.begin():
                        for t, cols in tables.items():  # plain DB-API executemany: SQLAlchemy's per-row work would double the time
                            if rows[t]:
                                conn.exec_driver_sql(sqls[t], rows[t])
                    stats.frames += len(rows["frames"])
                    stats.predictions += len(rows["predictions"])
                    stats.samples += len(rows["samples"])
                    stats.labels += len(rows["labels"])
                    bar.update(2 * (stop - start))
                if sqlite:
                    conn.exec_driver_sql("PRAGMA synchronous=FULL")
                    conn.commit()
        store.end_run(RUN_ID, {})
        stats.seconds = time.perf_counter() - t0
        return stats
    finally:
        store.close()


# --------------------------------------------------------------------------------------------------------------------
# The bench: fill, evaluate in a subprocess, measure, write docs/scale.md
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreBenchConfig:
    """``shadowcam bench store`` options (see :mod:`pipeline.commands.bench`)."""

    sizes: tuple[int, ...] = (1_000_000, 10_000_000)
    db: str | None = None  # one store to fill (must be empty; one size only); default: a fresh SQLite file per size
    workdir: str = "runs/bench_store"
    out: str = "docs/scale.md"
    repeats: int = 1  # `shadowcam evaluate` runs per size; the fastest is reported
    write_db: str | None = None  # where the write rate is measured (default: a fresh SQLite file)
    writers: tuple[int, ...] = (1, 4)
    write_predictions: int = 40_000
    keep: bool = False  # keep the filled stores
    seed: int = 0
    command: str = "shadowcam bench store"
    targets: tuple[float, float] = (10.0, 2.0)  # seconds, GiB at the largest size (issue 14)

    def __post_init__(self) -> None:
        if not self.sizes or any(n < 2 for n in self.sizes):
            raise ConfigError(f"--sizes must be predictions counts >= 2, got {list(self.sizes)}")
        if self.db and len(self.sizes) > 1:
            raise ConfigError("--db fills one store: give one size with it (--sizes N)")
        if self.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {self.repeats}")


def _sqlite_file(url: str) -> Path | None:
    return store_mod.sqlite_path(url)


def run_evaluate(url: str, json_out: Path, timeout: float = 3600.0) -> dict[str, Any]:
    """``shadowcam evaluate --db URL --no-mlflow --json FILE`` as a child process: wall seconds, the child's peak
    resident memory (``wait4``'s ``ru_maxrss``), its CPU seconds and exit code."""
    cmd = [sys.executable, "-m", "pipeline.cli", "evaluate", "--db", url, "--no-mlflow", "--json", str(json_out)]
    log_path = json_out.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            raise
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"`{shlex.join(cmd)}` exited {proc.returncode}:\n{tail}")
    return {"seconds": wall, "max_rss_bytes": ru.ru_maxrss * 1024, "cpu_seconds": ru.ru_utime + ru.ru_stime, "command": shlex.join(cmd[2:])}


_PHASES = """
import json, sys, time
t0 = time.perf_counter()
import pipeline.cli, pipeline.evaluation.evaluator, pipeline.evaluation.report
from pipeline.imagestats import STAT_NAMES
from pipeline.store import PredictionStore
t1 = time.perf_counter()
st = PredictionStore(sys.argv[1], must_exist=True)
runs = st.list_runs()
c0 = time.process_time()
cols = st.evaluation_columns([r["run_id"] for r in runs], json.loads(runs[-1]["class_names"]), STAT_NAMES)
t2 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "read_s": t2 - t1, "read_cpu_s": time.process_time() - c0, "frames": cols.n}))
"""


def measure_phases(url: str) -> dict[str, float]:
    """Where ``shadowcam evaluate``'s time goes, from a separate child: importing the command (Python, numpy, scipy,
    statsmodels ...) and reading the store into columns (:meth:`PredictionStore.evaluation_columns`); the rest of
    an evaluation's wall time is the statistics."""
    out = subprocess.run([sys.executable, "-c", _PHASES, url], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _store_size(url: str, n_predictions: int) -> dict[str, Any]:
    try:
        from pipeline.retention import store_size
    except ImportError:  # the store helper's measurement is not there: the file size
        path = _sqlite_file(url)
        total = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p and p.exists()) if path else float("nan")
        return {"total_bytes": total, "bytes_per_prediction": total / n_predictions, "tables": {}}
    return store_size(url)


def _write_rate(cfg: StoreBenchConfig, progress: bool) -> list[dict[str, Any]]:
    try:
        from pipeline.retention import measure_store_writes
    except ImportError:
        return []
    out = []
    for w in cfg.writers:
        url = cfg.write_db
        if url is None:
            path = Path(cfg.workdir) / f"writes_{w}.db"
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
            url = str(path)
        if progress:
            print(f"write rate: {w} writer(s), {cfg.write_predictions:,} predictions into {store_mod.redact_url(url)}", flush=True)
        out.append(measure_store_writes(url, cfg.write_predictions, writers=w))
    return out


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem, "python": platform.python_version(), "system": platform.platform(),
            "load_at_start": load}


def run_store_bench(cfg: StoreBenchConfig, progress: bool = True) -> dict[str, Any]:
    """Fill, evaluate and measure every size of ``cfg``; write ``cfg.out``; return the figures."""
    work = Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"config": asdict(cfg), "machine": _machine(), "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                           "sizes": []}
    try:
        import adbc_driver_sqlite  # noqa: F401

        res["reader"] = "ADBC (adbc-driver-sqlite / adbc-driver-postgresql)"
    except ImportError:
        res["reader"] = "SQLAlchemy rows (ADBC drivers not installed: slower)"
    for n in cfg.sizes:
        url = cfg.db
        path = None
        if url is None:
            path = work / f"store_{n}.db"
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
            url = str(path)
        spec = FillSpec(n, seed=cfg.seed)
        fill = fill_store(url, spec, progress=progress)
        size = _store_size(url, fill.predictions)
        runs = []
        for k in range(cfg.repeats):
            if progress:
                print(f"evaluating {fill.predictions:,} predictions ({k + 1}/{cfg.repeats}) ...", flush=True)
            runs.append(run_evaluate(url, work / f"evaluate_{n}.json"))
        best = min(runs, key=lambda r: r["seconds"])
        phases = measure_phases(url)
        phases["statistics_s"] = max(0.0, best["seconds"] - phases["imports_s"] - phases["read_s"])
        res["sizes"].append({"n_predictions": fill.predictions, "frames": fill.frames, "labels": fill.labels, "cameras": spec.cameras,
                             "fill_seconds": fill.seconds, "fill_rate": fill.rows_per_s, "store": store_mod.redact_url(url),
                             "bytes_per_prediction": size.get("bytes_per_prediction"), "total_bytes": size.get("total_bytes"),
                             "evaluate": best, "evaluate_runs": runs, "phases": phases})
        if path is not None and not cfg.keep:
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
    res["writes"] = _write_rate(cfg, progress)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(render_markdown(res))
    (work / "bench_store.json").write_text(json.dumps(res, indent=2, default=str))
    return res


def _gib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**30:.2f} GiB"


def render_markdown(res: dict[str, Any]) -> str:
    """``docs/scale.md`` from :func:`run_store_bench`'s figures (generated: never edit it by hand)."""
    cfg, m = res["config"], res["machine"]
    t_s, t_gib = cfg["targets"]
    load = m.get("load_at_start")
    lines = [
        "# The store and the evaluator at scale",
        "",
        f"Generated by `{cfg['command']}` on {res['date']}; do not edit by hand, run the command again.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {_gib(m.get('memory_bytes'))} memory, Python {m['python']}"
        + (f"; load average at start {load[0]:.1f}" if load else "") + ". Store reader: " + res["reader"] + ".",
        "",
        "Each size is a fresh store filled by `pipeline.scale.fill_store` (50 cameras, 5 classes, an incumbent and a shadow "
        "prediction per frame, image statistics on every frame, 1% of the predictions' frames sampled uniformly and labelled), "
        "then `shadowcam evaluate --no-mlflow --json` runs on it as a child process: wall time from start to exit "
        "(Python start-up and imports included) and the child's peak resident memory.",
        "",
        "| predictions | frames | labels | store | bytes / prediction | evaluate (s) | evaluate CPU (s) | peak memory | fill (s) |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in res["sizes"]:
        e = s["evaluate"]
        bpp = s.get("bytes_per_prediction")
        lines.append(f"| {s['n_predictions']:,} | {s['frames']:,} | {s['labels']:,} | {s['store'].split('://')[0] if '://' in s['store'] else 'SQLite'} | "
                     f"{'-' if bpp is None else f'{bpp:.0f}'} | {e['seconds']:.1f} | {e['cpu_seconds']:.1f} | {_gib(e['max_rss_bytes'])} | "
                     f"{s['fill_seconds']:.0f} |")
    big = max(res["sizes"], key=lambda s: s["n_predictions"]) if res["sizes"] else None
    if big is not None:
        e = big["evaluate"]
        ok_t, ok_m = e["seconds"] <= t_s, e["max_rss_bytes"] <= t_gib * 2**30
        verdict = "met" if ok_t and ok_m else "**missed**"
        lines += ["", f"Target (issue 14) at {big['n_predictions']:,} predictions: evaluation <= {t_s:g} s and <= {t_gib:g} GiB: {verdict} "
                      f"({e['seconds']:.1f} s, {_gib(e['max_rss_bytes'])})."]
    if res.get("writes"):
        lines += ["", "## Write rate", "", "`pipeline.retention.measure_store_writes`: writer processes writing batches as the runner's "
                  "writer does (frames + 2 predictions per frame + samples, one transaction per batch).", "",
                  "| store | writers | batch (frames) | predictions | predictions / s |", "| --- | ---: | ---: | ---: | ---: |"]
        for w in res["writes"]:
            lines.append(f"| {str(w['url']).split('://')[0]} | {w['writers']} | {w['batch_frames']} | {w['n_predictions']:,} | "
                         f"{w['predictions_per_s']:,.0f} |")
    lines += ["", "## Where the evaluation's time goes", "",
              "From a separate child process per size: importing the command, and reading the store into column arrays "
              "(`PredictionStore.evaluation_columns`: ADBC steps the rows in C on two threads, an Arrow hash join puts the "
              "predictions on their frames, one `frombuffer` reads the float16 probabilities); the rest of the wall time "
              "is the statistics (vectorised numpy: the model-assisted proxy cross-fitted over every frame, drift per camera, "
              "the anytime-valid sequences over the stream).", "",
              "| predictions | imports (s) | store read (s) | store read CPU (s) | statistics (s) |", "| ---: | ---: | ---: | ---: | ---: |"]
    for s in res["sizes"]:
        ph = s.get("phases") or {}
        if ph:
            lines.append(f"| {s['n_predictions']:,} | {ph['imports_s']:.1f} | {ph['read_s']:.1f} | {ph['read_cpu_s']:.1f} | "
                         f"{ph['statistics_s']:.1f} |")
    if load and load[0] > (m.get("cores") or 1):
        lines += ["", f"The machine was shared while this ran (load average {load[0]:.1f} on {m['cores']} cores): wall times are "
                      "inflated; the CPU column is the steadier figure."]
    return "\n".join(lines) + "\n"
