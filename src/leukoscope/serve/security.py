"""Authentication (a shared token, or named users' passwords), and the security headers every response carries.

Who may do what:
- No token and no users: the app is open to whoever reaches it (loopback by default). Verifying a call
  still needs a name, so it answers 401 until a user exists and logs in.
- LEUKOSCOPE_API_TOKEN set, or any user in the database (`leukoscope users add`): every route but the login
  form and the static files needs credentials: `Authorization: Bearer <token>`, `X-API-Token: <token>`, or
  the session cookie the login form sets (after a name and password, or the token).
- The token's holder acts as an admin (named "api-token" in the verification trail) of the implicit clinic:
  machine clients and the lab's administrator. Users are technologists (predict, verify, read their
  clinic's everything) or admins (also the user routes under /api/v1/users) of one clinic, or network admins
  (every clinic); a technologist on an admin route gets 403. A clinic's API token (`leukoscope tokens
  create`, serve/tokens.py) acts in its clinic with its role; revoked, or of a removed clinic: 401.
- Whoever it is, `clinic_scope(request)` is the clinic whose rows the request may see (None: every clinic,
  for a network admin); without any login (an open workstation) it is the implicit clinic.
The cookie holds a random session id (`sessions.SessionStore`), never the token; it is HttpOnly and
SameSite=Strict (so another site cannot make the browser post uploads with it), expires after
`--session-hours` (12 by default) and stops working at once on logout, in every browser holding a copy, and
for a user who is disabled or gets a new password. Only tokens count as guesses here (passwords are counted
by the login form): a stale session cookie is simply not a login.
"""

from __future__ import annotations

import hmac
import logging
from http.cookies import SimpleCookie
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leukoscope.serve.database import UNAVAILABLE_ANSWER, DatabaseUnavailable
from leukoscope.serve.limits import RequestRejected, send_json
from leukoscope.serve.lockout import Lockout
from leukoscope.serve.lockout import message as lockout_message
from leukoscope.serve.sessions import DEFAULT_CLINIC_ID, TOKEN_PRINCIPAL, Principal, SessionStore
from leukoscope.serve.tokens import ApiTokens
from leukoscope.serve.users import Accounts

log = logging.getLogger("leukoscope.serve")
COOKIE_NAME = "leukoscope_session"
DOCS_STATIC = "/docs-static"  # Swagger UI's own JS/CSS (fastapi-offline), served by the app, not a CDN
PUBLIC_PREFIXES = ("/static/", DOCS_STATIC + "/")
PUBLIC_PATHS = frozenset({"/login", "/logout"})
PRINCIPAL_KEY = "leukoscope.principal"  # scope key: who the request comes from (None: nobody in particular)
AUTH_REQUIRED = ("authentication required: log in, or send 'Authorization: Bearer <token>' or "
                 "'X-API-Token: <token>'")

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
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` with a form's POST (the
    # login and logout forms), which the Origin check must refuse; other sites still get no Referer at all
    "referrer-policy": "same-origin",
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


def presented_token(scope: Scope) -> str | None:
    """The token a request carries (the Bearer one first), or None."""
    headers = _headers(scope)
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-token")


def session_id(scope: Scope) -> str | None:
    """The session id in the request's cookie, if any (a malformed Cookie header holds none)."""
    cookie = SimpleCookie()
    try:
        cookie.load(_headers(scope).get("cookie", ""))
    except Exception:
        return None
    morsel = cookie.get(COOKIE_NAME)
    return morsel.value if morsel is not None else None


def principal_of(connection: HTTPConnection) -> Principal | None:
    """Who sent this request: a logged-in user, the token's holder, or None (an open server, no login)."""
    return connection.scope.get(PRINCIPAL_KEY)


def clinic_scope(connection: HTTPConnection) -> int | None:
    """The clinic whose data this request may see: the principal's (None: every clinic, a network admin);
    the implicit clinic on an open server with nobody logged in."""
    principal = principal_of(connection)
    return DEFAULT_CLINIC_ID if principal is None else principal.scope


def home_clinic(connection: HTTPConnection) -> int:
    """The clinic new rows (uploads) of this request belong to: the principal's own, even a network admin's."""
    principal = principal_of(connection)
    return DEFAULT_CLINIC_ID if principal is None else principal.clinic_id


def require_user(connection: HTTPConnection) -> Principal:
    """The request's principal; 401 when nobody is logged in (even on an open server: a verification needs a name)."""
    principal = principal_of(connection)
    if principal is None:
        raise RequestRejected("a named user is needed: log in as a user (`leukoscope users add NAME --role "
                              "technologist` makes one) or send the API token", 401,
                              headers={"WWW-Authenticate": 'Bearer realm="leukoscope"'})
    return principal


