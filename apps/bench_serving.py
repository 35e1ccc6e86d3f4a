"""``shadowcam bench serving``: what serving the demo-size model costs on this machine, per million predictions.

The numbers come from the product itself: the real :class:`pipeline.runner.Runner` (what ``shadowcam run`` runs)
with an incumbent and a shadow, and the serving cost it puts in its summary (:mod:`pipeline.serving_cost`, from
each model's measured busy time). The models and the video are those of ``shadowcam bench`` (:mod:`apps.bench`:
torchvision classifiers randomly initialised and exported to verified ONNX - throughput does not depend on the
weights - and the generated 640x480 conveyor video), at the demo's size (``mobilenet_v3_small`` at 96 x 96, 6
classes). Two runs:

1. **replay at full speed** (the video read as fast as it decodes): the device kept busy, so "in this run" is close
   to "at capacity" - what a well-packed deployment pays;
2. **one camera at** ``camera_fps`` **frames/s** (the video paced with ``max_fps``): what one camera on a machine of its
   own pays - the device mostly idle, billed anyway.

The price per device-hour is an *assumption*, stated in the document and the README (``price_note``); it is not
measured. Only devices this command ran on appear in the table: no figure for a device it did not measure.
The document goes to ``out`` (with its raw results beside it as ``.json``); the table also replaces the block between
``<!-- serving-cost:begin -->`` and ``<!-- serving-cost:end -->`` in ``readme`` when that file has the markers.
About a minute on 2 CPU cores (the export and the video are reused from ``workdir`` on the next run).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from apps.bench import OtherLoad, machine_info, prepare_models, prepare_video
from apps.config import BenchConfig, DemoConfig
from pipeline.config import ARCHS, ServingCostConfig, TrainConfig, _Strict, load_config
from pipeline.runner import Runner
from pipeline.serving_cost import ServingCost
from pipeline.types import ConfigError

__all__ = ["README_BEGIN", "README_END", "ServingBenchConfig", "render_markdown", "render_table", "run_serving_bench",
           "update_readme"]

README_BEGIN = "<!-- serving-cost:begin -->"
README_END = "<!-- serving-cost:end -->"
# The default price: an assumption, not a measurement (the document says so next to every figure).
DEFAULT_PRICE = 0.096
DEFAULT_PRICE_NOTE = ("assumed on-demand list price of a 2-vCPU general-purpose cloud VM (e.g. AWS m6i.large, Linux, "
                      "us-east-1); not measured - pass --price for yours")


class ServingBenchConfig(_Strict):
    """What ``shadowcam bench serving`` measures and where it writes. ``quick``: tiny sizes (tests, smoke runs)."""

    out: Path = Path("docs/serving_cost.md")
    readme: Path | None = Path("README.md")  # its serving-cost block is replaced (None: leave it alone)
    workdir: Path = Path("runs/bench_serving")
    arch: str = TrainConfig.model_fields["arch"].default  # the demo trains the training default ...
    img_size: int = Field(default=DemoConfig.model_fields["img_size"].default, ge=16)  # ... at the demo's size
    frames: int = Field(default=600, ge=1)  # of the replay
    camera_frames: int = Field(default=200, ge=1)  # of the paced run
    camera_fps: float = Field(default=10.0, gt=0)
    batch_size: int = Field(default=BenchConfig.default("batch_size"), ge=1)
    price: float = Field(default=DEFAULT_PRICE, gt=0, allow_inf_nan=False)  # per device-hour
    price_note: str = DEFAULT_PRICE_NOTE
    currency: str = "USD"
    device: str | None = None  # default: this machine's CPU and core count
    seed: int = 0
    quick: bool = False
    command: str = ""

    QUICK: ClassVar[dict[str, Any]] = {"frames": 48, "camera_frames": 20, "camera_fps": 20.0, "img_size": 32,
                                       "batch_size": 16, "quick": True}

    @field_validator("readme", mode="before")
    @classmethod
    def _no_readme(cls, v: Any) -> Any:
        return None if v in ("", None) else v

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        if v not in ARCHS:
            raise ValueError(f"arch {v!r} is not supported; expected one of {', '.join(ARCHS)}")
        return v

    @classmethod
    def quick_config(cls, **kw: Any) -> "ServingBenchConfig":
        return cls(**{**cls.QUICK, **{k: v for k, v in kw.items() if v is not None}})


def _bench_config(cfg: ServingBenchConfig) -> BenchConfig:
    """The throughput bench's config for the same models and video (prepare_models / prepare_video read it)."""
    return BenchConfig(workdir=cfg.workdir, arch=cfg.arch, img_size=cfg.img_size, frames=cfg.frames,
                       latency_frames=min(cfg.frames, BenchConfig.default("latency_frames")), batch_size=cfg.batch_size,
                       seed=cfg.seed, other_sizes=())


