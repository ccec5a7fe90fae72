"""CORS on the OTLP/HTTP receiver, as a browser sees it: preflights for allowed origins
(wildcards included) get the Access-Control-Allow-* headers, others none; answers to
allowed origins carry Access-Control-Allow-Origin, also together with a bearer token."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from otelkit.collector.pdata.signals import Signal
from tests.collector.builders import traces
from tests.collector.receivers.harness import RunningReceiver, running_receiver
from tests.collector.security.support import TOKEN, extension

CORS = {
    "allowed_origins": ["https://app.example.com", "https://*.shop.example"],
    "allowed_headers": ["Authorization", "X-Tenant"],
    "max_age": 7200,
}
BODY = traces([[1]]).SerializeToString()


@pytest.fixture(scope="module")
def receiver() -> Iterator[RunningReceiver]:
    auth = extension("bearertokenauth", token=TOKEN)
    http = {"endpoint": "127.0.0.1:0", "cors": CORS, "auth": {"authenticator": "bearertokenauth"}}
    with running_receiver({"http": http}, extensions={"bearertokenauth": auth}) as running:
        yield running


def preflight(
    running: RunningReceiver, origin: str, headers: str = "content-type, authorization"
) -> httpx.Response:
    return httpx.options(
        f"{running.http_url}/v1/traces",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": headers,
        },
    )


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


@pytest.mark.parametrize(
    "origin", ["https://app.example.com", "https://eu.shop.example", "https://a.b.shop.example"]
)
def test_preflight_from_an_allowed_origin_is_answered_without_a_token(
    receiver: RunningReceiver, origin: str
) -> None:
    response = preflight(receiver, origin)
    assert response.status_code == 204
    assert cors_headers(response) == {
        "access-control-allow-origin": origin,
        "access-control-allow-methods": "POST",
        "access-control-allow-headers": "content-type, authorization",
        "access-control-allow-credentials": "true",
        "access-control-max-age": "7200",
    }
    assert "Origin" in response.headers["vary"]


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://app.example.com",  # another scheme is another origin
        "https://app.example.com.evil.example",
        "https://shop.example.evil",
    ],
)
def test_preflight_from_another_origin_gets_no_cors_headers(
    receiver: RunningReceiver, origin: str
) -> None:
    response = preflight(receiver, origin)
    assert response.status_code == 204
    assert cors_headers(response) == {}


def test_preflight_asking_for_a_header_not_allowed_gets_no_cors_headers(
    receiver: RunningReceiver,
) -> None:
    response = preflight(receiver, "https://app.example.com", "content-type, x-debug")
    assert cors_headers(response) == {}
    assert cors_headers(preflight(receiver, "https://app.example.com", "X-Tenant"))


def test_actual_requests_from_allowed_origins_carry_allow_origin(
    receiver: RunningReceiver,
) -> None:
    url = f"{receiver.http_url}/v1/traces"
    origin = "https://app.example.com"
    headers = {"origin": origin, "content-type": "application/x-protobuf"}
    refused = httpx.post(url, content=BODY, headers=headers)
    assert refused.status_code == 401  # the page can read why
    assert refused.headers["access-control-allow-origin"] == origin
    accepted = httpx.post(
        url, content=BODY, headers={**headers, "authorization": f"Bearer {TOKEN}"}
    )
    assert accepted.status_code == 200
    assert accepted.headers["access-control-allow-origin"] == origin
    assert accepted.headers["access-control-allow-credentials"] == "true"
    stranger = httpx.post(
        url,
        content=BODY,
        headers={**headers, "origin": "https://evil.example", "authorization": f"Bearer {TOKEN}"},
    )
    assert stranger.status_code == 200 and cors_headers(stranger) == {}
    assert receiver.consumers[Signal.TRACES].items() == 2


def test_without_cors_an_options_request_is_what_it_was() -> None:
    with running_receiver({"http": {"endpoint": "127.0.0.1:0"}}) as running:
        response = preflight(running, "https://app.example.com")
        assert response.status_code == 405 and cors_headers(response) == {}


def test_any_origin_and_any_header() -> None:
    cors = {"allowed_origins": ["*"], "allowed_headers": ["*"]}
    with running_receiver({"http": {"endpoint": "127.0.0.1:0", "cors": cors}}) as running:
        response = preflight(running, "https://anywhere.example", "x-anything")
        assert response.headers["access-control-allow-origin"] == "https://anywhere.example"
        assert "access-control-max-age" not in response.headers
