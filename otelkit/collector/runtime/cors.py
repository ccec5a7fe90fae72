"""CORS for an HTTP listener, with upstream's ``confighttp`` keys and its library's rules.

``cors: {allowed_origins, allowed_headers, max_age}``. An origin may hold one ``*``
standing for any run of characters (``https://*.example.com``); ``"*"`` alone allows every
origin. The CORS-safelisted ``Accept``, ``Accept-Language``, ``Content-Language`` and
``Content-Type`` are always allowed, ``X-Requested-With`` too when ``allowed_headers`` is
empty, and ``"*"`` allows any header. As upstream, responses allow credentials, so the
allowed origin is echoed (never ``*``); unlike upstream, ``allowed_origins: ["*"]`` thus
works in browsers.

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is
answered here with 204, before authentication (browsers never send credentials on a
preflight): with ``Access-Control-Allow-*`` headers when the origin, method and every
requested header are allowed, with none otherwise. Other requests go on; those from an
allowed origin get ``Access-Control-Allow-Origin`` on whatever answer they receive,
including a 401, so the page can read why it was refused.
"""

from __future__ import annotations

from pydantic import Field

from otelkit.collector.runtime.component import ComponentConfig
from otelkit.collector.runtime.http import Message, Scope, Send

ALLOWED_METHODS = frozenset({"GET", "POST", "HEAD"})
_SAFELISTED = frozenset({"accept", "accept-language", "content-language", "content-type"})
_VARY_PREFLIGHT = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


class CORSSettings(ComponentConfig):
    allowed_origins: list[str] = Field(
        default_factory=list, description="Origins allowed; one * matches any characters."
    )
    allowed_headers: list[str] = Field(
        default_factory=list, description="Request headers allowed beyond the safelisted ones."
    )
    max_age: int = Field(0, ge=0, description="Seconds browsers may cache a preflight answer.")


class Cors:
    """Answers preflights and marks answers to allowed origins."""

    def __init__(self, settings: CORSSettings) -> None:
        origins = [origin.strip().lower() for origin in settings.allowed_origins]
        self._any_origin = "*" in origins
        self._exact = frozenset(origin for origin in origins if "*" not in origin)
        self._patterns = [
            tuple(origin.split("*", 1)) for origin in origins if "*" in origin and origin != "*"
        ]
        headers = {header.strip().lower() for header in settings.allowed_headers}
        self._any_header = "*" in headers
        self._headers = frozenset(
            headers | _SAFELISTED | {"origin"} | ({"x-requested-with"} if not headers else set())
        )
        self._max_age = settings.max_age

    @property
    def enabled(self) -> bool:
        return bool(self._any_origin or self._exact or self._patterns)

    def origin_allowed(self, origin: str) -> bool:
        origin = origin.lower()
        if self._any_origin or origin in self._exact:
            return True
        return any(
            len(origin) >= len(prefix) + len(suffix)
            and origin.startswith(prefix)
            and origin.endswith(suffix)
            for prefix, suffix in self._patterns
        )

    async def preflight(self, scope: Scope, send: Send) -> bool:
        """Answer ``scope`` if it is a preflight (True), else leave it alone (False)."""
        if scope["method"] != "OPTIONS":
            return False
        origin = requested_method = requested_headers = ""
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"access-control-request-method":
                requested_method = value.decode("latin-1").strip().upper()
            elif name == b"access-control-request-headers":
                requested_headers = value.decode("latin-1")
        if not origin or not requested_method:
            return False
        head = [(b"vary", _VARY_PREFLIGHT), (b"content-length", b"0")]
        wanted = [h.strip().lower() for h in requested_headers.split(",") if h.strip()]
        if (
            self.origin_allowed(origin)
            and requested_method in ALLOWED_METHODS
            and (self._any_header or all(header in self._headers for header in wanted))
        ):
            head += [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-methods", requested_method.encode()),
                (b"access-control-allow-credentials", b"true"),
            ]
            if wanted:
                head.append((b"access-control-allow-headers", ", ".join(wanted).encode()))
            if self._max_age:
                head.append((b"access-control-max-age", str(self._max_age).encode()))
        await send({"type": "http.response.start", "status": 204, "headers": head})
        await send({"type": "http.response.body", "body": b""})
        return True

    def wrap(self, scope: Scope, send: Send) -> Send:
        """``send`` that adds the CORS headers an actual request's answer needs."""
        origin = next((v for n, v in scope["headers"] if n == b"origin"), None)
        if origin is None:
            return send
        extra = [(b"vary", b"Origin")]
        if self.origin_allowed(origin.decode("latin-1")):
            extra += [
                (b"access-control-allow-origin", origin),
                (b"access-control-allow-credentials", b"true"),
            ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        return send_with_cors