def _run(cfg: ServingBenchConfig, video: Path, models: Any, device: str, name: str, max_fps: float | None,
         max_frames: int | None) -> dict[str, Any]:
    db = cfg.workdir / f"serving_{name}.db"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    source: dict[str, Any] = {"uri": str(video), "id": "bench"}
    if max_fps is not None:
        source["max_fps"] = float(max_fps)
    run_cfg = load_config(None, {
        "sources": [source],
        "incumbent": {"uri": str(models.incumbent_path), "providers": models.providers},
        "shadow": {"uri": str(models.shadow_path), "providers": models.providers},
        "batching.batch_size": cfg.batch_size,
        "store.url": str(db),
        "workdir": str(cfg.workdir),
        "max_frames": max_frames,
        "serving_cost": ServingCostConfig(price_per_device_hour=cfg.price, currency=cfg.currency, device=device).model_dump(),
    })
    with OtherLoad() as other:
        summary = Runner(run_cfg, install_signal_handlers=False).run()
    cost = summary.extra["serving_cost"]
    return {"name": name, "max_fps": max_fps, "frames_served": summary.frames_served, "seconds": summary.duration_s,
            "fps": summary.throughput_fps, "coverage": summary.shadow.get("coverage"), "serving_cost": cost,
            "other_load": other.share, "providers": summary.incumbent.get("providers", [])}


