"""Who may use the labeling page: annotator tokens (hashed in the store), server-side sessions, login rate limits.

**Tokens.** ``shadowcam label tokens add NAME --role R`` makes a strong random token (``scl_<id>_<secret>``,
192 random bits), shows it once and keeps only its argon2id hash (:data:`HASHER`, OWASP's argon2id parameters:
19 MiB, 2 passes, 1 lane) in the store's ``label_tokens`` table, with the annotator, the role and the creation and
revocation times. A token chosen by people (a tokens file, ``SHADOWCAM_LABEL_TOKENS``) must pass
:func:`check_token_strength` (at least :data:`MIN_TOKEN_LENGTH` characters, :data:`MIN_TOKEN_BITS` bits by
character classes, :data:`MIN_DISTINCT` different characters). A token belongs to one annotator, and an annotator
has one active token: a new one *rotates* (revokes) the old one, so "alice" is always one person with one key.

**Login lookup.** Each stored token has a non-secret ``lookup`` key so a login verifies one hash, not all of them:
the ``<id>`` of a generated token, or ``h`` + the first 5 hex digits of the SHA-256 of a chosen token (20 bits:
enough to find the row, far too few to help guess a token of 80 bits or more).

**Sessions.** A login creates a random 256-bit session secret; the cookie carries it, the store its SHA-256
(``label_sessions``). A session ends on logout, on revocation of its token (at once: the same transaction), after
``LabelAuthConfig.session_idle_s`` without a request and ``session_max_s`` after the login. Every form carries a
CSRF token derived from the session secret (:func:`csrf_token`), checked on every POST.

**Rate limits.** Every attempt is a row in ``login_attempts`` (and a log line). Failures from one client address, or
against one annotator's token (known from the token's lookup key), over ``login_window_s`` lock further attempts
out (429) - counted in the store, so every server process shares the lockout. The lockout refuses even the right
token while it lasts (else it would not slow a guesser down); its price is that someone who knows an annotator's
token id can lock that annotator out for a window, and the log shows who tried.

Roles: ``annotator`` labels; ``reviewer`` also resolves disagreements (``/review``) and sees ``/status``;
``admin`` also manages tokens (``/admin``, and the ``shadowcam label tokens`` command).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from pipeline.config import LabelAuthConfig
from pipeline.store import PredictionStore, SessionRecord, TokenRecord
from pipeline.types import ConfigError, StoreError

log = logging.getLogger(__name__)

ROLES = ("annotator", "reviewer", "admin")  # each role may do what the ones before it may
MIN_TOKEN_LENGTH = 16
MIN_TOKEN_BITS = 80
MIN_DISTINCT = 8
TOKEN_ENV = "SHADOWCAM_LABEL_TOKENS"  # TOKEN:ANNOTATOR[:ROLE] entries, separated by newlines or commas
HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)  # argon2id (the library's default type)
_GENERATED = re.compile(r"^scl_([0-9a-f]{12})_[A-Za-z0-9_-]{32,}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_DUMMY_HASH = HASHER.hash(secrets.token_urlsafe(24))  # verified when no token matches, so a miss takes as long as a hit


def role_at_least(role: str, wanted: str) -> bool:
    """Whether ``role`` may do what ``wanted`` may (admin > reviewer > annotator)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(wanted)


def token_bits(token: str) -> float:
    """Strength estimate: length x log2(size of the character classes the token uses)."""
    alphabet = sum(n for cls, n in ((str.islower, 26), (str.isupper, 26), (str.isdigit, 10)) if any(cls(c) for c in token))
    if any(not c.isalnum() for c in token):
        alphabet += 33
    return len(token) * math.log2(alphabet) if alphabet > 1 else 0.0


