"""``bearertokenauth``: a static token, checked on incoming requests and sent on outgoing ones.

Keys and meaning follow the upstream extension: ``token`` (or ``tokens``, several accepted
at once for rotation), or ``filename`` (one token per line; re-read when the file
changes, and then it wins over ``token``), ``scheme`` (default ``Bearer``; empty sends
the bare token) and ``header`` (default ``Authorization``). As a server authenticator it
compares the header with ``<scheme> <token>`` in constant time; as a client authenticator
it sends the first token. Unlike upstream, empty lines of the file are not tokens, and
an empty token is a configuration error (an unset ``${env:...}`` must not mean "no
token").
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
from collections.abc import Mapping

from pydantic import Field, field_validator, model_validator

from otelkit.collector.runtime.auth import AuthenticationError
from otelkit.collector.runtime.component import (
    ComponentConfig,
    CreateSettings,
    Extension,
    Host,
    extension_factory,
)
from otelkit.collector.runtime.types import Secret

FILE_CHECK_INTERVAL = 1.0
"""Seconds between checks of ``filename`` for a new token (rotation without restart)."""


class BearerTokenAuthConfig(ComponentConfig):
    scheme: str = Field("Bearer", description="Prefix of the header value; empty for none.")
    header: str = Field("Authorization", description="The header (gRPC metadata key) used.")
    token: Secret | None = Field(None, description="The token, usually ${env:NAME}.")
    tokens: list[Secret] = Field(
        default_factory=list, description="Several accepted tokens; the first is sent."
    )
    filename: str | None = Field(None, description="File with the token(s), one per line.")

    @field_validator("header")
    @classmethod
    def _header_name(cls, header: str) -> str:
        if not header or any(c.isspace() or c == ":" for c in header):
            raise ValueError(f"{header!r} is not a header name")
        return header

    @model_validator(mode="after")
    def _some_token(self) -> BearerTokenAuthConfig:
        if self.token is not None and self.tokens:
            raise ValueError("set token or tokens, not both")
        values = [self.token, *self.tokens] if self.token is not None else self.tokens
        if not self.filename and not any(v.get_secret_value().strip() for v in values):
            raise ValueError(
                "no token: set token (e.g. token: ${env:OTELKIT_TOKEN}, and make sure the "
                "variable is set and not empty), tokens, or filename"
            )
        if any(not v.get_secret_value().strip() for v in values):
            raise ValueError("a token is empty; is its environment variable set?")
        return self


class BearerTokenAuth(Extension):
    """Server and client authenticator for one shared token (or a few, during rotation)."""

    def __init__(self, settings: CreateSettings, config: BearerTokenAuthConfig) -> None:
        self._config = config
        self._logger = settings.logger.getChild(f"extension.{settings.id}")
        self._header = config.header.lower()
        self._challenge = config.scheme or "Bearer"
        self._expected: list[bytes] = []
        self._file_state: tuple[int, int, int] | None = None
        self._watcher: asyncio.Task[None] | None = None
        if config.filename and (config.token is not None or config.tokens):
            self._logger.warning("filename is set: token and tokens are ignored, as upstream")
        if not config.filename:
            tokens = [config.token] if config.token is not None else config.tokens
            self._set_tokens([t.get_secret_value().strip() for t in tokens])

    async def start(self, host: Host) -> None:
        if self._config.filename:
            self._read_file(initial=True)
            self._watcher = asyncio.create_task(self._watch_file(), name="bearertokenauth-file")

    async def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    # Server side ---------------------------------------------------------------------
    async def authenticate(self, headers: Mapping[str, str]) -> None:
        value = headers.get(self._header)
        if not value:
            raise AuthenticationError(f"missing {self._config.header} header", self._challenge)
        presented = value.encode("utf-8", "surrogateescape")
        matched = False
        for expected in self._expected:  # every one compared: no early exit to time
            matched |= hmac.compare_digest(presented, expected)
        if not matched:
            raise AuthenticationError(
                f"wrong scheme or token in the {self._config.header} header", self._challenge
            )

    # Client side ---------------------------------------------------------------------
    def request_headers(self) -> Mapping[str, str]:
        if not self._expected:
            return {}
        return {self._config.header: self._expected[0].decode("utf-8", "surrogateescape")}

    # Tokens --------------------------------------------------------------------------
    def _set_tokens(self, tokens: list[str]) -> None:
        scheme = self._config.scheme
        self._expected = [
            (f"{scheme} {token}" if scheme else token).encode("utf-8", "surrogateescape")
            for token in tokens
            if token
        ]

    def _read_file(self, *, initial: bool = False) -> None:
        path = self._config.filename
        assert path is not None
        try:
            state = _file_state(path)
            with open(path, encoding="utf-8") as file:
                tokens = [line.strip() for line in file.read().splitlines()]
        except OSError as exc:
            if initial:
                raise OSError(f"cannot read the token file {path}: {exc.strerror}") from exc
            self._logger.warning("cannot re-read %s (%s); keeping the last token", path, exc)
            return
        if not any(tokens):
            if initial:
                raise ValueError(f"the token file {path} holds no token")
            self._logger.warning("%s holds no token now; keeping the last token", path)
            return
        self._set_tokens(tokens)
        self._file_state = state
        if not initial:
            self._logger.info("token file %s changed: token reloaded", path)

    async def _watch_file(self) -> None:
        path = self._config.filename
        assert path is not None
        while True:
            await asyncio.sleep(FILE_CHECK_INTERVAL)
            try:
                state = _file_state(path)
            except OSError:
                continue  # mid-swap (Kubernetes replaces a symlink); try again
            if state != self._file_state:
                self._read_file()


def _file_state(path: str) -> tuple[int, int, int]:
    """Inode, size and mtime of the file a path leads to (symlinks followed)."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _create(settings: CreateSettings, config: BearerTokenAuthConfig) -> BearerTokenAuth:
    return BearerTokenAuth(settings, config)


factory = extension_factory("bearertokenauth", BearerTokenAuthConfig, _create)
