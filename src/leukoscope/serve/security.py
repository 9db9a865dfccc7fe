"""Authentication by a shared token, and the security headers every response carries.

With LEUKOSCOPE_API_TOKEN set, every route but the login form and the static files needs the token:
`Authorization: Bearer <token>`, `X-API-Token: <token>`, or the session cookie the login form sets. The
cookie holds a random session id (`sessions.SessionStore`), never the token; it is HttpOnly and
SameSite=Strict (so another site cannot make the browser post uploads with it), expires after
`--session-hours` (12 by default) and stops working at once on logout, in every browser holding a copy.
Only tokens count as guesses for the lockout: a stale session cookie is simply not a login.
"""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leukoscope.serve.limits import send_json
from leukoscope.serve.lockout import Lockout
from leukoscope.serve.lockout import message as lockout_message
from leukoscope.serve.sessions import SessionStore

COOKIE_NAME = "leukoscope_session"
DOCS_STATIC = "/docs-static"  # Swagger UI's own JS/CSS (fastapi-offline), served by the app, not a CDN
PUBLIC_PREFIXES = ("/static/", DOCS_STATIC + "/")
PUBLIC_PATHS = frozenset({"/login", "/logout"})

# The app's own pages load only same-origin scripts and styles: no inline script, no CDN.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# The /docs page is Swagger UI from the app's own files with FastAPI's inline bootstrap script; it gets its
# own policy (inline script allowed there only, still nothing from another origin).
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
STATIC_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


def token_matches(given: str | None, token: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def safe_next(target: str | None) -> str:
    """Where to go after login: a local path only (no open redirect to another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def client_address(scope: Scope) -> str:
    """The peer's address (what the lockout counts by); "unknown" when the server was not told."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def presents_token(scope: Scope) -> bool:
    """Whether the request carries a token (a wrong one counts as a guess)."""
    headers = _headers(scope)
    return headers.get("authorization", "")[:7].lower() == "bearer " or "x-api-token" in headers


def has_right_token(scope: Scope, token: str) -> bool:
    headers = _headers(scope)
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and token_matches(auth[7:].strip(), token):
        return True
    return token_matches(headers.get("x-api-token"), token)


def session_id(scope: Scope) -> str | None:
    """The session id in the request's cookie, if any (a malformed Cookie header holds none)."""
    cookie = SimpleCookie()
    try:
        cookie.load(_headers(scope).get("cookie", ""))
    except Exception:
        return None
    morsel = cookie.get(COOKIE_NAME)
    return morsel.value if morsel is not None else None


class TokenAuthMiddleware:
    """Every request needs the token (when one is configured), except the login form and static files.

    Browsers asking for a page are sent to the login form; everything else gets 401 JSON. A wrong token
    counts against the client's address in `lockout`; a locked address gets 429 with Retry-After for
    further wrong tokens (a right one always works).
    """

    def __init__(self, app: ASGIApp, token: str | None, lockout: Lockout | None = None,
                 sessions: SessionStore | None = None) -> None:
        self.app = app
        self.token = token
        self.lockout = lockout or Lockout()
        self.sessions = sessions if sessions is not None else SessionStore()  # (an empty store is falsy)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.token:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self.sessions.is_valid(session_id(scope)):
            await self.app(scope, receive, send)
            return
        if presents_token(scope):
            authorized = has_right_token(scope, self.token)
            wait = self.lockout.attempt(client_address(scope), authorized)
            if wait:
                await send_json(send, 429, {"detail": lockout_message(wait)}, headers={"Retry-After": str(wait)})
                return
            if authorized:
                await self.app(scope, receive, send)
                return
        wants_page = scope["method"] == "GET" and "text/html" in _headers(scope).get("accept", "")
        if wants_page and not path.startswith("/api/"):
            target = path + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
            location = "/login?next=" + quote(target, safe="")
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await send_json(send, 401, {"detail": "authentication required: send 'Authorization: Bearer <token>' "
                                              "or 'X-API-Token: <token>'"},
                        headers={"WWW-Authenticate": 'Bearer realm="leukoscope"'})


class SecurityHeadersMiddleware:
    """Add CSP, nosniff, frame denial and referrer policy to every response, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope["path"] in DOCS_PATHS else PAGE_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode("latin-1").lower()
                           not in STATIC_HEADERS and k.lower() != b"content-security-policy"]
                headers += [(k.encode(), v.encode()) for k, v in STATIC_HEADERS.items()]
                headers.append((b"content-security-policy", csp.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