def run_serving_bench(cfg: ServingBenchConfig, progress: bool = True) -> dict[str, Any]:
    """Measure both runs, write the document (and the README block), return the results."""
    cfg = cfg.model_copy(update={"workdir": cfg.workdir.resolve()})
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    say = (lambda m: print(f"[bench serving] {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)  # noqa: E731
    t0 = time.perf_counter()
    machine = machine_info()
    device = cfg.device or f"{machine['cpu']}, {machine['cores_usable']} cores (this machine)"
    bcfg = _bench_config(cfg)
    say(f"exporting {cfg.arch} at {cfg.img_size}x{cfg.img_size} (incumbent and shadow)")
    models = prepare_models(bcfg)
    say(f"generating the {bcfg.video_size[1]}x{bcfg.video_size[0]} video ({cfg.frames} frames)")
    video, _how = prepare_video(bcfg, progress=progress)
    say("replay at full speed")
    replay = _run(cfg, video, models, device, "replay", None, None)
    say(f"  {replay['fps']:.1f} frames/s served")
    say(f"one camera at {cfg.camera_fps:g} frames/s ({cfg.camera_frames} frames)")
    camera = _run(cfg, video, models, device, "camera", cfg.camera_fps, cfg.camera_frames)
    results = {
        "config": cfg.model_dump(mode="json"), "machine": machine, "device": device,
        "models": {"arch": cfg.arch, "img_size": cfg.img_size, "classes": len(models.class_names),
                   "providers": models.providers},
        "runs": [replay, camera],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bench_seconds": round(time.perf_counter() - t0, 1),
    }
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(render_markdown(results))
    cfg.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    if cfg.readme is not None:
        if update_readme(cfg.readme, render_table(results)):
            say(f"updated the serving-cost block of {cfg.readme}")
        else:
            say(f"{cfg.readme} has no {README_BEGIN} ... {README_END} block: left alone")
    say(f"wrote {cfg.out} in {results['bench_seconds']:.0f} s")
    return results


# --- the document ----------------------------------------------------------------------------------------------------

def _m(v: float | None, sym: str) -> str:
    if v is None:
        return "-"
    return f"{sym}{v:.3g}" if abs(v) < 1 else f"{sym}{v:,.2f}"


def render_table(r: dict[str, Any]) -> str:
    """The markdown table (and the price assumption under it) that goes into the README."""
    cfg = r["config"]
    lines = [
        "| run | device | model | role | predictions per busy second | busy / wall time | per million predictions at capacity "
        "| per million in this run | the shadow adds per million served |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in r["runs"]:
        c = ServingCost.from_dict(run["serving_cost"])
        sym = c.symbol
        label = "replay at full speed" if run["max_fps"] is None else f"one camera at {run['max_fps']:g} frames/s"
        for m in (c.incumbent, c.shadow):
            if m is None:
                continue
            extra = _m(c.shadow_extra_usd_per_million, sym) if m.role == "shadow" else ""
            lines.append(
                f"| {label} | {c.device} | {cfg['arch']} {cfg['img_size']}x{cfg['img_size']} | {m.role} | "
                f"{m.throughput_per_busy_s:,.0f} | {100 * (m.utilisation or 0):.0f}% | "
                f"{_m(m.usd_per_million_at_capacity, sym)} | {_m(m.usd_per_million, sym)} | {extra} |"
            )
    lines += ["", f"Price: {cfg['currency']} {cfg['price']:g} per device-hour, {cfg['price_note']}. "
              f"Measured by `{cfg['command'] or 'shadowcam bench serving'}` on {r['date'][:10]} "
              f"({', '.join(r['models']['providers'])}); other processes used "
              + ", ".join("-" if run["other_load"] is None else f"{100 * run['other_load']:.0f}%" for run in r["runs"])
              + " of the CPU during the runs."]
    return "\n".join(lines)


def render_markdown(r: dict[str, Any]) -> str:
    cfg, mach = r["config"], r["machine"]
    replay, camera = r["runs"]
    return "\n".join([
        "# Serving cost",
        "",
        "<!-- generated by `shadowcam bench serving`; do not edit by hand - rerun the command -->",
        "",
        f"Generated on {r['date']} at commit `{mach['git_commit']}`. Every throughput and busy share below was measured by "
        "the real `Runner` (incumbent + shadow, SQLite store, label sampling) on this machine; the money is those "
        "measurements times the stated price (`pipeline/serving_cost.py`).",
        "",
        render_table(r),
        "",
        "## How to read it",
        "",
        "* *predictions per busy second*: predictions / the seconds the model's inference calls ran.",
        "* *busy / wall time*: the share of the run the model's calls were running; above 100% its calls overlapped (the "
        "shadow's background and catch-up lanes), and the two models' shares add up to more than 100% when they ran at "
        "once on different cores - the device was saturated, and each model is billed its share of the wall time.",
        "* *at capacity*: the bill for the busy time only - a device kept fully busy (a well-packed deployment).",
        "* *in this run*: the device billed for the whole run, idle or not, shared between the two models by busy time.",
        f"* The replay read {replay['frames_served']} frames as fast as they decode ({replay['fps']:.1f} frames/s served, "
        f"shadow coverage {replay['coverage']:.3f}); the paced run served {camera['frames_served']} frames of one camera "
        f"at {camera['max_fps']:g} frames/s (shadow coverage {camera['coverage']:.3f}): a mostly idle device costs "
        "more per prediction.",
        f"* Models: torchvision `{cfg['arch']}` at {cfg['img_size']}x{cfg['img_size']} (the demo's size), "
        f"{r['models']['classes']} classes, random weights, exported and verified by `models.export` (throughput does "
        "not depend on the weights). The two runs: "
        f"{replay['seconds']:.1f} s and {camera['seconds']:.1f} s.",
        "",
        "## Machine",
        "",
        f"{mach['cpu']}; {mach['cores']} cores ({mach['cores_usable']} usable); {mach['ram_gib']} GiB RAM; {mach['os']}; "
        f"Python {mach['python']}; onnxruntime {mach['onnxruntime']}.",
        "",
    ])


def update_readme(readme: Path, table: str) -> bool:
    """Replace the text between :data:`README_BEGIN` and :data:`README_END` in ``readme`` with ``table``; False (file
    untouched) when the markers are not there."""
    readme = Path(readme)
    if not readme.is_file():
        raise ConfigError(f"{readme}: README not found (give --readme '' to skip it)")
    text = readme.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return False
    new = text[: start + len(README_BEGIN)] + "\n" + table.strip() + "\n" + text[end:]
    readme.write_text(new)
    return True
