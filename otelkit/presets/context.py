"""Per-request context (request ID, user) kept in a contextvar.

The middleware stores one mutable :class:`RequestContext` per request, so values set
later (``set_user`` inside a sync endpoint running in a thread with a copied context)
are still seen by the request's log records.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

PII_KEYS = frozenset({"email", "ip", "ip_address", "phone", "name", "full_name", "username"})
_PII_ATTRIBUTE = {"email": "user.email", "ip": "client.address", "ip_address": "client.address"}
_ALLOW_PII = [False]


@dataclass
class RequestContext:
    request_id: str
    user: dict[str, str] = field(default_factory=dict)


_current: ContextVar[RequestContext | None] = ContextVar("otelkit_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


def current_request_id() -> str | None:
    ctx = _current.get()
    return ctx.request_id if ctx is not None else None


def enter_request(request_id: str) -> Any:
    """Start a request context; returns the token to pass to :func:`exit_request`."""
    return _current.set(RequestContext(request_id))


def exit_request(token: Any) -> None:
    _current.reset(token)


def allow_pii(allowed: bool) -> None:
    """Set by ``configure(capture_pii=...)``; e-mail and IP are dropped unless allowed."""
    _ALLOW_PII[0] = allowed


def user_attributes(id: str | int | None, extra: dict[str, Any], allow: bool) -> dict[str, str]:
    attributes: dict[str, str] = {}
    if id is not None:
        attributes["enduser.id"] = str(id)
    for key, value in extra.items():
        if value is None:
            continue
        if key.lower() in PII_KEYS and not allow:
            continue
        attributes[_PII_ATTRIBUTE.get(key.lower(), f"enduser.{key}")] = str(value)
    return attributes


def set_user(id: str | int | None = None, *, allow_pii: bool | None = None, **extra: Any) -> None:
    """Tag the current span and the rest of the request's logs with the end user.

    ``enduser.id`` and each extra as ``enduser.<key>``; e-mail, IP and names are left out
    unless ``allow_pii=True`` here or ``configure(capture_pii=True)``.
    """
    from opentelemetry import trace

    allow = _ALLOW_PII[0] if allow_pii is None else allow_pii
    attributes = user_attributes(id, extra, allow)
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)
    ctx = _current.get()
    if ctx is not None:
        ctx.user.update(attributes)
