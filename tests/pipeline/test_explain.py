"""pipeline.explain on real ONNX Runtime sessions.

The model that matters here is trained in this module (seconds): a small CNN that tells an empty belt, a parcel
and a foreign object apart on 64 px frames from :mod:`models.synthetic`, wrapped in the exported graph contract by
:mod:`models.export` (uint8 NHWC in, normalisation and calibrated softmax inside the graph) - the same path a
deployed model takes. Two more exports share its architecture with fresh random weights (the Adebayo et al. 2018
model-randomisation check). A hand-built linear graph (tests.helpers.onnx_models) covers the API's edges without
torch.

The foreign object's known region: :func:`models.synthetic.render` draws the belt before the object from the same
generator, so ``render("foreign_object", rng(s))`` and ``render("empty_belt", rng(s))`` share belt, rails and
lighting, and the pixels where they differ are the object (with its shadow).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.stats import spearmanr

from pipeline import explain as ex
from pipeline.explain import ExplainError, Explanation, explain_image, load_classifier, overlay, write_overlay
from tests.helpers.onnx_models import make_tiny_classifier

CLASSES = ["empty_belt", "parcel_ok", "foreign_object"]
SIZE = 64
FRAMES = range(100, 108)  # render seeds of the evaluation frames (training uses seed 0's generator)
MARGIN = 3  # px around the object counted as its region (~5% of the side: the maps' resolution, window 5 / stride 2)


def _net():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, len(CLASSES)),
    )


@dataclass
class Models:
    trained: Path
    randomised: list[Path]
    accuracy: float
    torch_model: object


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    import torch
    from torch import nn

    from models.export import ImageClassifier, export_onnx
    from models.synthetic import render
    from pipeline.modelcard import ModelCard

    root = tmp_path_factory.mktemp("explain_models")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 450
    x = torch.from_numpy(np.stack([cv2.cvtColor(render(CLASSES[i % 3], rng, size=(SIZE, SIZE)), cv2.COLOR_BGR2RGB)
                                   for i in range(n)]))
    y = torch.arange(n) % 3
    model = ImageClassifier(_net())
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is faster, and twice as fast on a busy 2-core machine
    try:
        for _ in range(8):
            perm = torch.randperm(n)
            for j in range(0, n, 50):
                b = perm[j:j + 50]
                loss = nn.functional.cross_entropy(model.logits(x[b]), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    card = ModelCard(class_names=CLASSES, input_size=[SIZE, SIZE], arch="tiny-cnn", name="tiny", version="1")
    trained = export_onnx(model, card, root / "trained.onnx").path
    randomised = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        randomised.append(export_onnx(ImageClassifier(_net()).eval(), card, root / f"random{seed}.onnx").path)
    clf = load_classifier(trained)
    test_rng = np.random.default_rng(99)
    xt = np.stack([render(CLASSES[i % 3], test_rng, size=(SIZE, SIZE)) for i in range(150)])
    accuracy = float((clf.predict(xt).argmax(1) == np.arange(150) % 3).mean())
    return Models(trained, randomised, accuracy, model)


def foreign_object_frame(seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> tuple[np.ndarray, np.ndarray]:
    """A foreign object on an otherwise empty belt (BGR) and the object's pixels (bool mask)."""
    from models.synthetic import render

    img = render("foreign_object", np.random.default_rng(seed), size=size)
    empty = render("empty_belt", np.random.default_rng(seed), size=size)
    return img, np.abs(img.astype(int) - empty.astype(int)).max(axis=2) > 25


def region(mask: np.ndarray, margin: int = MARGIN) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)).astype(bool)


def mass_share(saliency: np.ndarray, where: np.ndarray) -> float:
    return float((saliency * where).sum() / saliency.sum())


# --------------------------------------------------------------------------------------------------
# The Done-when checks
# --------------------------------------------------------------------------------------------------
def test_the_trained_model_learned_the_task(models):
    assert models.accuracy >= 0.9, f"test model accuracy {models.accuracy:.2f}: the saliency checks below need a model that works"


