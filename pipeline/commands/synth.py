"""``shadowcam synth``: synthetic warehouse conveyor data (an ImageFolder, or a camera stream).

Examples::

    shadowcam synth --out data/train --n 3000 --seed 0
    shadowcam synth --out data/night --n 600 --seed 1 --shift night:3 --shift motion_blur:3 --shift new_packaging
    shadowcam synth --out data/stream --stream --frames 1200 --seed 2 \\
        --phase 0.4=none --phase 0.3=night:3 --phase 0.3=night:3+motion_blur:3+new_packaging
    shadowcam synth --list-shifts

A dataset is ``OUT/<class>/*.jpg`` plus ``OUT/manifest.csv`` (path,label,camera,shift,severity,packaging).
A stream is ``OUT/NAME.mp4`` (or the JPEG folder ``OUT/NAME/``) plus ``OUT/NAME.csv`` keyed by
``source_ref`` (what the ingestion sources record), for the simulated annotator.
"""

from __future__ import annotations

import argparse

NAME = "synth"
HELP = "generate synthetic conveyor images (ImageFolder + manifest) or a camera stream with changing conditions"
DESCRIPTION = (
    "Render a top-down camera over a conveyor belt (classes: empty_belt, parcel_ok, parcel_damaged, parcel_open_flap, "
    "label_missing, foreign_object), deterministically per seed. Camera shifts NAME[:SEVERITY] (severity 1-5, "
    "default 3): night, motion_blur, defocus, glare, lens_dirt, jpeg, camera_tilt, new_packaging (poly mailers, "
    "absent from training). With --stream, write a production feed whose conditions change by --phase."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, metavar="DIR", help="output folder; required unless --list-shifts")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same bytes")
    p.add_argument("--shift", action="append", default=[], metavar="NAME[:SEVERITY]",
                   help="camera shift applied to every image (repeatable, or joined with '+'); see --list-shifts")
    p.add_argument("--classes", default=None, metavar="A,B,...", help="comma-separated subset of the classes; None = all six")
    p.add_argument("--camera", default=None, help="camera id written to the manifest; None = 'synthetic' for datasets, 'cam0' for streams")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--list-shifts", action="store_true", help="print the shift names and what they simulate, then exit")
    g = p.add_argument_group("dataset (default mode)")
    g.add_argument("--n", type=int, default=3000, help="number of images (balanced over the classes)")
    g.add_argument("--img-size", type=int, default=96, metavar="PX", help="square image side in pixels (the 4:3 view is squashed into it, as a serving resize would)")
    g.add_argument("--orientation", action="store_true",
                   help="a dataset where orientation decides the class: parcels whose label arrow points left or right "
                        "(arrow_left, arrow_right; manifest path,label like a team's own data)")
    s = p.add_argument_group("stream (--stream)")
    s.add_argument("--stream", action="store_true", help="write a camera stream instead of a dataset")
    s.add_argument("--frames", type=int, default=600, help="number of frames")
    s.add_argument("--phase", action="append", default=[], metavar="LENGTH=SHIFTS",
                   help="a stretch of simulated time (repeatable, in order): LENGTH is a frame count or a fraction, "
                        "SHIFTS is 'none' or NAME[:SEV]+NAME[:SEV]; the last phase takes any remainder. "
                        "Without --phase, one phase with the --shift list")
    s.add_argument("--frame-size", default="640x480", metavar="WxH", help="frame size")
    s.add_argument("--fps", type=float, default=10.0, help="frames per second of simulated time")
    s.add_argument("--dwell", default="8,16", metavar="MIN[,MAX]", help="frames each item stays in view")
    s.add_argument("--format", dest="fmt", choices=["video", "folder"], default="video", help="mp4 video or a folder of JPEGs")
    s.add_argument("--name", default="stream", help="file stem of the video / folder and its manifest")


def _parse_wxh(text: str) -> tuple[int, int]:
    from pipeline.types import ConfigError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--frame-size must be WIDTHxHEIGHT (e.g. 640x480), got {text!r}") from None
    return h, w