def require_admin(connection: HTTPConnection) -> Principal:
    """The request's principal when an admin (or the token's holder); 401 without one, 403 for a technologist."""
    principal = require_user(connection)
    if not principal.is_admin:
        raise RequestRejected(f"forbidden: only an admin may do this ({principal.name} is a {principal.role})", 403)
    return principal


class TokenAuthMiddleware:
    """Every request needs credentials when a token is configured or any user exists, except the login form
    and static files; the request's principal is put in the scope for the routes (`principal_of`).

    Browsers asking for a page are sent to the login form; everything else gets 401 JSON. A wrong token
    counts against the client's address in `lockout`; a locked address gets 429 with Retry-After for
    further wrong tokens (a right one always works).
    """

    def __init__(self, app: ASGIApp, token: str | None, lockout: Lockout | None = None,
                 sessions: SessionStore | None = None, accounts: Accounts | None = None) -> None:
        self.app = app
        self.token = token
        self.lockout = lockout or Lockout()
        self.sessions = sessions or SessionStore()
        self.accounts = accounts if accounts is not None else Accounts()

    def _from_session(self, scope: Scope) -> Principal | None:
        principal = self.sessions.get(session_id(scope))
        if principal is None or principal.via == "token":
            return principal
        if principal.via == "clinic-token":  # revoked, or its clinic removed: gone
            return self._tokens().still_valid(principal) if self.accounts.store is not None else None
        return self.accounts.current(principal)  # disabled, a new password, or the clinic removed: gone

    def _tokens(self) -> ApiTokens:
        assert self.accounts.store is not None
        return ApiTokens(self.accounts.store)

    def _from_token(self, scope: Scope) -> Principal | None:
        """The shared token's holder, a live clinic token's principal, or None (a wrong token)."""
        if self.token and has_right_token(scope, self.token):
            return TOKEN_PRINCIPAL
        if self.accounts.store is None:
            return None
        return self._tokens().principal(presented_token(scope))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        try:
            admitted = await self._check(scope, send)
        except DatabaseUnavailable as exc:  # sessions, lockouts and users are in the database
            log.warning("database unavailable while checking credentials on %s: %s", scope["path"], exc)
            await send_json(send, 503, {"detail": UNAVAILABLE_ANSWER}, headers={"Retry-After": "2"})
            return
        if admitted:  # errors of the app itself are the app's (500/503 JSON)
            await self.app(scope, receive, send)

    async def _check(self, scope: Scope, send: Send) -> bool:
        """Whether the request goes on to the app (with its principal in the scope); otherwise answered here."""
        path = scope["path"]
        principal = await run_in_threadpool(self._from_session, scope)
        if principal is None and path not in PUBLIC_PATHS and presents_token(scope) and (
                self.token or await run_in_threadpool(self.accounts.any_users)):
            principal = await run_in_threadpool(self._from_token, scope)
            wait = await run_in_threadpool(self.lockout.attempt, client_address(scope), principal is not None)
            if wait:
                await send_json(send, 429, {"detail": lockout_message(wait)}, headers={"Retry-After": str(wait)})
                return False
        scope[PRINCIPAL_KEY] = principal
        if principal is not None or path in PUBLIC_PATHS or not (
                self.token or await run_in_threadpool(self.accounts.any_users)):
            return True
        wants_page = scope["method"] == "GET" and "text/html" in _headers(scope).get("accept", "")
        if wants_page and not path.startswith("/api/"):
            target = path + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
            location = "/login?next=" + quote(target, safe="")
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return False
        await send_json(send, 401, {"detail": AUTH_REQUIRED}, headers={"WWW-Authenticate": 'Bearer realm="leukoscope"'})
        return False


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