@pytest.mark.parametrize("method, floor", [("occlusion", 0.5), ("rise", 0.4)])
def test_saliency_mass_lies_on_the_foreign_object(models, method, floor):
    """Most of the map's mass lies on the object (plus a 3 px margin), far above the region's share of the frame.

    Measured (this module's seeds): occlusion ~0.85 of the mass on ~11% of the frame; RISE (8 x 8 cells: coarser
    than the object) ~0.6. The issue's bar, > 0.5, is asserted for occlusion, the default method.
    """
    clf = load_classifier(models.trained)
    shares, areas = [], []
    for seed in FRAMES:
        img, mask = foreign_object_frame(seed)
        e = explain_image(clf, img, target="foreign_object", method=method)
        assert e.predicted_index == CLASSES.index("foreign_object")
        where = region(mask)
        shares.append(mass_share(e.saliency, where))
        areas.append(float(where.mean()))
    mean_share, mean_area = float(np.mean(shares)), float(np.mean(areas))
    print(f"\n{method}: saliency mass on the object {mean_share:.3f} (per frame {np.round(shares, 2).tolist()}); "
          f"the region is {mean_area:.3f} of the frame")
    assert mean_share > floor
    assert all(s > 2 * a for s, a in zip(shares, areas)), (shares, areas)


def test_randomised_weights_give_a_different_map(models):
    """Adebayo et al. 2018, model randomisation: same architecture, random weights -> a different map.

    The trained model's occlusion map is reproducible (a fresh session, other batch sizes: rank correlation 1 up
    to float noise), while its rank correlation with the randomised models' maps stays low (measured ~0.2, at
    most ~0.4 on a frame). Threshold 0.5 on the mean: a method that ignored the weights (an edge or colour map of
    the frame) would score near 1 here, as Guided Backprop does in the paper.
    """
    trained = load_classifier(models.trained)
    again = load_classifier(str(models.trained))  # a second session
    randoms = [load_classifier(p) for p in models.randomised]
    stable, against_random = [], []
    for seed in FRAMES[:4]:
        img, _ = foreign_object_frame(seed)
        a = explain_image(trained, img, target="foreign_object").saliency
        b = explain_image(again, img, target="foreign_object", batch_size=7).saliency
        stable.append(spearmanr(a.ravel(), b.ravel())[0])
        for r in randoms:
            s = explain_image(r, img, target="foreign_object").saliency
            assert s.max() > 0, "a randomised model's map is empty: the comparison would be meaningless"
            against_random.append(spearmanr(a.ravel(), s.ravel())[0])
    print(f"\nrank correlation: trained vs trained {np.min(stable):.4f} (min); trained vs randomised "
          f"mean {np.mean(against_random):.3f}, max {np.max(against_random):.3f}")
    assert min(stable) > 0.999
    assert float(np.mean(against_random)) < 0.5


def test_occlusion_matches_captum_driving_the_same_session(models):
    """captum.attr.Occlusion with the ONNX Runtime session as forward_func gives the same attribution."""
    import captum.attr as captum_attr
    import torch

    clf = load_classifier(models.trained)
    img, _ = foreign_object_frame(FRAMES[0])
    idx = CLASSES.index("foreign_object")
    base = ex.make_baseline(img, "mean")
    ours, runs = ex.occlusion_attribution(lambda b: clf.predict(b)[:, idx], img, 6, 4, base, batch_size=32)

    def forward(x):
        return torch.from_numpy(clf.predict(x.numpy().round().clip(0, 255).astype(np.uint8)))

    theirs = captum_attr.Occlusion(forward).attribute(
        torch.from_numpy(img[None].astype(np.float32)), sliding_window_shapes=(6, 6, 3), strides=(4, 4, 3),
        baselines=torch.from_numpy(base[None].astype(np.float32)), target=idx, perturbations_per_eval=32,
    ).numpy()[0]
    assert runs == 1 + len(ex.window_starts(SIZE, 6, 4)) ** 2 == 1 + 16 ** 2
    np.testing.assert_allclose(theirs, np.repeat(ours[..., None], 3, axis=2), atol=1e-5)
    assert np.abs(ours).max() > 1e-3  # a real signal was compared, not two zero maps


def test_gradcam_from_the_checkpoint_agrees_with_the_export(models, tmp_path):
    """Grad-CAM runs on the torch weights with the card's preprocessing: its probabilities are the ONNX ones."""
    clf = load_classifier(models.trained)
    img, _ = foreign_object_frame(FRAMES[1], size=(96, 128))
    e = ex.explain_gradcam(models.torch_model, clf.card, img)
    onnx_probs = explain_image(clf, img).probs
    np.testing.assert_allclose(e.probs, onnx_probs, atol=2e-3)
    assert e.method == "gradcam" and e.target_class == "foreign_object"
    assert e.saliency.shape == (96, 128) and e.saliency.dtype == np.float32
    assert 0.0 <= e.saliency.min() and e.saliency.max() > 0.9  # 1 at the model's size, resized bilinearly
    e2 = ex.explain_gradcam(models.torch_model, clf.card, img, target="parcel_ok")
    assert e2.target_index == 1 and e2.probability == pytest.approx(float(onnx_probs[1]), abs=2e-3)


