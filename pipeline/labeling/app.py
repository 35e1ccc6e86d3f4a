"""The labeling page: server-rendered HTML (FastAPI + Jinja2), no front-end build.

One frame at a time, large; one button per class (keys 1..9), plus ``unsure`` (u) and ``skip`` (s).
The flow is plain HTML forms with Post/Redirect/Get: ``GET /`` shows the next frame of the logged-in
annotator, ``POST /label`` stores the answer and redirects back to ``/``. A few lines of inline
JavaScript map keys to buttons; without JavaScript the buttons still work.

Who gets what is decided by :mod:`pipeline.labeling.queue`. On top of it the app keeps short
in-memory *leases* so that two annotators working at the same time are not shown the same frame
when it needs only one label (a lease expires after ``lease_s`` seconds, e.g. when someone walks
away; the frame then goes to the next annotator).

The predictions for the frame being labelled are never rendered unless the app was created with
``show_predictions=True``; then they sit collapsed behind a "reveal" toggle, so they do not anchor the annotator.

With a label target (``create_app(..., target=LabelTarget(...))``, ``shadowcam label serve --target 2pts@95``) the
page shows, above the frame, how far the target is from being met (one line per camera or for the model,
:mod:`pipeline.labeling.targets`); ``/api/progress`` returns the same statuses as JSON. The store is evaluated at
most every ``target_refresh_s`` seconds: the first page load evaluates, later ones read the cached statuses while a
background thread refreshes them once they are older than that.

**Explanations** (``explain=True``, the default; ``--no-explain`` turns them off). After an annotator answers a
frame, the next page shows that frame's saliency overlay - what the model looked at - beside the model's answer,
never before the answer (it must not anchor the label). ``GET /overlay?frame_id=...`` serves the PNG only to someone
who has labelled the frame, or - for a frame that needs no more labels - to a reviewer. The model is the incumbent
of the frame's run unless ``explain_model`` is given; overlays are computed lazily (prefetched when the answer is
stored) and cached under the samples' folder (:mod:`pipeline.labeling.overlays`).

**Review** (``GET /review``): the labelled frames where the label and a model disagree, with labels, prediction,
confidence and overlay (:mod:`pipeline.labeling.review`). Only ``reviewers`` may open it when that set is given,
else anyone logged in.

**Status** (``GET /status``, ``/api/status``): one page per deployment (model pair) for the people who decide:
accuracy, gap, cost per 1,000 frames and trend per camera and model, the current decision, open alerts and the
labels spent this week, in plain words (:mod:`pipeline.labeling.status`; evaluated at most every
``status_refresh_s`` seconds, in the background).

Auth: each annotator has a token (``tokens={token: annotator}``). Logging in sets an HttpOnly,
SameSite=Strict cookie naming the annotator, signed and timestamped with itsdangerous
(:class:`~itsdangerous.URLSafeTimedSerializer`); a cookie whose signature does not match, or that is
older than :data:`SESSION_MAX_AGE_S`, is no login. The signing key is random per process unless
``secret_key`` is given, so restarting the server logs everyone out.
"""

from __future__ import annotations

import logging
import mimetypes
import secrets
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from itsdangerous import BadData, URLSafeTimedSerializer

from pipeline.config import EvalConfig, LabelTarget
from pipeline.labeling import queue
from pipeline.labeling.overlays import OverlayError, OverlayMaker
from pipeline.labeling.review import disagreements
from pipeline.labeling.status import StatusBoard
from pipeline.store import PredictionStore, QueuedSample, StoredPrediction
from pipeline.types import UNSURE, ConfigError, Label, LabelImportError

log = logging.getLogger(__name__)

COOKIE = "shadowcam_annotator"
COOKIE_SALT = "shadowcam.labeling.annotator"  # itsdangerous salt: this key signs nothing else with this salt
SESSION_MAX_AGE_S = 7 * 24 * 3600  # the cookie's lifetime in the browser, and the oldest signature accepted
TEMPLATES = Path(__file__).parent / "templates"


