"""Fixtures: a small PredictionStore filled directly (frames, predictions, samples, JPEGs) plus a manifest."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.store import FrameRecord, PredictionStore, SampleRecord
from pipeline.types import Prediction, Role

CLASSES = ["box", "pallet", "empty"]
COLORS = {"box": (40, 110, 200), "pallet": (60, 160, 60), "empty": (90, 90, 90)}


@dataclass
class Filled:
    store: PredictionStore
    url: str
    frame_ids: list[str]
    truth: dict[str, str]  # frame_id -> true class
    manifest: Path
    root: Path


def draw(label: str, seed: int, size: tuple[int, int] = (240, 320)) -> np.ndarray:
    """A tiny conveyor scene: grey belt, a coloured object for the class, seeded noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.full((h, w, 3), 35, np.uint8)
    cv2.rectangle(img, (0, h // 3), (w, 2 * h // 3 + 30), (70, 70, 70), -1)
    if label == "box":
        cv2.rectangle(img, (w // 3, h // 3 - 10), (2 * w // 3, 2 * h // 3 + 10), COLORS[label], -1)
    elif label == "pallet":
        for k in range(3):
            cv2.rectangle(img, (w // 4, h // 2 - 20 + 18 * k), (3 * w // 4, h // 2 - 10 + 18 * k), COLORS[label], -1)
    noise = rng.integers(0, 12, img.shape, dtype=np.uint8)
    return cv2.add(img, noise)


def fill_store(
    root: Path, n: int = 6, double: tuple[int, ...] = (), classes: list[str] = CLASSES, seed: int = 0, url: str | None = None
) -> Filled:
    """A store with one run, ``n`` frames from two cameras, an incumbent prediction each, and all of
    them sampled (JPEG written) — in SQLite under ``root`` unless ``url`` names another store. Frame i is truly ``classes[i % len(classes)]``; ``double`` lists
    the indices flagged double_label. The manifest lists the source images with their labels."""
    root.mkdir(parents=True, exist_ok=True)
    url = url or f"sqlite:///{root / 'store.db'}"
    store = PredictionStore(url)
    store.begin_run("r1", "inc:1", "shadow:1", classes, {})
    src_dir, sample_dir = root / "src", root / "samples"
    src_dir.mkdir(exist_ok=True)
    sample_dir.mkdir(exist_ok=True)
    frecs, preds, srecs, truth, rows = [], [], [], {}, []
    for i in range(n):
        cam = f"cam{i % 2}"
        fid = f"r1:{cam}:{i}"
        lab = classes[i % len(classes)]
        img = draw(lab, seed * 1000 + i)
        src = src_dir / f"img_{i:03d}.png"
        cv2.imwrite(str(src), img)
        jpg = sample_dir / f"{fid.replace(':', '_')}.jpg"
        cv2.imwrite(str(jpg), img)
        frecs.append(FrameRecord(frame_id=fid, run_id="r1", camera_id=cam, seq=i, ts=1000.0 + i, source_ref=str(src.resolve()), width=320, height=240))
        probs = np.full(len(classes), 0.1 / (len(classes) - 1), np.float32)
        probs[(i + 1) % len(classes)] = 0.9  # the model is confidently wrong: a visible "prediction" would be obvious
        preds.append(Prediction(frame_id=fid, camera_id=cam, role=Role.INCUMBENT, model="inc:1", probs=probs, label=classes[(i + 1) % len(classes)]))
        srecs.append(SampleRecord(frame_id=fid, camera_id=cam, strategy="uniform", inclusion_prob=0.5, image_path=str(jpg), sampled_at=2000.0 + i, double_label=i in double))
        truth[fid] = lab
        rows.append({"path": f"src/{src.name}", "label": lab})
    store.write_batch(frame_records=frecs, preds=preds, sample_records=srecs)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows(rows)
    return Filled(store, url, [r.frame_id for r in frecs], truth, manifest, root)


@pytest.fixture
def filled(tmp_path: Path) -> Filled:
    f = fill_store(tmp_path / "w", n=6, double=(1,))
    yield f
    f.store.close()


# --- logging in (tokens live hashed in the store; the login form carries a CSRF nonce) ---------------------------------
def issue_tokens(store: PredictionStore, roles: dict[str, str]) -> dict[str, str]:
    """``{annotator: role}`` -> ``{annotator: token}``: a fresh generated token for each (rotating any earlier one)."""
    from pipeline.labeling.auth import issue_token

    return {name: issue_token(store, name, role, rotate=True).token for name, role in roles.items()}


def login_form_nonce(c) -> str:
    """GET /login and return the form's CSRF nonce (the cookie is kept by the client)."""
    import re

    html = c.get("/login").text
    return re.search(r'name="login_csrf" value="([^"]+)"', html).group(1)


def log_in(c, token: str):
    """Log ``c`` (a TestClient or httpx client) in with ``token`` as a browser would: the login form, then its POST."""
    return c.post("/login", data={"token": token, "login_csrf": login_form_nonce(c)})


def csrf_of(html: str) -> str:
    """The CSRF token a logged-in page's forms carry."""
    import re

    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def logged_in(app, token: str):
    """A TestClient logged in with ``token`` whose POSTs carry the session's CSRF token unless the test gives one."""
    from fastapi.testclient import TestClient

    class Client(TestClient):
        csrf = ""

        def post(self, url, *args, data=None, **kw):  # noqa: ANN001, ANN202
            if isinstance(data, dict) and "csrf_token" not in data and url != "/login":
                data = {**data, "csrf_token": self.csrf}
            return super().post(url, *args, data=data, **kw)

    c = Client(app)
    r = log_in(c, token)
    assert r.status_code == 200, r.text
    c.csrf = csrf_of(r.text)
    return c