def check_token_strength(token: str, where: str = "token") -> None:
    """Raise a one-line :class:`ConfigError` naming what is weak about ``token`` (never the token itself)."""
    if token != token.strip() or any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError(f"{where}: a token may not contain spaces or control characters")
    if ":" in token or "," in token:
        raise ConfigError(f"{where}: a token may not contain ':' or ',' (they separate tokens files' fields)")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"{where}: too weak: {len(token)} characters, at least {MIN_TOKEN_LENGTH} needed "
                          f"(`shadowcam label tokens add NAME` makes a strong one)")
    if len(set(token)) < MIN_DISTINCT:
        raise ConfigError(f"{where}: too weak: only {len(set(token))} different characters, at least {MIN_DISTINCT} needed")
    bits = token_bits(token)
    if bits < MIN_TOKEN_BITS:
        raise ConfigError(f"{where}: too weak: about {bits:.0f} bits, at least {MIN_TOKEN_BITS} needed "
                          f"(make it longer or mix upper case, lower case, digits and symbols)")


def check_annotator(name: str, where: str = "annotator") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: annotator name {name!r} must be 1-64 characters of letters, digits and ._@- "
                          f"(starting with a letter or digit)")
    return name


def check_role(role: str, where: str = "role") -> str:
    if role not in ROLES:
        raise ConfigError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def generate_token() -> tuple[str, str]:
    """``(token_id, token)``: a fresh public id and a token ``scl_<id>_<32 url-safe characters>`` (192 random bits)."""
    token_id = secrets.token_hex(6)
    return token_id, f"scl_{token_id}_{secrets.token_urlsafe(24)}"


def lookup_key(token: str) -> str:
    """The non-secret key that finds a token's row: a generated token's id, else ``h`` + 5 hex digits of its SHA-256."""
    m = _GENERATED.match(token)
    return m.group(1) if m else "h" + hashlib.sha256(token.encode()).hexdigest()[:5]


def _verify(token_hash: str, token: str) -> bool:
    try:
        return HASHER.verify(token_hash, token)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class IssuedToken:
    """A token just stored: ``token`` is the only time anyone sees it (only its hash is kept)."""

    token_id: str
    annotator: str
    role: str
    token: str
    revoked: tuple[str, ...] = ()  # token ids this one rotated out


def issue_token(store: PredictionStore, annotator: str, role: str = "annotator", token: str | None = None,
                rotate: bool = False, where: str = "token") -> IssuedToken:
    """Store a token for ``annotator`` (generated unless ``token`` is given, which must then be strong).
    ``rotate``: revoke the annotator's active token (and end its sessions) first; without it an annotator who
    already has an active token is a :class:`ConfigError`."""
    check_annotator(annotator)
    check_role(role)
    if token is None:
        token_id, token = generate_token()
    else:
        check_token_strength(token, where)
        token_id = secrets.token_hex(6)
    rec = TokenRecord(token_id=token_id, annotator=annotator, role=role, lookup=lookup_key(token), token_hash=HASHER.hash(token),
                      created_at=time.time())
    try:
        revoked = store.add_label_token(rec, rotate=rotate)
    except StoreError as e:
        raise ConfigError(str(e)) from None
    log.info("token %s issued for %s (%s)%s", token_id, annotator, role, f", revoking {', '.join(revoked)}" if revoked else "")
    return IssuedToken(token_id, annotator, role, token, tuple(revoked))


def revoke_token(store: PredictionStore, who: str) -> list[str]:
    """Revoke the active token with id ``who`` or of annotator ``who``; its sessions end at once. :class:`ConfigError`
    when nothing active matches."""
    ids = store.revoke_label_tokens(who)
    if not ids:
        raise ConfigError(f"no active token with id or annotator {who!r} (see `shadowcam label tokens list`)")
    log.info("token(s) %s revoked", ", ".join(ids))
    return ids