def session_serializer(secret_key: str | bytes) -> URLSafeTimedSerializer:
    """The signer of the annotator cookie (HMAC with a key derived from ``secret_key`` and :data:`COOKIE_SALT`)."""
    return URLSafeTimedSerializer(secret_key, salt=COOKIE_SALT)


def _annotator_from_cookie(serializer: URLSafeTimedSerializer, value: str | None) -> str | None:
    """The annotator a cookie names, or None when it is missing, tampered with, signed with another key or expired."""
    if not value:
        return None
    try:
        name = serializer.loads(value, max_age=SESSION_MAX_AGE_S)
    except BadData:  # BadSignature, SignatureExpired (a BadSignature), BadPayload
        return None
    return name if isinstance(name, str) else None


class _Leases:
    """frame_id -> {annotator: expiry}: frames currently shown to someone (in memory, per process)."""

    def __init__(self, lease_s: float):
        self.lease_s = lease_s
        self._d: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for fid in list(self._d):
            held = {a: t for a, t in self._d[fid].items() if t > now}
            if held:
                self._d[fid] = held
            else:
                del self._d[fid]

    def held_by_others(self, annotator: str) -> dict[str, int]:
        """frame_id -> how many *other* annotators hold it now."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            return {fid: n for fid, held in self._d.items() if (n := sum(1 for a in held if a != annotator))}

    def mine(self, annotator: str) -> list[str]:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            return [fid for fid, held in self._d.items() if annotator in held]

    def take(self, frame_id: str, annotator: str) -> None:
        with self._lock:
            self._d.setdefault(frame_id, {})[annotator] = time.monotonic() + self.lease_s

    def release(self, frame_id: str, annotator: str) -> None:
        with self._lock:
            held = self._d.get(frame_id)
            if held:
                held.pop(annotator, None)
                if not held:
                    del self._d[frame_id]


class _TargetBoard:
    """The label target's statuses for the page: evaluated on first use, then at most every ``refresh_s`` seconds,
    in a background thread (a page load never waits for a re-evaluation, only for the very first one)."""

    def __init__(self, store: PredictionStore, target: LabelTarget, refresh_s: float, eval_config: EvalConfig | None):
        self.store, self.target, self.refresh_s, self.eval_config = store, target, refresh_s, eval_config
        self._lock = threading.Lock()  # guards the snapshot
        self._first = threading.Lock()  # one first evaluation at a time
        self._snapshot: dict | None = None
        self._at = 0.0  # time.monotonic() of the snapshot
        self._refreshing = False

    def _compute(self) -> None:
        from pipeline.labeling.targets import target_runs, target_status

        statuses, error = [], None
        try:
            runs = self.store.list_runs()
            if not runs:
                error = "no runs in the store yet"
            else:
                newest = runs[-1]
                run_ids = target_runs(runs, self.target, newest["incumbent_model"], newest["shadow_model"])
                statuses = [s.to_dict() for s in target_status(self.store, self.target, self.eval_config, run_ids)]
        except Exception as e:  # the page stays up; the reason is shown instead of the statuses
            log.warning("label target not evaluated: %s: %s", e.__class__.__name__, e)
            error = f"not evaluated ({e.__class__.__name__}: {e})"
        snap = dict(target=self.target.model_dump(mode="json"), statuses=statuses, error=error, computed_at=time.time(),
                    met=bool(statuses) and all(s["met"] for s in statuses))
        with self._lock:
            self._snapshot, self._at, self._refreshing = snap, time.monotonic(), False

    def get(self) -> dict:
        with self._lock:
            snap = self._snapshot
            stale = snap is not None and time.monotonic() - self._at >= self.refresh_s and not self._refreshing
            if stale:
                self._refreshing = True
        if snap is None:
            with self._first:
                if self._snapshot is None:
                    self._compute()
            with self._lock:
                return self._snapshot  # type: ignore[return-value]
        if stale:
            threading.Thread(target=self._compute, name="label-target-refresh", daemon=True).start()
        return snap


def create_app(
    store_url: str | PredictionStore,
    class_names: Sequence[str] | None = None,
    tokens: Mapping[str, str] | None = None,
    image_root: str | Path | None = None,
    show_predictions: bool = False,
    secret_key: str | bytes | None = None,
    lease_s: float = 300.0,
    target: LabelTarget | None = None,
    target_refresh_s: float = 30.0,
    target_eval: EvalConfig | None = None,
    explain: bool = True,
    explain_model: str | Path | None = None,
    explain_method: str = "occlusion",
    reviewers: Collection[str] | None = None,
    eval_config: EvalConfig | None = None,
    status_refresh_s: float = 60.0,
    status_window_s: float | None = None,
) -> FastAPI:
    """Build the labeling app.

    Args:
        store_url: the PredictionStore URL (or an open store).
        class_names: the label space; default: the class names of the newest run in the store.
        tokens: ``{token: annotator name}``; at least one.
        image_root: folder that relative ``samples.image_path`` values are resolved against (default:
            the current directory); when given, images outside it are refused.
        show_predictions: render the models' predictions behind a collapsed "reveal" toggle.
        secret_key: cookie signing key (default: random per process).
        lease_s: how long a frame shown to one annotator is held back from the others.
        target: a label target to show above the frame (and in ``/api/progress``): its statuses over the runs of
            the newest run's incumbent model (and shadow, for a ``decision`` target).
        target_refresh_s: the statuses are re-evaluated at most this often (in the background).
        target_eval: how the target's evaluation runs (model cards, workdir); its alpha is the target's level.
            Default: ``eval_config``.
        explain: show the model's saliency overlay of a frame after the annotator answered it (and in review).
        explain_model: explain every frame with this model (``.onnx`` or ``models:/``); default: the incumbent of
            the frame's run.
        explain_method: ``occlusion`` or ``rise`` (:func:`pipeline.explain.explain_image`).
        reviewers: annotators allowed into ``/review`` (and to overlays of frames they did not label); None or
            empty: everyone logged in.
        eval_config: how ``/status`` evaluates (costs, alpha, cards, baselines, price per device-hour); its
            ``workdir`` / ``cache_dir`` also resolve ``models:/`` URIs for overlays.
        status_refresh_s: ``/status`` figures are re-evaluated at most this often (in the background).
        status_window_s: the trend's window length; None: the deployment's time span / 8.

    Which samples need two annotators is decided by the sampler (``samples.double_label``).
    """
    store = store_url if isinstance(store_url, PredictionStore) else PredictionStore(store_url)
    classes = queue.label_space(store, class_names)
    tokens = dict(tokens or {})
    if not tokens:
        raise ConfigError("the labeling page needs at least one token (--token TOKEN:ANNOTATOR or --tokens-file FILE)")
    for tok, who in tokens.items():
        if not tok or not who:
            raise ConfigError(f"empty token or annotator name in tokens: {tok!r} -> {who!r}")
    annotators = set(tokens.values())
    signer = session_serializer(secret_key or secrets.token_bytes(32))
    root = Path(image_root).resolve() if image_root is not None else None
    leases = _Leases(lease_s)
    if target_refresh_s < 0:
        raise ConfigError(f"target_refresh_s must be >= 0 seconds, got {target_refresh_s}")
    if status_refresh_s < 0:
        raise ConfigError(f"status_refresh_s must be >= 0 seconds, got {status_refresh_s}")
    if status_window_s is not None and not status_window_s > 0:
        raise ConfigError(f"status_window_s must be > 0 seconds, got {status_window_s}")
    if explain_method not in ("occlusion", "rise"):
        raise ConfigError(f"explain_method must be 'occlusion' or 'rise', got {explain_method!r}")
    review_only = set(reviewers or ())
    unknown = review_only - annotators
    if unknown:
        raise ConfigError(f"reviewer(s) {', '.join(sorted(unknown))} have no token; reviewers must be annotators "
                          f"({', '.join(sorted(annotators))})")
    board = _TargetBoard(store, target, target_refresh_s, target_eval or eval_config) if target is not None else None
    status_board = StatusBoard(store, eval_config, status_refresh_s, status_window_s)
    templates = Jinja2Templates(directory=str(TEMPLATES))

    # keys: 1..9 for the first nine classes, u for unsure, s for skip
    buttons = [dict(value=c, text=c, key=str(i + 1) if i < 9 else "", kind="class") for i, c in enumerate(classes)]
    buttons += [dict(value=UNSURE, text="unsure", key="u", kind="unsure"), dict(value=queue.SKIP, text="skip", key="s", kind="skip")]
    allowed = set(classes) | {UNSURE, queue.SKIP}

    app = FastAPI(title="shadowcam labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.class_names = classes
    app.state.target = target

    def who(request: Request) -> str | None:
        name = _annotator_from_cookie(signer, request.cookies.get(COOKIE))
        return name if name in annotators else None

    def page(request: Request, name: str, status: int = 200, **ctx: object) -> HTMLResponse:
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def error(request: Request, status: int, title: str, message: str, annotator: str | None = None) -> HTMLResponse:
        return page(request, "error.html", status, title=title, message=message, annotator=annotator)

    def progress(annotator: str) -> dict:
        return dict(
            annotator=annotator,
            labeled_by_you=queue.count_labeled_by(store, annotator),
            your_queue=queue.count_queue_for(store, annotator),
            awaiting=queue.count_awaiting(store),
        )

    def next_frame(annotator: str) -> QueuedSample | None:
        held = leases.held_by_others(annotator)
        cands = queue.queue_for(store, annotator, limit=len(held) + 50)
        # a frame already shown to this annotator comes first (a reload shows the same frame)
        mine = set(leases.mine(annotator))
        cands.sort(key=lambda c: c.frame_id not in mine)
        for c in cands:
            if c.n_labels + held.get(c.frame_id, 0) < c.labels_needed:
                leases.take(c.frame_id, annotator)
                return c
        return None

    def resolve_image(image_path: str) -> Path | None:
        p = Path(image_path)
        if not p.is_absolute():
            p = (root or Path.cwd()) / p
        p = p.resolve()
        if root is not None and not p.is_relative_to(root):
            return None
        return p

    overlays = None
    if explain:
        ec = eval_config or EvalConfig()
        overlays = OverlayMaker(store, resolve_image, explain_model, explain_method, ec.workdir, ec.cache_dir)
    app.state.overlays = overlays

    def may_review(annotator: str) -> bool:
        return not review_only or annotator in review_only

    def overlay_allowed(annotator: str, frame_id: str) -> tuple[bool, str]:
        """(allowed, why not): the annotator labelled the frame, or may review and the frame needs no more labels."""
        if store.labels_by([frame_id], [annotator]):
            return True, ""
        row = queue.sample_row(store, frame_id)
        if row is not None and may_review(annotator) and row.n_labels > 0 and row.labels_missing == 0:
            return True, ""
        return False, "answer this frame first: its overlay is shown only after your label, so it cannot anchor it"

    def to_login() -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> Response:
        return page(request, "login.html", message=None)

    @app.post("/login", response_class=HTMLResponse)
    def login(request: Request, token: str = Form("")) -> Response:
        annotator = next((a for t, a in tokens.items() if secrets.compare_digest(t.encode(), token.strip().encode())), None)
        if annotator is None:
            msg = ("No token given." if not token.strip() else "That token is not valid.") + (
                " Ask the person who started `shadowcam label serve` for your annotator token"
                " (one of its --token TOKEN:ANNOTATOR or --tokens-file entries)."
            )
            return page(request, "login.html", 401, message=msg)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(COOKIE, signer.dumps(annotator), httponly=True, samesite="strict", max_age=SESSION_MAX_AGE_S)
        log.info("annotator %s logged in", annotator)
        return resp

    @app.post("/logout")
    def logout(request: Request) -> Response:
        annotator = who(request)
        if annotator:
            for fid in leases.mine(annotator):
                leases.release(fid, annotator)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> Response:
        annotator = who(request)
        if annotator is None:
            return RedirectResponse("/login", status_code=303)
        frame = next_frame(annotator)
        preds: list[StoredPrediction] = []
        if frame is not None and show_predictions:
            preds = store.predictions_for_frame(frame.frame_id)
        answered = None
        last = request.query_params.get("answered", "")
        if overlays is not None and last:
            mine = store.labels_by([last], [annotator]).get((last, annotator))
            if mine is not None:  # only a frame this annotator answered: never one still to be answered
                model = next((p for p in store.predictions_for_frame(last) if p.role == "incumbent"), None)
                answered = dict(frame_id=last, label=mine, model=model, overlay_url=f"/overlay?frame_id={quote(last, safe='')}",
                                overlay_error=None)
                try:
                    overlays.path_for(last)  # cheap: is there a model and an image to explain?
                except OverlayError as e:
                    answered["overlay_error"] = str(e)
        return page(
            request, "label.html", annotator=annotator, frame=frame, buttons=buttons, progress=progress(annotator),
            show_predictions=show_predictions, preds=preds, target=board.get() if board is not None else None,
            answered=answered, can_review=may_review(annotator),
        )

    @app.post("/label")
    def post_label(request: Request, frame_id: str = Form(""), label: str = Form("")) -> Response:
        annotator = who(request)
        if annotator is None:
            return error(request, 401, "Not logged in", "Your session has ended; log in again with your token.")
        if not frame_id or not label:
            return error(request, 400, "Incomplete answer", "The form needs both frame_id and label.", annotator)
        if label not in allowed:
            return error(
                request, 400, "Unknown label",
                f"{label!r} is not a label of this deployment; expected one of: {', '.join(sorted(allowed))}.", annotator,
            )
        if queue.sample_row(store, frame_id) is None:
            return error(request, 404, "Unknown frame", f"Frame {frame_id!r} is not in the label queue.", annotator)
        if label == queue.SKIP:
            queue.add_skip(store, frame_id, annotator)
        else:
            try:
                store.add_labels([Label(frame_id=frame_id, label=label, annotator=annotator, timestamp=time.time(), source="web")])
            except LabelImportError:
                log.info("duplicate answer from %s for %s ignored (double submit?)", annotator, frame_id)
        leases.release(frame_id, annotator)
        if overlays is not None and label != queue.SKIP:
            overlays.prefetch(frame_id)  # computed while the annotator looks at the next frame
            return RedirectResponse(f"/?answered={quote(frame_id, safe='')}", status_code=303)
        return RedirectResponse("/", status_code=303)

    @app.get("/image")
    def image(request: Request, frame_id: str = "") -> Response:
        if who(request) is None:
            return Response("log in first", status_code=401, media_type="text/plain")
        # only paths recorded in the samples table are ever served (no user-controlled paths)
        row = queue.sample_row(store, frame_id)
        if row is None:
            return Response(f"no sampled frame {frame_id!r}", status_code=404, media_type="text/plain")
        path = resolve_image(row.image_path)
        if path is None:
            return Response("image outside the image root", status_code=403, media_type="text/plain")
        if not path.is_file():
            return Response(f"image file missing for frame {frame_id!r}", status_code=404, media_type="text/plain")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/overlay")
    def overlay(request: Request, frame_id: str = "", role: str = "incumbent") -> Response:
        annotator = who(request)
        if annotator is None:
            return to_login()
        if overlays is None:
            return Response("explanations are turned off on this page (--no-explain)", status_code=404, media_type="text/plain")
        if queue.sample_row(store, frame_id) is None:
            return Response(f"no sampled frame {frame_id!r}", status_code=404, media_type="text/plain")
        if role not in ("incumbent", "shadow"):
            return Response(f"role must be 'incumbent' or 'shadow', got {role!r}", status_code=400, media_type="text/plain")
        ok, why = overlay_allowed(annotator, frame_id)
        if not ok:
            return Response(why, status_code=403, media_type="text/plain")
        try:
            path = overlays.get(frame_id, role)
        except OverlayError as e:
            log.warning("overlay failed: %s", e)
            return Response(f"no overlay: {e}", status_code=500, media_type="text/plain")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/review", response_class=HTMLResponse)
    def review(request: Request, role: str = "incumbent", page_no: int = 1) -> Response:
        annotator = who(request)
        if annotator is None:
            return to_login()
        if not may_review(annotator):
            return error(request, 403, "Reviewers only",
                         f"Review mode is open to {', '.join(sorted(review_only))}; ask one of them, or the person who "
                         "started `shadowcam label serve` to add you with --reviewer.", annotator)
        if role not in ("incumbent", "shadow"):
            return error(request, 400, "Unknown model role", f"role must be 'incumbent' or 'shadow', got {role!r}.", annotator)
        found = disagreements(store, classes, role)
        per_page = 30
        pages = max(1, -(-len(found.items) // per_page))
        page_no = min(max(1, page_no), pages)
        items = found.items[(page_no - 1) * per_page: page_no * per_page]
        return page(request, "review.html", annotator=annotator, found=found, items=items, role=role,
                    page_no=page_no, pages=pages, explain=overlays is not None, quote=quote)

    def status_doc(request: Request) -> tuple[dict | None, list]:
        deps = status_board.deployments()
        if not deps:
            return None, deps
        key = request.query_params.get("deployment") or deps[-1].key
        dep = next((d for d in deps if d.key == key), None)
        return (status_board.get(dep) if dep is not None else {"error": f"no deployment {key!r}"}), deps

    @app.get("/status", response_class=HTMLResponse)
    def status(request: Request) -> Response:
        annotator = who(request)
        if annotator is None:
            return to_login()
        doc, deps = status_doc(request)
        return page(request, "status.html", annotator=annotator, s=doc, deployments=deps)

    @app.get("/api/status")
    def api_status(request: Request) -> Response:
        if who(request) is None:
            return JSONResponse({"error": "log in first"}, status_code=401)
        doc, deps = status_doc(request)
        if doc is None:
            return JSONResponse({"error": "no runs in the store yet"}, status_code=404)
        return JSONResponse({k: v for k, v in doc.items() if k not in ("rows",)} | {
            "rows": [{k: v for k, v in r.items() if k != "trend_svg"} for r in doc.get("rows", [])],
            "deployments": [{"key": d.key, "title": d.title} for d in deps]})

    @app.get("/api/progress")
    def api_progress(request: Request) -> Response:
        annotator = who(request)
        if annotator is None:
            return JSONResponse({"error": "log in first"}, status_code=401)
        doc = progress(annotator)
        if board is not None:
            doc["target"] = board.get()
        return JSONResponse(doc)

    return app


def parse_token_specs(specs: Sequence[str], source: str = "--token") -> dict[str, str]:
    """``["TOKEN:ANNOTATOR", ...]`` -> ``{token: annotator}``; :class:`ConfigError` names the bad entry."""
    out: dict[str, str] = {}
    for spec in specs:
        tok, sep, name = spec.strip().partition(":")
        where = f"{source} {spec!r}"
        if not sep or not tok.strip() or not name.strip():
            raise ConfigError(f"{where}: expected TOKEN:ANNOTATOR (e.g. s3cret:alice), got {spec!r}")
        if tok.strip() in out:
            raise ConfigError(f"{where}: token given twice")
        out[tok.strip()] = name.strip()
    return out


def read_tokens_file(path: str | Path) -> dict[str, str]:
    """A tokens file: one ``TOKEN:ANNOTATOR`` per line; blank lines and ``#`` comments ignored."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read tokens file {p}: {e.strerror}") from None
    out: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tok, sep, name = line.partition(":")
        if not sep or not tok.strip() or not name.strip():
            raise ConfigError(f"{p}:{n}: expected TOKEN:ANNOTATOR, got {line!r}")
        if tok.strip() in out:
            raise ConfigError(f"{p}:{n}: token given twice")
        out[tok.strip()] = name.strip()
    if not out:
        raise ConfigError(f"{p}: no tokens; expected lines like TOKEN:ANNOTATOR")
    return out


__all__ = ["create_app", "parse_token_specs", "read_tokens_file", "session_serializer", "COOKIE", "COOKIE_SALT", "SESSION_MAX_AGE_S"]