def test_explain_runs_the_demo_sized_model_in_batches(tmp_path):
    """The demo-sized model (mobilenet_v3_small at 96 x 96, random weights: same cost) on one 320 x 240 frame: the
    number of model runs each method makes (the time is printed, not asserted: timings belong in benchmarks)."""
    from models.export import ImageClassifier, build_backbone, export_onnx
    from pipeline.modelcard import ModelCard

    card = ModelCard(class_names=CLASSES, input_size=[96, 96], arch="mobilenet_v3_small")
    path = export_onnx(ImageClassifier(build_backbone("mobilenet_v3_small", 3)).eval(), card, tmp_path / "m.onnx").path
    clf = load_classifier(path)
    img, _ = foreign_object_frame(3, size=(240, 320))
    seconds, runs = {}, {}
    for method in ("occlusion", "rise"):
        t0 = time.perf_counter()
        e = explain_image(clf, img, method=method)
        seconds[method] = time.perf_counter() - t0
        runs[method] = e.meta.get("model_runs")
        assert e.saliency.shape == (240, 320)
    print(f"\none 320x240 frame, mobilenet_v3_small at 96 px: occlusion {seconds['occlusion']:.2f} s "
          f"({runs['occlusion']} runs), rise {seconds['rise']:.2f} s ({runs['rise']} runs)")
    assert runs == {"occlusion": 1 + 23 ** 2, "rise": 1001}  # window 8, stride 4 on 96 px; 1,000 masks + the frame


# --------------------------------------------------------------------------------------------------
# The API's edges (hand-built linear graph, no torch)
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def linear(tmp_path) -> Path:
    """Mean colour -> 2 classes: "red" when the frame's mean red channel exceeds 0.15 (tests.helpers.onnx_models)."""
    w = np.zeros((3, 2), np.float32)
    w[0] = [20.0, -20.0]  # RGB input: index 0 is red
    b = np.array([-3.0, 3.0], np.float32)
    return make_tiny_classifier(tmp_path / "lin.onnx", ["red", "other"], input_size=(32, 32), weights=w, bias=b)


def red_square(h: int = 120, w: int = 160) -> np.ndarray:
    """A red square on a dark grey belt: P(red) ~0.98; without the square P(red) ~0.2."""
    img = np.full((h, w, 3), 20, np.uint8)
    img[30:90, 40:100] = (0, 0, 255)  # BGR red
    return img


def test_explanation_of_a_frame_bigger_than_the_model(linear):
    clf = load_classifier(linear)
    img = red_square()
    e = explain_image(clf, img)
    assert isinstance(e, Explanation) and e.method == "occlusion"
    assert e.saliency.shape == (120, 160) and e.saliency.dtype == np.float32
    assert e.saliency.min() >= 0.0 and e.saliency.max() == pytest.approx(1.0)
    assert e.target_class == "red" and e.target_index == 0 and e.predicted_index == 0
    np.testing.assert_allclose(e.probs, clf.predict(cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA)[None])[0], atol=1e-6)
    assert e.meta["window"] == 3 and e.meta["stride"] == 1 and e.meta["model_runs"] == 1 + 30 ** 2
    # occluding the red square lowers P(red); occluding the belt raises it (the frame's mean colour is redder)
    inside, outside = e.saliency[35:85, 45:95].mean(), e.saliency[:, 110:].mean()
    assert inside > 0.3 and outside < 0.05, (inside, outside)


def test_targets_by_name_index_or_prediction(linear):
    clf = load_classifier(linear)
    img = red_square()
    assert explain_image(clf, img, target="other").target_index == 1
    assert explain_image(clf, img, target=1).target_class == "other"
    e = explain_image(clf, img, target="other", method="rise", n_masks=200)
    assert e.method == "rise" and e.meta["n_masks"] == 200 and e.meta["model_runs"] == 201
    # evidence *for* "other" is the grey belt: the red square holds little of it
    assert e.saliency[35:85, 45:95].mean() < e.saliency[:, 110:].mean()