def _parse_dwell(text: str) -> tuple[int, int]:
    from pipeline.types import ConfigError

    try:
        parts = [int(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--dwell must be MIN[,MAX] frames (e.g. 8,16), got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ConfigError(f"--dwell must be MIN[,MAX] frames (e.g. 8,16), got {text!r}")
    return parts[0], parts[1]


def main(args: argparse.Namespace) -> int:
    import collections
    import csv
    import time
    from pathlib import Path

    from models import synthetic as syn
    from pipeline.types import ConfigError

    if args.list_shifts:
        for name, what in syn.SHIFTS.items():
            print(f"{name:14s} {what}")
        print("severity: 1 (mild) .. 5 (severe), default 3")
        return 0
    if not args.out:
        raise ConfigError("--out DIR is required")
    shifts = syn.parse_shifts([part for spec in args.shift for part in spec.split("+")])
    classes = syn.CLASS_NAMES
    if args.classes:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    out = Path(args.out)
    t0 = time.perf_counter()
    if args.orientation:
        if args.stream or args.shift or args.classes:
            raise ConfigError("--orientation writes its own two classes, without shifts; drop --stream/--shift/--classes")
        manifest = syn.generate_orientation_dataset(out, args.n, args.seed, img_size=args.img_size,
                                                    progress=not args.quiet)
        print(f"wrote {args.n} orientation images ({args.img_size}x{args.img_size}, seed {args.seed}) to {out}/ in "
              f"{time.perf_counter() - t0:.1f}s\n  manifest: {manifest}")
        return 0
    if not args.stream:
        if args.phase:
            raise ConfigError("--phase needs --stream (datasets take --shift)")
        manifest = syn.generate_dataset(out, args.n, args.seed, img_size=args.img_size, shifts=shifts,
                                        classes=classes, progress=not args.quiet, camera=args.camera or "synthetic")
        dt = time.perf_counter() - t0
        with manifest.open() as f:
            rows = list(csv.DictReader(f))
        counts = collections.Counter(r["label"] for r in rows)
        mailers = sum(r["packaging"] == "poly_mailer" for r in rows)
        print(f"wrote {len(rows)} images ({args.img_size}x{args.img_size}, seed {args.seed}, "
              f"shift {syn.format_shifts(shifts)}) to {out}/ in {dt:.1f}s ({len(rows) / max(dt, 1e-9):.0f} img/s)")
        print("  per class: " + ", ".join(f"{c}={counts[c]}" for c in classes))
        if mailers:
            print(f"  poly mailers: {mailers}")
        print(f"  manifest: {manifest}")
        return 0

    if args.phase and args.shift:
        raise ConfigError("give either --shift (one phase) or --phase LENGTH=SHIFTS (several), not both")
    phases = args.phase or [(args.frames, shifts)]
    size = _parse_wxh(args.frame_size)
    dwell = _parse_dwell(args.dwell)
    target = out / (f"{args.name}.mp4" if args.fmt == "video" else args.name)
    manifest = syn.write_stream(target, args.frames, args.seed, phases=phases, size=size, fps=args.fps, dwell=dwell,
                                fmt=args.fmt, camera=args.camera or "cam0", classes=classes,
                                progress=not args.quiet)
    dt = time.perf_counter() - t0
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    print(f"wrote a {len(rows)}-frame stream ({size[1]}x{size[0]}, {args.fps:g} fps, seed {args.seed}) "
          f"to {target} in {dt:.1f}s ({len(rows) / max(dt, 1e-9):.0f} frames/s)")
    runs = []
    for r in rows:
        if runs and runs[-1][0] == r["shift"]:
            runs[-1][1] += 1
        else:
            runs.append([r["shift"], 1])
    for i, (shift, n) in enumerate(runs):
        print(f"  phase {i}: {n} frames, shift {shift}")
    counts = collections.Counter(r["label"] for r in rows)
    print("  frames per class: " + ", ".join(f"{c}={counts[c]}" for c in classes))
    print(f"  manifest: {manifest}")
    return 0
