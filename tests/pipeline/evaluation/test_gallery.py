"""The error gallery on a real SQLite prediction store filled with known errors, overlays through ONNX Runtime.

Store (run ``r1``, classes box/pallet/empty; every frame sampled, its JPEG on disk, labelled by ``ann1``):

* incumbent errors box -> pallet on f0..f4 with confidences 0.90, 0.85, 0.80, 0.70, 0.60; f1's JPEG is deleted;
* incumbent errors pallet -> empty on f5, f6 (0.95, 0.50); empty -> box on f7 (0.99);
* f8: an empty -> box answer that is degraded (stale: the fallback's, not the model's) - not an error;
* f9: labels box and pallet by two annotators (a tie: no truth); f10: labelled unsure only; both wrong otherwise;
* f11..f13: right answers; f14: never labelled, wrong.
* shadow: right everywhere except f11 (box -> empty, 0.7).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.evaluation.gallery import GalleryItem, build_error_gallery, find_errors, gallery_html
from pipeline.store import PROBS_MAX_ABS_ERROR, FrameRecord, PredictionStore, SampleRecord
from pipeline.types import ConfigError, Label, Prediction
from tests.helpers.onnx_models import make_tiny_classifier

CLASSES = ["box", "pallet", "empty"]
RUN = "r1"
T0 = 1_700_000_000.0
# frame -> (truth labels, incumbent (label, confidence, degraded))
INCUMBENT = {
    0: (["box"], ("pallet", 0.90, None)), 1: (["box"], ("pallet", 0.85, None)), 2: (["box"], ("pallet", 0.80, None)),
    3: (["box"], ("pallet", 0.70, None)), 4: (["box"], ("pallet", 0.60, None)),
    5: (["pallet"], ("empty", 0.95, None)), 6: (["pallet"], ("empty", 0.50, None)),
    7: (["empty"], ("box", 0.99, None)),
    8: (["empty"], ("box", 1.0, "stale")),
    9: (["box", "pallet"], ("empty", 0.9, None)),
    10: (["unsure"], ("empty", 0.9, None)),
    11: (["box"], ("box", 0.8, None)), 12: (["pallet"], ("pallet", 0.8, None)), 13: (["empty"], ("empty", 0.8, None)),
    14: ([], ("box", 0.9, None)),
}


def _probs(label: str, conf: float) -> np.ndarray:
    p = np.full(3, (1.0 - conf) / 2, np.float32)
    p[CLASSES.index(label)] = conf
    return p


def fid(i: int) -> str:
    return f"{RUN}:cam{i % 2}:{i}"


@pytest.fixture
def filled(tmp_path) -> tuple[PredictionStore, Path, Path]:
    """(store, model, folder of the JPEGs)."""
    model = make_tiny_classifier(tmp_path / "inc.onnx", CLASSES, input_size=(32, 32), seed=3)
    images = tmp_path / "samples"
    images.mkdir()
    store = PredictionStore(str(tmp_path / "shadowcam.db"))
    store.begin_run(RUN, "inc:1", "sh:1", CLASSES, {})
    frames, preds, samples, labels = [], [], [], []
    rng = np.random.default_rng(0)
    for i, (labs, (plabel, conf, degraded)) in INCUMBENT.items():
        cam = f"cam{i % 2}"
        img = np.full((48, 64, 3), rng.integers(0, 255, 3), np.uint8)
        cv2.rectangle(img, (10 + i, 10), (30 + i, 30), (255, 255, 255), -1)
        path = images / f"{i}.jpg"
        cv2.imwrite(str(path), img)
        frames.append(FrameRecord(fid(i), RUN, cam, i, T0 + i, f"src#{i}", 64, 48))
        preds.append(Prediction(fid(i), cam, "incumbent", "inc:1", _probs(plabel, conf), plabel, 1.0, degraded))
        slabel = "empty" if i == 11 else (labs[0] if labs and labs[0] in CLASSES else "box")
        preds.append(Prediction(fid(i), cam, "shadow", "sh:1", _probs(slabel, 0.7), slabel, 1.0))
        samples.append(SampleRecord(fid(i), cam, "uniform", 0.5, str(path), T0 + i))
        labels += [Label(fid(i), lab, f"ann{k + 1}", T0 + 100 + i, "import") for k, lab in enumerate(labs)]
    store.write_batch(frames, preds, (), samples)
    store.add_labels(labels)
    (images / "1.jpg").unlink()  # f1's JPEG is gone
    yield store, model, images
    store.close()


def test_pairs_are_ordered_by_errors_and_items_by_confidence(filled, tmp_path):
    store, model, _ = filled
    out = tmp_path / "report" / "gallery"
    items = build_error_gallery(store, [RUN], model, out)
    got = [(it.frame_id, it.true_class, it.predicted_class, it.confidence, it.pair_errors) for it in items]
    conf = lambda p: pytest.approx(p, abs=PROBS_MAX_ABS_ERROR)  # noqa: E731  (probabilities are stored as float16)
    assert got == [
        (fid(0), "box", "pallet", conf(0.90), 5),
        (fid(2), "box", "pallet", conf(0.80), 5),  # f1 (0.85) has no JPEG: the next one is shown
        (fid(3), "box", "pallet", conf(0.70), 5),
        (fid(5), "pallet", "empty", conf(0.95), 2),
        (fid(6), "pallet", "empty", conf(0.50), 2),
        (fid(7), "empty", "box", conf(0.99), 1),
    ]
    assert all(isinstance(it, GalleryItem) and it.role == "incumbent" for it in items)
    assert [it.camera_id for it in items] == ["cam0", "cam0", "cam1", "cam1", "cam0", "cam1"]
    for it in items:
        assert it.image.parent == out and it.image.suffix == ".png"
        png = cv2.imread(str(it.image))
        assert png is not None and png.shape == (48, 64, 3)
    assert len({it.image for it in items}) == len(items)


def test_limits_roles_and_given_truth(filled, tmp_path):
    store, model, _ = filled
    two = build_error_gallery(store, [RUN], model, tmp_path / "g1", per_pair=1, max_pairs=2)
    assert [(it.frame_id, it.true_class, it.predicted_class) for it in two] == [(fid(0), "box", "pallet"), (fid(5), "pallet", "empty")]
    shadow = build_error_gallery(store, [RUN], model, tmp_path / "g2", role="shadow")
    assert [(it.frame_id, it.role, it.true_class, it.predicted_class) for it in shadow] == [(fid(11), "shadow", "box", "empty")]
    # a given truth replaces the stored labels: f14 (never labelled) is not in the labelled frames, so it stays out
    given = build_error_gallery(store, [RUN], model, tmp_path / "g3", truth={fid(13): "box", fid(14): "pallet"})
    assert [(it.frame_id, it.true_class, it.predicted_class) for it in given] == [(fid(13), "box", "empty")]


def test_find_errors_applies_the_truth_rule(filled):
    store, _, _ = filled
    pairs = find_errors(store, [RUN], "incumbent", CLASSES)
    assert {k: [e.frame_id for e in v] for k, v in pairs.items()} == {
        ("box", "pallet"): [fid(i) for i in range(5)],
        ("pallet", "empty"): [fid(5), fid(6)],
        ("empty", "box"): [fid(7)],  # f8 is degraded; f9 tied, f10 unsure: no truth; f14 unlabelled
    }


def test_html_references_the_pngs_relative_to_the_report(filled, tmp_path):
    store, model, _ = filled
    report_dir = tmp_path / "report"
    items = build_error_gallery(store, [RUN], model, report_dir / "gallery", per_pair=2)
    doc = gallery_html(items, report_dir)
    assert doc.startswith('<section class="error-gallery">') and doc.endswith("</section>")
    srcs = re.findall(r'<img src="([^"]+)"', doc)
    assert srcs == [f"gallery/{it.image.name}" for it in items]
    assert all((report_dir / s).is_file() for s in srcs)
    assert doc.count("<figure>") == len(items) == 5
    assert doc.count('<div class="gallery-pair">') == 3
    assert "box → pallet" in doc and "(incumbent: 5 errors, 2 shown)" in doc and "(incumbent: 1 error, 1 shown)" in doc
    assert "at 90.0%" in doc and f"<code>{fid(0)}</code>" in doc
    inline = gallery_html(items[:1], report_dir, inline=True)
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', inline)


def test_html_escapes_and_says_when_there_is_nothing(tmp_path):
    item = GalleryItem("f<1>", "cam&1", "incumbent", "a<b", "c\"d", 0.5, tmp_path / "x.png", 1)
    doc = gallery_html([item], tmp_path)
    assert "f&lt;1&gt;" in doc and "cam&amp;1" in doc and "a&lt;b" in doc and "c&quot;d" in doc
    assert "<b>a<b" not in doc
    assert "No errors among the labelled frames" in gallery_html([], tmp_path)


@pytest.mark.parametrize("kw, message", [
    (dict(run_ids=["nope"]), "run id\\(s\\) not in store .*: nope \\(known: r1\\)"),
    (dict(role="judge"), "gallery role must be 'incumbent' or 'shadow', got 'judge'"),
    (dict(per_pair=0), "gallery per_pair and max_pairs must be >= 1, got 0 and 6"),
    (dict(run_ids=[]), "gallery needs at least one run id"),
])
def test_bad_arguments(filled, tmp_path, kw, message):
    store, model, _ = filled
    args = dict(store=store, run_ids=[RUN], model=model, out_dir=tmp_path / "g")
    args.update(kw)
    with pytest.raises(ConfigError, match=message):
        build_error_gallery(**args)


def test_evaluate_cli_puts_the_gallery_in_its_html_report(filled, tmp_path, caplog):
    """`shadowcam evaluate --html`: the error gallery is in the self-contained report (overlays embedded);
    --no-gallery leaves it out; without a model to explain (the run records none) it is left out with a warning."""
    from pipeline.cli import main

    store, model, _ = filled
    db = store.url.replace("sqlite:///", "")
    out = tmp_path / "r1.html"
    assert main(["evaluate", "--db", db, "--no-mlflow", "--workdir", str(tmp_path), "--html", str(out),
                 "--gallery-model", str(model)]) == 0
    html = out.read_text()
    section = html[html.index("<h2>Error gallery</h2>"):]
    assert section.count("data:image/png;base64,") == 6  # the six errors the fixture's pairs show
    out2 = tmp_path / "r2.html"
    assert main(["evaluate", "--db", db, "--no-mlflow", "--workdir", str(tmp_path), "--html", str(out2),
                 "--gallery-model", str(model), "--no-gallery"]) == 0
    assert "<h2>Error gallery</h2>" not in out2.read_text()
    out3 = tmp_path / "r3.html"
    with caplog.at_level("WARNING"):
        assert main(["evaluate", "--db", db, "--no-mlflow", "--workdir", str(tmp_path), "--html", str(out3)]) == 0
    assert "<h2>Error gallery</h2>" not in out3.read_text()
    assert "error gallery left out: the evaluated runs record no incumbent model" in caplog.text
