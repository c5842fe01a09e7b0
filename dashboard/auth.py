"""Who may see the dashboard, and the headers every answer carries.

With SCOREBOX_API_TOKEN set, a request shows the token as the service takes it (``Authorization:
Bearer``, compared as bytes in constant time, so any UTF-8 token works) or as ``?token=`` once:
that answers with a redirect to the same address without it (so it leaves the address bar, the
history and the live pages' refresh) and a cookie. The cookie is not the token (which opens
``/predict`` too) but an HMAC-SHA256 of a fixed label keyed by it: it opens this dashboard only,
and changes when the token does. It is HttpOnly, SameSite=Strict, and Secure when the request
came over TLS (its scheme, or a proxy's ``X-Forwarded-Proto``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "scorebox_session"
_LABEL = b"scorebox dashboard session"

# No script at all, styles inline only (the page's and the SVG charts'), images from here only,
# never in a frame.
HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; "
        b"form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
_NAMES = {name for name, _ in HEADERS}


def session(token: bytes) -> str:
    """The cookie's value for ``token``."""
    return hmac.new(token, _LABEL, hashlib.sha256).hexdigest()


def _over_tls(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


class Gate:
    """ASGI middleware: every request needs ``token`` (no check when it is None)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None
        self.session = session(self.token).encode() if self.token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None:
            await self.app(scope, receive, send)
            return
        response = self._check(Request(scope))
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    def _check(self, request: Request) -> Response | None:
        """None when the request may pass, else the answer it gets."""
        assert self.token is not None and self.session is not None
        header = dict(request.scope["headers"]).get(b"authorization", b"")
        scheme, _, bearer = header.partition(b" ")
        given = request.query_params.get("token")
        if scheme.lower() == b"bearer":
            allowed = secrets.compare_digest(bearer.strip(), self.token)
        elif given is not None:
            allowed = secrets.compare_digest(given.encode(), self.token)
        else:
            cookie = request.cookies.get(COOKIE, "").encode()
            allowed = secrets.compare_digest(cookie, self.session)
        if not allowed:
            return PlainTextResponse(
                "this dashboard needs the API token (SCOREBOX_API_TOKEN): open it with "
                "?token=... once, or send it as Authorization: Bearer",
                status_code=401,
            )
        if given is None:
            return None
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        # One leading slash: "//host" would be another site's address.
        bare = "/" + request.url.path.lstrip("/") + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(bare, status_code=303)
        response.set_cookie(
            COOKIE,
            self.session.decode(),
            httponly=True,
            samesite="strict",
            secure=_over_tls(request),
        )
        return response


class SecurityHeaders:
    """ASGI middleware: HEADERS on every answer, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _NAMES]
                message = {**message, "headers": kept + HEADERS}
            await send(message)

        await self.app(scope, receive, sending)
