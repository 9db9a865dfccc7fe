"""Defences against other web sites: DNS rebinding (the Host check) and cross-site requests (the Origin check).

Without a token the server trusts whoever can reach it, which by default is only this machine. Two kinds of
web page in the user's own browser could still reach it:
- a page whose domain is re-pointed at 127.0.0.1 (DNS rebinding) reads the API as "its own" site. Its requests
  carry its own name in `Host`, so the server answers only the names it is known by (`Settings.trusted_hosts`:
  loopback names, the bound host, `--allowed-host`), through Starlette's TrustedHostMiddleware: 400 otherwise.
- any page can make the browser POST a form or a fetch to 127.0.0.1 (cross-site request forgery).

The rule for every state-changing request (any method but GET, HEAD, OPTIONS and TRACE):
1. with an `Origin` header (every current browser sends one with every POST), it must name this server:
   its host[:port] equals the request's `Host`, or its host is one of `--allowed-host` (for a reverse proxy
   that rewrites Host). `Origin: null` (sandboxed frames, file: pages) is refused.
2. without `Origin`, a `Referer` is held to the same rule.
3. with neither, the client is not a browser page (curl, scripts, the CLI): allowed, unless the browser's
   own `Sec-Fetch-Site` says the request is cross-site or same-site (another port on this machine).
The scheme is not compared, so a TLS-terminating proxy in front (https outside, http inside) still works.
Refused requests get 403 JSON before authentication, the body limit or any route: nothing is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leukoscope.serve.limits import send_json

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_PASSED = "leukoscope.host_checked"  # scope key: the request got past the Host check


class TrustedHosts:
    """Starlette's TrustedHostMiddleware, answering a Host it does not know with the API's JSON error."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.check = TrustedHostMiddleware(self._passed, allowed_hosts=list(allowed_hosts), www_redirect=False)

    async def _passed(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_PASSED] = True
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.check(scope, receive, send)
            return

        async def json_refusal(message: Message) -> None:
            if scope.get(_PASSED):
                await send(message)
            elif message["type"] == "http.response.start":  # the middleware's plain-text 400: answer in JSON
                await send_json(send, 400, {"detail": "unknown Host header: this server answers only the names "
                                                      "it is configured for (see --allowed-host)"})

        await self.check(scope, receive, json_refusal)


def _host_matches(host: str, patterns: Sequence[str]) -> bool:
    """Starlette's pattern rule ("name" or "*.domain"); a bare "*" never vouches for a cross-site origin."""
    return any(host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in patterns)


def same_origin(source: str, host_header: str, allowed_hosts: Sequence[str]) -> bool:
    """Whether `source` (an Origin or Referer value) names the server the request was sent to."""
    try:
        parts = urlsplit(source.strip())
        hostname = (parts.hostname or "").lower()
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not hostname:
        return False
    netloc = parts.netloc.rsplit("@", 1)[-1].lower()
    bracketed = f"[{hostname}]" if ":" in hostname else hostname
    return netloc == host_header.lower() or _host_matches(bracketed, [p.lower() for p in allowed_hosts])


class OriginCheckMiddleware:
    """Refuse state-changing requests that a browser sent on behalf of another site (see the module doc)."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed_hosts = tuple(allowed_hosts)

    def refusal(self, scope: Scope) -> str | None:
        """Why this request is refused, or None when it may go on."""
        if scope["method"] in SAFE_METHODS:
            return None
        headers = Headers(scope=scope)  # Starlette's case-insensitive view; .get gives the first value
        host = headers.get("host") or ""
        origin, referer = headers.get("origin"), headers.get("referer")
        if origin is not None:
            return None if same_origin(origin, host, self.allowed_hosts) else f"Origin {origin[:100]!r}"
        if referer is not None:
            return None if same_origin(referer, host, self.allowed_hosts) else "Referer of another site"
        site = (headers.get("sec-fetch-site") or "").lower()
        return f"Sec-Fetch-Site {site!r}" if site in ("cross-site", "same-site") else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (why := self.refusal(scope)):
            await send_json(send, 403, {"detail": f"cross-site request refused ({why} is not this server): "
                                                  "send it from this server's own pages or without a browser"},
                            close=True)
            return
        await self.app(scope, receive, send)
