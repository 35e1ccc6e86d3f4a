"""The labeling page: server-rendered HTML (FastAPI + Jinja2), no front-end build.

One frame at a time, large; one button per class (keys 1..9), plus ``unsure`` (u) and ``skip`` (s).
The flow is plain HTML forms with Post/Redirect/Get: ``GET /`` shows the next frame of the logged-in
annotator, ``POST /label`` stores the answer and redirects back to ``/``. A few lines of inline
JavaScript map keys to buttons; without JavaScript the buttons still work.

Who gets what is decided by :mod:`pipeline.labeling.queue`. On top of it the store keeps *leases*
(``label_leases``): a frame shown to an annotator is held back from the others for ``lease_s`` seconds (then it goes
to the next annotator). Leases are taken under the frame's row lock, so several server processes (uvicorn workers,
several machines on one PostgreSQL store) never hand a frame out beyond its labels.

**Label integrity** (:meth:`PredictionStore.submit_label`): a frame takes a first answer only while it needs one
(a third vote on a double-labelled frame is refused with 409); the same annotator answering again *changes* their
label; every create, change and resolution goes to the append-only ``label_audit`` table with the session id.

The predictions for the frame being labelled are never rendered unless the app was created with
``show_predictions=True``; then they sit collapsed behind a "reveal" toggle, so they do not anchor the annotator.

With a label target (``create_app(..., target=LabelTarget(...))``, ``shadowcam label serve --target 2pts@95``) the
page shows, above the frame, how far the target is from being met (:mod:`pipeline.labeling.targets`);
``/api/progress`` returns the same statuses as JSON, re-evaluated at most every ``target_refresh_s`` seconds.

**Explanations** (``explain=True``): after an answer, the next page shows that frame's saliency overlay beside the
model's answer, never before (:mod:`pipeline.labeling.overlays`). ``GET /overlay`` serves it only to someone who
labelled the frame, or - for a frame that needs no more labels - to a reviewer.

**Review** (``GET /review``, reviewers and admins): frames where the label and a model disagree, and ties of
double-labelled frames that a reviewer resolves (``POST /resolve``, :mod:`pipeline.labeling.review`).
**Status** (``GET /status``, ``/api/status``, reviewers and admins): one page per deployment
(:mod:`pipeline.labeling.status`). **Tokens** (``GET /admin``, ``POST /admin/revoke``, admins).

**Security** (docs/security.md, :mod:`pipeline.labeling.auth`): tokens hashed in the store, server-side sessions
(cookie ``shadowcam_session``: HttpOnly, SameSite=Strict, ``Secure`` over TLS), store-backed login rate limits, a
CSRF token on every form plus an Origin check on every POST, request bodies limited (413), images served only from
the store's sample folders (symlinks resolved), and security headers (CSP, no framing, nosniff) on every response.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.templating import Jinja2Templates

from pipeline.config import EvalConfig, LabelAuthConfig, LabelTarget
from pipeline.labeling import queue
from pipeline.labeling.auth import Authenticator, Session, role_at_least
from pipeline.labeling.overlays import OverlayError, OverlayMaker
from pipeline.labeling.review import disagreements, resolution_refusal, ties
from pipeline.labeling.status import StatusBoard
from pipeline.store import PredictionStore, QueuedSample, StoredPrediction, sqlite_path
from pipeline.types import UNSURE, ConfigError

log = logging.getLogger(__name__)

COOKIE = "shadowcam_session"  # the session secret (the store keeps its SHA-256)
LOGIN_COOKIE = "shadowcam_login"  # pre-login CSRF: the login form must carry the same random value
TEMPLATES = Path(__file__).parent / "templates"
MAX_FIELD = 256  # longest form/query value accepted (frame ids are <= 200 characters)
FormField = Annotated[str, Form(max_length=MAX_FIELD)]
QueryField = Annotated[str, Query(max_length=MAX_FIELD)]
PageNo = Annotated[int, Query(ge=1, le=100_000)]
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self' 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}

# refusals, as documented in the OpenAPI schema (and docs/security.md)
_DESCRIPTIONS = {
    200: "the page", 303: "redirect (Post/Redirect/Get, or to /login when not logged in)",
    400: "a value outside what the page offers", 401: "not logged in, or a wrong / revoked token",
    403: "wrong role, missing or wrong CSRF token, a foreign Origin, or an image outside the sample folders",
    404: "no such frame, image or page", 409: "the frame needs no more labels (or is no tie to resolve)",
    413: "request body larger than LabelAuthConfig.max_body_bytes", 429: "too many failed logins: locked out for a while",
    500: "an overlay could not be computed",
}


def _responses(*codes: int, media: str = "text/html") -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for c in codes:
        out[c] = {"description": _DESCRIPTIONS[c]}
        if c != 303:
            out[c]["content"] = {("text/plain" if c == 413 else media): {"schema": {"type": "string"}}}
    return out


class BodyLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` gets 413 (by Content-Length before anything is read,
    or while the body streams in)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            resp = PlainTextResponse(f"request body too large (at most {self.max_bytes} bytes)", status_code=413)
            await resp(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, f"request body too large (at most {self.max_bytes} bytes)")
            return msg

        await self.app(scope, limited, send)


def image_roots(store: PredictionStore, image_root: str | Path | None = None) -> list[Path]:
    """The folders ``/image`` may serve from, symlinks resolved: ``image_root`` when given, else the store's sample
    folders - each run's ``sampling.image_dir`` (recorded in the run's config), relative ones taken against the
    run's ``workdir`` when it is absolute, else against a SQLite store's folder (``shadowcam run`` keeps its
    store, ``shadowcam.db``, in the work dir). :class:`ConfigError` when none can be told (pass ``--image-root``)."""
    if image_root is not None:
        root = Path(image_root).resolve()
        if not root.is_dir():
            raise ConfigError(f"image root {image_root}: not a folder")
        return [root]
    db = sqlite_path(store.url)
    base = db.resolve().parent if db is not None else None
    roots: list[Path] = []
    runs = store.list_runs()
    for run in runs or [{}]:
        try:
            cfg = json.loads(run.get("config") or "{}")
        except ValueError:
            cfg = {}
        cfg = cfg if isinstance(cfg, dict) else {}
        image_dir = Path(str((cfg.get("sampling") or {}).get("image_dir") or "samples"))
        workdir = Path(str(cfg.get("workdir") or "."))
        if image_dir.is_absolute():
            root = image_dir
        elif workdir.is_absolute():
            root = workdir / image_dir
        elif base is not None:
            root = base / workdir / image_dir
        else:
            continue
        root = root.resolve()
        if root not in roots:
            roots.append(root)
    if not roots:
        raise ConfigError(f"cannot tell where the sampled frames of store {store.url} are (its runs record no absolute "
                          "work dir); pass --image-root DIR")
    return roots


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
    image_root: str | Path | None = None,
    show_predictions: bool = False,
    lease_s: float = 300.0,
    target: LabelTarget | None = None,
    target_refresh_s: float = 30.0,
    target_eval: EvalConfig | None = None,
    explain: bool = True,
    explain_model: str | Path | None = None,
    explain_method: str = "occlusion",
    eval_config: EvalConfig | None = None,
    status_refresh_s: float = 60.0,
    status_window_s: float | None = None,
    auth: LabelAuthConfig | None = None,
) -> FastAPI:
    """Build the labeling app.

    Args:
        store_url: the PredictionStore URL (or an open store). Logins use the tokens in its ``label_tokens`` table
            (``shadowcam label tokens add``, :func:`pipeline.labeling.auth.issue_token`); at least one must be active.
        class_names: the label space; default: the class names of the newest run in the store.
        image_root: the one folder ``/image`` serves from (relative ``samples.image_path`` values are resolved
            against it); default: the store's sample folders (:func:`image_roots`). Anything outside is refused.
        show_predictions: render the models' predictions behind a collapsed "reveal" toggle.
        lease_s: how long a frame shown to one annotator is held back from the others.
        target: a label target to show above the frame (and in ``/api/progress``).
        target_refresh_s: the statuses are re-evaluated at most this often (in the background).
        target_eval: how the target's evaluation runs; default: ``eval_config``.
        explain: show the model's saliency overlay of a frame after the annotator answered it (and in review).
        explain_model: explain every frame with this model (``.onnx`` or ``models:/``); default: the run's incumbent.
        explain_method: ``occlusion`` or ``rise``.
        eval_config: how ``/status`` evaluates; its ``workdir`` / ``cache_dir`` also resolve ``models:/`` URIs.
        status_refresh_s: ``/status`` figures are re-evaluated at most this often (in the background).
        status_window_s: the trend's window length; None: the deployment's time span / 8.
        auth: sessions, login limits, cookies, body size (:class:`~pipeline.config.LabelAuthConfig`).
    """
    store = store_url if isinstance(store_url, PredictionStore) else PredictionStore(store_url)
    classes = queue.label_space(store, class_names)
    cfg = auth or LabelAuthConfig()
    if not store.label_tokens(active_only=True):
        raise ConfigError(f"store {store.url} has no active annotator tokens; add one with "
                          "`shadowcam label tokens add NAME --role annotator|reviewer|admin --db ...`")
    if not lease_s > 0:
        raise ConfigError(f"lease_s must be > 0 seconds, got {lease_s}")
    if target_refresh_s < 0:
        raise ConfigError(f"target_refresh_s must be >= 0 seconds, got {target_refresh_s}")
    if status_refresh_s < 0:
        raise ConfigError(f"status_refresh_s must be >= 0 seconds, got {status_refresh_s}")
    if status_window_s is not None and not status_window_s > 0:
        raise ConfigError(f"status_window_s must be > 0 seconds, got {status_window_s}")
    if explain_method not in ("occlusion", "rise"):
        raise ConfigError(f"explain_method must be 'occlusion' or 'rise', got {explain_method!r}")
    roots = image_roots(store, image_root)
    authn = Authenticator(store, cfg)
    board = _TargetBoard(store, target, target_refresh_s, target_eval or eval_config) if target is not None else None
    status_board = StatusBoard(store, eval_config, status_refresh_s, status_window_s)
    templates = Jinja2Templates(directory=str(TEMPLATES))

    # keys: 1..9 for the first nine classes, u for unsure, s for skip
    buttons = [dict(value=c, text=c, key=str(i + 1) if i < 9 else "", kind="class") for i, c in enumerate(classes)]
    buttons += [dict(value=UNSURE, text="unsure", key="u", kind="unsure"), dict(value=queue.SKIP, text="skip", key="s", kind="skip")]
    allowed = set(classes) | {UNSURE, queue.SKIP}

    app = FastAPI(title="shadowcam labeling", version="1", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.store = store
    app.state.class_names = classes
    app.state.target = target
    app.state.image_roots = roots
    app.state.auth = authn
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        resp = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        if request.url.path not in ("/image", "/overlay"):
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    # --- helpers ----------------------------------------------------------------------------------------------------
    def current(request: Request) -> Session | None:
        return authn.session(request.cookies.get(COOKIE))

    def secure(request: Request) -> bool:
        return cfg.secure_cookie == "always" or (cfg.secure_cookie == "auto" and request.url.scheme == "https")

    def client(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def page(request: Request, name: str, status: int = 200, **ctx: object) -> HTMLResponse:
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def error(request: Request, status: int, title: str, message: str, s: Session | None = None) -> HTMLResponse:
        return page(request, "error.html", status, title=title, message=message, annotator=s.annotator if s else None)

    def foreign_origin(request: Request) -> bool:
        """A POST that a browser says came from another site (Origin / Sec-Fetch-Site), on top of SameSite cookies."""
        if request.headers.get("sec-fetch-site") == "cross-site":
            return True
        origin = request.headers.get("origin")
        if origin is None:
            return False
        parts = urlsplit(origin)
        return origin == "null" or parts.netloc != request.headers.get("host", "") or parts.scheme != request.url.scheme

    def post_guard(request: Request, csrf: str, min_role: str = "annotator") -> tuple[Session | None, Response | None]:
        """The session of a POST, or the refusal: 401 not logged in, 403 foreign origin / wrong CSRF token / role."""
        s = current(request)
        if s is None:
            return None, error(request, 401, "Not logged in", "Your session has ended; log in again with your token.")
        if foreign_origin(request):
            log.warning("cross-origin POST %s refused (Origin %s) for %s", request.url.path, request.headers.get("origin"), s.annotator)
            return None, error(request, 403, "Refused", "This form was sent from another site.", s)
        if not csrf or not secrets.compare_digest(csrf.encode(), s.csrf.encode()):
            log.warning("POST %s with a missing or wrong CSRF token refused for %s", request.url.path, s.annotator)
            return None, error(request, 403, "Refused", "The form's CSRF token is missing or wrong: reload the page and try again.", s)
        if not role_at_least(s.role, min_role):
            return None, error(request, 403, f"{min_role.capitalize()}s only",
                               f"This needs the {min_role} role; you are logged in as {s.role}.", s)
        return s, None

    def progress(annotator: str) -> dict:
        return dict(
            annotator=annotator,
            labeled_by_you=queue.count_labeled_by(store, annotator),
            your_queue=queue.count_queue_for(store, annotator),
            awaiting=queue.count_awaiting(store),
        )

    def next_frame(annotator: str) -> QueuedSample | None:
        return store.lease_next_frame(annotator, lease_s)

    def resolve_image(image_path: str) -> Path | None:
        """The image file of a samples row, or None when it lies outside every allowed root (symlinks resolved)."""
        p = Path(image_path)
        if not p.is_absolute():
            p = (roots[0] if image_root is not None else Path.cwd()) / p
        try:
            p = p.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            return None
        return p if any(p.is_relative_to(r) for r in roots) else None

    overlays = None
    if explain:
        ec = eval_config or EvalConfig()
        overlays = OverlayMaker(store, resolve_image, explain_model, explain_method, ec.workdir, ec.cache_dir)
    app.state.overlays = overlays

    def overlay_allowed(s: Session, frame_id: str) -> tuple[bool, str]:
        """(allowed, why not): the annotator labelled the frame, or may review and the frame needs no more labels."""
        if store.labels_by([frame_id], [s.annotator]):
            return True, ""
        row = queue.sample_row(store, frame_id)
        if row is not None and role_at_least(s.role, "reviewer") and row.n_labels > 0 and row.labels_missing == 0:
            return True, ""
        return False, "answer this frame first: its overlay is shown only after your label, so it cannot anchor it"

    def to_login() -> Response:
        return RedirectResponse("/login", status_code=303)

    # --- routes -----------------------------------------------------------------------------------------------------
    @app.get("/healthz", responses={200: {"description": "alive"}})
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/login", response_class=HTMLResponse, responses=_responses(200))
    def login_form(request: Request) -> Response:
        nonce = secrets.token_urlsafe(24)
        resp = page(request, "login.html", message=None, login_csrf=nonce)
        resp.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict", secure=secure(request), max_age=3600)
        return resp

    @app.post("/login", response_class=HTMLResponse, responses=_responses(303, 401, 403, 413, 429))
    def login(request: Request, token: FormField = "", login_csrf: FormField = "") -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        fresh = secrets.token_urlsafe(24)
        if foreign_origin(request) or not nonce or not secrets.compare_digest(nonce.encode(), login_csrf.encode()):
            log.warning("login form without its CSRF cookie/field or from another origin refused (client %s)", client(request))
            resp = page(request, "login.html", 403, login_csrf=fresh,
                        message="This login form expired or came from another site; log in again from this page.")
        else:
            res = authn.login(token, client(request))
            if res.ok:
                resp = RedirectResponse("/", status_code=303)
                # a new random session id at every login (no fixation); the login nonce is spent
                resp.set_cookie(COOKIE, res.session_secret or "", httponly=True, samesite="strict", secure=secure(request),
                                max_age=int(cfg.session_max_s))
                resp.delete_cookie(LOGIN_COOKIE)
                return resp
            resp = page(request, "login.html", res.status, message=res.message, login_csrf=fresh)
            if res.retry_after_s:
                resp.headers["Retry-After"] = str(res.retry_after_s)
        resp.set_cookie(LOGIN_COOKIE, fresh, httponly=True, samesite="strict", secure=secure(request), max_age=3600)
        return resp

    @app.post("/logout", response_class=HTMLResponse, responses=_responses(303, 401, 403, 413))
    def logout(request: Request, csrf_token: FormField = "") -> Response:
        s, refused = post_guard(request, csrf_token)
        if refused is not None:
            return refused
        store.release_label_leases(s.annotator)
        authn.logout(request.cookies.get(COOKIE))
        log.info("annotator %s logged out", s.annotator)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    @app.get("/", response_class=HTMLResponse, responses=_responses(200, 303))
    def index(request: Request, answered: QueryField = "") -> Response:
        s = current(request)
        if s is None:
            return to_login()
        frame = next_frame(s.annotator)
        preds: list[StoredPrediction] = []
        if frame is not None and show_predictions:
            preds = store.predictions_for_frame(frame.frame_id)
        shown = None
        if overlays is not None and answered:
            mine = store.labels_by([answered], [s.annotator]).get((answered, s.annotator))
            if mine is not None:  # only a frame this annotator answered: never one still to be answered
                model = next((p for p in store.predictions_for_frame(answered) if p.role == "incumbent"), None)
                shown = dict(frame_id=answered, label=mine, model=model, overlay_url=f"/overlay?frame_id={quote(answered, safe='')}",
                             overlay_error=None)
                try:
                    overlays.path_for(answered)  # cheap: is there a model and an image to explain?
                except OverlayError as e:
                    shown["overlay_error"] = str(e)
        return page(
            request, "label.html", annotator=s.annotator, frame=frame, buttons=buttons, progress=progress(s.annotator),
            show_predictions=show_predictions, preds=preds, target=board.get() if board is not None else None,
            answered=shown, can_review=role_at_least(s.role, "reviewer"), is_admin=role_at_least(s.role, "admin"), csrf=s.csrf,
        )

    @app.post("/label", response_class=HTMLResponse, responses=_responses(303, 400, 401, 403, 404, 409, 413))
    def post_label(request: Request, frame_id: FormField = "", label: FormField = "", csrf_token: FormField = "") -> Response:
        s, refused = post_guard(request, csrf_token)
        if refused is not None:
            return refused
        if not frame_id or not label:
            return error(request, 400, "Incomplete answer", "The form needs both frame_id and label.", s)
        if label not in allowed:
            return error(request, 400, "Unknown label",
                         f"{label!r} is not a label of this deployment; expected one of: {', '.join(sorted(allowed))}.", s)
        if label == queue.SKIP:
            if queue.sample_row(store, frame_id) is None:
                return error(request, 404, "Unknown frame", f"Frame {frame_id!r} is not in the label queue.", s)
            queue.add_skip(store, frame_id, s.annotator)
            return RedirectResponse("/", status_code=303)
        out = store.submit_label(frame_id, s.annotator, label, source="web", session_id=s.session_id)
        if out.status == "unknown_frame":
            return error(request, 404, "Unknown frame", f"Frame {frame_id!r} is not in the label queue.", s)
        if out.status in ("complete", "withdrawn", "resolved"):
            log.info("answer from %s for %s refused: %s", s.annotator, frame_id, out.status)
            why = {"complete": "already has all the labels it needs", "withdrawn": "was taken out of the label queue",
                   "resolved": "was resolved by a reviewer, so its answers no longer change"}[out.status]
            return error(request, 409, "Frame already labelled", f"Frame {frame_id!r} {why}; your answer was not recorded.", s)
        if out.status == "changed":
            log.info("%s changed their label of %s: %s -> %s", s.annotator, frame_id, out.old_label, out.new_label)
        if overlays is not None:
            overlays.prefetch(frame_id)  # computed while the annotator looks at the next frame
            return RedirectResponse(f"/?answered={quote(frame_id, safe='')}", status_code=303)
        return RedirectResponse("/", status_code=303)

    @app.get("/image", responses={**_responses(303, 403, 404, media="text/plain"), 200: {
        "description": "the sampled frame's image", "content": {"image/jpeg": {}, "image/png": {}, "application/octet-stream": {}}}})
    def image(request: Request, frame_id: QueryField = "") -> Response:
        if current(request) is None:
            return to_login()
        # only paths recorded in the samples table are ever served, and only under the allowed roots
        row = queue.sample_row(store, frame_id)
        if row is None:
            return PlainTextResponse(f"no sampled frame {frame_id!r}", status_code=404)
        path = resolve_image(row.image_path)
        if path is None:
            log.warning("image of %s refused: %s is outside the sample folders", frame_id, row.image_path)
            return PlainTextResponse("image outside the sample folders", status_code=403)
        if not path.is_file():
            return PlainTextResponse(f"image file missing for frame {frame_id!r}", status_code=404)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if media not in ("image/jpeg", "image/png"):
            media = "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/overlay", responses={**_responses(303, 400, 403, 404, 500, media="text/plain"), 200: {
        "description": "the saliency overlay", "content": {"image/png": {}}}})
    def overlay(request: Request, frame_id: QueryField = "", role: QueryField = "incumbent") -> Response:
        s = current(request)
        if s is None:
            return to_login()
        if overlays is None:
            return PlainTextResponse("explanations are turned off on this page (--no-explain)", status_code=404)
        if queue.sample_row(store, frame_id) is None:
            return PlainTextResponse(f"no sampled frame {frame_id!r}", status_code=404)
        if role not in ("incumbent", "shadow"):
            return PlainTextResponse(f"role must be 'incumbent' or 'shadow', got {role!r}", status_code=400)
        ok, why = overlay_allowed(s, frame_id)
        if not ok:
            return PlainTextResponse(why, status_code=403)
        try:
            path = overlays.get(frame_id, role)
        except OverlayError as e:
            log.warning("overlay failed: %s", e)
            return PlainTextResponse(f"no overlay: {e}", status_code=500)
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def reviewers_only(request: Request, s: Session) -> Response | None:
        if role_at_least(s.role, "reviewer"):
            return None
        return error(request, 403, "Reviewers only", "This page is open to the reviewer and admin roles; ask an admin "
                     "(`shadowcam label tokens add NAME --role reviewer --rotate`).", s)

    @app.get("/review", response_class=HTMLResponse, responses=_responses(200, 303, 400, 403))
    def review(request: Request, role: QueryField = "incumbent", page_no: PageNo = 1) -> Response:
        s = current(request)
        if s is None:
            return to_login()
        if (refused := reviewers_only(request, s)) is not None:
            return refused
        if role not in ("incumbent", "shadow"):
            return error(request, 400, "Unknown model role", f"role must be 'incumbent' or 'shadow', got {role!r}.", s)
        found = disagreements(store, classes, role)
        per_page = 30
        pages = max(1, -(-len(found.items) // per_page))
        page_no = min(max(1, page_no), pages)
        items = found.items[(page_no - 1) * per_page: page_no * per_page]
        return page(request, "review.html", annotator=s.annotator, found=found, items=items, role=role, page_no=page_no,
                    pages=pages, explain=overlays is not None, quote=quote, ties=ties(store, classes), csrf=s.csrf)

    @app.post("/resolve", response_class=HTMLResponse, responses=_responses(303, 400, 401, 403, 404, 409, 413))
    def resolve(request: Request, frame_id: FormField = "", label: FormField = "", csrf_token: FormField = "") -> Response:
        s, refused = post_guard(request, csrf_token, "reviewer")
        if refused is not None:
            return refused
        if label not in classes:
            return error(request, 400, "Unknown label", f"{label!r} is not a class of this deployment.", s)
        out = store.resolve_label(frame_id, s.annotator, label, resolution_refusal(classes, label), session_id=s.session_id)
        if out.status == "unknown_frame":
            return error(request, 404, "Unknown frame", f"Frame {frame_id!r} is not in the label queue.", s)
        if out.status != "created":
            why = {"not_tied": "its labels do not tie (or it was resolved already)",
                   "not_an_answer": f"{label!r} is not one of its answers", "complete": "you labelled it yourself"}[out.status]
            return error(request, 409, "Not resolved", f"Frame {frame_id!r} cannot be resolved: {why}.", s)
        log.info("%s resolved %s as %s", s.annotator, frame_id, label)
        return RedirectResponse("/review", status_code=303)

    def status_doc(request: Request) -> tuple[dict | None, list]:
        deps = status_board.deployments()
        if not deps:
            return None, deps
        key = request.query_params.get("deployment") or deps[-1].key
        dep = next((d for d in deps if d.key == key), None)
        return (status_board.get(dep) if dep is not None else {"error": f"no deployment {key!r}"}), deps

    @app.get("/status", response_class=HTMLResponse, responses=_responses(200, 303, 403, 404))
    def status(request: Request, deployment: QueryField = "") -> Response:
        s = current(request)
        if s is None:
            return to_login()
        if (refused := reviewers_only(request, s)) is not None:
            return refused
        doc, deps = status_doc(request)
        if doc is not None and "deployment" not in doc:
            return error(request, 404, "Unknown deployment", f"No deployment {deployment!r}; see /status for the list.", s)
        return page(request, "status.html", annotator=s.annotator, s=doc, deployments=deps, csrf=s.csrf)

    json_error = {"content": {"application/json": {"schema": {
        "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}

    @app.get("/api/status", responses={200: {"description": "the status figures", "content": {"application/json": {
        "schema": {"type": "object"}}}}, 401: {"description": _DESCRIPTIONS[401], **json_error},
        403: {"description": _DESCRIPTIONS[403], **json_error}, 404: {"description": "no runs yet, or no such deployment", **json_error}})
    def api_status(request: Request, deployment: QueryField = "") -> Response:
        s = current(request)
        if s is None:
            return JSONResponse({"error": "log in first"}, status_code=401)
        if not role_at_least(s.role, "reviewer"):
            return JSONResponse({"error": "reviewers and admins only"}, status_code=403)
        doc, deps = status_doc(request)
        if doc is None:
            return JSONResponse({"error": "no runs in the store yet"}, status_code=404)
        if "deployment" not in doc:
            return JSONResponse({"error": f"no deployment {deployment!r}"}, status_code=404)
        return JSONResponse({k: v for k, v in doc.items() if k not in ("rows",)} | {
            "rows": [{k: v for k, v in r.items() if k != "trend_svg"} for r in doc.get("rows", [])],
            "deployments": [{"key": d.key, "title": d.title} for d in deps]})

    progress_schema = {"type": "object", "required": ["annotator", "labeled_by_you", "your_queue", "awaiting"], "properties": {
        "annotator": {"type": "string"}, "labeled_by_you": {"type": "integer", "minimum": 0},
        "your_queue": {"type": "integer", "minimum": 0}, "awaiting": {"type": "integer", "minimum": 0}, "target": {"type": "object"}}}

    @app.get("/api/progress", responses={200: {"description": "the annotator's progress", "content": {
        "application/json": {"schema": progress_schema}}}, 401: {"description": _DESCRIPTIONS[401], **json_error}})
    def api_progress(request: Request) -> Response:
        s = current(request)
        if s is None:
            return JSONResponse({"error": "log in first"}, status_code=401)
        doc = progress(s.annotator)
        if board is not None:
            doc["target"] = board.get()
        return JSONResponse(doc)

    @app.get("/admin", response_class=HTMLResponse, responses=_responses(200, 303, 403))
    def admin(request: Request, message: QueryField = "") -> Response:
        s = current(request)
        if s is None:
            return to_login()
        if not role_at_least(s.role, "admin"):
            return error(request, 403, "Admins only", f"Token management needs the admin role; you are {s.role}.", s)
        now = time.time()
        live = store.open_label_sessions(now, cfg.session_idle_s, cfg.session_max_s)
        fmt = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else None
        rows = [dict(token_id=t.token_id, annotator=t.annotator, role=t.role, created=fmt(t.created_at), revoked=fmt(t.revoked_at),
                     sessions=live.get(t.token_id, 0)) for t in store.label_tokens()]
        return page(request, "admin.html", annotator=s.annotator, tokens=rows, message=message, csrf=s.csrf)

    @app.post("/admin/revoke", response_class=HTMLResponse, responses=_responses(303, 401, 403, 404, 413))
    def admin_revoke(request: Request, token_id: FormField = "", csrf_token: FormField = "") -> Response:
        s, refused = post_guard(request, csrf_token, "admin")
        if refused is not None:
            return refused
        if not token_id or not any(t.token_id == token_id for t in store.label_tokens(active_only=True)):
            return error(request, 404, "Unknown token", f"No active token with id {token_id!r}.", s)
        store.revoke_label_tokens(token_id)
        log.warning("admin %s revoked token %s", s.annotator, token_id)
        return RedirectResponse(f"/admin?message={quote(f'token {token_id} revoked; its sessions ended')}", status_code=303)

    return app


def plain_http_warning(host: str, tls: bool) -> str | None:
    """The warning ``label serve`` prints when tokens and cookies would cross the network unencrypted."""
    if tls or host in ("127.0.0.1", "::1", "localhost") or host.startswith("127."):
        return None
    return (f"WARNING: serving the labeling page over plain HTTP on {host}: tokens and session cookies cross the network "
            "unencrypted; pass --certfile/--keyfile (TLS), or serve on 127.0.0.1 behind a TLS proxy")


__all__ = ["COOKIE", "LOGIN_COOKIE", "SERVE_ENV", "BodyLimit", "app_from_env", "create_app", "image_roots", "plain_http_warning"]


SERVE_ENV = "SHADOWCAM_LABEL_SERVE"  # create_app's settings as JSON, for uvicorn workers (``label serve --workers N``)


def app_from_env() -> FastAPI:
    """uvicorn factory (``uvicorn --factory pipeline.labeling.app:app_from_env``): the app built from the JSON settings in
    :data:`SERVE_ENV` (``store_url`` plus :func:`create_app`'s keyword arguments; ``auth``, ``target`` and
    ``eval_config`` as their configs' fields). Every worker process builds its own app on the same store."""
    import os

    raw = os.environ.get(SERVE_ENV)
    if not raw:
        raise ConfigError(f"${SERVE_ENV} is not set: it holds the labeling page's settings as JSON")
    try:
        kw = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"${SERVE_ENV}: not JSON ({e})") from None
    url = kw.pop("store_url")
    kw["auth"] = LabelAuthConfig(**kw["auth"]) if kw.get("auth") else None
    kw["target"] = LabelTarget(**kw["target"]) if kw.get("target") else None
    kw["eval_config"] = EvalConfig.model_validate(kw["eval_config"]) if kw.get("eval_config") else None
    return create_app(url, **kw)
