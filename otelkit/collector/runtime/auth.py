"""Authentication between the collector and its peers, in the upstream collector's shape.

An auth extension (``bearertokenauth``, ``basicauth`` or a plugin's) is an ordinary
extension that also implements :class:`ServerAuthenticator` (checks what a client sent),
:class:`ClientAuthenticator` (says what to send), or both. Receivers and exporters name it
with ``auth: {authenticator: <extension id>}``; the extension must be listed in
``service.extensions``, so it starts before the components that use it.

A third-party authenticator implements the same two small protocols: the server side sees
the request's headers (HTTP headers or gRPC metadata, names lower-cased) before any body
is read, and the client side is asked for its headers on every request, so rotated
credentials take effect without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import grpc
import grpc.aio
import httpx
from pydantic import field_validator

from otelkit.collector.runtime.component import ComponentConfig, ComponentID, Host


class AuthenticationError(Exception):
    """Missing or wrong credentials. The message is safe to log and to return: it never
    holds the credential itself. ``challenge`` is the ``WWW-Authenticate`` value."""

    def __init__(self, message: str, challenge: str = "") -> None:
        super().__init__(message)
        self.challenge = challenge


@runtime_checkable
class ServerAuthenticator(Protocol):
    """Checks an incoming request's headers; raises :class:`AuthenticationError`."""

    async def authenticate(self, headers: Mapping[str, str]) -> None: ...


@runtime_checkable
class ClientAuthenticator(Protocol):
    """The headers (or gRPC metadata) to add to each outgoing request."""

    def request_headers(self) -> Mapping[str, str]: ...


class AuthSettings(ComponentConfig):
    """``auth: {authenticator: <extension id>}`` on a receiver protocol or an exporter."""

    authenticator: str

    @field_validator("authenticator")
    @classmethod
    def _component_id(cls, value: str) -> str:
        ComponentID.parse(value)
        return value.strip()

    @property
    def extension_id(self) -> ComponentID:
        return ComponentID.parse(self.authenticator)


def server_authenticator(host: Host, settings: AuthSettings, user: str) -> ServerAuthenticator:
    """The extension ``settings`` names, as a server authenticator (``user`` names who asks)."""
    found: ServerAuthenticator = _authenticator(
        host, settings, user, ServerAuthenticator, "authenticate incoming requests (it has "
        "no server side; basicauth needs htpasswd for that)",
    )  # fmt: skip
    return found


def client_authenticator(host: Host, settings: AuthSettings, user: str) -> ClientAuthenticator:
    """The extension ``settings`` names, as a client authenticator."""
    found: ClientAuthenticator = _authenticator(
        host, settings, user, ClientAuthenticator, "add credentials to outgoing requests (it "
        "has no client side; basicauth needs client_auth for that)",
    )  # fmt: skip
    return found


def _authenticator(
    host: Host, settings: AuthSettings, user: str, side: type[Any], cannot: str
) -> Any:
    extension = host.get_extension(settings.extension_id)
    if extension is None:
        raise ValueError(
            f"{user}: authenticator {settings.authenticator} is not a running extension; "
            "define it under extensions and list it in service.extensions"
        )
    if not isinstance(extension, side):
        raise ValueError(f"{user}: extension {settings.authenticator} cannot {cannot}")
    return extension


def asgi_headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """An ASGI request's headers by lower-case name; the first of repeated headers wins."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


class AuthGate:
    """One listener's authentication: resolved at start, asked before each request's body
    is read; refusals are counted (``on_refusal``) and logged at debug level, with one
    warning for the first, so a flood of bad requests cannot flood the log."""

    def __init__(
        self,
        settings: AuthSettings | None,
        user: str,
        logger: logging.Logger,
        on_refusal: Callable[[], None],
    ) -> None:
        self.settings = settings
        self._user = user
        self._logger = logger
        self._on_refusal = on_refusal
        self._authenticator: ServerAuthenticator | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.settings is not None or self._authenticator is not None

    def start(self, host: Host) -> None:
        if self.settings is not None:
            self._authenticator = server_authenticator(host, self.settings, self._user)

    def use(self, authenticator: ServerAuthenticator) -> None:
        """Check with ``authenticator`` directly (a component's own token setting)."""
        self._authenticator = authenticator

    async def refusal(self, headers: Mapping[str, str]) -> AuthenticationError | None:
        """None when the request may go on; else why not (already counted)."""
        if self._authenticator is None:
            if self.settings is None:
                return None
            return AuthenticationError("authenticator not started")  # never let through
        try:
            await self._authenticator.authenticate(headers)
        except AuthenticationError as exc:
            self._refused(exc)
            return exc
        return None

    def _refused(self, error: AuthenticationError) -> None:
        self._on_refusal()
        if not self._warned:
            self._warned = True
            self._logger.warning(
                "%s refused an unauthenticated request: %s (further refusals are counted "
                "and logged at debug level)",
                self._user,
                error,
            )
        else:
            self._logger.debug("%s refused an unauthenticated request: %s", self._user, error)


# Client side -----------------------------------------------------------------------------
class HttpxAuth(httpx.Auth):
    """Adds a client authenticator's headers to every request an httpx client sends."""

    def __init__(self, authenticator: ClientAuthenticator) -> None:
        self._authenticator = authenticator

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(self._authenticator.request_headers())
        yield request


class GrpcAuthInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds a client authenticator's headers as metadata to every unary gRPC call.

    Unlike upstream, plain-text channels get them too (a warning at start says so): two
    collectors on one private network may use a token without TLS, knowingly.
    """

    def __init__(self, authenticator: ClientAuthenticator) -> None:
        self._authenticator = authenticator

    async def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: Any,
        request: Any,
    ) -> Any:
        metadata = list(client_call_details.metadata or ())
        metadata += [(k.lower(), v) for k, v in self._authenticator.request_headers().items()]
        return await continuation(client_call_details._replace(metadata=metadata), request)


def httpx_auth(
    host: Host, settings: AuthSettings | None, user: str, urls: Iterable[str]
) -> HttpxAuth | None:
    """The httpx ``auth`` for an exporter's ``auth`` setting (None without one)."""
    if settings is None:
        return None
    authenticator = client_authenticator(host, settings, user)
    for url in urls:
        parsed = httpx.URL(url)
        if parsed.scheme == "http":
            _warn_plaintext(user, parsed.host)
    return HttpxAuth(authenticator)


def grpc_interceptors(
    host: Host, settings: AuthSettings | None, user: str, target: str, plaintext: bool
) -> list[GrpcAuthInterceptor]:
    """The channel interceptors for an exporter's ``auth`` setting (none without one)."""
    if settings is None:
        return []
    authenticator = client_authenticator(host, settings, user)
    if plaintext:
        _warn_plaintext(user, target.rpartition(":")[0])
    return [GrpcAuthInterceptor(authenticator)]


def _warn_plaintext(user: str, host: str) -> None:
    from otelkit.collector.runtime.listeners import is_loopback

    if not is_loopback(host):
        logging.getLogger("otelkit.auth").warning(
            "%s sends credentials to %s without TLS: anyone on the path can read them",
            user,
            host,
        )