@pytest.mark.parametrize("kw, message", [
    (dict(target="blue"), "target class 'blue' is not one of the model's classes: red, other"),
    (dict(target=5), "target index 5 outside the model's 2 classes"),
    (dict(method="lime"), "method must be one of occlusion, rise, got 'lime'"),
    (dict(window=40), "occlusion window must be in 1..32"),
    (dict(window=4, stride=5), "occlusion stride must be in 1..window (4), got 5"),
    (dict(baseline="noise"), "baseline must be 'mean', 'blur' or a grey level 0..255, got 'noise'"),
    (dict(baseline=300), "baseline grey level must be in 0..255, got 300"),
    (dict(method="rise", cells=1), "RISE cells must be in 2..32, got 1"),
    (dict(method="rise", p_keep=1.0), "RISE p_keep must be in (0, 1), got 1.0"),
    (dict(method="rise", n_masks=0), "RISE n_masks must be >= 1, got 0"),
])
def test_bad_parameters_say_what_was_expected(linear, kw, message):
    with pytest.raises(ExplainError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        explain_image(linear, red_square(), **kw)


@pytest.mark.parametrize("image", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), "frame.jpg"])
def test_bad_images_are_refused(linear, image):
    with pytest.raises(ExplainError, match=r"image must be a BGR uint8 \(H, W, 3\) array"):
        explain_image(linear, image)


def test_a_missing_model_file_names_the_file(tmp_path):
    from pipeline.types import ModelCardError

    with pytest.raises(ModelCardError, match="nope.onnx: no such ONNX file"):
        explain_image(tmp_path / "nope.onnx", red_square())


def test_explanations_never_ask_for_tensorrt():
    trt, cuda, cpu = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
    assert ex.explain_providers([trt, cuda, cpu], driver=True) == [cuda, cpu]
    assert ex.explain_providers([trt, cuda, cpu], driver=False) == [cpu]
    assert ex.explain_providers([cpu]) == [cpu]


def test_window_layout_is_captums():
    assert ex.window_starts(10, 4, 3) == [0, 3, 6]  # ceil(6 / 3) + 1 patches; the last one reaches the border
    assert ex.window_starts(10, 4, 4) == [0, 4, 8]  # ceil(6 / 4) + 1: the last patch is cut off (8..10)
    assert ex.window_starts(8, 8, 1) == [0]


def test_rise_masks_are_smooth_and_keep_the_asked_share():
    m = ex.rise_masks(400, (48, 64), cells=6, p_keep=0.3, rng=np.random.default_rng(0))
    assert m.shape == (400, 48, 64) and m.dtype == np.float32
    assert m.min() >= 0.0 and m.max() <= 1.0
    assert abs(float(m.mean()) - 0.3) < 0.02
    assert ((m > 0.05) & (m < 0.95)).mean() > 0.2  # bilinear, not binary


def test_to_unit_scales_and_handles_empty_maps():
    np.testing.assert_allclose(ex.to_unit(np.array([[-2.0, 0.0], [1.0, 4.0]]), positive_only=True), [[0, 0], [0.25, 1]])
    np.testing.assert_allclose(ex.to_unit(np.array([[-2.0, 0.0], [1.0, 2.0]]), positive_only=False), [[0, 0.5], [0.75, 1]])
    assert not ex.to_unit(np.full((2, 2), -1.0), positive_only=True).any()
    assert not ex.to_unit(np.full((2, 2), 3.0), positive_only=False).any()


def test_overlay_is_a_jet_blend_at_the_frame_size(tmp_path, linear):
    img = np.full((40, 60, 3), 100, np.uint8)
    sal = np.zeros((20, 30), np.float32)
    sal[:, 15:] = 1.0
    out = overlay(img, sal, alpha=1.0)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    b, _, r = out[20, 50].astype(int)
    assert r > 100 and b < 10  # jet at 1: dark red
    b, _, r = out[20, 5].astype(int)
    assert b > 100 and r < 10  # jet at 0: dark blue
    np.testing.assert_array_equal(overlay(img, sal, alpha=0.0), img)
    e = explain_image(linear, red_square())
    path = write_overlay(tmp_path / "sub" / "o.png", red_square(), e)
    back = cv2.imread(str(path))
    assert back.shape == (120, 160, 3)
    np.testing.assert_array_equal(back, overlay(red_square(), e.saliency))
    with pytest.raises(ExplainError, match="o.jpg: overlays are written as PNG"):
        write_overlay(tmp_path / "o.jpg", red_square(), e)
    with pytest.raises(ExplainError, match=r"overlay alpha must be in \[0, 1\], got 2"):
        overlay(img, sal, alpha=2)


def test_explanation_validates_its_map():
    with pytest.raises(ValueError, match="saliency must be finite and in"):
        Explanation(np.full((2, 2), 2.0), "a", 0, np.array([1.0]), "occlusion")
    with pytest.raises(ValueError, match="target_index 3 outside probs"):
        Explanation(np.zeros((2, 2)), "a", 3, np.array([1.0]), "occlusion")