def parse_token_entries(text: str, where: str) -> dict[str, tuple[str, str]]:
    """``TOKEN:ANNOTATOR[:ROLE]`` entries (one per line or comma-separated; blank and ``#`` lines ignored) ->
    ``{token: (annotator, role)}``. Each token must be strong; an annotator may appear once."""
    out: dict[str, tuple[str, str]] = {}
    seen: set[str] = set()
    n = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for entry in line.split(","):
            entry = entry.strip()
            if not entry:
                continue
            n += 1
            at = f"{where}:{lineno}" if "\n" in text.strip() else f"{where} entry {n}"
            parts = [p.strip() for p in entry.split(":")]
            if len(parts) not in (2, 3) or not all(parts):
                raise ConfigError(f"{at}: expected TOKEN:ANNOTATOR or TOKEN:ANNOTATOR:ROLE")
            tok, name = parts[0], parts[1]
            role = check_role(parts[2], at) if len(parts) == 3 else "annotator"
            check_token_strength(tok, f"{at} (annotator {name!r})")
            check_annotator(name, at)
            if tok in out or name in seen:
                raise ConfigError(f"{at}: {'token' if tok in out else f'annotator {name!r}'} given twice "
                                  f"(a token belongs to one annotator, an annotator has one token)")
            out[tok] = (name, role)
            seen.add(name)
    return out


def read_tokens_file(path: str | Path) -> dict[str, tuple[str, str]]:
    """A tokens file (:func:`parse_token_entries`); it should be readable by its owner only (a warning otherwise)."""
    p = Path(path)
    try:
        text = p.read_text()
        mode = p.stat().st_mode
    except OSError as e:
        raise ConfigError(f"cannot read tokens file {p}: {e.strerror}") from None
    if mode & 0o077:
        log.warning("tokens file %s is readable by others (mode %o); chmod 600 it", p, mode & 0o777)
    out = parse_token_entries(text, str(p))
    if not out:
        raise ConfigError(f"{p}: no tokens; expected lines like TOKEN:ANNOTATOR[:ROLE]")
    return out


def register_tokens(store: PredictionStore, entries: Mapping[str, tuple[str, str]]) -> list[str]:
    """Make the store hold exactly these tokens for these annotators: an annotator whose active token already is this
    one (same secret and role) is left alone (a restart changes nothing), any other is rotated to it. Returns
    ``["alice: kept", "bob: added", ...]``."""
    done = []
    active = {t.annotator: t for t in store.label_tokens(active_only=True)}
    for tok, (name, role) in entries.items():
        cur = active.get(name)
        if cur is not None and cur.role == role and _verify(cur.token_hash, tok):
            done.append(f"{name}: kept")
            continue
        issue_token(store, name, role, token=tok, rotate=True)
        done.append(f"{name}: {'rotated' if cur is not None else 'added'}")
    return done


def csrf_token(session_secret: str) -> str:
    """The CSRF token of a session: an HMAC of a fixed label under the session's secret (not derivable from the store,
    different for every session)."""
    return hmac.new(session_secret.encode(), b"shadowcam.labeling.csrf", hashlib.sha256).hexdigest()


