"""``basicauth``: HTTP Basic credentials, checked against an htpasswd file or sent by a client.

Keys follow the upstream extension: a server authenticator takes ``htpasswd: {file,
inline}`` (inline entries win over the file's for the same user), a client authenticator
``client_auth: {username, password}``; one instance is one or the other. Every htpasswd
hash Apache's ``htpasswd`` writes is understood (bcrypt, MD5 ``$apr1$``, SHA, crypt
SHA-256/512) as well as plain text, through libpass.

Checking a bcrypt hash costs tens of milliseconds of CPU, so checks run on two worker
threads, never on the event loop that serves the receivers, and a credential that once
matched is remembered (as a keyed hash, never in clear) until the collector stops.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from passlib.apache import HtpasswdFile
from pydantic import SecretStr, field_validator, model_validator

from otelkit.collector.runtime.auth import AuthenticationError
from otelkit.collector.runtime.component import (
    ComponentConfig,
    CreateSettings,
    Extension,
    Host,
    extension_factory,
)
from otelkit.collector.runtime.types import Secret

_CHALLENGE = 'Basic realm="otelkit", charset="UTF-8"'
_REMEMBERED_MAX = 4096


class HtpasswdSettings(ComponentConfig):
    file: str | None = None
    inline: Secret | None = None


class ClientAuthSettings(ComponentConfig):
    username: str
    password: Secret

    @field_validator("username")
    @classmethod
    def _no_colon(cls, username: str) -> str:
        if ":" in username:
            raise ValueError("a Basic username cannot contain ':'")
        return username


class BasicAuthConfig(ComponentConfig):
    htpasswd: HtpasswdSettings | None = None
    client_auth: ClientAuthSettings | None = None

    @model_validator(mode="after")
    def _one_side(self) -> BasicAuthConfig:
        if self.htpasswd is not None and self.client_auth is not None:
            raise ValueError(
                "set htpasswd (check incoming requests) or client_auth (send credentials), "
                "not both: use two basicauth extensions, e.g. basicauth/server and basicauth/client"
            )
        if self.client_auth is None and (
            self.htpasswd is None or not (self.htpasswd.file or _secret(self.htpasswd.inline))
        ):
            raise ValueError("set htpasswd.file or htpasswd.inline, or client_auth")
        return self


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


class BasicAuthServer(Extension):
    """Checks incoming Basic credentials against the htpasswd entries."""

    def __init__(self, htpasswd: HtpasswdSettings) -> None:
        self._htpasswd = htpasswd
        self._tables: list[HtpasswdFile] = []  # inline first: it wins
        self._remembered: set[bytes] = set()
        self._key = os.urandom(32)
        self._executor: ThreadPoolExecutor | None = None

    async def start(self, host: Host) -> None:
        tables = []
        if inline := _secret(self._htpasswd.inline):
            tables.append(_parse(inline.encode(), "htpasswd.inline"))
        if path := self._htpasswd.file:
            try:
                with open(path, "rb") as file:
                    content = file.read()
            except OSError as exc:
                raise OSError(f"cannot read htpasswd file {path}: {exc.strerror}") from exc
            tables.append(_parse(content, path))
        if not any(table.users() for table in tables):
            raise ValueError("htpasswd has no users")
        self._tables = tables
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="basicauth")

    async def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._remembered.clear()

    async def authenticate(self, headers: Mapping[str, str]) -> None:
        username, password = _credentials(headers.get("authorization", ""))
        fingerprint = hashlib.blake2b(
            f"{username}\0{password}".encode("utf-8", "surrogateescape"), key=self._key
        ).digest()
        if fingerprint in self._remembered:
            return
        if self._executor is None:
            raise AuthenticationError("basicauth is not started", _CHALLENGE)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(self._executor, self._check, username, password):
            raise AuthenticationError("wrong username or password", _CHALLENGE)
        if len(self._remembered) >= _REMEMBERED_MAX:
            self._remembered.clear()
        self._remembered.add(fingerprint)

    def _check(self, username: str, password: str) -> bool:
        for table in self._tables:
            if username in table.users():
                return bool(table.check_password(username, password))
        # An unknown user costs as long as a known one: check against some entry anyway.
        decoy = next(table for table in self._tables if table.users())
        decoy.check_password(decoy.users()[0], password)
        return False


class BasicAuthClient(Extension):
    """Sends fixed Basic credentials with every outgoing request."""

    def __init__(self, client_auth: ClientAuthSettings) -> None:
        pair = f"{client_auth.username}:{_secret(client_auth.password)}"
        self._headers = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}

    def request_headers(self) -> Mapping[str, str]:
        return self._headers


def _parse(content: bytes, source: str) -> HtpasswdFile:
    try:
        return HtpasswdFile.from_string(content)
    except ValueError as exc:
        raise ValueError(f"{source} is not an htpasswd file: {exc}") from exc


def _credentials(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.strip().partition(" ")
    if not header:
        raise AuthenticationError("missing Authorization header", _CHALLENGE)
    if scheme.lower() != "basic":
        raise AuthenticationError("the Authorization header is not Basic", _CHALLENGE)
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthenticationError("malformed Basic credentials", _CHALLENGE) from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise AuthenticationError("malformed Basic credentials", _CHALLENGE)
    return username, password


def _create(settings: CreateSettings, config: BasicAuthConfig) -> Extension:
    if config.client_auth is not None:
        return BasicAuthClient(config.client_auth)
    assert config.htpasswd is not None
    return BasicAuthServer(config.htpasswd)


factory = extension_factory("basicauth", BasicAuthConfig, _create)
