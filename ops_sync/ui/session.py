"""Dashboard sign-in sessions: server-side, in the metadata database, so replicas share them.

- Signing in checks the admin token (`OpsCenter.check_admin`) and starts a session: a 256-bit
  random id in a cookie (`HttpOnly; Secure; SameSite=Strict; Path=/`, the `__Host-` prefix),
  of which the database keeps only the sha256. Sessions last `SESSION_TTL`; signing out deletes
  the row. The admin token itself is never stored, put in a page or in a URL.
- Every form that changes state carries a CSRF token: for a session, an HMAC of the session id
  (nothing more to store); for the sign-in form (no session yet), a random value in a second
  cookie that the form must echo (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from edge.errors import UnsupportedMediaType
from edge.httpio import read_body
from ops_sync.errors import BadRequest, PayloadTooLarge, RequestTimeout
from ops_sync.metadb import Database

SESSION_COOKIE = "__Host-ops-session"
SIGNIN_COOKIE = "__Host-ops-signin"
SESSION_TTL = 12 * 3600.0
SIGNIN_TTL = 600
FORM_LIMIT = 64 << 10


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def csrf_for(session_id: str) -> str:
    """The CSRF token of a session (its forms' hidden `csrf` field)."""
    return hmac.new(session_id.encode(), b"ops-ui csrf", hashlib.sha256).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict"
    )


class Sessions:
    """Sessions in the metadata database (`ui_sessions`, migration 6)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def start(self, now: float) -> str:
        """A new session's id (for the cookie); expired sessions are deleted on the way."""
        session_id = secrets.token_urlsafe(32)
        with self.db.tx() as tx:
            tx.execute("DELETE FROM ui_sessions WHERE expires_at < ?", (now,))
            tx.execute(
                "INSERT INTO ui_sessions (id_sha256, created_at, expires_at) VALUES (?, ?, ?)",
                (_digest(session_id), now, now + SESSION_TTL),
            )
        return session_id

    def valid(self, session_id: str | None, now: float) -> bool:
        if not session_id or len(session_id) > 128:
            return False
        row = self.db.reader().one(
            "SELECT expires_at FROM ui_sessions WHERE id_sha256 = ?", (_digest(session_id),)
        )
        return row is not None and float(row["expires_at"]) > now

    def end(self, session_id: str) -> None:
        with self.db.tx() as tx:
            tx.execute("DELETE FROM ui_sessions WHERE id_sha256 = ?", (_digest(session_id),))


def session_id(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE)


async def read_form(request: Request) -> dict[str, str]:
    """A submitted form (`application/x-www-form-urlencoded`, at most `FORM_LIMIT` bytes):
    each field's first value. No multipart parser is needed: the forms carry text only."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("a form must be sent as application/x-www-form-urlencoded")
    body = await read_body(request, FORM_LIMIT, PayloadTooLarge, RequestTimeout)
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the form could not be read: {exc}") from None
    return {key: values[0] for key, values in fields.items()}
