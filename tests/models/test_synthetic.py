"""Synthetic conveyor data: determinism, balance, manifests, shifts (change + monotone severity),
poly mailers, streams (video read back, folder), phase/shift parsing, and the ``shadowcam synth`` CLI."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from models import synthetic as syn
from models.synthetic import (
    CLASS_NAMES,
    DATASET_COLUMNS,
    SHIFTS,
    STREAM_COLUMNS,
    Shift,
    apply_shift,
    generate_dataset,
    iter_stream,
    parse_phases,
    parse_shift,
    parse_shifts,
    render,
    write_stream,
)
from pipeline.imagestats import image_stats_batch
from pipeline.types import ConfigError

REPO = Path(__file__).resolve().parents[2]
PIXEL_SHIFTS = [s for s in SHIFTS if s != "new_packaging"]


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# ---- render ------------------------------------------------------------------------------------

def test_class_names_are_the_label_order():
    assert CLASS_NAMES == ["empty_belt", "parcel_ok", "parcel_damaged", "parcel_open_flap", "label_missing",
                           "foreign_object"]
    assert set(SHIFTS) == {"night", "motion_blur", "defocus", "glare", "lens_dirt", "jpeg", "camera_tilt",
                           "new_packaging"}


@pytest.mark.parametrize("packaging", ["box", "poly_mailer"])
@pytest.mark.parametrize("cls", CLASS_NAMES)
def test_render_is_deterministic_per_seed(cls, packaging):
    a = render(cls, np.random.default_rng(7), (72, 96), packaging=packaging)
    b = render(cls, np.random.default_rng(7), (72, 96), packaging=packaging)
    c = render(cls, np.random.default_rng(8), (72, 96), packaging=packaging)
    assert a.dtype == np.uint8 and a.shape == (72, 96, 3)
    assert a.tobytes() == b.tobytes()
    assert np.abs(a.astype(int) - c).mean() > 1.0


def test_render_non_parcel_classes_ignore_packaging():
    for cls in ("empty_belt", "foreign_object"):
        a = render(cls, np.random.default_rng(3), (64, 64), packaging="box")
        b = render(cls, np.random.default_rng(3), (64, 64), packaging="poly_mailer")
        assert a.tobytes() == b.tobytes()


def test_render_objects_differ_from_empty_belt():
    """Each object class puts something visible on the belt: it differs from the empty belt of the same scene."""
    for cls in CLASS_NAMES[1:]:
        diffs = []
        for i in range(6):
            rng_e, rng_o = np.random.default_rng(i), np.random.default_rng(i)
            empty = render("empty_belt", rng_e, (96, 96)).astype(int)
            obj = render(cls, rng_o, (96, 96)).astype(int)
            diffs.append(np.abs(obj - empty).mean())
        assert np.mean(diffs) > 3.0, cls


@pytest.mark.parametrize("kwargs, match", [
    ({"cls": "parcel"}, "unknown class 'parcel'"),
    ({"cls": "parcel_ok", "packaging": "crate"}, "unknown packaging 'crate'"),
    ({"cls": "parcel_ok", "size": (8, 8)}, "at least 16x16"),
    ({"cls": "parcel_ok", "size": 96}, r"size must be \(height, width\)"),
])
def test_render_rejects_bad_input(kwargs, match):
    kwargs = {"rng": np.random.default_rng(0), **kwargs}
    with pytest.raises(ConfigError, match=match):
        render(**kwargs)


def test_poly_mailers_have_different_colour_statistics_than_boxes():
    """Boxes are cardboard-orange; mailers are coloured, shiny plastic."""
    def stats(packaging):
        card, other = [], []
        for i in range(24):
            hsv = cv2.cvtColor(render("parcel_ok", np.random.default_rng(i), (96, 96), packaging=packaging),
                               cv2.COLOR_BGR2HSV).astype(int)
            h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
            is_card_hue = (h >= 5) & (h <= 25)
            card.append((is_card_hue & (s >= 60) & (v >= 100)).mean())
            other.append(((s >= 80) & ~is_card_hue).mean())
        return float(np.mean(card)), float(np.mean(other))

    box_card, box_other = stats("box")
    mailer_card, mailer_other = stats("poly_mailer")
    assert box_card > 2 * mailer_card
    assert mailer_other > 3 * box_other


# ---- shifts ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_images() -> list[np.ndarray]:
    return [render(CLASS_NAMES[i % 6], np.random.default_rng(100 + i), (96, 96)) for i in range(8)]


@pytest.mark.parametrize("name", PIXEL_SHIFTS)
def test_every_pixel_shift_changes_images_and_severity_is_monotone(name, clean_images):
    """Mean absolute difference from the clean image grows strictly with severity (same random draws)."""
    mad = []
    for sev in range(1, 6):
        d = [np.abs(apply_shift(im, f"{name}:{sev}", np.random.default_rng(k)).astype(int) - im).mean()
             for k, im in enumerate(clean_images)]
        mad.append(float(np.mean(d)))
    assert mad[0] > 1.0, (name, mad)
    assert all(b > a for a, b in zip(mad, mad[1:])), (name, mad)


@pytest.mark.parametrize("name, stat, direction", [
    ("night", "brightness", -1),
    ("night", "noise", +1),
    ("motion_blur", "sharpness", -1),
    ("defocus", "sharpness", -1),
    ("glare", "brightness", +1),
])
def test_shift_moves_its_image_statistic_monotonically(name, stat, direction, clean_images):
    vals = []
    for sev in range(1, 6):
        batch = np.stack([apply_shift(im, Shift(name, sev), np.random.default_rng(k))
                          for k, im in enumerate(clean_images)])
        vals.append(float(image_stats_batch(batch)[stat].mean()))
    clean = float(image_stats_batch(np.stack(clean_images))[stat].mean())
    seq = [clean] + vals
    assert all(direction * (b - a) > 0 for a, b in zip(seq, seq[1:])), (name, stat, seq)


def test_apply_shift_is_deterministic_and_new_packaging_leaves_pixels(clean_images):
    im = clean_images[1]
    for name in PIXEL_SHIFTS:
        a = apply_shift(im, f"{name}:3", np.random.default_rng(5))
        b = apply_shift(im, f"{name}:3", np.random.default_rng(5))
        assert a.tobytes() == b.tobytes(), name
        assert a.shape == im.shape and a.dtype == np.uint8
    same = apply_shift(im, "new_packaging:5", np.random.default_rng(0))
    assert same.tobytes() == im.tobytes() and same is not im


def test_scene_seed_fixes_camera_bound_shifts(clean_images):
    """Dirt, lamp and tilt belong to the camera: with a scene seed they do not change between frames."""
    im = clean_images[2]
    for name in ("lens_dirt", "glare", "camera_tilt"):
        a = apply_shift(im, f"{name}:3", np.random.default_rng(1), scene_seed=42)
        b = apply_shift(im, f"{name}:3", np.random.default_rng(2), scene_seed=42)
        c = apply_shift(im, f"{name}:3", np.random.default_rng(1), scene_seed=43)
        assert a.tobytes() == b.tobytes(), name
        assert a.tobytes() != c.tobytes(), name


@pytest.mark.parametrize("spec, expected", [
    ("night", Shift("night", 3)),
    ("night:1", Shift("night", 1)),
    ("MOTION_BLUR:5", Shift("motion_blur", 5)),
    (" jpeg : 2 ", Shift("jpeg", 2)),
    ("new_packaging", Shift("new_packaging", 3)),
    (Shift("glare", 4), Shift("glare", 4)),
    ("nigth:3", ConfigError),
    ("night:0", ConfigError),
    ("night:6", ConfigError),
    ("night:x", ConfigError),
    ("night:3.5", ConfigError),
    ("night:-1", ConfigError),
    ("night:3:2", ConfigError),
    ("", ConfigError),
    (":3", ConfigError),
    (3, ConfigError),
])
def test_parse_shift(spec, expected):
    if expected is ConfigError:
        with pytest.raises(ConfigError) as e:
            parse_shift(spec)
        msg = str(e.value)
        assert "\n" not in msg and ("expected one of" in msg or "severity must be an integer 1-5" in msg
                                    or "NAME[:SEVERITY]" in msg)
    else:
        assert parse_shift(spec) == expected


def test_shift_constructor_validates():
    with pytest.raises(ConfigError, match="unknown shift"):
        Shift("fog", 2)
    with pytest.raises(ConfigError, match="severity"):
        Shift("night", 9)
    assert str(Shift("night", 2)) == "night:2"


@pytest.mark.parametrize("specs, expected", [
    (None, []),
    ("none", []),
    ("night:3+motion_blur:2", ["motion_blur:2", "night:3"]),
    (["new_packaging", "jpeg:1", "camera_tilt:4"], ["new_packaging:3", "camera_tilt:4", "jpeg:1"]),
    ("night:3+night:2", ConfigError),
    ("night+fog", ConfigError),
])
def test_parse_shifts(specs, expected):
    if expected is ConfigError:
        with pytest.raises(ConfigError):
            parse_shifts(specs)
    else:
        assert [str(s) for s in parse_shifts(specs)] == expected


@pytest.mark.parametrize("phases, n, expected", [
    (None, 10, [(10, "none")]),
    ([(0.5, []), (0.5, ["night:3"])], 10, [(5, "none"), (5, "night:3")]),
    ([(4, "none"), (3, "night:3+motion_blur:3")], 10, [(4, "none"), (6, "motion_blur:3+night:3")]),
    (["0.3=none", "0.3=glare:2", "0.4=night:3+motion_blur:3+new_packaging"], 10,
     [(3, "none"), (3, "glare:2"), (4, "new_packaging:3+motion_blur:3+night:3")]),
    ([(8, []), (5, ["night"])], 10, ConfigError),  # more frames than the stream has
    (["5:night"], 10, ConfigError),  # no '='
    (["x=none"], 10, ConfigError),
    ([(0, [])], 10, ConfigError),
    ([(1.5, [])], 10, ConfigError),
    ([(5, ["fog"])], 10, ConfigError),
])
def test_parse_phases(phases, n, expected):
    if expected is ConfigError:
        with pytest.raises(ConfigError):
            parse_phases(phases, n)
    else:
        got = parse_phases(phases, n)
        assert [(p.n_frames, syn.format_shifts(p.shifts)) for p in got] == expected
        assert sum(p.n_frames for p in got) == n


# ---- datasets ----------------------------------------------------------------------------------

def test_generate_dataset_balanced_manifest_and_deterministic(tmp_path):
    m = generate_dataset(tmp_path / "a", 62, seed=3, img_size=48, progress=False)
    cols, rows = _read_csv(m)
    assert m == tmp_path / "a" / "manifest.csv"
    assert tuple(cols) == DATASET_COLUMNS
    assert cols[:5] == ["path", "label", "camera", "shift", "severity"]
    assert len(rows) == 62
    counts = {c: sum(r["label"] == c for r in rows) for c in CLASS_NAMES}
    assert max(counts.values()) - min(counts.values()) <= 1 and sum(counts.values()) == 62
    for r in rows:
        p = tmp_path / "a" / r["path"]
        assert not Path(r["path"]).is_absolute() and p.parent.name == r["label"]
        assert r["shift"] == "none" and r["severity"] == "0" and r["camera"] == "synthetic"
    img = cv2.imread(str(tmp_path / "a" / rows[0]["path"]))
    assert img.shape == (48, 48, 3)
    jpgs = sorted((tmp_path / "a").rglob("*.jpg"))
    assert len(jpgs) == 62
    # same seed -> identical bytes; another seed -> different
    generate_dataset(tmp_path / "b", 62, seed=3, img_size=48, progress=False)
    generate_dataset(tmp_path / "c", 62, seed=4, img_size=48, progress=False)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_generate_dataset_shifts_are_recorded_and_paired(tmp_path):
    clean = generate_dataset(tmp_path / "clean", 12, seed=5, img_size=64, progress=False)
    night = generate_dataset(tmp_path / "night", 12, seed=5, img_size=64, progress=False,
                             shifts=["motion_blur:2", "night:4"])
    _, rc = _read_csv(clean)
    _, rn = _read_csv(night)
    assert {r["shift"] for r in rn} == {"motion_blur:2+night:4"} and {r["severity"] for r in rn} == {"4"}
    assert [r["path"] for r in rc] == [r["path"] for r in rn]
    bc = [cv2.imread(str(tmp_path / "clean" / r["path"])).mean() for r in rc]
    bn = [cv2.imread(str(tmp_path / "night" / r["path"])).mean() for r in rn]
    assert all(n < c for n, c in zip(bn, bc))  # the same scenes, darker


def test_generate_dataset_new_packaging_renders_mailers(tmp_path):
    m = generate_dataset(tmp_path / "np", 24, seed=1, img_size=48, progress=False, shifts=["new_packaging:5"])
    _, rows = _read_csv(m)
    for r in rows:
        if r["label"] in syn.PARCEL_CLASSES:
            assert r["packaging"] == "poly_mailer"
        else:
            assert r["packaging"] == "none"
    m3 = generate_dataset(tmp_path / "np3", 120, seed=1, img_size=32, progress=False, shifts=["new_packaging"])
    _, rows3 = _read_csv(m3)
    parcels = [r for r in rows3 if r["label"] in syn.PARCEL_CLASSES]
    share = np.mean([r["packaging"] == "poly_mailer" for r in parcels])
    assert 0.3 < share < 0.7  # severity 3: half of the parcels


def test_generate_dataset_class_subset_and_errors(tmp_path):
    m = generate_dataset(tmp_path / "sub", 10, seed=0, img_size=32, classes=["parcel_ok", "label_missing"],
                         progress=False)
    _, rows = _read_csv(m)
    assert sorted({r["label"] for r in rows}) == ["label_missing", "parcel_ok"]
    with pytest.raises(ConfigError, match="unknown class 'box'"):
        generate_dataset(tmp_path / "bad", 10, seed=0, classes=["box"], progress=False)
    with pytest.raises(ConfigError, match="n must be a positive integer"):
        generate_dataset(tmp_path / "bad", 0, seed=0, progress=False)
    with pytest.raises(ConfigError, match="unknown shift"):
        generate_dataset(tmp_path / "bad", 10, seed=0, shifts=["rain:2"], progress=False)


# ---- streams -----------------------------------------------------------------------------------

def _count_video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    n = 0
    while True:
        ok, _ = cap.read()
        if not ok:
            break
        n += 1
    cap.release()
    return n


def test_write_stream_video_frames_and_manifest(tmp_path):
    out = tmp_path / "cam" / "feed.mp4"
    m = write_stream(out, 30, seed=4, phases=[(0.5, []), (0.5, ["night:3"])], size=(96, 128), fps=5,
                     dwell=(4, 6), progress=False)
    assert m == out.with_suffix(".csv")
    assert _count_video_frames(out) == 30
    cols, rows = _read_csv(m)
    assert tuple(cols) == STREAM_COLUMNS
    assert cols[:7] == ["source_ref", "label", "camera", "shift", "severity", "frame_index", "t"]
    assert len(rows) == 30
    assert [int(r["frame_index"]) for r in rows] == list(range(30))
    assert all(r["source_ref"] == f"{out.resolve()}#{i}" for i, r in enumerate(rows))
    assert [float(r["t"]) for r in rows[:3]] == [0.0, 0.2, 0.4]
    assert [r["shift"] for r in rows] == ["none"] * 15 + ["night:3"] * 15
    assert [r["severity"] for r in rows] == ["0"] * 15 + ["3"] * 15
    assert {r["camera"] for r in rows} == {"cam0"}
    # items stay in view for dwell consecutive frames (runs of labels are at most 6 long unless repeated)
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    bright = [f.mean() for f in frames]
    assert np.mean(bright[15:]) < 0.7 * np.mean(bright[:15])


def test_stream_consecutive_frames_are_correlated():
    frames = list(iter_stream(24, seed=1, size=(96, 128), dwell=(6, 6)))
    assert [f.slot for f in frames] == [i // 6 for i in range(24)]
    assert all(f.label == frames[(f.frame_index // 6) * 6].label for f in frames)
    imgs = [f.image.astype(int) for f in frames]
    within = np.mean([np.abs(imgs[i + 1] - imgs[i]).mean() for i in range(23) if (i + 1) % 6])
    across = np.mean([np.abs(imgs[j] - imgs[i]).mean() for i in range(0, 24, 6) for j in range(0, 24, 6) if i < j])
    assert within < across


def test_iter_stream_deterministic():
    a = [f.image.tobytes() for f in iter_stream(10, seed=2, size=(64, 80), phases=["1.0=motion_blur:2"])]
    b = [f.image.tobytes() for f in iter_stream(10, seed=2, size=(64, 80), phases=["1.0=motion_blur:2"])]
    c = [f.image.tobytes() for f in iter_stream(10, seed=3, size=(64, 80), phases=["1.0=motion_blur:2"])]
    assert a == b and a != c


def test_scene_seed_keeps_the_camera_and_changes_the_items():
    """Two streams with one scene_seed are one camera at two times: same belt and rails, other parcels."""
    def run(seed, scene_seed=None):
        return list(iter_stream(12, seed=seed, size=(96, 128), dwell=(3, 3), scene_seed=scene_seed))

    a, b, c = run(1, scene_seed=9), run(2, scene_seed=9), run(2)
    rails = slice(0, 3)  # the top rail rows: static per camera, never covered by parcels (they ride mid-belt)
    for fa, fb, fc in zip(a, b, c):
        assert np.array_equal(fa.image[rails], fb.image[rails])
        assert not np.array_equal(fb.image[rails], fc.image[rails])
    assert [f.label for f in a] != [f.label for f in b] or any(not np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [f.image.tobytes() for f in run(2, scene_seed=2)] == [f.image.tobytes() for f in c]  # default: scene_seed = seed


def test_stream_new_packaging_phase_brings_mailers():
    frames = list(iter_stream(120, seed=0, size=(48, 64), dwell=(2, 3),
                              phases=[(0.5, []), (0.5, ["new_packaging:5"])]))
    first = {f.packaging for f in frames[:60]}
    second = [f.packaging for f in frames[60:] if f.label in syn.PARCEL_CLASSES]
    assert "poly_mailer" not in first
    assert second and all(p == "poly_mailer" for p in second[3:])  # the item straddling the boundary may be a box


def test_write_stream_folder(tmp_path):
    out = tmp_path / "frames"
    m = write_stream(out, 12, seed=0, size=(64, 80), fmt="folder", camera="dock3", progress=False)
    assert m == tmp_path / "frames.csv"
    files = sorted(out.glob("*.jpg"))
    assert [f.name for f in files] == [f"frame_{i:06d}.jpg" for i in range(12)]
    _, rows = _read_csv(m)
    assert [r["source_ref"] for r in rows] == [str(f.resolve()) for f in files]
    assert {r["camera"] for r in rows} == {"dock3"}
    assert cv2.imread(rows[0]["source_ref"]).shape == (64, 80, 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"fmt": "gif"}, "fmt must be"),
    ({"dwell": (5, 2)}, "dwell"),
    ({"fps": 0}, "fps must be positive"),
    ({"phases": ["0.5=fog"]}, "unknown shift"),
    ({"n_frames": 0}, "n_frames"),
])
def test_write_stream_rejects_bad_input(tmp_path, kwargs, match):
    args = {"out_path": tmp_path / "s.mp4", "n_frames": 5, "seed": 0, "size": (48, 64), "progress": False, **kwargs}
    with pytest.raises(ConfigError, match=match):
        write_stream(**args)
    assert not (tmp_path / "s.mp4").exists()


def test_write_stream_video_needs_mp4_suffix(tmp_path):
    with pytest.raises(ConfigError, match=r"\.mp4"):
        write_stream(tmp_path / "s.avi", 5, seed=0, size=(48, 64), progress=False)


# ---- CLI ---------------------------------------------------------------------------------------

def test_cli_synth_dataset(tmp_path, capsys):
    from pipeline.cli import main

    rc = main(["synth", "--out", str(tmp_path / "d"), "--n", "12", "--seed", "1", "--img-size", "40",
               "--shift", "night:2", "--shift", "jpeg:1+new_packaging", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "wrote 12 images" in out and "manifest.csv" in out
    _, rows = _read_csv(tmp_path / "d" / "manifest.csv")
    assert len(rows) == 12 and {r["shift"] for r in rows} == {"new_packaging:3+night:2+jpeg:1"}
    assert cv2.imread(str(tmp_path / "d" / rows[0]["path"])).shape == (40, 40, 3)


def test_cli_synth_stream(tmp_path, capsys):
    from pipeline.cli import main

    rc = main(["synth", "--out", str(tmp_path / "s"), "--stream", "--frames", "16", "--frame-size", "96x72",
               "--phase", "8=none", "--phase", "8=night:3+motion_blur:3", "--dwell", "4", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "16-frame stream" in out and "phase 1: 8 frames, shift motion_blur:3+night:3" in out
    assert _count_video_frames(tmp_path / "s" / "stream.mp4") == 16
    _, rows = _read_csv(tmp_path / "s" / "stream.csv")
    assert len(rows) == 16


@pytest.mark.parametrize("argv, match", [
    (["--shift", "nigth:3"], "unknown shift 'nigth'"),
    (["--shift", "night:9"], "severity must be an integer 1-5"),
    (["--stream", "--phase", "0.5=night", "--shift", "jpeg"], "either --shift"),
    (["--phase", "0.5=night"], "--phase needs --stream"),
    (["--stream", "--frame-size", "640by480"], "--frame-size"),
])
def test_cli_synth_bad_input_gives_one_line_error(tmp_path, capsys, argv, match):
    from pipeline.cli import main

    rc = main(["synth", "--out", str(tmp_path / "x"), "--quiet", *argv])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shadowcam synth: error:") and match in err and "\n" not in err


def test_cli_list_shifts_and_light_imports():
    """The console script lists shifts; importing the generator pulls in neither torch nor albumentations."""
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "synth", "--list-shifts"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "new_packaging" in r.stdout and "night" in r.stdout
    code = ("import sys, models.synthetic, pipeline.commands.synth; "
            "print(sorted(m for m in ('torch', 'albumentations', 'mlflow') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_orientation_dataset_is_balanced_seeded_and_a_users_dataset(tmp_path):
    """Orientation decides the class: the two classes differ only in the arrow's direction, so mirroring an image
    makes it look like the other class; the manifest is path,label (augment auto -> generic)."""
    import csv

    import cv2
    import numpy as np

    from models.augment import resolve_policy
    from models.synthetic import ORIENTATION_CLASSES, draw_arrow_label, generate_orientation_dataset

    m = generate_orientation_dataset(tmp_path / "a", 10, seed=3, img_size=48, progress=False)
    rows = list(csv.DictReader(m.open()))
    assert list(rows[0]) == ["path", "label"] and [r["label"] for r in rows].count("arrow_left") == 5
    assert {r["label"] for r in rows} == set(ORIENTATION_CLASSES)
    again = generate_orientation_dataset(tmp_path / "b", 10, seed=3, img_size=48, progress=False)
    assert all((m.parent / r["path"]).read_bytes() == (again.parent / r["path"]).read_bytes() for r in rows)
    assert resolve_policy("auto", [str(tmp_path / "a")]) == "generic"
    # the arrow alone, with the same draws (place, size, tilt, colours): the two directions are different pictures
    blank = np.full((64, 64, 3), 90, np.uint8)
    left = draw_arrow_label(blank.copy(), np.random.default_rng(0), "left")
    right = draw_arrow_label(blank.copy(), np.random.default_rng(0), "right")
    diff = np.abs(left.astype(int) - right).max(axis=2)
    assert (diff > 100).sum() >= 30 and np.array_equal(left[0], right[0])  # the arrow differs, the rest does not
    with pytest.raises(ConfigError, match="pointing must be 'left' or 'right'"):
        draw_arrow_label(blank, np.random.default_rng(0), "up")
    assert cv2.imread(str(m.parent / rows[0]["path"])).shape == (48, 48, 3)
