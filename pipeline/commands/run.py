"""``shadowcam run``: serve the incumbent on camera frames, run the shadow beside it, store everything.

Examples::

    shadowcam run --source videos/dock1.mp4 --source frames/ --source rtsp://cam3/stream \\
        --incumbent models:/shadowcam@champion --shadow models:/shadowcam@challenger --db runs/demo/shadowcam.db
    shadowcam run --config configs/run.example.yaml --max-frames 5000 --summary-json runs/demo/summary.json
    shadowcam run --cluster ray --config fleet.yaml --db postgresql://shadowcam@db-host/shadowcam   # a Ray fleet

Options override the YAML config (``--config``); the resolved config is stored with the run.
Ctrl-C (or SIGTERM) drains the queues, flushes the store and prints the summary; a second Ctrl-C aborts.
With ``--cluster`` (or ``cluster:`` in the config) the cameras are spread over Ray actors (:mod:`pipeline.fleet`,
docs/fleet.md); the summary is then the fleet's.
"""

from __future__ import annotations

import argparse

NAME = "run"
HELP = "serve the incumbent on camera sources with the shadow model beside it; store predictions"
DESCRIPTION = (
    "Read frames from video files, image folders, RTSP/HTTP streams or USB cameras, batch them across cameras, serve "
    "the incumbent model's predictions, run the shadow model on the same frames as best effort, sample frames for "
    "human labels and store frames, predictions, health events and samples. Prints a summary at the end."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", dest="sources", action="append", default=None, metavar="SRC",
                   help="camera: video file, image folder, rtsp://, http(s):// (MJPEG) or USB index; repeatable "
                        "(replaces the config's sources)")
    p.add_argument("--loop", action="store_true", help="loop file and folder sources given with --source")
    p.add_argument("--incumbent", default=None, metavar="MODEL", help="served model: .onnx path or models:/NAME@ALIAS")
    p.add_argument("--shadow", default=None, metavar="MODEL", help="shadow model: .onnx path or models:/NAME@ALIAS")
    p.add_argument("--providers", default=None, metavar="LIST",
                   help="execution providers for both models, best first, comma-separated (cuda,cpu); default: TensorRT, CUDA, CPU as installed")
    p.add_argument("--db", default=None, metavar="URL", help="prediction store: SQLite path (relative: under --workdir) or postgresql://... (config: store.url)")
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="run config (see configs/run.example.yaml)")
    p.add_argument("--workdir", default=None, help="work directory for the default store, sampled images and caches (config: workdir)")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames served in all")
    p.add_argument("--batch-size", type=int, default=None, help="frames per batch across cameras (config: batching.batch_size)")
    p.add_argument("--max-wait-ms", type=float, default=None, help="longest wait for a full batch (config: batching.max_wait_ms)")
    p.add_argument("--shadow-rate", type=float, default=None, help="share of batches sent to the shadow, 0..1 (config: shadow_mode.rate)")
    p.add_argument("--shadow-timeout", type=float, default=None, metavar="S", help="abandon a shadow batch after S seconds (config: shadow_mode.timeout_s)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve /metrics and /healthz on this port (0: any free port)")
    p.add_argument("--sample-rate", type=float, default=None, help="share of frames sent for labels (config: sampling.rate)")
    p.add_argument("--sample-strategy", default=None, choices=["uniform", "stratified", "disagreement", "uncertainty"],
                   help="label sampling strategy (config: sampling.strategy)")
    p.add_argument("--no-sampling", action="store_true", help="do not sample frames for labels")
    p.add_argument("--summary-json", default=None, metavar="FILE", help="also write the end-of-run summary as JSON")
    p.add_argument("--json-logs", action="store_true", help="log JSON lines instead of key=value text")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cluster", default=None, metavar="ray|ray://HOST:PORT",
                   help="spread the cameras over Ray actors: 'ray' (RAY_ADDRESS, else the cluster `ray start` began on "
                        "this machine) or 'ray://HOST:PORT' (Ray Client); needs a postgresql:// store (config: cluster.address)")
    p.add_argument("--cameras-per-actor", type=int, default=None, metavar="N",
                   help="with --cluster: cameras per Ray actor (config: cluster.cameras_per_actor)")
    p.add_argument("--fleet-id", default=None, metavar="ID",
                   help="with --cluster: the fleet run's id; give the id of an interrupted fleet run to continue it "
                        "(its replays go on after the frames already stored); default: a new one")


def build_config(args: argparse.Namespace):
    """The RunConfig from ``--config`` plus the command-line overrides."""
    from pipeline.config import load_config

    overrides: dict = {
        "workdir": args.workdir,
        "max_frames": args.max_frames,
        "store.url": args.db,
        "batching.batch_size": args.batch_size,
        "batching.max_wait_ms": args.max_wait_ms,
        "shadow_mode.rate": args.shadow_rate,
        "shadow_mode.timeout_s": args.shadow_timeout,
        "metrics.port": args.metrics_port,
        "sampling.rate": args.sample_rate,
        "sampling.strategy": args.sample_strategy,
        "sampling.enabled": False if args.no_sampling else None,
        "incumbent.uri": args.incumbent,
        "shadow.uri": args.shadow,
    }
    if args.sources:
        overrides["sources"] = [{"uri": s, "loop": True} if args.loop else {"uri": s} for s in args.sources]
    cfg = load_config(args.config, overrides)
    cluster, per_actor = getattr(args, "cluster", None), getattr(args, "cameras_per_actor", None)
    if getattr(args, "fleet_id", None) is not None and not cluster and cfg.cluster is None:
        from pipeline.types import ConfigError

        raise ConfigError("--fleet-id: only with --cluster ray (or cluster: in the config)")
    if cluster or per_actor is not None:
        from pipeline.config import ClusterConfig
        from pipeline.fleet import parse_cluster_option
        from pipeline.types import ConfigError

        if not cluster and cfg.cluster is None:
            raise ConfigError("--cameras-per-actor: only with --cluster ray (or cluster: in the config)")
        doc = cfg.cluster.model_dump() if cfg.cluster is not None else {}
        if cluster:
            doc["address"] = parse_cluster_option(cluster)
        if per_actor is not None:
            doc["cameras_per_actor"] = per_actor
        cfg.cluster = ClusterConfig(**doc)
    if args.providers:
        names = [x.strip() for x in args.providers.split(",") if x.strip()]
        for model in (cfg.incumbent, cfg.shadow):
            if model is not None:
                model.providers = names
    return cfg


def main(args: argparse.Namespace) -> int:
    import logging
    import sys

    from pipeline.metrics import setup_logging
    from pipeline.runner import Runner
    from pipeline.types import ConfigError

    setup_logging(level=logging.getLogger().level or logging.INFO, json_lines=args.json_logs)
    cfg = build_config(args)
    if cfg.incumbent is None:
        raise ConfigError("no incumbent model: give --incumbent MODEL or 'incumbent: {uri: ...}' in --config")
    if cfg.cluster is not None:
        from pipeline.fleet import FleetRunner

        fleet = FleetRunner(cfg, fleet_id=args.fleet_id).run()
        print(fleet.format_table())
        if args.summary_json:
            print(f"summary written to {fleet.write_json(args.summary_json)}")
        return 1 if fleet.failed else 0
    runner = Runner(cfg, progress=not args.no_progress and sys.stderr.isatty())
    summary = runner.run()
    print(summary.format_table())
    if args.summary_json:
        path = summary.write_json(args.summary_json)
        print(f"summary written to {path}")
    return 0