def session_key(session_secret: str) -> str:
    """What the store keeps of a session secret."""
    return hashlib.sha256(session_secret.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    """A live login: who, with which role and token, and the CSRF token its forms carry."""

    session_id: str  # the store's key (sha256 of the secret): safe to log and to put in the audit
    annotator: str
    role: str
    token_id: str
    csrf: str


@dataclass(frozen=True)
class LoginResult:
    """``session_secret`` is set on success (the cookie's value); otherwise ``status`` (401 or 429) and ``message``."""

    ok: bool
    status: int
    message: str
    reason: str
    annotator: str | None = None
    session_secret: str | None = None
    retry_after_s: int | None = None


class Authenticator:
    """Logins, sessions and logouts against the store (:meth:`login` is the verb; :meth:`session` reads a cookie)."""

    def __init__(self, store: PredictionStore, config: LabelAuthConfig | None = None):
        self.store = store
        self.cfg = config or LabelAuthConfig()

    def _locked(self, now: float, client: str, annotator: str | None) -> str | None:
        since = now - self.cfg.login_window_s
        if self.store.count_login_failures(since, client=client) >= self.cfg.max_failures_per_client:
            return "locked_client"
        if annotator is not None and self.store.count_login_failures(since, annotator=annotator) >= self.cfg.max_failures_per_annotator:
            return "locked_annotator"
        return None

    def login(self, token: str, client: str) -> LoginResult:
        """Check ``token`` from ``client`` (an IP address); on success open a session. Every attempt is recorded."""
        now = time.time()
        token = (token or "").strip()
        cands = self.store.label_tokens(lookup=lookup_key(token)) if token else []
        aimed = {c.annotator for c in cands}
        annotator = next(iter(aimed)) if len(aimed) == 1 else None
        locked = self._locked(now, client, annotator)
        if locked is not None:
            self.store.record_login_attempt(now, client, False, locked, annotator)
            log.warning("login refused (%s) from %s%s", locked, client, f" for {annotator}" if annotator else "")
            wait = int(self.cfg.login_window_s)
            who = "from your address" if locked == "locked_client" else "for this annotator"
            return LoginResult(False, 429, f"Too many failed logins {who}; try again in {wait // 60} minutes.", locked, annotator,
                               retry_after_s=wait)
        match = next((c for c in cands if _verify(c.token_hash, token)), None) if cands else None
        if not cands:
            _verify(_DUMMY_HASH, token or "-")
        if match is None or match.revoked_at is not None:
            reason = "bad_token" if match is None else "revoked"
            self.store.record_login_attempt(now, client, False, reason, annotator, match.token_id if match else None)
            log.warning("failed login (%s) from %s%s", reason, client, f" for {annotator}" if annotator else "")
            if not token:
                msg = "No token given."
            elif match is None:
                msg = "That token is not valid."
            else:
                msg = "That token was revoked; ask an admin for a new one."
            return LoginResult(False, 401, msg + " Ask the person who runs the labeling page for your token "
                               "(`shadowcam label tokens add NAME`).", reason, annotator)
        secret = secrets.token_urlsafe(32)
        self.store.create_label_session(session_key(secret), match.token_id, client, now)
        self.store.record_login_attempt(now, client, True, "ok", match.annotator, match.token_id)
        log.info("annotator %s (%s) logged in from %s", match.annotator, match.role, client)
        return LoginResult(True, 303, "", "ok", match.annotator, secret)

    def session(self, secret: str | None) -> Session | None:
        """The live session a cookie names, or None (unknown, tampered, logged out, revoked, idle or too old)."""
        if not secret or len(secret) > 128:
            return None
        key = session_key(secret)
        rec: SessionRecord | None = self.store.label_session(key)
        if rec is None or rec.ended_at is not None or rec.token_revoked_at is not None:
            return None
        now = time.time()
        why = "idle" if now - rec.last_seen_at > self.cfg.session_idle_s else "expired" if now - rec.created_at > self.cfg.session_max_s else None
        if why is not None:
            self.store.end_label_session(key, why, now)
            return None
        if now - rec.last_seen_at >= self.cfg.touch_every_s:
            self.store.touch_label_session(key, now)
        return Session(key, rec.annotator, rec.role, rec.token_id, csrf_token(secret))

    def logout(self, secret: str | None) -> bool:
        if not secret or len(secret) > 128:
            return False
        return self.store.end_label_session(session_key(secret), "logout", time.time())


def tokens_from_env(environ: Mapping[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """The entries of :data:`TOKEN_ENV` (empty when unset)."""
    text = (environ if environ is not None else os.environ).get(TOKEN_ENV, "")
    return parse_token_entries(text, TOKEN_ENV) if text.strip() else {}


__all__ = [
    "ROLES",
    "TOKEN_ENV",
    "Authenticator",
    "IssuedToken",
    "LoginResult",
    "Session",
    "check_annotator",
    "check_role",
    "check_token_strength",
    "csrf_token",
    "generate_token",
    "issue_token",
    "lookup_key",
    "parse_token_entries",
    "read_tokens_file",
    "register_tokens",
    "revoke_token",
    "role_at_least",
    "session_key",
    "token_bits",
    "tokens_from_env",
]
